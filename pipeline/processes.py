"""Child processes (broker, dataflow, worker) that never outlive their parent.

Each child gets ``PR_SET_PDEATHSIG`` (killed with its parent, even on
SIGKILL), its output goes to a log file, and ``ProcessGroup`` stops them all
on exit: SIGTERM, then SIGKILL after a grace period (:func:`stop_child`).
:func:`start_pipeline` starts the product's two processes (the Bytewax
dataflow, N processes of it if asked, and M inference workers) from one
``Settings``: the demo, the simulator, the through-Kafka check and the tests
all start a pipeline with it.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import TracebackType

from streams.settings import Settings

__all__ = [
    "ProcessGroup",
    "ChildFailed",
    "streamrec_cmd",
    "start_pipeline",
    "stop_child",
    "die_with_parent",
    "scrape_metrics",
    "metric_sum",
]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """``preexec_fn`` of a child: the kernel kills it when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_child(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; nothing if it already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class ChildFailed(RuntimeError):
    """A child process exited while it should be running; see its log."""


def streamrec_cmd(*args: str) -> list[str]:
    """``python -m streamrec <args>`` with this interpreter."""
    return [sys.executable, "-m", "streamrec", *args]


def scrape_metrics(port: int, timeout_s: float = 2.0) -> str | None:
    """The text of a child's Prometheus ``/metrics`` on 127.0.0.1, or None while
    it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            return r.read().decode("utf-8")
    except (OSError, http.client.HTTPException):  # URLError is an OSError
        return None


def metric_sum(text: str, sample: str) -> float:
    """The sum of every sample named ``sample`` (all label sets) in a Prometheus text
    exposition; 0 when there is none (a counter a process does not export yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        (
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == sample
        ),
        0.0,
    )


class ProcessGroup:
    """Start named children; stop all of them on ``close()`` or leaving ``with``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        log.close()
        self.children[name] = proc
        return proc

    def check(self) -> None:
        """Raise ChildFailed if any child has exited."""
        for name, proc in self.children.items():
            if proc.poll() is not None:
                tail = self.log_tail(name)
                raise ChildFailed(f"{name} exited with code {proc.returncode}; log tail:\n{tail}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, name: str, grace_s: float = 10.0) -> None:
        proc = self.children.pop(name, None)
        if proc is not None:
            stop_child(proc, grace_s)

    def close(self) -> None:
        for name in list(self.children):
            self.stop(name)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_pipeline(
    procs: ProcessGroup,
    settings: Settings,
    *,
    workers: int = 1,
    worker_port: int = 0,
    dataflow_processes: int = 1,
    dataflow_args: tuple[str, ...] = (),
) -> dict[str, list[str]]:
    """Start the dataflow and ``workers`` workers under ``procs``, all configured
    by ``settings`` (handed over as ``STREAMREC_*`` variables).

    ``dataflow_processes`` > 1 starts a Bytewax cluster on free loopback ports
    (``-i I -a ADDRS``), each process with ``dataflow_args`` (e.g. recovery
    flags). Worker ``j`` serves its metrics on ``worker_port + j`` (0: none).
    Returns every child's command line by name (``dataflow`` or ``dataflow-I``,
    ``worker-J``), so a caller can restart one; the environment is
    ``settings.to_env()``.
    """
    from pipeline.broker import free_port

    env = settings.to_env()
    commands: dict[str, list[str]] = {}
    if dataflow_processes == 1:
        commands["dataflow"] = streamrec_cmd("dataflow", *dataflow_args)
    else:
        addrs = ";".join(f"127.0.0.1:{free_port()}" for _ in range(dataflow_processes))
        for i in range(dataflow_processes):
            cluster = ("-i", str(i), "-a", addrs, *dataflow_args)
            commands[f"dataflow-{i}"] = streamrec_cmd("dataflow", *cluster)
    for j in range(workers):
        port = worker_port + j if worker_port else 0
        commands[f"worker-{j}"] = streamrec_cmd("worker", "--metrics-port", str(port))
    for name, cmd in commands.items():
        procs.start(name, cmd, env)
    return commands

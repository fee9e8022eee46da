"""Child processes (dataflow, worker) that never outlive their parent.

Each child gets ``PR_SET_PDEATHSIG`` (killed with its parent, even on
SIGKILL), its output goes to a log file, and ``ProcessGroup`` stops them all
on exit: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import TracebackType

from streams.broker import _die_with_parent

__all__ = ["ProcessGroup", "ChildFailed", "streamrec_cmd", "scrape_metrics", "metric_sum"]


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
            preexec_fn=_die_with_parent,
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
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

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

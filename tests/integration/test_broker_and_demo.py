"""The embedded broker and the demo leave no process behind, also on Ctrl-C,
on an exception and when their parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from streams.kafka import wait_until_ready

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in _descendants(k)]


def _wait_gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_broker_stops_when_the_block_raises():
    with pytest.raises(RuntimeError), EmbeddedBroker() as b:
        pid = b._proc.pid
        raise RuntimeError("a failing test")
    assert _wait_gone([pid]) == []


def test_broker_dies_with_its_parent_even_on_sigkill(tmp_path):
    script = (
        "from pipeline.broker import EmbeddedBroker\n"
        "b = EmbeddedBroker().start()\n"
        "print(b._proc.pid, b.bootstrap, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, bootstrap = parent.stdout.readline().split()
    wait_until_ready(bootstrap)
    parent.kill()
    parent.wait()
    assert _wait_gone([int(pid)]) == []


def test_streamrec_broker_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec", "broker", "--partitions", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("embedded broker on 127.0.0.1:"), line
    children = _descendants(proc.pid)
    assert children, "the broker binary runs as a child"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert _wait_gone(children) == []


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_nothing_behind(tmp_path, generic_data):
    env = {**os.environ, "STREAMREC_METRICS_PORT": "0", "COLUMNS": "120"}
    log = tmp_path / "demo.out"
    with open(log, "w") as out_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamrec",
                "demo",
                "--data",
                str(generic_data),
                "--events",
                "40",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--ranker",
                "two-tower",
            ],
            stdout=out_file,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        # Every process the demo ever started: broker, dataflow, worker.
        family = {proc.pid}
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            family.update(_descendants(proc.pid))
            time.sleep(0.2)
    out = log.read_text()
    assert len(family) >= 4, f"expected broker, dataflow and worker children: {family}"
    assert proc.returncode == 0, out
    assert "streamrec demo report" in out
    assert "40 (+0 bad records)" in out  # events in
    assert "recommendations out" in out and "40 (duplicates dropped" in out
    assert "p50 / p95 / p99" in out
    assert _wait_gone(sorted(family)) == []


@pytest.mark.integration
def test_the_demo_serves_the_fusion_ranker_that_train_made_and_cached(tmp_path):
    """`streamrec train` makes the model chain for a dataset; `streamrec demo` on
    the same data and cache finds it without a flag (no second training) and
    its report says the fusion ranker served, with the model version."""
    from tests.helpers import write_generic_dataset

    data = write_generic_dataset(tmp_path / "data", n_users=60)
    cache = tmp_path / "cache"
    env = {**os.environ, "STREAMREC_METRICS_PORT": "0", "COLUMNS": "200"}
    base = [sys.executable, "-m", "streamrec"]
    common = ["--data", str(data), "--cache-dir", str(cache)]
    trained = subprocess.run(
        [*base, "train", *common, "--max-minutes", "0.2", "--fusion-users", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "model: trained" in trained.stdout
    again = subprocess.run(
        [*base, "train", *common, "--max-minutes", "0.2", "--fusion-users", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert again.returncode == 0 and "model: cached" in again.stdout, again.stdout
    demo = subprocess.run(
        [*base, "demo", *common, "--events", "60", "--rate", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    assert "model: cached" in out and "model: trained" not in out
    line = next(x for x in out.splitlines() if "ranker (model version)" in x)
    assert "fusion" in line and "+seq:" in line, line

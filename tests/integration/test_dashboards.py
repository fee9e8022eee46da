"""The dashboards against real data: the demo runs while a real Prometheus scrapes
it, then every panel's query runs against that Prometheus and every panel that
got nothing back is listed (the JSON checks are in tests/unit/test_dashboards.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from pipeline.broker import free_port
from tests.helpers import write_generic_dataset
from tests.unit.test_dashboards import (  # shared with the unit half
    EXPERIMENTS,
    ROOT,
    SCRAPE,
    _targets,
)


def _free_port_pair(offset: int = 100) -> int:
    """A free port P with P + offset free too (the demo's worker serves on P + 100)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _dataset(folder: Path) -> Path:
    """The generic test dataset, grown for a demo run of a few seconds.

    40 users x 6 steps = 240 interactions: --events 200 runs about 4 s at 50
    events/s. Price and quantity columns feed the revenue panels where the
    loader reads them (other columns are ignored); two unparsable rows are
    replayed raw and dead-lettered.
    """
    write_generic_dataset(folder, n_users=40)
    path = folder / "interactions.csv"
    header, *rows = path.read_text().splitlines()
    lines = [f"{header},price,quantity"]
    lines += [f"{row},{1.5 + i % 7},{1 + i % 3}" for i, row in enumerate(rows)]
    lines += ["u1,k1,not-a-time,click,2.5,1", "u2,,1700000000,click,2.5,1"]
    path.write_text("\n".join(lines) + "\n")
    return folder


class _PrometheusAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        """POST /api/v1/query_range (a form body: the interval queries are long)."""
        form = {"query": expr, "start": start, "end": end, "step": step}
        body = urllib.parse.urlencode(form).encode()
        url = f"{self.base}/api/v1/query_range"
        with urllib.request.urlopen(url, data=body, timeout=30) as response:
            return json.loads(response.read())["data"]["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False


def _has_data(result: list[dict]) -> bool:
    """Some series with some value that is a number (histogram_quantile of no data is NaN)."""
    return any(not math.isnan(float(v)) for series in result for _, v in series["values"])


@contextmanager
def _prometheus(binary: str, workdir: Path, scrape_port: int) -> Iterator[_PrometheusAPI]:
    """A real Prometheus with the repository's scrape config, pointed at the demo.

    The jobs are infra/prometheus/prometheus.yml's; the targets become the demo's
    ports on 127.0.0.1 (static, in place of the compose network's DNS discovery
    and its relabelling), scraped every 100 ms: the demo stops its processes as soon
    as the last list is out, and a counter first set in its last second (the dead
    letters, replayed last) still needs two samples for rate().
    """
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    config["global"] = {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE}
    ports = {"streamrec-dataflow": scrape_port, "streamrec-worker": scrape_port + 100}
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job.pop("relabel_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    listen = free_port()
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{listen}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    api = _PrometheusAPI(f"http://127.0.0.1:{listen}")
    try:
        deadline = time.monotonic() + 60
        while not api.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus did not become ready:\n{tail}")
            time.sleep(0.2)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.mark.integration
@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_demo_run(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed and CI is set: `make prometheus` installs it")
        pytest.skip("prometheus is not installed: `make prometheus` installs Debian's package")
    data = _dataset(tmp_path / "data")
    # An A/B experiment whose second variant is the bandit, so the experiment
    # and bandit panels have two variants and several arms to show.
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump(EXPERIMENTS))
    port = _free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["STREAMREC_EXPERIMENTS"] = str(experiments)
    demo = [sys.executable, "-m", "streamrec", "demo", "--data", str(data)]
    demo += ["--events", "200", "--rate", "50", "--metrics-port", str(port)]
    demo += ["--cache-dir", str(tmp_path / "cache")]

    with _prometheus(binary, tmp_path, port) as prometheus:
        start = time.time()
        run = subprocess.run(
            demo, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480, check=False
        )
        end = time.time()
        output = f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        assert run.returncode == 0, f"the demo failed:\n{output}"

        # The demo has stopped its processes; Prometheus keeps what it scraped,
        # so every query runs over the demo's run window.
        up = prometheus.query_range("up == 1", start, end)
        scraped = {series["metric"]["job"] for series in up}
        assert scraped == {"streamrec-dataflow", "streamrec-worker"}, (
            f"Prometheus scraped only {scraped}; demo output:\n{output}"
        )
        values = {
            "$__rate_interval": "5s",  # Grafana's is at least 4 scrapes: 50 here
            "$__range": f"{math.ceil(end - start) + 60}s",  # the whole run
        }
        empty = []
        for name, title, ref, expr in _targets():
            query = expr
            for variable, value in values.items():
                query = query.replace(variable, value)
            if not _has_data(prometheus.query_range(query, start, end)):
                empty.append(f"  {name} / {title} [{ref}]: {expr}")

    assert not empty, (
        f"{len(empty)} of {len(_targets())} panel queries returned no data over a demo run "
        "(metrics the code defines but does not feed yet, or a wrong query):\n" + "\n".join(empty)
    )

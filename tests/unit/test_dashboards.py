"""The Grafana dashboards are well-formed: the JSON against Grafana's needs and the
metric names against the ones the code registers (the queries against real
data are in tests/integration/test_dashboards.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
# Grafana's built-in variables the panels use; the integration test gives them
# values that fit its 1 s scrape interval and its run.
GRAFANA_VARIABLES = {"$__rate_interval", "$__range"}
SCRAPE = "100ms"
EXPERIMENTS = {
    "experiments": [
        {
            "name": "diversity",
            "salt": "dashboards",
            "variants": [
                {"name": "control", "weight": 0.5, "reranker": "mmr", "lambda": 0.7},
                {"name": "bandit", "weight": 0.5, "policy": "bandit"},
            ],
        }
    ]
}
_METRIC = re.compile(r"\b(?:streamrec|bytewax)_[a-zA-Z0-9_]+")


def _dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def _targets() -> list[tuple[str, str, str, str]]:
    """(dashboard file, panel title, refId, expr) of every panel query."""
    return [
        (name, panel["title"], target["refId"], target["expr"])
        for name, dashboard in _dashboards().items()
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def _registered_series() -> set[str]:
    """Every series name the two processes can serve, from the code's own registry."""
    import bytewax.connectors.kafka  # noqa: F401 - registers bytewax_kafka_consumer_lag
    from prometheus_client import REGISTRY

    import model.metrics  # noqa: F401
    import streams.metrics  # noqa: F401

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {f.name + s for f in REGISTRY.collect() for s in suffixes.get(f.type, [""])}


def test_the_four_dashboards_exist() -> None:
    names = {path.name for path in DASHBOARD_FILES}
    assert names == {"pipeline.json", "model.json", "recommendations.json", "experiments.json"}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}: {ids}"
    for panel in panels:
        where = f"{path.name} / {panel.get('title')}"
        assert panel["type"] and panel["title"], where
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, where
        assert panel["datasource"] == DATASOURCE, where
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target.get("datasource", DATASOURCE) == DATASOURCE, where
            variables = set(re.findall(r"\$\w+", target["expr"]))
            assert variables <= GRAFANA_VARIABLES, f"{where}: unhandled {variables}"


def test_dashboard_uids_are_unique() -> None:
    uids = [d["uid"] for d in _dashboards().values()]
    assert len(uids) == len(set(uids)), uids


def test_provisioning_declares_the_datasource_and_the_dashboard_folder() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    declared = {(d["type"], d["uid"]): d for d in datasources["datasources"]}
    assert declared[(DATASOURCE["type"], DATASOURCE["uid"])]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/streamrec.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./infra/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts


def test_queries_name_only_metrics_the_code_registers() -> None:
    registered = _registered_series()
    unknown = [
        f"{name} / {title} [{ref}]: {metric}"
        for name, title, ref, expr in _targets()
        for metric in _METRIC.findall(expr)
        if metric not in registered
    ]
    assert not unknown, "metrics no process registers:\n" + "\n".join(unknown)

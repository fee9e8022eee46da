"""docker-compose.yml, its CPU override and prometheus.yml checked against the code.

No Docker engine is needed: the files are parsed and every name they use (CLI
subcommands, STREAMREC_* variables, topics, volumes, services, metrics ports)
is checked against what the code and the repository define.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from streamrec.cli import app
from streams.contracts import Topics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"

# Executables the third-party images are known to ship (by image name without
# the tag), for entrypoints, commands and healthchecks. Our own image runs
# `streamrec` and ships python and sh (python:3.11-slim).
IMAGE_BINARIES = {
    "apache/kafka": {"/opt/kafka/bin/kafka-topics.sh", "/bin/bash"},
    "prom/prometheus": {"/bin/prometheus", "wget"},
    "grafana/grafana": {"wget"},
}
OWN_BINARIES = {"streamrec", "python", "/bin/sh"}
# Services that run a streamrec process, and the settings each cannot start without.
REQUIRED_ENV = {
    "dataflow": {"STREAMREC_BROKERS", "STREAMREC_CATALOG", "STREAMREC_METRICS_PORT"},
    "worker": {"STREAMREC_BROKERS", "STREAMREC_CATALOG", "STREAMREC_METRICS_PORT"},
    "replayer": {"STREAMREC_BROKERS", "STREAMREC_DATA"},
    "index": {"STREAMREC_DATA", "STREAMREC_CACHE_DIR"},
}


def _load(path: Path) -> dict:
    """YAML with Compose's merge tags (`!reset`, `!override`) read as plain values."""

    class Loader(yaml.SafeLoader):
        pass

    def plain(loader: yaml.SafeLoader, node: yaml.Node) -> object:
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        return loader.construct_scalar(node)

    Loader.add_constructor("!reset", plain)
    Loader.add_constructor("!override", plain)
    return yaml.load(path.read_text(), Loader=Loader)


COMPOSE_DOC = _load(COMPOSE)
SERVICES: dict[str, dict] = COMPOSE_DOC["services"]


def _cli() -> dict[str, object]:
    """The registered `streamrec` subcommands (click commands by name)."""
    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _words(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _own(service: dict) -> bool:
    return "build" in service


def _binaries(service: dict) -> set[str]:
    if _own(service):
        return OWN_BINARIES
    return IMAGE_BINARIES.get(service["image"].split(":")[0], set())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _host_port(mapping: str | dict) -> str | None:
    """The published host port of a `ports` entry (None: not published)."""
    if isinstance(mapping, dict):
        return str(mapping["published"]) if "published" in mapping else None
    parts = str(mapping).split("/")[0].split(":")
    return parts[-2] if len(parts) >= 2 else None


def _cli_envvars(commands: dict | None = None) -> set[str]:
    """Every STREAMREC_* variable a CLI option reads (some are not Settings fields)."""
    names: set[str] = set()
    for command in (_cli() if commands is None else commands).values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        names |= _cli_envvars(getattr(command, "commands", {}))  # groups: `experiment report`
    return names


def test_every_service_has_an_image_or_a_dockerfile_that_exists() -> None:
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        if _own(service):
            build = service["build"]
            dockerfile = ROOT / build["context"] / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


def test_commands_are_streamrec_subcommands_or_binaries_of_the_image() -> None:
    subcommands = set(_cli())
    for name, service in SERVICES.items():
        entrypoint, command = _words(service.get("entrypoint")), _words(service.get("command"))
        binaries = _binaries(service)
        if entrypoint:
            assert entrypoint[0] in binaries, f"{name}: unknown entrypoint {entrypoint[0]}"
        elif command and _own(service):
            # The image's entrypoint is `streamrec`: the command is a subcommand.
            assert command[0] in subcommands, f"{name}: `streamrec {command[0]}` does not exist"
        elif command:
            # A third-party image's own entrypoint, given flags.
            assert command[0].startswith("-"), f"{name}: {command[0]} is not a flag"
        # Scripts run by a shell entrypoint: every `streamrec X` in them must exist.
        for script in command if entrypoint else []:
            for sub in re.findall(r"\bstreamrec\s+([a-z][a-z-]*)", script):
                assert sub in subcommands, f"{name}: `streamrec {sub}` does not exist"
        test = _words(service.get("healthcheck", {}).get("test"))
        if test:
            assert test[0] == "CMD" and test[1] in binaries, f"{name}: healthcheck {test}"


def test_streamrec_variables_are_settings_or_cli_options() -> None:
    known = {f"STREAMREC_{f.upper()}" for f in Settings.model_fields} | _cli_envvars()
    for name, service in SERVICES.items():
        unknown = {v for v in _env(service) if v.startswith("STREAMREC_")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are neither Settings fields nor CLI options"


def test_streamrec_services_set_what_they_need() -> None:
    for name, required in REQUIRED_ENV.items():
        missing = required - set(_env(SERVICES[name]))
        assert not missing, f"{name} does not set {sorted(missing)}"
    env = {name: _env(SERVICES[name]) for name in REQUIRED_ENV}
    assert env["index"]["STREAMREC_DATA"] == env["replayer"]["STREAMREC_DATA"], (
        "the catalog must be built from the dataset that is replayed"
    )
    assert env["dataflow"]["STREAMREC_CATALOG"] == env["worker"]["STREAMREC_CATALOG"]
    assert env["dataflow"]["STREAMREC_CATALOG"].startswith(env["index"]["STREAMREC_CACHE_DIR"])
    brokers = {env[n]["STREAMREC_BROKERS"] for n in ("dataflow", "worker", "replayer")}
    assert brokers == {"kafka:9092"}
    # The values pass Settings' own validation (types, ranges).
    for name in REQUIRED_ENV:
        fields = {k.removeprefix("STREAMREC_").lower(): v for k, v in env[name].items()}
        Settings(**{k: v for k, v in fields.items() if k in Settings.model_fields})


def test_kafka_init_creates_every_topic_the_code_uses() -> None:
    env = _env(SERVICES["kafka-init"])
    topics = Topics("")
    created = set(env["TOPICS"].split()) | set(env["COMPACTED_TOPICS"].split())
    assert created == set(topics.all())
    assert set(env["COMPACTED_TOPICS"].split()) == topics.compacted()
    assert int(env["PARTITIONS"]) >= Settings.model_fields["partitions"].default
    assert _env(SERVICES["dataflow"]).get("STREAMREC_TOPIC_PREFIX", "") == topics.prefix


def test_host_ports_do_not_clash() -> None:
    published = [
        (name, port)
        for name, service in SERVICES.items()
        for port in map(_host_port, service.get("ports", []))
        if port is not None
    ]
    ports = [port for _, port in published]
    assert len(ports) == len(set(ports)), published
    assert {"3000", "9090"} <= set(ports), "Grafana on 3000 and Prometheus on 9090"


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(COMPOSE_DOC.get("volumes") or {})
    used: set[str] = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            elif not source.startswith(("../", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {sorted(declared - used)}"


def test_depends_on_targets_exist_and_conditions_can_be_met() -> None:
    for name, service in SERVICES.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{target} has no healthcheck"
            elif condition == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", f"{target} is not a one-shot"
            else:
                assert condition == "service_started", condition


def test_worker_reserves_a_gpu_and_the_cpu_override_drops_it() -> None:
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["capabilities"] == ["gpu"]
    assert _env(worker)["STREAMREC_DEVICE"] == "auto"
    override = _load(CPU_OVERRIDE)
    assert set(override["services"]) <= set(SERVICES)
    assert "!reset" in CPU_OVERRIDE.read_text()
    cpu_worker = override["services"]["worker"]
    assert cpu_worker["deploy"]["resources"]["reservations"]["devices"] == []
    assert _env(cpu_worker)["STREAMREC_DEVICE"] == "cpu"


@pytest.mark.parametrize(("job", "service"), [("dataflow", "dataflow"), ("worker", "worker")])
def test_prometheus_scrapes_each_process_on_its_metrics_port(job: str, service: str) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs[f"streamrec-{job}"]["static_configs"] for t in sc["targets"]]
    port = _env(SERVICES[service])["STREAMREC_METRICS_PORT"]
    assert targets == [f"{service}:{port}"]
    assert port == {"dataflow": "9100", "worker": "9200"}[service]
    mounts = SERVICES["prometheus"]["volumes"]
    assert any(str(v).startswith("./infra/prometheus:/etc/prometheus") for v in mounts)

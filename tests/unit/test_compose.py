"""docker-compose.yml, its CPU override, .env and prometheus.yml checked against the code.

No Docker engine is needed: the files are parsed and every name they use (CLI
subcommands, STREAMREC_* variables, topics, volumes, services, metrics ports)
is checked against what the code and the repository define. The two profiles
(`single`, the default from .env, and `scale`) are checked as Compose would
enable their services: each runs one Bytewax cluster, and Prometheus finds
every process of either.
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
from streams.settings import WORKER_METRICS_OFFSET, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
DOTENV = ROOT / ".env"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
# The dataflow/worker setups, one active at a time (Compose `profiles`).
PROFILES = ("single", "scale")

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
    "kafka-init": {
        "STREAMREC_BROKERS",
        "STREAMREC_PARTITIONS",
        "STREAMREC_TOPICS_CREATE_REPLICATION_FACTOR",
    },
    "dataflow": {"STREAMREC_BROKERS", "STREAMREC_CATALOG", "STREAMREC_METRICS_PORT"},
    "worker": {"STREAMREC_BROKERS", "STREAMREC_CATALOG", "STREAMREC_WORKER_METRICS_PORT"},
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


def _enabled(profile: str) -> dict[str, dict]:
    """The services Compose runs with this one profile active: those without
    `profiles` and those that list it."""
    return {
        name: service
        for name, service in SERVICES.items()
        if not service.get("profiles") or profile in service["profiles"]
    }


def _flag(words: list[str], flag: str) -> str | None:
    """The value after ``flag`` in a command (None: not given)."""
    return words[words.index(flag) + 1] if flag in words else None


def _runs(service: dict, subcommand: str) -> bool:
    """Whether the service is a `streamrec SUBCOMMAND` process of our image."""
    command = _words(service.get("command"))
    return _own(service) and "entrypoint" not in service and command[:1] == [subcommand]


def _dataflow_processes(services: dict[str, dict]) -> dict[str, tuple[int | None, int]]:
    """Dataflow services -> (Bytewax process id or None, metrics port it serves on)."""
    out = {}
    for name, service in services.items():
        if _runs(service, "dataflow"):
            pid = _flag(_words(service["command"]), "-i")
            port = int(_env(service)["STREAMREC_METRICS_PORT"]) + int(pid or 0)
            out[name] = (None if pid is None else int(pid), port)
    return out


def _worker_port(service: dict) -> int:
    """The metrics port a worker service serves on, found as `streamrec worker` finds it:
    STREAMREC_WORKER_METRICS_PORT, else STREAMREC_METRICS_PORT + 100 (0 = off)."""
    env = _env(service)
    if "STREAMREC_WORKER_METRICS_PORT" in env:
        return int(env["STREAMREC_WORKER_METRICS_PORT"])
    base = int(env.get("STREAMREC_METRICS_PORT", Settings.model_fields["metrics_port"].default))
    return base + WORKER_METRICS_OFFSET if base else 0


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


#: Subcommands that need torch (the model side): their services build the `model` target.
MODEL_SIDE = {"worker", "index", "train", "finetune", "finetune-seq", "finetune-cross", "evaluate"}


def _dockerfile_targets() -> set[str]:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    return set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE))


def test_each_service_builds_the_image_of_its_role() -> None:
    """The stream side's image has no torch (`stream`); what needs the model side
    builds `model`. Every target a service names exists in the Dockerfile."""
    targets = _dockerfile_targets()
    assert {"stream", "model", "eval"} <= targets
    for name, service in SERVICES.items():
        if not _own(service):
            continue
        target = service["build"].get("target")
        assert target in targets, f"{name}: build target {target!r} is not in infra/Dockerfile"
        words = _words(service.get("command"))
        script = " ".join(words)
        needs_model = (words[:1] and words[0] in MODEL_SIDE) or any(
            f"streamrec {cmd}" in script for cmd in MODEL_SIDE
        )
        assert (target == "model") == bool(needs_model), (name, target, words[:1])


def test_the_dockerfile_installs_under_the_constraints() -> None:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    installs = [
        line for line in text.splitlines() if "pip install" in line and "torch==" not in line
    ]
    assert installs and all(
        "-c constraints.txt" in line or "--no-deps" in line for line in installs
    ), installs


def test_commands_are_streamrec_subcommands_or_binaries_of_the_image() -> None:
    subcommands = set(_cli())
    for name, service in SERVICES.items():
        entrypoint, command = _words(service.get("entrypoint")), _words(service.get("command"))
        binaries = _binaries(service)
        if entrypoint:
            assert entrypoint[0] in binaries, f"{name}: unknown entrypoint {entrypoint[0]}"
        elif command and _own(service):
            # The image's entrypoint is `streamrec`: the command is a subcommand,
            # and a group's (`topics`) is followed by one of its own.
            assert command[0] in subcommands, f"{name}: `streamrec {command[0]}` does not exist"
            group = getattr(_cli()[command[0]], "commands", None)
            if group is not None:
                assert command[1:2] and command[1] in group, f"{name}: `streamrec {command}`"
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


def test_a_command_variable_is_set_on_a_service_that_runs_its_command() -> None:
    """STREAMREC_<COMMAND>_<FLAG> reaches only `streamrec COMMAND`: one set on another
    service would be read by nothing."""
    settings = {f"STREAMREC_{f.upper()}" for f in Settings.model_fields}
    for name, service in SERVICES.items():
        command = _words(service.get("command"))
        if not _own(service) or "entrypoint" in service or not command:
            continue
        cli = _cli()[command[0]]
        if hasattr(cli, "commands"):  # a group: `topics create`
            cli = cli.commands[command[1]]  # type: ignore[attr-defined]
        own = {p.envvar for p in cli.params if isinstance(getattr(p, "envvar", None), str)}
        for var in _env(service):
            if var.startswith("STREAMREC_") and var not in settings:
                assert var in own, f"{name} runs `streamrec {' '.join(command)}`: {var} is not its"


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


def test_kafka_init_creates_the_topics_with_streamrec_topics_create() -> None:
    """The product's one topic list (streams.contracts.Topics), no list of its own."""
    init = SERVICES["kafka-init"]
    assert _own(init) and _words(init["command"]) == ["topics", "create"]
    assert not init.get("profiles"), "both profiles need the topics"
    create = _cli()["topics"].commands["create"]  # type: ignore[attr-defined]
    options = {p.envvar for p in create.params}
    assert {"STREAMREC_PARTITIONS", "STREAMREC_TOPICS_CREATE_REPLICATION_FACTOR"} <= options
    env = _env(init)
    assert int(env["STREAMREC_PARTITIONS"]) >= Settings.model_fields["partitions"].default
    # One broker: it cannot hold more than one replica of a partition.
    kafka = _env(SERVICES["kafka"])
    factor = env["STREAMREC_TOPICS_CREATE_REPLICATION_FACTOR"]
    assert factor == kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]
    assert env["STREAMREC_BROKERS"] == "kafka:9092"
    prefixes = {_env(s).get("STREAMREC_TOPIC_PREFIX", "") for s in SERVICES.values() if _own(s)}
    assert prefixes == {Topics("").prefix}, "every process reads the topics kafka-init made"
    assert "kafka-topics.sh --create" not in COMPOSE.read_text()
    assert "depends_on" in init and init["depends_on"]["kafka"]["condition"] == "service_healthy"


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


def test_dotenv_makes_single_the_default_profile() -> None:
    """Plain `docker compose up` runs `single`; a --profile flag replaces it."""
    env = dict(
        line.split("=", 1)
        for line in DOTENV.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert env == {"COMPOSE_PROFILES": "single"}
    used = {p for service in SERVICES.values() for p in service.get("profiles", [])}
    assert used == set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_runs_one_bytewax_cluster_on_one_recovery_store(profile: str) -> None:
    services = _enabled(profile)
    processes = _dataflow_processes(services)
    assert processes, f"{profile}: no dataflow"
    commands = {name: _words(services[name]["command"]) for name in processes}
    if profile == "single":
        assert list(processes) == ["dataflow"]
        assert processes["dataflow"][0] is None and "-a" not in commands["dataflow"]
    else:
        # Process ids 0..n-1, each with the same address list, whose i-th host
        # is process i's service: one cluster, not n clusters of one.
        assert len(processes) >= 2
        ids = sorted(pid for pid, _ in processes.values())
        assert ids == list(range(len(processes)))
        addresses = {_flag(c, "-a") for c in commands.values()}
        assert len(addresses) == 1, addresses
        hosts = [a.split(":")[0] for a in addresses.pop().split(";")]
        assert hosts == sorted(processes, key=lambda n: processes[n][0])
        # The same environment as the single process, so the same topics and catalog.
        for name in processes:
            assert _env(services[name]) == _env(SERVICES["dataflow"]), name
    # One recovery store for every process, created before any of them with
    # partitions for the largest cluster either profile runs.
    recovery = {(_flag(c, "-r"), _flag(c, "-s"), _flag(c, "-b")) for c in commands.values()}
    assert len(recovery) == 1 and None not in recovery.pop()
    mounts = {v for name in processes for v in services[name]["volumes"] if "recovery" in v}
    assert mounts == {"recovery:/var/lib/streamrec/recovery"}
    init = SERVICES["recovery-init"]
    assert "recovery:/var/lib/streamrec/recovery" in init["volumes"]
    assert "$$STREAMREC_DATAFLOW_RECOVERY_PARTITIONS" in init["command"][0]
    partitions = int(_env(init)["STREAMREC_DATAFLOW_RECOVERY_PARTITIONS"])
    largest = max(len(_dataflow_processes(_enabled(p))) for p in PROFILES)
    assert partitions >= largest
    for name in processes:
        assert services[name]["depends_on"]["recovery-init"]["condition"] == (
            "service_completed_successfully"
        )
    # Each process serves and is checked on its own metrics port.
    for name, (_, port) in processes.items():
        assert str(port) in [str(p) for p in services[name]["expose"]], name
        assert f"localhost:{port}/metrics" in " ".join(services[name]["healthcheck"]["test"])


def test_the_scale_profile_runs_two_workers_in_one_consumer_group() -> None:
    for profile, replicas in (("single", 1), ("scale", 2)):
        workers = {n: s for n, s in _enabled(profile).items() if _runs(s, "worker")}
        count = sum(int(s.get("deploy", {}).get("replicas", 1)) for s in workers.values())
        assert count == replicas, (profile, sorted(workers))
        # The group id is streamrec-worker plus the topic prefix: same brokers
        # and prefix, same group (model/worker.py); the rest alike too.
        assert len({frozenset(_env(s).items()) for s in workers.values()}) == 1, profile
    # The CPU override runs every worker on the CPU.
    override = _load(CPU_OVERRIDE)["services"]
    for name, service in SERVICES.items():
        if _runs(service, "worker"):
            assert override[name]["deploy"]["resources"]["reservations"]["devices"] == [], name
            assert _env(override[name])["STREAMREC_DEVICE"] == "cpu"


def test_no_enabled_service_requires_one_the_profile_disables() -> None:
    """Compose refuses such a project; the replayer waits for either profile's processes."""
    for profile in PROFILES:
        services = _enabled(profile)
        for name, service in services.items():
            for target, spec in (service.get("depends_on") or {}).items():
                if spec.get("required", True):
                    assert target in services, f"{profile}: {name} requires {target}"
    waits = SERVICES["replayer"]["depends_on"]
    for name, service in SERVICES.items():
        if _runs(service, "dataflow") or _runs(service, "worker"):
            assert waits[name]["condition"] == "service_healthy", name


def _discovered(job: dict) -> set[tuple[str, int]]:
    """(host, port) that a scrape job finds: static targets and DNS names."""
    found = set()
    for static in job.get("static_configs", []):
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            found.add((host, int(port)))
    for dns in job.get("dns_sd_configs", []):
        assert dns.get("type", "SRV") == "A", "Docker's DNS serves A records"
        found |= {(name, int(dns["port"])) for name in dns["names"]}
    return found


@pytest.mark.parametrize("profile", PROFILES)
def test_prometheus_discovers_every_process_of_each_profile(profile: str) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    # The dashboards and tests/integration/test_dashboards.py know these two jobs.
    assert set(jobs) == {"streamrec-dataflow", "streamrec-worker"}
    services = _enabled(profile)
    dataflow = {(name, port) for name, (_, port) in _dataflow_processes(services).items()}
    workers = {(name, _worker_port(s)) for name, s in services.items() if _runs(s, "worker")}
    assert workers and {p for _, p in workers} == {9200}
    # Each worker is checked on the port it serves on.
    for name, port in workers:
        assert str(port) in [str(p) for p in services[name]["expose"]], name
        assert f"localhost:{port}/metrics" in " ".join(services[name]["healthcheck"]["test"])
    assert dataflow <= _discovered(jobs["streamrec-dataflow"])
    assert workers <= _discovered(jobs["streamrec-worker"])
    # Nothing else: every name Prometheus looks up is a service of the stack.
    for job in jobs.values():
        assert {host for host, _ in _discovered(job)} <= set(SERVICES)
    mounts = SERVICES["prometheus"]["volumes"]
    assert any(str(v).startswith("./infra/prometheus:/etc/prometheus") for v in mounts)


def test_the_stack_trains_the_fusion_model_and_serves_it_without_a_flag() -> None:
    """The index one-shot runs `streamrec train` into the catalog volume; the
    dataflow and the worker read that volume as their cache dir, so they find
    the model (streamrec.train.current_model) without --sequence-model."""
    services = COMPOSE_DOC["services"]
    index = services["index"]
    assert "streamrec train" in " ".join(index["command"])
    cache = index["environment"]["STREAMREC_CACHE_DIR"]
    for name in ("dataflow", "worker"):
        env = services[name]["environment"]
        assert env["STREAMREC_CACHE_DIR"] == cache, name
        assert "STREAMREC_SEQUENCE_MODEL" not in env
        assert any(v.startswith("catalog:") for v in services[name]["volumes"]), name

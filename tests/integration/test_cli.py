"""The command line as a user meets it: `python -m streamrec ...` in a child process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import typer

from streamrec.cli import app
from streams.settings import Settings

ROOT = Path(__file__).parents[2]
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with no STREAMREC_* settings from the caller's environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return subprocess.run(
        [sys.executable, "-m", "streamrec", *args],
        cwd=ROOT,
        env={**clean, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_help_lists_every_command() -> None:
    assert {"broker", "index", "replay", "dataflow", "worker", "demo"} <= set(COMMANDS)
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert f" {command} " in result.stdout, command


def test_no_arguments_shows_help_and_is_a_usage_error() -> None:
    result = _run()
    assert result.returncode == 2
    assert "Usage:" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_worker_help_shows_env_vars() -> None:
    result = _run("worker", "--help")
    assert result.returncode == 0
    for env in ("STREAMREC_BROKERS", "STREAMREC_CATALOG", "STREAMREC_MMR_LAMBDA"):
        assert env in result.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = _run("worker", "--no-such-flag")
    assert result.returncode == 2
    assert "No such option: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = _run("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


def test_replay_without_brokers() -> None:
    result = _run("replay")
    assert result.returncode == 2
    assert "--brokers is required" in _one_line(result.stderr)


def test_index_on_a_folder_without_a_dataset_fails_with_one_line(tmp_path: Path) -> None:
    result = _run("index", "--data", str(tmp_path), "--device", "cpu")
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line.startswith("streamrec: error:")
    assert str(tmp_path) in line and "no dataset files" in line
    assert "Traceback" not in result.stderr


def test_dataflow_without_catalog() -> None:
    result = _run("dataflow", "--brokers", "127.0.0.1:9")
    assert result.returncode == 2
    assert "--catalog is required" in _one_line(result.stderr)


def test_dataflow_without_brokers(tmp_path: Path) -> None:
    result = _run("dataflow", STREAMREC_CATALOG=str(tmp_path))
    assert result.returncode == 2
    assert "--brokers is required" in _one_line(result.stderr)


def test_topics_create_without_brokers() -> None:
    result = _run("topics", "create")
    assert result.returncode == 2
    assert "--brokers is required" in _one_line(result.stderr)


def test_topics_create_refuses_a_replication_factor_below_one() -> None:
    result = _run("topics", "create", "--brokers", "127.0.0.1:9", "--replication-factor", "0")
    assert result.returncode == 2
    assert "--replication-factor" in result.stderr and "Traceback" not in result.stderr


def _layout(brokers: str, names: list[str]) -> dict[str, tuple[int, set[int]]]:
    """topic -> (partitions, replica counts of its partitions), from the broker's metadata."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": brokers}).list_topics(timeout=10).topics
    return {
        t: (len(md[t].partitions), {len(p.replicas) for p in md[t].partitions.values()})
        for t in names
        if t in md
    }


@pytest.mark.integration
def test_topics_create_makes_every_topic_of_the_code_once(broker) -> None:
    """Every topic of Topics(prefix).all(), with the partitions and replication asked.

    The embedded broker is one node, yet it accepts a replication factor of 3
    and reports three replicas per partition: that shows the factor reaches
    the NewTopic. A real single-broker Kafka refuses it (see the next test).
    """
    from streams.contracts import Topics

    topics = Topics(f"c{uuid.uuid4().hex[:8]}-")
    names = topics.all()
    args = ["topics", "create", "--brokers", broker.bootstrap, "--topic-prefix", topics.prefix]
    first = _run(*args, "--partitions", "3", "--replication-factor", "3")
    assert first.returncode == 0, first.stderr
    compacted = {t: ", compacted" if t in topics.compacted() else "" for t in names}
    expected = [f"created: {t} (3 partitions, replication 3{compacted[t]})" for t in names]
    assert first.stdout.splitlines() == expected
    assert _layout(broker.bootstrap, names) == {t: (3, {3}) for t in names}

    # Again, from the environment: nothing to do, one line per topic, no warning.
    again = _run(
        "topics",
        "create",
        STREAMREC_BROKERS=broker.bootstrap,
        STREAMREC_TOPIC_PREFIX=topics.prefix,
        STREAMREC_PARTITIONS="3",
        STREAMREC_TOPICS_CREATE_REPLICATION_FACTOR="3",
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"exists: {t} (3 partitions, replication 3)" for t in names
    ]
    assert "warning" not in again.stderr

    # Other partitions asked: each topic stays as it is, with a warning.
    other = _run(*args, "--partitions", "5", "--replication-factor", "3")
    assert other.returncode == 0, other.stderr
    warnings = [line for line in other.stderr.splitlines() if "warning" in line]
    assert len(warnings) == len(names)
    for t, line in zip(names, warnings, strict=True):
        assert line.startswith(f"streamrec: warning: {t} has 3 partitions, not 5"), line
    assert _layout(broker.bootstrap, names) == {t: (3, {3}) for t in names}


@pytest.mark.integration
def test_topics_create_refused_by_the_cluster_is_one_line(broker, monkeypatch) -> None:
    """What a one-broker Kafka answers to --replication-factor 3 becomes one line, exit 1.

    The embedded broker accepts any factor, so the refusal is Kafka's own
    error, raised where the real one would be (create_topics); the broker is
    real for the wait before it.
    """
    from confluent_kafka import KafkaError, KafkaException
    from typer.testing import CliRunner

    import streams.kafka

    def refuse(*args: object, **kwargs: object) -> list[str]:
        assert kwargs["replication_factor"] == 3
        reason = "Replication factor: 3 larger than available brokers: 1."
        raise KafkaException(KafkaError(KafkaError.INVALID_REPLICATION_FACTOR, reason))

    monkeypatch.setattr(streams.kafka, "create_topics", refuse)
    args = ["topics", "create", "--brokers", broker.bootstrap, "--replication-factor", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert line == (
        f"streamrec: error: cannot create the topics on {broker.bootstrap}: "
        "Replication factor: 3 larger than available brokers: 1. (INVALID_REPLICATION_FACTOR)"
    )
    assert result.stdout == ""


def test_the_bytewax_process_id_and_recovery_folder_are_found_as_bytewax_run_finds_them(
    monkeypatch,
) -> None:
    """The metrics port offset and the recovery init follow -i / -r or BYTEWAX_* alike."""
    import click

    from streamrec.cli import _bytewax_arg, _process_id

    for name in ("BYTEWAX_PROCESS_ID", "BYTEWAX_POD_NAME", "BYTEWAX_STATEFULSET_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert _process_id([]) is None
    assert _process_id(["-w", "2"]) is None
    assert _process_id(["-i", "1", "-a", "h:1;h:2"]) == 1
    assert _process_id(["--process-id=2"]) == 2
    monkeypatch.setenv("BYTEWAX_PROCESS_ID", "3")
    assert _process_id([]) == 3
    assert _process_id(["-i", "0"]) == 0, "the command line wins, as in bytewax.run"
    monkeypatch.delenv("BYTEWAX_PROCESS_ID")
    monkeypatch.setenv("BYTEWAX_STATEFULSET_NAME", "streamrec-dataflow")
    monkeypatch.setenv("BYTEWAX_POD_NAME", "streamrec-dataflow-4")
    assert _process_id([]) == 4, "the helm chart's pod NAME-N"
    with pytest.raises(click.UsageError):
        _process_id(["-i", "x"])

    def recovery(args: list[str]) -> str | None:
        return _bytewax_arg(args, "-r", "--recovery-directory", "BYTEWAX_RECOVERY_DIRECTORY")

    monkeypatch.delenv("BYTEWAX_RECOVERY_DIRECTORY", raising=False)
    assert recovery(["-s", "30"]) is None
    assert recovery(["-r", "/a", "-s", "30"]) == "/a"
    assert recovery(["--recovery-directory=/c"]) == "/c"
    monkeypatch.setenv("BYTEWAX_RECOVERY_DIRECTORY", "/b")
    assert recovery(["-s", "30"]) == "/b"
    assert recovery(["-r", "/a"]) == "/a"


def test_init_recovery_creates_the_partitions_asked_once(tmp_path: Path) -> None:
    from streamrec.cli import _init_recovery

    store = tmp_path / "recovery"
    _init_recovery(store, 3)
    parts = sorted(p.name for p in store.iterdir())
    assert parts == ["part-0.sqlite3", "part-1.sqlite3", "part-2.sqlite3"]
    _init_recovery(store, 5)  # a restart: the store is kept as it is
    assert sorted(p.name for p in store.iterdir()) == parts


# --- environment variables: one meaning each -------------------------------------

SETTING_VARS = {f"STREAMREC_{name.upper()}": name for name in Settings.model_fields}


def _options() -> list[tuple[str, object]]:
    """(command path, option) for every option of every command and sub-command."""
    found: list[tuple[str, object]] = []

    def walk(command: object, path: list[str]) -> None:
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*path, name])
        if not hasattr(command, "commands"):
            found.extend(
                (" ".join(path), p) for p in command.params if p.param_type_name == "option"
            )

    walk(typer.main.get_command(app), [])
    return found


def _envvars(option: object) -> list[str]:
    envvar = option.envvar
    return [envvar] if isinstance(envvar, str) else list(envvar or [])


def test_the_command_tree_is_walked() -> None:
    commands = {path for path, _ in _options()}
    assert {"worker", "dataflow", "finetune-seq", "experiment report", "topics create"} <= commands
    assert {"bench model", "bench pipeline", "evaluate", "replay", "demo"} <= commands


def test_no_environment_variable_has_two_meanings() -> None:
    """A variable is a setting's (every option reading it is that setting) or one option's.

    An option is the setting when it is named after the field and its default is
    the field's (or None: the setting decides); so the dataflow's --metrics-port
    (9100) and a worker's own port (9200) cannot both read STREAMREC_METRICS_PORT.
    """
    users: dict[str, list[tuple[str, object]]] = {}
    for path, option in _options():
        for var in _envvars(option):
            users.setdefault(var, []).append((path, option))
    wrong = []
    for var, options in sorted(users.items()):
        where = [f"{path} {o.opts[0]}" for path, o in options]
        field = SETTING_VARS.get(var)
        if field is None:
            if len(options) > 1:
                wrong.append(f"{var} is read by {where}, and is no setting")
            continue
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        for path, o in options:
            if o.name != field:
                wrong.append(f"{var} is the setting {field}, but {path} reads it for {o.opts[0]}")
            elif o.default is not None and str(o.default) != str(default):
                wrong.append(
                    f"{var}: {path} {o.opts[0]} defaults to {o.default!r}, "
                    f"the setting to {default!r}"
                )
    assert not wrong, "\n".join(wrong)


def test_every_variable_is_a_setting_or_named_after_its_command() -> None:
    wrong = []
    for path, option in _options():
        prefix = "STREAMREC_" + path.upper().replace("-", "_").replace(" ", "_") + "_"
        for var in _envvars(option):
            exempt = var in SETTING_VARS or not var.startswith("STREAMREC_")
            if not exempt and not var.startswith(prefix):
                wrong.append(f"{path} {option.opts[0]}: {var} (want {prefix}...)")
    assert not wrong, "\n".join(wrong)


def test_a_flag_of_one_command_cannot_take_a_setting_variable() -> None:
    from streamrec.cli import _opt

    with pytest.raises(ValueError, match="no Settings field"):
        _opt("seed", "a per-command flag without its command")
    with pytest.raises(ValueError, match="is a setting's variable"):
        _opt("lr", "STREAMREC_FUSION_LR would be the setting fusion_lr", command="fusion")


def test_the_worker_metrics_port_is_its_own_or_the_dataflow_port_plus_100(monkeypatch) -> None:
    """One export of STREAMREC_METRICS_PORT never makes the dataflow and the worker
    bind one port; 0 turns both off; the worker's own port wins."""
    from streamrec.cli import _worker_metrics_port

    monkeypatch.delenv("STREAMREC_METRICS_PORT", raising=False)
    assert _worker_metrics_port(None) == 9200
    monkeypatch.setenv("STREAMREC_METRICS_PORT", "9300")
    assert _worker_metrics_port(None) == 9400
    assert _worker_metrics_port(9555) == 9555
    assert _worker_metrics_port(0) == 0
    monkeypatch.setenv("STREAMREC_METRICS_PORT", "0")
    assert _worker_metrics_port(None) == 0


# --- bad usage: one line, exit 2, before any heavy import --------------------------

HEAVY = ("torch", "transformers", "bytewax", "faiss")


@pytest.fixture(scope="module")
def no_heavy_imports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PYTHONPATH with stand-ins for the heavy packages: importing one ends the
    process with exit 97 and says which, so a command that loads one before it
    checks its arguments fails the test instead of only being slow."""
    fake = tmp_path_factory.mktemp("heavy")
    for name in HEAVY:
        package = fake / name
        package.mkdir()
        (package / "__init__.py").write_text(
            f"import os, sys\nsys.stderr.write('imported {name}\\n')\nos._exit(97)\n"
        )
    return {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}


BAD_USAGE = [
    (["replay"], {}, "--brokers is required"),
    (["worker"], {}, "--brokers is required"),
    (["experiment", "report"], {}, "--brokers is required"),
    (["index", "--data", "/nonexistent"], {}, "'/nonexistent' does not exist"),
    (["finetune", "--out", "/tmp/unused", "--data", "/nonexistent"], {}, "'--data'"),
    (["evaluate", "--data", "/nonexistent"], {}, "'--data'"),
    (["finetune-seq", "--out", "/tmp/unused", "--until", "2011-13-45"], {}, "ISO date"),
    (["dataflow", "--brokers", "127.0.0.1:9", "--catalog", "/nonexistent"], {}, "'--catalog'"),
    (["worker", "--brokers", "127.0.0.1:9", "--artifact", "/nonexistent"], {}, "'--artifact'"),
    (["worker", "--brokers", "127.0.0.1:9", "--metrics-port", "-1"], {}, "'--metrics-port'"),
    (["evaluate", "--methods", "nope"], {}, "--methods: unknown ['nope']"),
    (["simulate", "--policy", "nope"], {}, "--policy must be one of thompson, ucb, linucb"),
    (["replay", "--brokers", "127.0.0.1:9"], {"STREAMREC_K": "0"}, "setting k (STREAMREC_K)"),
    (["replay", "--limit", "-1"], {}, "'--limit'"),
]


@pytest.mark.parametrize(
    ("args", "env", "reason"), BAD_USAGE, ids=[" ".join(a) for a, _, _ in BAD_USAGE]
)
def test_bad_usage_is_one_line_and_exit_2_before_heavy_imports(
    args: list[str], env: dict[str, str], reason: str, no_heavy_imports: dict[str, str]
) -> None:
    import time

    started = time.monotonic()
    result = _run(*args, **no_heavy_imports, **env)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert line.startswith("streamrec: error: ") and reason in line, line
    assert seconds < 15, f"{seconds:.1f} s for a usage error"


def test_the_dataflow_and_the_worker_hand_their_ports_to_what_they_start(
    monkeypatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What demo, the benchmarks and the tests set reaches the process: the dataflow's
    STREAMREC_METRICS_PORT (+ its process id) to bytewax.run, the worker's own port,
    else the setting's + 100, to the Worker."""
    import types

    saved = dict(os.environ)  # `dataflow` exports its settings before it execs
    request.addfinalizer(lambda: (os.environ.clear(), os.environ.update(saved)))

    from typer.testing import CliRunner

    import streams.kafka

    monkeypatch.setattr(streams.kafka, "wait_until_ready", lambda brokers: None)
    served: list[int] = []

    class Worker:
        def __init__(self, s: Settings) -> None:
            served.append(s.metrics_port)

        def install_signal_handlers(self) -> None:
            pass

        def run(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "model.worker", types.SimpleNamespace(Worker=Worker))
    for name in list(os.environ):
        if name.startswith(("STREAMREC_", "BYTEWAX_")):
            monkeypatch.delenv(name)
    runner = CliRunner()
    worker = ["worker", "--brokers", "127.0.0.1:9", "--catalog", str(tmp_path)]
    for env, args, port in [
        ({}, [], 9200),
        ({"STREAMREC_METRICS_PORT": "9300"}, [], 9400),
        ({"STREAMREC_METRICS_PORT": "0"}, [], 0),
        ({"STREAMREC_METRICS_PORT": "9300", "STREAMREC_WORKER_METRICS_PORT": "9555"}, [], 9555),
        ({"STREAMREC_METRICS_PORT": "9300"}, ["--metrics-port", "0"], 0),
    ]:
        result = runner.invoke(app, [*worker, *args], env=env)
        assert result.exit_code == 0, result.output
        assert served.pop() == port, (env, args)

    execs: list[dict[str, str]] = []
    monkeypatch.setattr(os, "execv", lambda *cmd: execs.append(dict(os.environ)))
    dataflow = ["dataflow", "--brokers", "127.0.0.1:9", "--catalog", str(tmp_path)]
    for env, args, port in [
        ({}, [], "9100"),
        ({"STREAMREC_METRICS_PORT": "9300"}, [], "9300"),
        ({"STREAMREC_METRICS_PORT": "9300"}, ["-i", "2", "-a", "h:1;h:2;h:3"], "9302"),
        ({"STREAMREC_METRICS_PORT": "0"}, ["-i", "1", "-a", "h:1;h:2"], "0"),
    ]:
        result = runner.invoke(app, [*dataflow, *args], env=env)
        assert result.exit_code == 0, result.output
        assert execs.pop()["STREAMREC_METRICS_PORT"] == port, (env, args)


#: Shared by flags of different meanings until each got its command's variable; the
#: README names them once, as replaced.
RETIRED = {
    "STREAMREC_OUT",
    "STREAMREC_UNTIL",
    "STREAMREC_SEED",
    "STREAMREC_MAX_MINUTES",
    "STREAMREC_MAX_STEPS",
    "STREAMREC_BASE",
    "STREAMREC_RATE",
}


def test_the_docs_name_only_variables_that_exist() -> None:
    """A variable named in the README, docs/, infra/ or a compose file is a setting's,
    a flag's, or a librdkafka setting (STREAMREC_KAFKA_<NAME>): no stale name."""
    known = set(SETTING_VARS) | {v for _, o in _options() for v in _envvars(o)}
    assert not RETIRED & known
    known |= RETIRED
    files = [ROOT / "README.md", *ROOT.glob("docker-compose*.yml")]
    files += [p for d in ("docs", "infra") for p in (ROOT / d).rglob("*") if p.is_file()]
    stale = set()
    for path in files:
        if path.suffix not in {".md", ".yml", ".yaml", ""} or path.name == "Dockerfile":
            continue
        for var in re.findall(r"\bSTREAMREC_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            if var not in known and not var.startswith("STREAMREC_KAFKA_"):
                stale.add(f"{path.relative_to(ROOT)}: {var}")
    assert not stale, sorted(stale)


def test_evaluate_writes_under_runs_unless_told_otherwise() -> None:
    """Never over the committed results in docs/eval/ by default."""
    import types

    from streamrec.evaluate import default_out

    first = default_out(types.SimpleNamespace(name="generic:shop"), "leave-last-out")
    assert first.parent == Path("runs"), first
    assert re.fullmatch(r"eval-\d{8}T\d{6}Z-generic-shop-leave-last-out", first.name), first

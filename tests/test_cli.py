"""The command line as a user meets it: `python -m streamrec ...` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streamrec.cli import app

ROOT = Path(__file__).parents[1]
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


def test_index_on_a_missing_folder_fails_with_one_line() -> None:
    result = _run("index", "--data", "/nonexistent", "--device", "cpu")
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line.startswith("streamrec: error:")
    assert "/nonexistent" in line
    assert "Traceback" not in result.stderr


def test_dataflow_without_catalog() -> None:
    result = _run("dataflow", "--brokers", "127.0.0.1:9")
    assert result.returncode == 2
    assert "--catalog is required" in _one_line(result.stderr)


def test_dataflow_without_brokers() -> None:
    result = _run("dataflow", STREAMREC_CATALOG="/tmp/catalog")
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
        STREAMREC_REPLICATION_FACTOR="3",
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

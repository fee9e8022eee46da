"""The command line as a user meets it: `python -m streamrec ...` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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

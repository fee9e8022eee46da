"""The ``streamrec`` command line: the composition root.

Each command imports its code lazily, so ``streamrec --help`` is instant and
the dataflow never loads torch. Every flag has an environment variable
(``STREAMREC_<NAME>``, shown in ``--help``). Exit codes: 0 success, 2 bad
usage, 1 failure with a one-line reason on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import click
import typer

from streams.settings import Settings

try:  # recent typer parses with its own copy of click, whose errors are not click's
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # older typer parses with click itself
    _TyperUsageError = click.UsageError

app = typer.Typer(
    name="streamrec",
    help="Streaming, real-time recommender: Kafka + Bytewax + a transformer LM ranker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _opt(name: str, help: str, **kw: object) -> typer.models.OptionInfo:
    """An option ``--name`` with env var STREAMREC_NAME shown in --help."""
    env = "STREAMREC_" + name.upper().replace("-", "_")
    return typer.Option(f"--{name}", envvar=env, show_envvar=True, help=help, **kw)


Brokers = Annotated[str, _opt("brokers", "Kafka bootstrap servers HOST:PORT,... (required)")]
TopicPrefix = Annotated[str, _opt("topic-prefix", "Prefix for every topic name")]
Data = Annotated[Path | None, _opt("data", "Dataset folder (default: shared online-retail)")]
Artifact = Annotated[
    Path | None, _opt("artifact", "Model artifact or HF model folder (default: pretrained)")
]
CacheDir = Annotated[Path, _opt("cache-dir", "Where item vectors and indexes are cached")]
CatalogDir = Annotated[Path | None, _opt("catalog", "A built catalog folder (see `index`)")]
MetricsPort = Annotated[int, _opt("metrics-port", "Prometheus /metrics port (0 = off)")]
Partitions = Annotated[int, _opt("partitions", "Partitions per topic when creating topics")]
Rate = Annotated[float, _opt("rate", "Events per second (0 = as fast as possible)")]
Device = Annotated[str, _opt("device", "auto | cpu | cuda")]


def _d(name: str) -> object:
    """The default of a Settings field: the CLI and the processes share one source."""
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory else field.default


def _settings(**overrides: object) -> Settings:
    """Settings from the environment with the given flags on top (None = not given)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as STREAMREC_* variables, to hand them to a child process."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"STREAMREC_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, dict) else str(value)
        )
    return env


@app.command()
def broker(
    partitions: Partitions = _d("partitions"),
    topic_prefix: TopicPrefix = "",
    port: Annotated[int, _opt("port", "Port on 127.0.0.1 (0 = a free one)")] = 0,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, in memory) until Ctrl-C."""
    import signal

    from streams.broker import EmbeddedBroker
    from streams.contracts import Topics

    b = EmbeddedBroker(port=port or None, partitions=partitions, topics=Topics(topic_prefix))
    b.start()
    typer.echo(f"embedded broker on {b.bootstrap} (topics: {', '.join(b.topics.all())})")
    typer.echo(f"export STREAMREC_BROKERS={b.bootstrap}")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        b.stop()


@app.command()
def index(
    data: Data = None,
    artifact: Artifact = None,
    cache_dir: CacheDir = _d("cache_dir"),
    device: Device = _d("device"),
) -> None:
    """Embed every item of a dataset and build the FAISS index (cached)."""
    from model.encoder import Encoder
    from model.index import build_catalog
    from streams.datasets import load_dataset

    s = _settings(data=data, artifact=artifact, cache_dir=cache_dir, device=device)
    dataset = load_dataset(s.data)
    path, built = build_catalog(dataset, Encoder(s.artifact, device=s.device), s.cache_dir)
    typer.echo(f"{'built' if built else 'cached'}: {path}")


@app.command()
def replay(
    brokers: Brokers = "",
    data: Data = None,
    rate: Rate = 0.0,
    limit: Annotated[int | None, _opt("limit", "Replay only the first N events")] = None,
    topic_prefix: TopicPrefix = "",
) -> None:
    """Produce a dataset's events to `events` in timestamp order."""
    from streams.datasets import load_dataset
    from streams.kafka import producer, wait_until_ready
    from streams.replay import replay as run_replay

    s = _settings(brokers=brokers, data=data, topic_prefix=topic_prefix)
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    from streams.contracts import Topics

    wait_until_ready(s.brokers)
    dataset = load_dataset(s.data, limit=limit)
    stats = run_replay(dataset, producer(s.brokers), Topics(s.topic_prefix).events, rate=rate)
    typer.echo(
        f"replayed {stats.events} events (+{stats.bad_records} bad records) in "
        f"{stats.seconds:.1f}s = {stats.rate:.0f} ev/s; skipped: {stats.skipped}"
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def dataflow(
    ctx: typer.Context,
    brokers: Brokers = "",
    catalog: CatalogDir = None,
    topic_prefix: TopicPrefix = "",
    metrics_port: MetricsPort = 9100,
) -> None:
    """Run the Bytewax dataflow (wraps `python -m bytewax.run`).

    Extra arguments go to bytewax.run: -w N, -i ID -a 'h:p;h:p', -r DIR, -s S, -b S.
    With -i, the metrics port is offset by the process id.
    """
    args = list(ctx.args)
    if "-i" in args:
        metrics_port = metrics_port + int(args[args.index("-i") + 1]) if metrics_port else 0
    s = _settings(
        brokers=brokers, catalog=catalog, topic_prefix=topic_prefix, metrics_port=metrics_port
    )
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    if s.catalog is None:
        raise click.UsageError("--catalog is required (build one with `streamrec index`)")
    os.environ.update(settings_env(s))
    cmd = [sys.executable, "-m", "bytewax.run", "streams.dataflow:build_flow()", *args]
    os.execv(sys.executable, cmd)


@app.command()
def worker(
    brokers: Brokers = "",
    catalog: CatalogDir = None,
    artifact: Artifact = None,
    topic_prefix: TopicPrefix = "",
    metrics_port: MetricsPort = 9200,
    batch_size: Annotated[int, _opt("batch-size", "Max rank requests per micro-batch")] = _d(
        "batch_size"
    ),
    max_wait_ms: Annotated[float, _opt("max-wait-ms", "Max wait to fill a batch")] = _d(
        "max_wait_ms"
    ),
    mmr_lambda: Annotated[float, _opt("mmr-lambda", "MMR relevance weight in [0, 1]")] = _d(
        "mmr_lambda"
    ),
    device: Device = _d("device"),
) -> None:
    """Run the inference worker: rank-requests -> recommendations."""
    import logging

    from model.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    s = _settings(
        brokers=brokers,
        catalog=catalog,
        artifact=artifact,
        topic_prefix=topic_prefix,
        metrics_port=metrics_port,
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        mmr_lambda=mmr_lambda,
        device=device,
    )
    w = Worker(s)
    w.install_signal_handlers()
    w.run()


@app.command()
def demo(
    events: Annotated[int, _opt("events", "How many events of the dataset to replay")] = 3000,
    rate: Annotated[float, _opt("rate", "Events per second (0 = as fast as possible)")] = 100.0,
    data: Data = None,
    partitions: Partitions = _d("partitions"),
    cache_dir: CacheDir = _d("cache_dir"),
    metrics_port: MetricsPort = _d("metrics_port"),
) -> None:
    """Everything embedded: broker, dataflow, worker, replay, live progress, report."""
    from streamrec.demo import run_demo

    s = _settings(data=data, partitions=partitions, cache_dir=cache_dir, metrics_port=metrics_port)
    run_demo(s, events=events, rate=rate)


experiment_app = typer.Typer(
    help="A/B experiments: per-variant report with confidence intervals.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


class ReportFormat(str, Enum):
    markdown = "markdown"
    json = "json"


def _weights(text: str | None) -> dict[str, float] | None:
    """``control=0.5,bandit=0.5`` -> {"control": 0.5, "bandit": 0.5}."""
    if not text:
        return None
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise click.UsageError(
                f"--weights: expected NAME=WEIGHT,... (e.g. control=0.5,bandit=0.5), got {part!r}"
            ) from None
    return weights


@experiment_app.command("report")
def experiment_report(
    brokers: Brokers = "",
    topic_prefix: TopicPrefix = "",
    experiment: Annotated[
        str | None, _opt("experiment", "Only this experiment (default: every one)")
    ] = None,
    weights: Annotated[
        str | None,
        _opt(
            "weights",
            "Expected shares for the SRM check, e.g. control=0.5,bandit=0.5 (default: equal)",
        ),
    ] = None,
    since: Annotated[
        float | None, _opt("since", "Only lists/outcomes at or after (epoch s)")
    ] = None,
    until: Annotated[float | None, _opt("until", "Only lists/outcomes before (epoch s)")] = None,
    fmt: Annotated[ReportFormat, _opt("format", "markdown | json")] = ReportFormat.markdown,
    sequential: Annotated[
        bool, _opt("sequential", "Decide on the always-valid mSPRT p-values (safe to peek)")
    ] = False,
    idle_s: Annotated[
        float, _opt("idle-s", "Stop reading after this many seconds without a new record")
    ] = 3.0,
    out: Annotated[Path | None, _opt("out", "Write the report here (default: stdout)")] = None,
) -> None:
    """Read `recommendations` and `outcomes`; report each variant against the control."""
    from streams.contracts import Topics
    from streams.kafka import wait_until_ready
    from streams.report import experiment_report_from_kafka

    s = _settings(brokers=brokers, topic_prefix=topic_prefix)
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    expected = _weights(weights)
    wait_until_ready(s.brokers)
    report = experiment_report_from_kafka(
        s.brokers,
        Topics(s.topic_prefix),
        idle_s=idle_s,
        experiment=experiment,
        weights=expected,
        since=since,
        until=until,
        sequential=sequential,
    )
    text = report.to_json() if fmt == ReportFormat.json else report.to_markdown()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
    for r in report.experiments:
        if r.srm.mismatch:
            typer.echo(f"streamrec: warning: {r.experiment}: {r.srm.message}", err=True)


def main() -> None:
    """Console-script entry: map failures to exit 1 with a one-line reason."""
    try:
        # Not standalone, typer returns an Exit's code (130 for Ctrl-C) instead of exiting.
        code = app(standalone_mode=False)
    except (click.UsageError, _TyperUsageError) as exc:
        exc.show()
        sys.exit(2)
    except (click.Abort, typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        typer.echo(f"streamrec: error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)

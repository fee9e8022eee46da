"""librdkafka's own log lines reach Python logging, not raw stderr lines."""

import logging
import time

from streams.kafka import consumer


def test_librdkafka_lines_go_through_python_logging_once_per_10_s(capfd, caplog) -> None:
    """A consumer at a dead port: no raw `%3|...|FAIL|` line on stderr; librdkafka's
    retries are records of `streams.kafka.librdkafka`, warnings, the repeats counted."""
    caplog.set_level(logging.INFO, logger="streams.kafka.librdkafka")
    c = consumer("127.0.0.1:9", "dead-port")
    c.subscribe(["t"])
    end = time.monotonic() + 2
    while time.monotonic() < end:
        c.poll(0.1)
    c.close()
    assert "|FAIL|" not in capfd.readouterr().err
    fails = [
        r
        for r in caplog.records
        if r.name == "streams.kafka.librdkafka" and "FAIL" in r.getMessage()
    ]
    assert len(fails) == 1 and fails[0].levelno == logging.WARNING

"""librdkafka settings from one place: the properties file, then STREAMREC_KAFKA_* variables."""

from __future__ import annotations

import pytest

from streams.kafka import KafkaUnavailable, consumer_config, kafka_properties, producer_config
from streams.settings import Settings


def test_the_file_then_the_variables_reach_every_client(tmp_path, monkeypatch) -> None:
    props = tmp_path / "client.properties"
    props.write_text(
        "# a SASL/SCRAM cluster\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism = SCRAM-SHA-512\n"
        "sasl.password=s3cret\n"
        "fetch.wait.max.ms=50\n"
    )
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMREC_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("STREAMREC_KAFKA_ENABLE_SSL_CERTIFICATE_VERIFICATION", "false")
    monkeypatch.setenv("STREAMREC_KAFKA_PLUGIN__LIBRARY_PATHS", "x")  # __ = an underscore
    s = Settings(kafka_properties=props)
    got = kafka_properties(s)
    assert got == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",  # the variable wins over the file
        "sasl.password": "s3cret",
        "fetch.wait.max.ms": "50",
        "ssl.ca.location": "/etc/ca.pem",
        "enable.ssl.certificate.verification": "false",
        "plugin_library.paths": "x",
    }
    # The latency defaults give way to what the operator set.
    assert consumer_config(s)["fetch.wait.max.ms"] == "50"
    assert producer_config(s)["linger.ms"] == s.linger_ms


def test_a_broken_properties_file_says_where(tmp_path) -> None:
    props = tmp_path / "bad.properties"
    props.write_text("security.protocol=SSL\nno equals sign here\n")
    with pytest.raises(KafkaUnavailable, match=r"bad.properties:2: not a key=value line"):
        kafka_properties(Settings(kafka_properties=props))
    with pytest.raises(KafkaUnavailable, match="cannot read"):
        kafka_properties(Settings(kafka_properties=tmp_path / "missing.properties"))

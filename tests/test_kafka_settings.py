"""[kafka] security settings: checked at start, and handed to every client (no broker needed;
tests/integration/test_kafka_security.py runs them against a secured one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from limaml.layered_config import ConfigError, Section, resolve
from limaml.stream.config import StreamConfig
from limaml.stream.ingest import create_stream_app
from limaml.stream.topics import KafkaConfig

from certificates import make_certificates

SECRET = "s3cret-Pa55"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("not read before a connection\n")
    return path


def sasl_ssl(ca_file: Path, **settings: str) -> KafkaConfig:
    return KafkaConfig(**{"security_protocol": "SASL_SSL", "sasl_username": "limaml", "sasl_password": SECRET,
                          "ssl_cafile": str(ca_file), **settings})


def test_plaintext_clients_get_only_the_address() -> None:
    assert KafkaConfig(bootstrap="h:1").client_config() == {"bootstrap.servers": "h:1",
                                                            "security.protocol": "PLAINTEXT"}


def test_sasl_ssl_reaches_the_confluent_clients_config(ca_file: Path) -> None:
    config = sasl_ssl(ca_file).client_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["sasl.mechanisms"], config["sasl.username"], config["sasl.password"]) == \
        ("SCRAM-SHA-512", "limaml", SECRET)
    assert config["ssl.ca.location"] == str(ca_file)


def test_the_password_comes_from_a_file_or_the_environment_and_is_never_in_the_repr(
        tmp_path: Path, ca_file: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    from_file = sasl_ssl(ca_file, sasl_password="", sasl_password_file=str(secret_file))
    assert from_file.client_config()["sasl.password"] == SECRET
    environ = {"LIMAML_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LIMAML_KAFKA_SASL_USERNAME": "u",
               "LIMAML_KAFKA_SASL_PASSWORD": SECRET, "LIMAML_KAFKA_SSL_CAFILE": str(ca_file)}
    from_env = KafkaConfig(**resolve((Section.of("kafka", KafkaConfig),), None, None, environ)["kafka"])
    assert from_env.client_config()["sasl.password"] == SECRET
    for config in (from_file, from_env, sasl_ssl(ca_file)):
        assert SECRET not in repr(config)


@pytest.mark.parametrize(("settings", "message"), [
    ({"security_protocol": "SASL"}, "security_protocol must be one of"),
    ({"security_protocol": "SASL_SSL"}, "needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p",
      "sasl_mechanism": "SCRAM-SHA-256"}, "sasl_mechanism must be SCRAM-SHA-512 or PLAIN"),
    ({"sasl_username": "u", "sasl_password": "p"}, "security_protocol is PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile /nonexistent/ca.pem does not exist"),
    ({"ssl_cafile": "/nonexistent/ca.pem"}, "use SSL or SASL_SSL"),
    ({"security_protocol": "SSL", "ssl_client_certfile": "/nonexistent/c.pem"}, "ssl_client_certfile and ssl_client_keyfile together"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p",
      "sasl_password_file": "/nonexistent/p"}, "sasl_password or sasl_password_file, not both"),
])
def test_a_wrong_combination_is_refused_at_start(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaConfig(**settings)


def test_the_faust_apps_connect_with_sasl_over_tls(tmp_path: Path) -> None:
    ca = make_certificates(tmp_path / "tls").ca
    app = create_stream_app(sasl_ssl(ca), StreamConfig(data_dir=tmp_path / "stream"))
    credentials = app.conf.broker_credentials
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (credentials.username, credentials.password) == ("limaml", SECRET)
    assert credentials.ssl_context.get_ca_certs()  # the CA file was loaded
    assert SECRET not in repr(credentials)

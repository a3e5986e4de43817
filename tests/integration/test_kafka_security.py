"""The pipeline on a secured broker (deploy/kafka.sh start --secure: SASL_SSL, SCRAM-SHA-512,
a private CA): replay -> stream -> adapt -> Feast -> score, every client authenticated over
TLS; and a client with a wrong password, or without TLS, refused with a clear error in time."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from limaml.adapters.events import events_from_log
from limaml.cli import main
from limaml.data import InteractionLog
from limaml.deploy.processes import LIMAML, ChildProcess, bootstrap_of, child_env, free_port, free_port_run, poll, run_kafka_sh
from limaml.stream.topics import KafkaConfig, KafkaConnectionError, connect_admin, ensure_topics

from .conftest import write_profiles
from .test_pipeline import DATASET, PARTITIONS, Pipeline  # noqa: F401 - DATASET names the module's log
from .test_serving_e2e import score

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REFUSAL_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaConfig]:
    """A private SASL_SSL broker, and the [kafka] settings of its client user (client.env)."""
    data_dir = tmp_path_factory.mktemp("secured-kafka")
    started = run_kafka_sh("start", "--secure", "--data-dir", str(data_dir), "--port", str(free_port_run(2)))
    if started.returncode != 0:
        raise RuntimeError(f"deploy/kafka.sh start --secure failed:\n{started.stderr.strip()}")
    try:
        settings = dict(line.split("=", 1) for line in (data_dir / "client.env").read_text().splitlines()
                        if line and not line.startswith("#"))
        kafka = KafkaConfig(**{name.removeprefix("LIMAML_KAFKA_").lower(): value
                               for name, value in settings.items()})
        assert kafka.bootstrap == bootstrap_of(started)
        yield kafka
    finally:
        run_kafka_sh("stop", "--data-dir", str(data_dir))


def security_args(kafka: KafkaConfig) -> list[str]:
    """The security options of a limaml command (the password from its file, off the command line)."""
    return ["--security-protocol", kafka.security_protocol, "--sasl-mechanism", kafka.sasl_mechanism,
            "--sasl-username", kafka.sasl_username, "--sasl-password-file", kafka.sasl_password_file,
            "--ssl-cafile", kafka.ssl_cafile]


class SecuredPipeline(Pipeline):
    def kafka_args(self) -> list[str]:
        return [*super().kafka_args(), *security_args(self.kafka)]

    def scoring_service(self) -> ChildProcess:
        port = free_port()
        worker = ChildProcess("serve", ["serve", *self.kafka_args(), "--port", str(port),
                                  "--artifacts-dir", str(self.artifacts), "--repo-dir", str(self.feast_dir)],
                        port, self.work_dir)
        self.workers.append(worker)
        return worker.start()


@pytest.fixture
def pipeline(secured_kafka: KafkaConfig, artifacts: Path, dataset: InteractionLog,
             tmp_path: Path) -> Iterator[SecuredPipeline]:
    kafka = replace(secured_kafka, topic_prefix=f"sec{uuid.uuid4().hex[:10]}", partitions=PARTITIONS)
    ensure_topics(kafka)
    write_profiles(dataset, tmp_path / "feast")
    pipeline = SecuredPipeline(kafka, artifacts, tmp_path / "feast", tmp_path)
    yield pipeline
    pipeline.stop_workers()


def test_the_pipeline_runs_on_a_secured_broker(pipeline: SecuredPipeline, dataset: InteractionLog) -> None:
    stream, adapt, serve = pipeline.stream_worker(), pipeline.adapt_worker(), pipeline.scoring_service()
    events = list(events_from_log(dataset))
    member_id = max(dataset.members.tokens, key=lambda m: sum(e.member_id == m for e in events))
    items = list(dataset.items.tokens)
    assert score(serve, member_id, items)["embedding"]["source"] == "prior"

    assert main(["replay", "--dataset", DATASET, *pipeline.kafka_args(), "--quiet"]) == 0

    poll(lambda: score(serve, member_id, items)["embedding"]["source"] == "adapted", 90,
         f"{member_id} scored with an embedding adapted from the replayed events",
         describe=lambda: f"{score(serve, member_id, items)['embedding']}; stream log:\n{stream.log_tail(10)}"
                          f"\nadapt log:\n{adapt.log_tail(10)}")


def test_a_wrong_password_is_refused_at_once(secured_kafka: KafkaConfig, tmp_path: Path) -> None:
    wrong = replace(secured_kafka, sasl_password="not-the-password", sasl_password_file="")
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="refused sasl_username 'limaml'.*invalid credentials"):
        connect_admin(wrong, timeout_s=30)
    assert time.monotonic() - started < REFUSAL_TIMEOUT_S  # not the 30 s timeout: refused is final

    # A worker with it stops at start with that message, rather than retrying for ever.
    password_file = tmp_path / "wrong-password"
    password_file.write_text("not-the-password\n")
    args = [*security_args(secured_kafka), "--sasl-password-file", str(password_file)]
    worker = subprocess.run([LIMAML, "stream", "--bootstrap", secured_kafka.bootstrap,
                             "--topic-prefix", f"sec{uuid.uuid4().hex[:10]}", "--data-dir", str(tmp_path / "s"),
                             "--web-port", str(free_port()), *args],
                            capture_output=True, text=True, timeout=120, env=child_env(), check=False)
    assert worker.returncode != 0
    assert "refused sasl_username 'limaml'" in worker.stdout + worker.stderr
    assert "not-the-password" not in worker.stdout + worker.stderr


def test_a_client_without_tls_is_refused_within_its_timeout(secured_kafka: KafkaConfig) -> None:
    plaintext = replace(secured_kafka, security_protocol="SASL_PLAINTEXT", ssl_cafile="")
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="no Kafka broker answers .* SASL_PLAINTEXT within"):
        connect_admin(plaintext, timeout_s=REFUSAL_TIMEOUT_S)
    assert time.monotonic() - started < 2 * REFUSAL_TIMEOUT_S

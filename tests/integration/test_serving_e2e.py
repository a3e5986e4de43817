"""The scoring service end to end: real broker, `limaml stream`, `limaml adapt` and
`limaml serve` as processes, a real Feast store. Events in, a member's ranking changes."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from confluent_kafka import Consumer, KafkaError, Producer

from conftest import save_tiny_model
from limaml.adapters.events import InteractionEvent, events_from_log
from limaml.artifacts import load_artifact, save_artifact
from limaml.data import InteractionLog
from limaml.deploy.processes import ChildProcess, free_port, poll
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, TopicNames, ensure_topics

from .conftest import delete_topics_with_prefix, write_profiles

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DATASET = "synthetic:n_members=30,n_items=25,mean_events=12,seed=5"
PARTITIONS = 2


@pytest.fixture
def stack(kafka_bootstrap: str, dataset: InteractionLog, tmp_path: Path) -> Iterator[dict[str, object]]:
    """A trained model, a store with the profiles, and the three services running."""
    artifacts = tmp_path / "artifacts"
    save_tiny_model(artifacts, dataset)
    feast_dir = tmp_path / "feast"
    write_profiles(dataset, feast_dir)
    kafka = KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=f"s{uuid.uuid4().hex[:10]}", partitions=PARTITIONS)
    ensure_topics(kafka)
    kafka_args = ["--bootstrap", kafka.bootstrap, "--topic-prefix", kafka.topic_prefix,
                  "--partitions", str(PARTITIONS)]
    ports = {name: free_port() for name in ("stream", "adapt", "serve")}
    workers = {
        "stream": ChildProcess("stream", ["stream", *kafka_args, "--data-dir", str(tmp_path / "stream"),
                                    "--web-port", str(ports["stream"]), "--min-new-signals", "3",
                                    "--max-staleness-s", "1", "--check-interval-s", "0.2"],
                         ports["stream"], tmp_path),
        "adapt": ChildProcess("adapt", ["adapt", *kafka_args, "--artifacts-dir", str(artifacts),
                                  "--repo-dir", str(feast_dir), "--data-dir", str(tmp_path / "adapt"),
                                  "--web-port", str(ports["adapt"]), "--device", "cpu"],
                        ports["adapt"], tmp_path),
        "serve": ChildProcess("serve", ["serve", *kafka_args, "--port", str(ports["serve"]),
                                  "--artifacts-dir", str(artifacts), "--repo-dir", str(feast_dir),
                                  "--model-poll-s", "0.2"], ports["serve"], tmp_path),
    }
    try:
        with ThreadPoolExecutor(len(workers)) as starting:  # the three start up side by side
            for started in [starting.submit(worker.start) for worker in workers.values()]:
                started.result()
        yield {"kafka": kafka, "artifacts": artifacts, **workers}
    finally:
        for worker in workers.values():
            worker.stop()
        delete_topics_with_prefix(kafka_bootstrap, kafka.topic_prefix)  # also the workers' changelogs


def score(serve: ChildProcess, member_id: str, items: list[str]) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{serve.web_port}/v1/score", method="POST",
        data=json.dumps({"member_id": member_id, "candidates": items}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def send_events(kafka: KafkaConfig, events: list[InteractionEvent]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "partitioner": PRODUCER_PARTITIONER})
    for event in events:
        producer.produce(TopicNames(kafka.topic_prefix).interactions, key=event.key(), value=event.to_json_bytes())
    assert producer.flush(30) == 0


def refresh_requests_for(kafka: KafkaConfig, member_id: str, timeout_s: float = 30) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([TopicNames(kafka.topic_prefix).refresh_requests])
    found: list[dict] = []
    try:
        def arrived() -> bool:
            for message in consumer.consume(num_messages=100, timeout=0.5):
                if message.error() is None and message.key() == member_id.encode():
                    found.append(json.loads(message.value()))
                else:
                    assert message.error() is None or message.error().code() == KafkaError._PARTITION_EOF
            return bool(found)
        poll(arrived, timeout_s, f"a refresh request for {member_id}", interval_s=0)
    finally:
        consumer.close()
    return found


def test_a_members_events_change_their_ranking_and_a_model_switch_asks_for_a_refresh(
        stack: dict, dataset: InteractionLog) -> None:
    kafka, serve, adapt = stack["kafka"], stack["serve"], stack["adapt"]
    events = list(events_from_log(dataset))
    member_id = max(dataset.members.tokens, key=lambda m: sum(e.member_id == m for e in events))
    items = list(dataset.items.tokens)
    version = load_artifact(stack["artifacts"]).version

    cold = score(serve, member_id, items)
    assert cold["embedding"]["source"] == "prior" and cold["model_version"] == version
    send_events(kafka, [e for e in events if e.member_id == member_id])

    adapted = poll(lambda: (body := score(serve, member_id, items))["embedding"]["source"] == "adapted"
                   and body, 60, f"{member_id} to be scored with an adapted embedding",
                   describe=lambda: f"{score(serve, member_id, items)['embedding']}; adapt log:\n"
                                    f"{adapt.log_tail(10)}")
    assert adapted["embedding"]["model_version"] == adapted["model_version"] == version
    assert 0 <= adapted["embedding"]["age_s"] < 60
    cold_scores = {e["item_id"]: e["score"] for e in cold["ranked"]}
    adapted_scores = {e["item_id"]: e["score"] for e in adapted["ranked"]}
    assert max(abs(adapted_scores[i] - cold_scores[i]) for i in items) > 1e-4

    # A new ACTIVE version: the stored embedding is of the old one, so the service serves the
    # prior and asks the stream workers, through Kafka, to re-adapt the member. The adaptation
    # worker is stopped first, so nothing can re-adapt the member before the service looks.
    adapt.kill()
    retrained = load_artifact(stack["artifacts"])
    with torch.no_grad():
        retrained.model.global_block.item_vector.weight.mul_(2.0)
    new_version = save_artifact(stack["artifacts"], retrained.model, retrained.schema, {}, {})
    switched = poll(lambda: (body := score(serve, member_id, items))["model_version"] == new_version
                    and body, 30, f"the service to serve {new_version}")
    assert switched["embedding"] == {"source": "prior", "model_version": new_version, "age_s": None,
                                     "seq": None, "ignored_model_version": version}
    requests = refresh_requests_for(kafka, member_id)
    assert requests[0]["reason"] == "version" and requests[0]["model_version"] == new_version
    assert serve.metric("limaml_serve_refresh_requests_total") == 1

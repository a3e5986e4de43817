"""`limaml forget` end to end: real broker, stream and adaptation workers, Feast on SQLite and
on Redis. After an erasure nothing of the member is left in any store, scoring serves the
prior, and an adaptation requested before the erasure does not bring the member back."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from limaml.adapters.events import events_from_log
from limaml.cli import main
from limaml.data import InteractionLog
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.embeddings import EmbeddingReader
from limaml.featurestore.profiles import read_member_profiles, write_member_profiles
from limaml.featurestore.store import open_feature_store
from limaml.deploy.processes import ChildProcess, poll
from limaml.serving.app import create_app
from limaml.serving.config import ServeConfig
from limaml.stream.topics import KafkaConfig, ensure_topics
from test_featurestore import redis_url  # noqa: F401  (the fixture)

from .conftest import delete_topics_with_prefix, records_in_topic
from .test_pipeline import DATASET, PARTITIONS, Pipeline, events_by_member  # noqa: F401 - DATASET names the module's log

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(params=["sqlite", "redis"])
def online_store(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite"
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def pipeline(kafka_bootstrap: str, artifacts: Path, dataset: InteractionLog, online_store: str,  # noqa: F811
             tmp_path: Path) -> Iterator[Pipeline]:
    kafka = KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=f"e{uuid.uuid4().hex[:10]}",
                        partitions=PARTITIONS)
    ensure_topics(kafka)
    pipeline = Pipeline(kafka, artifacts, tmp_path / "feast", tmp_path, online_store=online_store)
    write_member_profiles(open_feature_store(feast_config(pipeline, dataset)), dataset)
    yield pipeline
    pipeline.stop_workers()
    delete_topics_with_prefix(kafka_bootstrap, kafka.topic_prefix)


def feast_config(pipeline: Pipeline, dataset: InteractionLog) -> FeatureStoreConfig:
    return FeatureStoreConfig(repo_dir=pipeline.feast_dir, online_store=pipeline.online_store,
                              profile_fields=",".join(sorted(dataset.member_features)))


def forget(pipeline: Pipeline, *members: str) -> int:
    return main(["forget", *members, *pipeline.kafka_args(), "--timeout-s", "60"])


def latest_values(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """key -> the value of its latest record in `topic` (None: a tombstone), read to the end."""
    return {message.key(): message.value() for message in records_in_topic(bootstrap, topic, PARTITIONS, 30)}


def adapted_at(reader: EmbeddingReader, member: str, seq: int) -> bool:
    embedding = reader.read([member])[member]
    return embedding is not None and embedding.seq == seq


def score_source(client: TestClient, member: str, item_id: str) -> str:
    reply = client.post("/v1/score", json={"member_id": member, "candidates": [item_id]})
    assert reply.status_code == 200, reply.text
    return reply.json()["embedding"]["source"]


def test_a_forgotten_member_is_gone_from_every_store_and_in_flight_adaptation_does_not_bring_it_back(
        pipeline: Pipeline, dataset: InteractionLog, capsys: pytest.CaptureFixture[str]) -> None:
    events = events_by_member(list(events_from_log(dataset)))
    gone, in_flight, kept = list(events)[:3]
    store = open_feature_store(feast_config(pipeline, dataset))
    reader = EmbeddingReader(store)
    stream, adapt = pipeline.stream_worker(), pipeline.adapt_worker()
    pipeline.send_events(events[gone] + events[kept])
    poll(lambda: adapted_at(reader, gone, len(events[gone])) and adapted_at(reader, kept, len(events[kept])),
         90, f"{gone} and {kept} adapted on all their events")
    assert read_member_profiles(store, [gone])[gone] is not None

    assert forget(pipeline, gone) == 0
    assert capsys.readouterr().out.startswith(f"{gone} erased in ")
    assert_erased(pipeline, dataset, stream, gone, kept)

    # An adaptation already requested when the erasure comes: the request waits in
    # adapt-requests (no adaptation worker runs) when the member is forgotten.
    adapt.stop()
    pipeline.send_events(events[in_flight])
    poll(lambda: (stream.get_json(f"/members/{in_flight}/") or {}).get("requested_seq", -1) >= 0, 60,
         f"an adapt request for {in_flight}")
    codes: list[int] = []
    forgetting = threading.Thread(target=lambda: codes.append(forget(pipeline, in_flight)))
    forgetting.start()
    pipeline.adapt_worker()
    forgetting.join(timeout=90)
    assert codes == [0]
    # Everything requested before is served once a later request of another member is.
    newer = [replace(e, event_id=f"{e.event_id}:again", ts=e.ts + 1) for e in events[kept][-3:]]
    pipeline.send_events(newer)
    poll(lambda: adapted_at(reader, kept, len(events[kept]) + len(newer)), 60, f"{kept}'s newer embedding")
    assert_erased(pipeline, dataset, stream, in_flight, kept)

    # A new event starts the forgotten member afresh.
    pipeline.send_events(events[gone][:1])
    poll(lambda: (stream.get_json(f"/members/{gone}/") or {}).get("seq") == 1, 60,
         f"{gone} starting again from one event")


def assert_erased(pipeline: Pipeline, dataset: InteractionLog, stream: ChildProcess, member: str, kept: str) -> None:
    """Nothing of `member` in the support sets, their changelog, the compacted embeddings or
    the online store, and the service scores it with the prior; `kept` is untouched."""
    assert stream.get(f"/members/{member}/") == b"null"
    assert stream.get_json(f"/members/{kept}/") is not None
    bootstrap = pipeline.kafka.bootstrap
    changelog = {json.loads(key): value for key, value in latest_values(  # Faust's table keys are JSON
        bootstrap, f"{pipeline.kafka.faust_app_id('stream')}-support-sets-changelog").items()}
    embeddings = {key.decode(): value for key, value in latest_values(bootstrap, pipeline.topics.meta_embeddings).items()}
    assert member in changelog and changelog[member] is None
    assert member in embeddings and embeddings[member] is None
    assert changelog[kept] is not None and embeddings[kept] is not None
    feast = feast_config(pipeline, dataset)
    store = open_feature_store(feast)
    stored = EmbeddingReader(store).read([member, kept])
    assert stored[member] is None and stored[kept] is not None
    profiles = read_member_profiles(store, [member, kept])
    assert profiles[member] is None and profiles[kept] is not None
    with TestClient(create_app(ServeConfig(artifacts_dir=pipeline.artifacts), feast, pipeline.kafka)) as client:
        item = dataset.items.tokens[0]
        assert score_source(client, member, item) == "prior"
        assert score_source(client, kept, item) == "adapted"


def test_forget_exits_non_zero_for_a_member_not_confirmed_in_time(
        kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No worker runs: the request is sent, no answer comes."""
    prefix = f"e{uuid.uuid4().hex[:10]}"
    args = ["--bootstrap", kafka_bootstrap, "--topic-prefix", prefix, "--partitions", str(PARTITIONS)]
    try:
        assert main(["forget", "m1", "--timeout-s", "1", *args]) == 1
    finally:
        delete_topics_with_prefix(kafka_bootstrap, prefix)
    assert capsys.readouterr().out == "m1 NOT confirmed within 1 s\n"

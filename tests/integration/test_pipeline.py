"""The real-time pipeline end to end: real broker, real Faust workers, real Feast store."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Self

import numpy as np
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from rocksdict import Options, Rdict

from conftest import save_tiny_model
from limaml.adaptation import AdaptationEngine
from limaml.adapters.events import InteractionEvent, events_from_log
from limaml.adapters.replay import produce_when_queued
from limaml.artifacts import load_artifact
from limaml.data import InteractionLog
from limaml.encoding import FeatureEncoder
from limaml.deploy.telemetry import parse_metrics, total
from limaml.featurestore.embeddings import EmbeddingReader
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import open_feature_store
from limaml.stream.refresh import RefreshRequester
from limaml.stream.records import AdaptRequest
from limaml.stream.source_offsets import encode_offset, is_member_key, offset_key
from limaml.stream.table_state import IN_USE_MARKER
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, TopicNames, ensure_topics, member_partition

from .conftest import delete_topics_with_prefix, read_dead_letters, records_in_topic, write_profiles
from limaml.deploy.processes import ChildProcess, free_port, poll

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DATASET = "synthetic:n_members=30,n_items=25,mean_events=12,seed=5"
PARTITIONS = 2
SUPPORT_SIZE = 8
MIN_NEW_SIGNALS = 3


@dataclass
class Pipeline:
    kafka: KafkaConfig
    artifacts: Path
    feast_dir: Path
    work_dir: Path
    workers: list[ChildProcess] = field(default_factory=list)
    online_store: str = "sqlite"  # the adaptation workers' [feast] online_store

    @classmethod
    @contextmanager
    def running(cls, kafka: KafkaConfig, artifacts: Path, dataset: InteractionLog, work_dir: Path) -> Iterator[Self]:
        """A pipeline with its topics created and the dataset's profiles in its Feast repo;
        afterwards its workers are stopped and its topics, the workers' changelogs too, deleted."""
        ensure_topics(kafka)
        write_profiles(dataset, work_dir / "feast")
        pipeline = cls(kafka, artifacts, work_dir / "feast", work_dir)
        try:
            yield pipeline
        finally:
            pipeline.stop_workers()
            delete_topics_with_prefix(kafka.bootstrap, kafka.topic_prefix)

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.kafka.topic_prefix)

    def kafka_args(self) -> list[str]:
        return ["--bootstrap", self.kafka.bootstrap, "--topic-prefix", self.kafka.topic_prefix,
                "--partitions", str(self.kafka.partitions)]

    def stream_worker(self, worker_id: str = "0", max_staleness_s: float = 1.0) -> ChildProcess:
        port = free_port()
        worker = ChildProcess(f"stream-{worker_id}", [
            "stream", *self.kafka_args(), "--worker-id", worker_id,
            "--data-dir", str(self.work_dir / "stream"), "--web-port", str(port),
            "--support-size", str(SUPPORT_SIZE), "--min-new-signals", str(MIN_NEW_SIGNALS),
            "--max-staleness-s", str(max_staleness_s), "--check-interval-s", "0.2"], port, self.work_dir)
        self.workers.append(worker)
        return worker.start()

    def adapt_worker(self) -> ChildProcess:
        port = free_port()
        worker = ChildProcess("adapt", [
            "adapt", *self.kafka_args(), "--artifacts-dir", str(self.artifacts),
            "--repo-dir", str(self.feast_dir), "--online-store", self.online_store,
            "--data-dir", str(self.work_dir / "adapt"),
            "--web-port", str(port), "--device", "cpu"], port, self.work_dir)
        self.workers.append(worker)
        return worker.start()

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def produce(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap,
                             "partitioner": PRODUCER_PARTITIONER})
        for key, value in messages:
            produce_when_queued(producer, topic, key=key, value=value)
        assert producer.flush(30) == 0

    def send_events(self, events: list[InteractionEvent]) -> None:
        self.produce(self.topics.interactions, [(e.key(), e.to_json_bytes()) for e in events])


@pytest.fixture
def pipeline(kafka_bootstrap: str, artifacts: Path, dataset: InteractionLog,
             tmp_path: Path) -> Iterator[Pipeline]:
    kafka = KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=f"p{uuid.uuid4().hex[:10]}",
                        partitions=PARTITIONS)
    with Pipeline.running(kafka, artifacts, dataset, tmp_path) as pipeline:
        yield pipeline


def events_by_member(events: list[InteractionEvent]) -> dict[str, list[InteractionEvent]]:
    grouped: dict[str, list[InteractionEvent]] = defaultdict(list)
    for event in events:
        grouped[event.member_id].append(event)
    return grouped


def support_sets_match(worker: ChildProcess, expected: dict[str, list[InteractionEvent]],
                       behind: dict[str, object]) -> bool:
    """True once every member's table row holds exactly its events; fails on over-counting.
    `behind` collects the members still short of their events."""
    behind.clear()
    for member_id, events in expected.items():
        state = worker.get_json(f"/members/{member_id}/")
        if state is None or state["seq"] < len(events):
            behind[member_id] = (None if state is None else state["seq"], len(events))
            continue
        assert state["seq"] == len(events), f"{member_id}: counted {state['seq']} of {len(events)}"
        assert state["item_ids"] == [e.item_id for e in events[-SUPPORT_SIZE:]]
    return not behind


def expected_embeddings(artifacts: Path, dataset: InteractionLog,
                        expected: dict[str, list[InteractionEvent]]) -> dict[str, np.ndarray]:
    """What adapting each member on its last K events gives, computed offline."""
    artifact = load_artifact(artifacts)
    encoder = FeatureEncoder(artifact.schema)
    engine = AdaptationEngine(artifact.model, "cpu")
    names = sorted(dataset.member_features)
    supports = []
    for member_id, events in expected.items():
        member = dataset.members.index(member_id)
        profile = {name: dataset.member_feature_vocabs[name].token(
            int(dataset.member_features[name][member])) or "" for name in names}
        recent = events[-SUPPORT_SIZE:]
        supports.append(encoder.support(profile, [e.item_id for e in recent], [e.label for e in recent],
                                        [{k: float(v) for k, v in e.context.items()} for e in recent]))
    return dict(zip(expected, engine.adapt_members(supports)))


def test_events_in_embeddings_out_and_stale_requests_never_regress_them(
        pipeline: Pipeline, dataset: InteractionLog, artifacts: Path) -> None:
    events = list(events_from_log(dataset))
    expected = events_by_member(events)
    reader = EmbeddingReader(open_feature_store(FeatureStoreConfig(
        repo_dir=pipeline.feast_dir, profile_fields=",".join(sorted(dataset.member_features)))))
    member = next(iter(expected))
    assert reader.read([member])[member] is None  # cold until its first adaptation

    stream, adapt = pipeline.stream_worker(), pipeline.adapt_worker()
    pipeline.send_events(events)

    def all_adapted() -> dict | None:
        stored = reader.read(list(expected))
        done = all(s is not None and s.seq == len(expected[m]) for m, s in stored.items())
        return stored if done else None

    stored = poll(all_adapted, 120, "every member's embedding at its final seq")
    offline = expected_embeddings(artifacts, dataset, expected)
    for member_id, embedding in stored.items():
        np.testing.assert_allclose(embedding.vector, offline[member_id], rtol=1e-4, atol=1e-5)
        assert embedding.support_size == min(SUPPORT_SIZE, len(expected[member_id]))
        assert embedding.newest_event_ts == expected[member_id][-1].ts
    assert adapt.metric("limaml_freshness_seconds_count") >= len(expected)

    # An old request (a redelivery, or one arriving late) must not replace the newer embedding.
    first = expected[member][0]
    request = AdaptRequest(member_id=member, seq=1, item_ids=[first.item_id], labels=[first.label],
                           contexts=[{}], newest_event_ts=first.ts, newest_produced_at=0.0,
                           reason="signals", requested_at=0.0)
    skipped_before = adapt.metric("limaml_adapt_skipped_stale_total")
    pipeline.produce(pipeline.topics.adapt_requests, [(member.encode(), request.dumps())])
    poll(lambda: adapt.metric("limaml_adapt_skipped_stale_total") > skipped_before, 60,
         "the adaptation worker to skip the stale request")
    after = reader.read([member])[member]
    assert after is not None and after.seq == len(expected[member])
    np.testing.assert_array_equal(after.vector, stored[member].vector)
    assert stream.metric("limaml_stream_events_total") == len(events)

    # A new ACTIVE version is picked up without a restart: the next adaptation uses it.
    version = save_tiny_model(artifacts, dataset, seed=1)
    poll(lambda: (adapt.get_json("/model") or {}).get("version") == version, 60,
         "the adaptation worker to switch to the new ACTIVE version")
    # The switch backfills: every member is re-adapted under the new version, no new event needed.
    poll(lambda: all(e is not None and e.model_version == version and e.seq == len(expected[m])
                     for m, e in reader.read(list(expected)).items()), 90,
         f"every member's embedding re-made by {version}")
    assert requests_sent(stream, "backfill") >= len(expected)

    # A reader that meets an embedding of another version asks for a re-adaptation (once the
    # backfill's request is settled: one outstanding request per member at most).
    poll(lambda: (stream.get_json(f"/members/{member}/") or {}).get("requested_seq") == -1, 60,
         f"{member}'s backfill request to be answered")
    before = requests_sent(stream, "version")
    requester = RefreshRequester(pipeline.kafka)
    requester.request(member, "version", version)
    requester.close()
    poll(lambda: requests_sent(stream, "version") > before, 60, "the refresh request to be served",
         describe=lambda: f"support set {stream.get_json(f'/members/{member}/')}, stream log:\n"
                          f"{stream.log_tail(15)}")
    newer = [replace(e, event_id=f"{e.event_id}:again", ts=e.ts + 1) for e in expected[member][-3:]]
    pipeline.send_events(newer)
    total = len(expected[member]) + len(newer)
    poll(lambda: (e := reader.read([member])[member]) is not None
         and (e.model_version, e.seq) == (version, total), 60,
         f"{member}'s embedding of its new events from the new version {version}",
         describe=lambda: f"{reader.read([member])[member]}, support set "
                          f"{stream.get_json(f'/members/{member}/')}, adapt log:\n"
                          f"{adapt.log_tail(15)}")


def requests_sent(stream: ChildProcess, reason: str) -> float:
    """The stream worker's adapt requests sent for `reason`."""
    scrape = parse_metrics((stream.get("/metrics") or b"").decode())
    return total(scrape, "limaml_stream_adapt_requests_total", reason=reason)


def test_support_sets_survive_kill_9_without_loss_or_double_counting(
        pipeline: Pipeline, dataset: InteractionLog) -> None:
    events = list(events_from_log(dataset))
    half = len(events) // 2
    worker = pipeline.stream_worker("0")
    pipeline.send_events(events[:half])
    poll(lambda: worker.metric("limaml_stream_events_total") >= half // 2, 60,
         "the worker to apply events before it is killed")
    worker.kill()
    pipeline.send_events(events[half:])
    # A new state directory: the restarted worker must rebuild its tables from the changelog.
    restarted = pipeline.stream_worker("1")
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(restarted, events_by_member(events), behind), 120,
         "the recovered support sets to hold every event once",
         describe=lambda: f"(seq, expected) of members behind: {behind}; "
                          f"worker log:\n{restarted.log_tail(20)}")


def test_a_worker_restarted_after_kill_9_restores_its_tables_from_the_changelog_not_its_local_rows(
        pipeline: Pipeline, dataset: InteractionLog) -> None:
    """A kill -9 can leave local table rows whose changelog records never went out; the worker
    restarted on the same data directory must not keep them (`limaml.stream.table_state`).
    Here those rows are every partition's resume offset, moved past events that no support set
    holds: kept, they would make the worker skip the second half."""
    events = list(events_from_log(dataset))
    half = len(events) // 2
    worker = pipeline.stream_worker("0")
    pipeline.send_events(events[:half])
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(worker, events_by_member(events[:half]), behind), 60,
         "the first half applied", describe=lambda: f"(seq, expected) of members behind: {behind}")
    worker.kill()
    pipeline.send_events(events[half:])

    ends = end_offsets(pipeline.kafka.bootstrap, pipeline.topics.interactions)
    moved = 0
    for partition_db in (pipeline.work_dir / "stream" / "0").rglob("*support-sets-*.db"):
        local = Rdict(str(partition_db), Options(raw_mode=True))
        try:
            for partition, end in ends.items():
                key = json.dumps(offset_key(partition)).encode()  # the table's keys are JSON
                if local.get(key) is not None:
                    local[key] = encode_offset(end)
                    moved += 1
        finally:
            local.close()
    assert moved == PARTITIONS, f"found {moved} of {PARTITIONS} resume offsets in the local tables"

    restarted = pipeline.stream_worker("0")  # the same data directory
    poll(lambda: support_sets_match(restarted, events_by_member(events), behind), 120,
         "the restarted worker's support sets to hold every event once",
         describe=lambda: f"(seq, expected) of members behind: {behind}; "
                          f"worker log:\n{restarted.log_tail(20)}")
    restarted.stop()  # SIGTERM: a clean stop, after which the next worker keeps the tables
    assert restarted.process is not None and restarted.process.returncode == 0, restarted.log_tail(20)
    assert not (pipeline.work_dir / "stream" / "0" / IN_USE_MARKER).exists()


def test_an_event_written_twice_to_the_topic_is_counted_once(pipeline: Pipeline, dataset: InteractionLog) -> None:
    """A producer's retry can write a record twice, at two offsets (librdkafka#4953): the
    copy has the event's id, and the worker counts the event once."""
    events = list(events_from_log(dataset))
    worker = pipeline.stream_worker("0")
    pipeline.send_events(events[:20])
    pipeline.send_events(events[:20] + events[20:])  # copies of the first 20, then the rest
    poll(lambda: worker.metric("limaml_stream_events_total") == len(events), 60, "every event applied",
         describe=lambda: f"{worker.metric('limaml_stream_events_total')} applied")
    poll(lambda: worker.metric("limaml_stream_duplicate_events_total") == 20, 60, "the copies skipped",
         describe=lambda: f"{worker.metric('limaml_stream_duplicate_events_total')} skipped")
    behind: dict[str, object] = {}
    assert support_sets_match(worker, events_by_member(events), behind), behind
    assert worker.metric("limaml_stream_events_total") == len(events)


def test_a_worker_resumes_where_its_restored_table_ends_whatever_the_group_committed(
        pipeline: Pipeline, dataset: InteractionLog) -> None:
    """A committed offset ahead of the table (a commit that reached the broker before the
    changelog writes of its events) loses no event; one behind it (the changelog writes went
    out, the commit did not) doubles none and brings no forgotten member's events back."""
    events = list(events_from_log(dataset))
    half = len(events) // 2
    first_half = events_by_member(events[:half])
    worker = pipeline.stream_worker("0")
    pipeline.send_events(events[:half])
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(worker, first_half, behind), 60, "the first half applied",
         describe=lambda: f"(seq, expected) of members behind: {behind}")
    forgotten = next(member for member in first_half if len(first_half[member]) >= 2)
    pipeline.produce(pipeline.topics.erasure_requests, [(forgotten.encode(), json.dumps(
        {"member_id": forgotten, "request_id": "r1", "requested_at": time.time()}).encode())])
    poll(lambda: worker.get(f"/members/{forgotten}/") == b"null", 60, f"{forgotten} forgotten")
    worker.stop()
    pipeline.send_events(events[half:])  # not applied by anyone yet

    # The forgotten member's partition is committed back to its start, the other one to its
    # end, past the second half's events.
    rewound = member_partition(forgotten, PARTITIONS)
    ends = end_offsets(pipeline.kafka.bootstrap, pipeline.topics.interactions)
    commit_group_offsets(pipeline.kafka, pipeline.topics.interactions,
                         {p: 0 if p == rewound else ends[p] for p in range(PARTITIONS)})

    restarted = pipeline.stream_worker("1")  # a new state directory: restored from the changelog
    expected = events_by_member(events)
    expected[forgotten] = [e for e in events[half:] if e.member_id == forgotten]
    poll(lambda: support_sets_match(restarted, {m: e for m, e in expected.items() if e}, behind), 120,
         "every member's support set to hold each of its events once",
         # The whole start (group join, assignment, table recovery): a failure in CI of 066c159
         # showed only the last 20 lines, the worker's shutdown, and was not reproduced since.
         describe=lambda: f"(seq, expected) of members behind: {behind}; worker log:\n{restarted.log_tail(400)}")
    if not expected[forgotten]:
        assert restarted.get(f"/members/{forgotten}/") == b"null"


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(PARTITIONS)}
    finally:
        consumer.close()


def commit_group_offsets(kafka: KafkaConfig, topic: str, offsets: dict[int, int]) -> None:
    """Set the stream workers' committed offsets of `topic` (once the group is empty)."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    request = ConsumerGroupTopicPartitions(kafka.faust_app_id("stream"), [
        TopicPartition(topic, partition, offset) for partition, offset in offsets.items()])

    def committed() -> bool:
        try:
            admin.alter_consumer_group_offsets([request])[request.group_id].result(timeout=30)
        except KafkaException:  # the group still has a member: a stopped worker's session ends
            return False
        return True

    poll(committed, 60, "the stream group's offsets altered")


def test_a_restarted_worker_still_sends_the_stale_requests_it_owes(
        pipeline: Pipeline, dataset: InteractionLog) -> None:
    """Fewer than M new signals come due by staleness alone: the timer must find them in the
    support sets a new worker recovers, though no further event arrives."""
    events = events_by_member(list(events_from_log(dataset)))
    member = next(iter(events))
    waiting = events[member][:MIN_NEW_SIGNALS - 1]
    worker = pipeline.stream_worker("0", max_staleness_s=600)  # never stale before the kill
    pipeline.send_events(waiting)
    poll(lambda: (worker.get_json(f"/members/{member}/") or {}).get("seq") == len(waiting), 60,
         f"{member}'s events to be applied")
    assert requests_sent(worker, "stale") == 0
    worker.kill()
    restarted = pipeline.stream_worker("1", max_staleness_s=1)
    poll(lambda: requests_sent(restarted, "stale") == 1, 60, "the owed stale request",
         describe=lambda: f"support set {restarted.get_json(f'/members/{member}/')}, log:\n"
                          f"{restarted.log_tail(15)}")
    # The metric counts the request as it is sent, the row records it right after: poll the row.
    def request_recorded() -> bool:
        state = restarted.get_json(f"/members/{member}/") or {}
        return (state.get("requested_seq"), state.get("pending")) == (len(waiting), 0)

    poll(request_recorded, 60, f"{member}'s support set to record the stale request",
         describe=lambda: f"support set {restarted.get_json(f'/members/{member}/')}, log:\n"
                          f"{restarted.log_tail(15)}")
    assert requests_sent(restarted, "stale") == 1  # recorded once, not sent again


def test_bad_events_go_to_the_dead_letter_topic_and_good_ones_still_flow(
        pipeline: Pipeline, dataset: InteractionLog) -> None:
    good = list(events_from_log(dataset, stop=40))
    valid = json.loads(good[0].to_json_bytes())
    bad: list[tuple[bytes | None, bytes]] = [
        (b"m", b"{not json"),
        (b"m", json.dumps({k: v for k, v in valid.items() if k != "label"}).encode()),
        (b"m", json.dumps(valid | {"label": 2}).encode()),
        (b"m", json.dumps(valid | {"ts": "yesterday"}).encode()),
        (b"m", json.dumps(valid | {"context": {"slot": float("nan")}}).encode()),
        (b"m", b"{" + b" " * 70_000 + b"}"),
        (b"someone-else", good[0].to_json_bytes()),  # key differs from member_id
    ]
    worker = pipeline.stream_worker()
    pipeline.produce(pipeline.topics.interactions, bad)
    pipeline.send_events(good)
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(worker, events_by_member(good), behind), 60,
         "the good events after the bad ones to be applied", describe=lambda: str(behind))
    worker.ensure_alive()

    letters = read_dead_letters(pipeline.kafka.bootstrap, pipeline.topics.dead_letters, len(bad))
    assert sorted(letter.raw for letter in letters) == sorted(value for _, value in bad)
    assert all(letter.reason and letter.topic == pipeline.topics.interactions for letter in letters)
    assert worker.metric("limaml_stream_dead_letters_total") == len(bad)


def test_each_members_batched_changelog_records_land_in_its_own_partition(
        pipeline: Pipeline, dataset: InteractionLog) -> None:
    """A batch mixes partitions; each member's table write (RocksDB database and changelog
    record) must go to the member's partition, or a rebalance restores it elsewhere. The events
    wait in the topic before the worker starts, so it takes them in a few large batches: one
    changelog record per member per batch, far fewer than one per event."""
    events = list(events_from_log(dataset))
    pipeline.send_events(events)
    worker = pipeline.stream_worker(max_staleness_s=600)
    behind: dict[str, object] = {}
    poll(lambda: support_sets_match(worker, events_by_member(events), behind), 60,
         "every event applied", describe=lambda: str(behind))
    changelog = f"{pipeline.kafka.faust_app_id('stream')}-support-sets-changelog"
    written = records_in_topic(pipeline.kafka.bootstrap, changelog, PARTITIONS)
    records = [r for r in written if is_member_key(json.loads(r.key()))]
    assert {json.loads(r.key()) for r in records} == set(events_by_member(events))
    for record in records:
        member = json.loads(record.key())
        assert record.partition() == member_partition(member, PARTITIONS), member
    assert len(records) <= len(events) // 2, f"{len(records)} changelog records for {len(events)} events"
    resume_offsets = [r for r in written if not is_member_key(json.loads(r.key()))]  # once per partition per batch
    assert len(resume_offsets) <= len(records), f"{len(resume_offsets)} resume offsets for {len(records)} rows"

"""End-to-end freshness and stream-worker throughput on this machine.

A real broker (deploy/kafka.sh, or LIMAML_KAFKA_BOOTSTRAP), one stream worker and one adaptation
worker (`limaml stream`, `limaml adapt`) with the SQLite Feast store. Three phases:

1. raw: a bare confluent-kafka consumer reads a backlog of N events (the baseline);
2. throughput: a stream worker starts on the same backlog; events/s from its first to its
   last applied event, and the ratio to the raw consume rate;
3. freshness: both workers run while the log is replayed at a sustained rate (synthetic)
   and time-compressed (MovieLens 100K, when found); freshness of each embedding is the
   Kafka timestamp of its `meta-embeddings` record (sent once it is readable in the online
   store) minus the Kafka timestamp of the newest event it was adapted on. The first 2,000
   events of a phase are a warm-up left out of the figures: freshly started workers join
   their consumer groups and recover their tables while it plays.

A broker the benchmark starts itself first runs phase 3 for `--broker-warmup-s` on a
throwaway prefix (printed, not counted; at most 1,000 events/s): a freshly started broker's
JVM spends about half its CPU in its JIT compiler threads for its first minutes (C1 and C2,
measured per thread on this machine kind), and on 2 cores that starves the workers. A broker
in production has long done that. A broker given in LIMAML_KAFKA_BOOTSTRAP is taken as it is
(no warm-up unless asked).

The last line is `freshness_p99_s=<x> events_per_s=<y> ratio_vs_raw=<z>`.

    python bench/freshness.py --quick       # about 3 min on 2 cores (each run starts and warms its own broker)
    python bench/freshness.py --rate 5000 --members 5000 --max-staleness-s 0.5
    python bench/freshness.py --rate 1000 --duration 120 --movielens ../shared/datasets/ml-100k
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import psutil
from confluent_kafka import Consumer, KafkaError, KafkaException

from limaml.adapters.registry import load_dataset
from limaml.adapters.replay import ReplayConfig, run_replay
from limaml.artifacts import FeatureSchema, save_artifact
from limaml.model_config import default_tunables
from limaml.data import InteractionLog
from limaml.deploy.telemetry import Buckets, buckets, parse_metrics, quantile, subtract, total
from limaml.featurestore.profiles import write_member_profiles
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import open_feature_store
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, ChildProcess, free_port, local_kafka, poll, unwind_on_sigterm
from limaml.featurestore.embeddings import MemberEmbedding
from limaml.stream.metrics import ADAPT_BATCH_SIZE, ADAPT_EMBEDDINGS, ADAPT_SKIPPED_STALE, STREAM_ADAPT_REQUESTS
from limaml.stream.topics import KafkaConfig, TopicNames
from limaml.train import TrainConfig, meta_train

PARTITIONS = 4


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 120) -> float:
    """Seconds a bare consumer takes to read `expected` messages from the start of `topic`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    count, started, deadline = 0, None, time.monotonic() + timeout_s
    try:
        while count < expected and time.monotonic() < deadline:
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            if messages and started is None:
                started = time.monotonic()
            count += sum(1 for m in messages if m.error() is None)
    finally:
        consumer.close()
    if count < expected or started is None:
        raise RuntimeError(f"read {count} of {expected} messages from {topic}")
    return time.monotonic() - started


def process_cpu_s(worker: ChildProcess) -> float:
    """User and system CPU seconds a worker's process has used so far."""
    assert worker.process is not None
    times = psutil.Process(worker.process.pid).cpu_times()
    return times.user + times.system


class EmbeddingWatcher(threading.Thread):
    """(write time, freshness) of every meta-embeddings record, both in epoch seconds: its
    Kafka timestamp, and that minus its newest event's (`bench/chaos.py` uses it too)."""

    def __init__(self, bootstrap: str, topic: str, offset_reset: str = "earliest") -> None:
        super().__init__(name="embedding-watcher", daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                                  "auto.offset.reset": offset_reset})
        self.consumer.subscribe([topic])
        self.writes: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                for message in self.consumer.consume(num_messages=1000, timeout=0.2):
                    if message.error() is not None:
                        if message.error().code() != KafkaError._PARTITION_EOF:
                            raise KafkaException(message.error())
                        continue
                    if message.value() is None:  # an erasure's tombstone
                        continue
                    produced_at = MemberEmbedding.from_json(message.value()).newest_produced_at / 1000
                    written = message.timestamp()[1] / 1000
                    with self.lock:
                        self.writes.append((written, written - produced_at))
        finally:
            self.consumer.close()

    def freshness_since(self, since: float) -> list[float]:
        """Freshness of the embeddings of events produced at `since` or later."""
        with self.lock:
            return [age for written, age in self.writes if written - age >= since]


def train_model(log: InteractionLog, root: Path) -> None:
    tunables = default_tunables() | {"inner_steps": 3}
    model, metrics = meta_train(log, TrainConfig(epochs=2, valid_fraction=0.0), tunables,
                                progress=False)
    save_artifact(root, model, FeatureSchema.from_log(log), metrics, {})


class Stack:
    """One prefix's topics, Feast store, model and workers."""

    def __init__(self, bootstrap: str, dataset: str, work: Path, exits: ExitStack,
                 max_staleness_s: float = 0.5, partitions: int = PARTITIONS, serving: bool = True,
                 adapt_options: tuple[str, ...] = ()) -> None:
        """`serving=False` skips the model and the member profiles only an adaptation worker
        needs (a stream-worker-only benchmark over a large log); `adapt_options` are further
        `limaml adapt` options of the freshness phase's adaptation worker."""
        self.dataset = dataset
        self.max_staleness_s = max_staleness_s
        self.log = load_dataset(dataset)
        self.kafka = KafkaConfig(bootstrap=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
                                 partitions=partitions)
        self.work = work / self.kafka.topic_prefix
        self.exits = exits
        self.adapt_options = adapt_options
        if serving:
            train_model(self.log, self.work / "artifacts")
            fields = ",".join(sorted(self.log.member_features))
            write_member_profiles(open_feature_store(FeatureStoreConfig(
                repo_dir=self.work / "feast", profile_fields=fields)), self.log)

    def kafka_args(self) -> list[str]:
        return ["--bootstrap", self.kafka.bootstrap, "--topic-prefix", self.kafka.topic_prefix,
                "--partitions", str(self.kafka.partitions)]

    def start(self, kind: str, worker_id: str = "0", *options: str) -> ChildProcess:
        """A `limaml <kind>` worker with further CLI `options`; more than one of a kind need
        different `worker_id`s."""
        port = free_port()
        extra = (["--artifacts-dir", str(self.work / "artifacts"), "--repo-dir", str(self.work / "feast")]
                 if kind == "adapt" else ["--max-staleness-s", str(self.max_staleness_s), "--check-interval-s", "0.1"])
        name = kind if worker_id == "0" else f"{kind}-{worker_id}"
        worker = ChildProcess(name, [kind, *self.kafka_args(), "--data-dir", str(self.work / kind),
                               "--worker-id", worker_id, "--web-port", str(port), *extra, *options], port, self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.exits.callback(worker.stop)
        return worker.start()

    def replay(self, **options: float) -> None:
        report = run_replay(self.kafka, ReplayConfig(dataset=self.dataset, **options), progress=False)
        if report.failed:
            raise RuntimeError(f"replay failed to deliver {report.failed} events: {report.errors}")


def percentiles(values: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return float(p50), float(p95), float(p99)


WARMUP_EVENTS = 2000
"""Replayed first at the same pace and left out of the figures: partition assignment, table
recovery and the first batches of freshly started workers are not the sustained state."""
BROKER_WARMUP_RATE = 1000.0
"""The broker warm-up's events/s at most: the JIT needs the code paths run, not the load, and
a rate the machine cannot sustain would leave the warm-up a backlog to drain first."""
STAGES = {"ingest_lag_s": ("stream", "limaml_stream_ingest_lag_seconds"),
          "trigger_delay_s": ("adapt", "limaml_adapt_trigger_delay_seconds"),
          "request_wait_s": ("adapt", "limaml_adapt_request_wait_seconds"),
          "batch_s": ("adapt", "limaml_adapt_batch_seconds"),
          "batch_size": ("adapt", "limaml_adapt_batch_size")}


def scrape_stages(workers: dict[str, ChildProcess]) -> dict[str, tuple[float, float, Buckets]]:
    """(sum, count, buckets) of each stage's Prometheus histogram now."""
    scrapes = {kind: parse_metrics((worker.get("/metrics") or b"").decode()) for kind, worker in workers.items()}
    return {stage: (total(scrapes[kind], f"{name}_sum"), total(scrapes[kind], f"{name}_count"),
                    buckets(scrapes[kind], name))
            for stage, (kind, name) in STAGES.items()}


def summed(workers: list[ChildProcess], metric: str) -> float:
    return sum(worker.metric(metric) for worker in workers)


def all_answered(streams: list[ChildProcess], adapts: list[ChildProcess]) -> bool:
    """Whether the adaptation workers have served (written or skipped) every request the
    stream workers sent, and run at least one batch."""
    requests = summed(streams, STREAM_ADAPT_REQUESTS)
    served = summed(adapts, ADAPT_EMBEDDINGS) + summed(adapts, ADAPT_SKIPPED_STALE)
    return summed(adapts, f"{ADAPT_BATCH_SIZE}_count") > 0 and requests <= served


def freshness_phase(stack: Stack, label: str, limit: int, **pace: float) -> dict[str, float]:
    workers = {"stream": stack.start("stream"), "adapt": stack.start("adapt", "0", *stack.adapt_options)}
    stream, adapt = workers["stream"], workers["adapt"]
    stack.replay(limit=WARMUP_EVENTS, **pace)
    poll(lambda: stream.metric("limaml_stream_events_total") >= WARMUP_EVENTS, 300, f"{label}: warm-up applied")
    poll(lambda: all_answered([stream], [adapt]), 300, f"{label}: warm-up requests answered")
    if "--no-compile" not in stack.adapt_options:  # the sustained state: the compiled inner loop
        poll(lambda: (adapt.get_json("/model") or {}).get("inner_loop") == "compiled", 300,
             f"{label}: the adaptation worker's inner loop compiled")
    before = scrape_stages(workers)
    cpu_before = {kind: process_cpu_s(worker) for kind, worker in workers.items()}
    served_before = summed([adapt], ADAPT_EMBEDDINGS) + summed([adapt], ADAPT_SKIPPED_STALE)
    since = time.time()  # embeddings of older events (the warm-up's) are not counted
    watcher = EmbeddingWatcher(stack.kafka.bootstrap, TopicNames(stack.kafka.topic_prefix).meta_embeddings)
    watcher.start()
    started = time.monotonic()
    stack.replay(start=WARMUP_EVENTS, limit=limit - WARMUP_EVENTS, **pace)
    poll(lambda: stream.metric("limaml_stream_events_total") >= limit, 300, f"{label}: events applied")
    poll(lambda: all_answered([stream], [adapt]), 300, f"{label}: every adapt request answered")
    seconds = time.monotonic() - started
    watcher.done.set()
    watcher.join(timeout=30)
    after = scrape_stages(workers)
    cpu_s = {kind: process_cpu_s(worker) - cpu_before[kind] for kind, worker in workers.items()}
    served = summed([adapt], ADAPT_EMBEDDINGS) + summed([adapt], ADAPT_SKIPPED_STALE) - served_before
    mean = {stage: (after[stage][0] - before[stage][0]) / max(after[stage][1] - before[stage][1], 1)
            for stage in STAGES}
    p99_of = {stage: quantile(subtract(after[stage][2], before[stage][2]), 0.99) or 0.0 for stage in STAGES}
    batches = after["batch_size"][1] - before["batch_size"][1]
    freshness = watcher.freshness_since(since)
    p50, p95, p99 = percentiles(freshness)
    result = {"events": limit - WARMUP_EVENTS, "seconds": seconds, "embeddings": len(freshness),
              "batches_per_s": batches / seconds, **mean, "p50": p50, "p95": p95, "p99": p99}
    print(f"{label}: {result['events']} events after a warm-up of {WARMUP_EVENTS}, in {seconds:.1f} s, "
          f"{result['embeddings']} embeddings, {result['batches_per_s']:.1f} adaptation batches/s "
          f"(mean {mean['batch_size']:.1f} members, {1000 * mean['batch_s']:.0f} ms), freshness "
          f"p50 {p50:.3f} s  p95 {p95:.3f} s  p99 {p99:.3f} s; stage times, mean / p99 (within histogram "
          f"buckets): event applied {mean['ingest_lag_s']:.3f} / {p99_of['ingest_lag_s']:.2f} s after it was "
          f"produced, request sent {mean['trigger_delay_s']:.3f} / {p99_of['trigger_delay_s']:.2f} s after it, "
          f"micro-batch started {mean['request_wait_s']:.3f} / {p99_of['request_wait_s']:.2f} s after that, "
          f"took {mean['batch_s']:.3f} / {p99_of['batch_s']:.2f} s; CPU time: the stream worker "
          f"{1000 * cpu_s['stream'] / result['events']:.3f} ms per event, the adaptation worker "
          f"{1e6 * cpu_s['adapt'] / max(served, 1):.0f} µs per request ({served:.0f} requests)")
    stream.stop()
    adapt.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 20,000-event backlog and 20 s of phase 3 (about 3 min on 2 cores, with the broker warm-up)")
    parser.add_argument("--rate", type=float, default=1000.0, help="sustained events/s of phase 3")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of phase 3")
    parser.add_argument("--backlog", type=int, default=100_000, help="events of phases 1 and 2")
    parser.add_argument("--members", type=int,
                        help="members of the synthetic log (default: backlog / 50, at least 1,000)")
    parser.add_argument("--max-staleness-s", type=float, default=0.5,
                        help="the stream worker's --max-staleness-s")
    parser.add_argument("--movielens", type=Path, help="ml-100k directory for a time-compressed replay")
    parser.add_argument("--speedup", type=float, default=200_000.0, help="MovieLens time compression")
    parser.add_argument("--broker-warmup-s", type=float,
                        help="seconds of phase 3 run first, not measured, to warm the broker's JIT (default: 60 "
                             "when the benchmark starts its own broker, 0 with LIMAML_KAFKA_BOOTSTRAP)")
    parser.add_argument("--adapt-eager", action="store_true",
                        help="the adaptation worker with `--no-compile` (the eager inner loop)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.backlog = 20.0, 20_000
    unwind_on_sigterm()
    members = args.members or max(1000, args.backlog // 50)
    synthetic = f"synthetic:n_members={members},n_items=1000,seed=11"

    with ExitStack() as exits:
        work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="limaml-bench-")))
        given = os.environ.get(BOOTSTRAP_VARIABLE)
        bootstrap = given or exits.enter_context(local_kafka(work / "kafka"))
        print(f"broker {bootstrap}, {PARTITIONS} partitions, {os.cpu_count()} cores")
        adapt_options = ("--no-compile",) if args.adapt_eager else ()
        warmup_s = args.broker_warmup_s if args.broker_warmup_s is not None else 0.0 if given else 60.0
        if warmup_s > 0:
            warmup, rate = Stack(bootstrap, synthetic, work, exits, args.max_staleness_s,
                                 adapt_options=adapt_options), min(args.rate, BROKER_WARMUP_RATE)
            freshness_phase(warmup, f"broker warm-up (not counted), synthetic at {rate:g} events/s", rate=rate,
                            limit=min(WARMUP_EVENTS + int(rate * warmup_s), warmup.log.n_events))

        print(f"synthetic log of {members:,} members; stream worker --max-staleness-s {args.max_staleness_s:g}")
        backlog = Stack(bootstrap, synthetic, work, exits, args.max_staleness_s, serving=False)  # a stream worker only
        backlog.replay(limit=args.backlog)
        raw_s = consume_all(bootstrap, TopicNames(backlog.kafka.topic_prefix).interactions, args.backlog)
        raw_rate = args.backlog / raw_s
        stream = backlog.start("stream")
        poll(lambda: stream.metric("limaml_stream_events_total") > 0, 120, "the first applied event")
        first, first_cpu_s = time.monotonic(), process_cpu_s(stream)
        first_events = stream.metric("limaml_stream_events_total")
        poll(lambda: stream.metric("limaml_stream_events_total") >= args.backlog, 600,
             "the backlog applied", interval_s=0.05)
        stream_rate = args.backlog / (time.monotonic() - first)
        cpu_ms_per_event = 1000 * (process_cpu_s(stream) - first_cpu_s) / (args.backlog - first_events)
        stream.stop()
        print(f"raw consumer: {raw_rate:,.0f} events/s; stream worker: {stream_rate:,.0f} events/s "
              f"(x{stream_rate / raw_rate:.3f} of raw), backlog {args.backlog}; the stream worker's "
              f"CPU time {cpu_ms_per_event:.3f} ms per event (all its threads: a figure that "
              f"depends less on what else runs than events/s)")

        sustained = freshness_phase(Stack(bootstrap, synthetic, work, exits, args.max_staleness_s,
                                          adapt_options=adapt_options),
                                    f"synthetic at {args.rate:g} events/s", rate=args.rate,
                                    limit=WARMUP_EVENTS + int(args.rate * args.duration))
        if args.movielens:
            movielens = Stack(bootstrap, f"movielens:{args.movielens}", work, exits, args.max_staleness_s,
                              adapt_options=adapt_options)
            freshness_phase(movielens, f"MovieLens 100K at {args.speedup:g}x", speedup=args.speedup,
                            limit=20_000 if args.quick else movielens.log.n_events)
    print(f"freshness_p99_s={sustained['p99']:.3f} events_per_s={stream_rate:.0f} "
          f"ratio_vs_raw={stream_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()

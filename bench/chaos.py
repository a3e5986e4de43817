"""Chaos: random faults under a steady event stream; nothing lost, doubled or regressed.

A private Kafka cluster (deploy/kafka.sh, three brokers by default: every topic replicated
three times, `min.insync.replicas` 2, acks=all), one stream worker and one adaptation
worker (`limaml stream`, `limaml adapt`) with the SQLite Feast store. Events are produced
at `--rate` by an idempotent producer that cycles through a synthetic dataset. Each cycle:

1. a few seconds of steady stream;
2. a random fault: kill -9 of the stream worker or of the adaptation worker, or one of the
   brokers stopped and started (`deploy/kafka.sh stop --node`, then `start`); this script
   is the orchestrator and restarts what it killed at once, on the same data dir;
3. the stream goes on until freshness is back under 2 s: the recovery time is from the
   fault to the start of the first `STABLE_S` consecutive one-second windows in each of
   which the p95 freshness of the embeddings written is under 2 s (freshness: the Kafka
   timestamp of the meta-embeddings record minus that of the newest event it was adapted
   on; p95, not the maximum: on a busy 2-core machine the steady stream's p99 is near 2 s);
   a recovery slower than `SLOW_RECOVERY_S` prints each second's p95 freshness from the fault on;
4. the producer pauses, and every member's support set (the stream worker's /members/
   pages, as the integration tests read them) is checked against what was delivered:
   its seq against the number of its events (lost when short, doubled when over) and its
   item ids against the last K of them.

Throughout, a sample of members' embeddings is read from the online store every second: a
seq lower than one seen before for the same member is a regression.

`--faults` picks the kinds drawn from (`--faults broker` stops and starts brokers only), and
`--work-dir` keeps the run's files, the workers' logs (`stream.log`, `adapt.log`) and the
brokers' (`kafka/node-<id>/logs/server.log`), to see where a recovery's time goes: every
progress line starts with the UTC time, as the logs' lines do.

Progress goes to stdout, one line per cycle; Ctrl-C (or SIGTERM) ends the run after a
summary of the cycles completed, recovery by fault kind included. The last line is
`cycles=<n> lost=<x> doubled=<y> mismatched=<z> regressed=<r> recovery_p50_s=<a> recovery_p99_s=<b>`.

    python bench/chaos.py --cycles 10
    python bench/chaos.py --cycles 100 --brokers 3 --rate 1000 --seed 1
    python bench/chaos.py --cycles 6 --faults broker --work-dir /tmp/chaos-broker
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, Message, Producer

from limaml.adapters.events import InteractionEvent, events_from_log
from limaml.adapters.registry import load_dataset
from limaml.artifacts import FeatureSchema, save_artifact
from limaml.model_config import default_tunables
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.embeddings import EmbeddingReader
from limaml.featurestore.profiles import write_member_profiles
from limaml.featurestore.store import open_feature_store
from limaml.deploy.processes import (ChildProcess, free_port, local_kafka, poll, restart_stopped_kafka_nodes,
                              stop_kafka_node, unwind_on_sigterm)
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, TopicNames, ensure_topics
from limaml.train import TrainConfig, meta_train

from freshness import EmbeddingWatcher  # bench/, this script's folder

PARTITIONS = 4
SUPPORT_SIZE = 16  # K of the stream worker: the item ids checked per member
FRESH_S = 2.0  # an embedding at most this old is fresh
STABLE_S = 5  # consecutive one-second windows of fresh embeddings that mark freshness as recovered
FRESH_QUANTILE = 95  # a window is fresh when this percentile of its embeddings' freshness is under FRESH_S
RECOVERY_TIMEOUT_S = 180.0
SLOW_RECOVERY_S = 10.0  # a recovery slower than this prints its freshness second by second
CATCH_UP_TIMEOUT_S = 120.0  # longest wait for the support sets once the producer paused
STALLED_S = 15.0  # ... or for this long without any member's support set moving
SAMPLED_MEMBERS = 100  # members whose embedding seq is watched for regressions
CHECK_THREADS = 8  # concurrent reads of /members/ pages
MIN_WAIT_S = 0.001  # librdkafka's poll counts whole milliseconds: a shorter wait would spin
FAULTS = ("stream", "adapt", "broker")  # kill -9 of a worker, or a broker stopped and started


def say(line: str) -> None:
    """A progress line, stamped with the UTC time like the workers' and brokers' logs."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S.%f")[:-3]
    print(f"[{stamp}] {line}", flush=True)


@dataclass
class Delivered:
    """What the broker acknowledged per member: the number of events and the last K item ids."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recent: dict[str, deque[str]] = field(default_factory=lambda: defaultdict(lambda: deque(maxlen=SUPPORT_SIZE)))
    failed: int = 0

    def record(self, event: InteractionEvent) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                self.failed += 1
                return
            # Reports of one partition come in offset order: a member's item ids stay in order.
            self.counts[event.member_id] += 1
            self.recent[event.member_id].append(event.item_id)
        return on_delivery


class Traffic(threading.Thread):
    """Produces the dataset's events, over and over (new event ids each pass), at `rate`
    events/s while not paused."""

    def __init__(self, kafka: KafkaConfig, events: list[InteractionEvent], rate: float) -> None:
        super().__init__(name="traffic", daemon=True)
        self.topic = TopicNames(kafka.topic_prefix).interactions
        self.producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True,
                                  "partitioner": PRODUCER_PARTITIONER, "linger.ms": 5})
        self.events = events
        self.rate = rate
        self.delivered = Delivered()
        self.sent = 0
        self.running = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # held while sending: pause() waits for the sending to end

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.running.wait(0.1):
                continue
            # One thread at a time serves delivery reports (poll, flush): they come in order.
            with self.lock:
                self.send_while_running()

    def send_while_running(self) -> None:
        started, sent_before = time.monotonic(), self.sent
        while self.running.is_set() and not self.stopping.is_set():
            due = started + (self.sent - sent_before) / self.rate
            if (wait := due - time.monotonic()) > 0:
                self.producer.poll(min(max(wait, MIN_WAIT_S), 0.1))
                continue
            passes, position = divmod(self.sent, len(self.events))
            event = self.events[position]
            if passes:  # each pass a new event: the stream worker counts an event id once
                event = replace(event, event_id=f"{event.event_id}#{passes}")
            try:
                self.producer.produce(self.topic, key=event.key(), value=event.to_json_bytes(),
                                      on_delivery=self.delivered.record(event))
            except BufferError:
                self.producer.poll(0.1)
                continue
            self.sent += 1
            self.producer.poll(0)

    def resume(self) -> None:
        self.running.set()

    def pause(self, timeout_s: float = 120.0) -> None:
        """Stop sending, and wait until every sent event's delivery is reported."""
        self.running.clear()
        with self.lock:
            outstanding = self.producer.flush(timeout_s)
        if outstanding:
            raise RuntimeError(f"{outstanding} events undelivered after {timeout_s} s")

    def stop(self) -> None:
        self.pause()
        self.stopping.set()
        self.join(timeout=10)


class FreshnessWatcher(EmbeddingWatcher):
    """The embeddings written from now on, and how freshness recovers after a fault."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic, offset_reset="latest")

    def ages(self, since: float, until: float) -> list[float]:
        """Freshness of the embeddings written between two times."""
        with self.lock:
            return [age for at, age in self.writes if since < at <= until]

    def recovery_s(self, fault_at: float, now: float) -> float | None:
        """Seconds from the fault to the first of `STABLE_S` consecutive one-second windows
        in each of which the embeddings written have a p95 freshness under `FRESH_S` (None
        until such a run of windows is complete). A window without embeddings is not fresh."""
        writes = self.since(fault_at)
        windows = self.windows(writes, int(now - fault_at))
        fresh = [window is not None and window < FRESH_S for window in windows]
        for first in range(len(fresh) - STABLE_S + 1):
            if all(fresh[first:first + STABLE_S]):
                return min(offset for offset, _age in writes if int(offset) == first)
        return None

    def since(self, fault_at: float) -> list[tuple[float, float]]:
        """(seconds after the fault, freshness) of each embedding written since the fault."""
        with self.lock:
            return [(at - fault_at, age) for at, age in self.writes if at > fault_at]

    @staticmethod
    def windows(writes: list[tuple[float, float]], seconds: int) -> list[float | None]:
        """The p95 freshness of each one-second window after the fault (None: no embedding)."""
        grouped: dict[int, list[float]] = defaultdict(list)
        for offset, age in writes:
            grouped[int(offset)].append(age)
        return [float(np.percentile(grouped[i], FRESH_QUANTILE)) if grouped[i] else None
                for i in range(seconds)]

    def trace(self, fault_at: float, seconds: float) -> str:
        """The windows' p95 freshness from the fault on, for a slow recovery ('-': none written)."""
        windows = self.windows(self.since(fault_at), int(seconds) + STABLE_S)
        return " ".join("-" if window is None else f"{window:.1f}" for window in windows)


class RegressionSampler(threading.Thread):
    """Reads a sample of members' embeddings every second; counts seqs that go down."""

    def __init__(self, reader: EmbeddingReader, members: list[str]) -> None:
        super().__init__(name="regressions", daemon=True)
        self.reader = reader
        self.members = members
        self.highest: dict[str, int] = {}
        self.regressed = 0
        self.reads = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for member_id, embedding in self.reader.read(self.members).items():
                if embedding is None:
                    continue
                if embedding.seq < self.highest.get(member_id, -1):
                    self.regressed += 1
                    say(f"  regression: {member_id} seq {embedding.seq} after {self.highest[member_id]}")
                self.highest[member_id] = max(embedding.seq, self.highest.get(member_id, -1))
            self.reads += 1


@dataclass
class Check:
    lost: int  # events short of what was delivered, summed over members
    doubled: int  # events counted beyond what was delivered
    mismatched: int  # members with the right count but other item ids


class Chaos:
    def __init__(self, kafka_dir: Path, kafka: KafkaConfig, work: Path, brokers: int, rng: random.Random) -> None:
        self.kafka_dir = kafka_dir
        self.kafka = kafka
        self.work = work
        self.brokers = brokers
        self.rng = rng

    def worker(self, kind: str, artifacts: Path, feast: Path) -> ChildProcess:
        port = free_port()
        kafka_args = ["--bootstrap", self.kafka.bootstrap, "--topic-prefix", self.kafka.topic_prefix,
                      "--partitions", str(PARTITIONS), "--replication-factor", str(self.kafka.replication_factor),
                      "--min-insync-replicas", str(self.kafka.min_insync_replicas)]
        extra = (["--artifacts-dir", str(artifacts), "--repo-dir", str(feast), "--device", "cpu"]
                 if kind == "adapt" else
                 ["--support-size", str(SUPPORT_SIZE), "--max-staleness-s", "0.5", "--check-interval-s", "0.1"])
        return ChildProcess(kind, [kind, *kafka_args, "--data-dir", str(self.work / kind), "--web-port", str(port),
                             *extra], port, self.work)

    def inject(self, fault: str, workers: dict[str, ChildProcess]) -> str:
        """Apply the fault and undo it at once (restart what was killed); what was done."""
        started = time.monotonic()
        if fault == "broker":
            node = self.rng.randint(1, self.brokers)
            stop_kafka_node(self.kafka_dir, node)
            stopped = time.monotonic()
            restart_stopped_kafka_nodes(self.kafka_dir)
            return (f"broker {node} stopped ({stopped - started:.1f} s) and started "
                    f"({time.monotonic() - stopped:.1f} s)")
        workers[fault].kill()
        killed = time.monotonic()
        workers[fault].start()
        return f"kill -9 of the {fault} worker, restarted (serving /metrics after {time.monotonic() - killed:.1f} s)"


def read_support_sets(stream: ChildProcess, members: list[str]) -> dict[str, dict | None]:
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        return dict(zip(members, pool.map(lambda m: stream.get_json(f"/members/{m}/"), members)))


def check_support_sets(stream: ChildProcess, delivered: Delivered) -> tuple[Check, float]:
    """Wait until every member's support set holds what was delivered (or stops moving);
    what differs then, and the seconds waited."""
    started = time.monotonic()
    members = sorted(delivered.counts)
    last_states: dict[str, dict | None] = {}
    last_change = started
    while True:
        states = read_support_sets(stream, members)
        seqs = {m: (s or {}).get("seq", 0) for m, s in states.items()}
        behind = [m for m in members if seqs[m] < delivered.counts[m]]
        if states != last_states:
            last_states, last_change = states, time.monotonic()
        now = time.monotonic()
        if not behind or now - last_change > STALLED_S or now - started > CATCH_UP_TIMEOUT_S:
            break
        time.sleep(0.5)
    lost = sum(max(0, delivered.counts[m] - seqs[m]) for m in members)
    doubled = sum(max(0, seqs[m] - delivered.counts[m]) for m in members)
    mismatched = sum(1 for m in members if seqs[m] == delivered.counts[m]
                     and (states[m] or {}).get("item_ids") != list(delivered.recent[m]))
    return Check(lost, doubled, mismatched), time.monotonic() - started


def train_model(dataset: str, root: Path) -> None:
    log = load_dataset(dataset)
    tunables = default_tunables() | {"meta_dim": 8, "global_hidden": (16, 8), "inner_steps": 2}
    model, metrics = meta_train(log, TrainConfig(epochs=1, valid_fraction=0.0), tunables, progress=False)
    save_artifact(root, model, FeatureSchema.from_log(log), metrics, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10, help="faults injected, one per cycle")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=3, help="brokers of the cluster")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s produced")
    parser.add_argument("--members", type=int, default=1000, help="members of the synthetic dataset")
    parser.add_argument("--steady-s", type=float, default=5.0, help="steady stream before each fault")
    parser.add_argument("--seed", type=int, default=0, help="seeds the faults and the sampled members")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated fault kinds to draw from: {', '.join(FAULTS)} (broker needs 3 brokers)")
    parser.add_argument("--work-dir", type=Path, help="keep the run's files and logs here (default: a temporary dir)")
    args = parser.parse_args()
    faults = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    if not faults or not set(faults) <= set(FAULTS):
        parser.error(f"--faults takes some of {', '.join(FAULTS)}, got {args.faults!r}")
    if args.brokers < 3:  # a broker stop would leave no replica of its partitions to fail over to
        if faults == ["broker"]:
            parser.error("broker faults need --brokers 3")
        faults = [kind for kind in faults if kind != "broker"]
    # SIGTERM ends the run like Ctrl-C, with the summary of the cycles completed (a background
    # job started by a non-interactive shell ignores SIGINT).
    unwind_on_sigterm()
    rng = random.Random(args.seed)
    dataset = f"synthetic:n_members={args.members},n_items=500,mean_events=20,seed={args.seed}"

    with ExitStack() as exits:
        if args.work_dir is None:
            work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="limaml-chaos-")))
        else:
            work = args.work_dir.resolve()
            work.mkdir(parents=True)  # not an old run's dir: its cluster and logs would mix with this one's
        kafka_dir = work / "kafka"
        bootstrap = exits.enter_context(local_kafka(kafka_dir, brokers=args.brokers))
        replicated = args.brokers >= 3
        kafka = KafkaConfig(bootstrap=bootstrap, topic_prefix=f"chaos{uuid.uuid4().hex[:8]}", partitions=PARTITIONS,
                            replication_factor=3 if replicated else 1, min_insync_replicas=2 if replicated else 0)
        ensure_topics(kafka)
        log = load_dataset(dataset)
        events = list(events_from_log(log))
        train_model(dataset, work / "artifacts")
        fields = ",".join(sorted(log.member_features))
        feast_config = FeatureStoreConfig(repo_dir=work / "feast", profile_fields=fields)
        write_member_profiles(open_feature_store(feast_config), log)
        chaos = Chaos(kafka_dir, kafka, work, args.brokers, rng)
        workers = {kind: chaos.worker(kind, work / "artifacts", work / "feast") for kind in ("stream", "adapt")}
        for worker in workers.values():
            exits.callback(worker.stop)
            worker.start()
        watcher = FreshnessWatcher(bootstrap, TopicNames(kafka.topic_prefix).meta_embeddings)
        watcher.start()
        traffic = Traffic(kafka, events, args.rate)
        traffic.start()
        exits.callback(traffic.stop)
        sampled = rng.sample(sorted({e.member_id for e in events}), min(SAMPLED_MEMBERS, args.members))
        sampler = RegressionSampler(EmbeddingReader(open_feature_store(feast_config)), sampled)
        sampler.start()
        say(f"{args.brokers} broker(s) at {bootstrap}, {PARTITIONS} partitions, replication "
            f"{kafka.replication_factor}; {args.members} members, {args.rate:g} events/s; "
            f"{os.cpu_count()} cores; faults {', '.join(faults)}; files in {work}")

        traffic.resume()
        warm_from = time.time()
        warm_s = poll(lambda: watcher.recovery_s(warm_from, time.time()), RECOVERY_TIMEOUT_S,
                      "a fresh steady stream before the first fault", interval_s=0.5)
        say(f"warm-up: freshness under {FRESH_S:g} s {warm_s:.1f} s after the stream started")
        recoveries: dict[str, list[float]] = defaultdict(list)
        unrecovered = 0
        check = Check(0, 0, 0)
        bench_started = time.monotonic()
        completed = 0
        try:
            for cycle in range(1, args.cycles + 1):
                cycle_started = time.monotonic()
                traffic.resume()
                steady_from = time.time()
                time.sleep(args.steady_s)  # a steady stream before the fault, by design
                fault = rng.choice(faults)
                fault_at = time.time()
                steady = watcher.ages(steady_from, fault_at)
                say(f"cycle {cycle}/{args.cycles}: {fault} fault")
                done = chaos.inject(fault, workers)
                try:
                    recovery = poll(lambda: watcher.recovery_s(fault_at, time.time()), RECOVERY_TIMEOUT_S,
                                    "freshness back under 2 s", interval_s=0.5)
                    recoveries[fault].append(recovery)
                    recovered = f"freshness back under {FRESH_S:g} s after {recovery:.1f} s"
                    if recovery > SLOW_RECOVERY_S:
                        recovered += f" (p95 freshness by second: {watcher.trace(fault_at, recovery)})"
                except TimeoutError:
                    unrecovered += 1
                    recovered = f"freshness NOT back under {FRESH_S:g} s after {RECOVERY_TIMEOUT_S:g} s"
                traffic.pause()
                if traffic.delivered.failed:
                    raise RuntimeError(f"{traffic.delivered.failed} events failed delivery")
                check, waited = check_support_sets(workers["stream"], traffic.delivered)
                before = (f"freshness before it p50 {np.percentile(steady, 50):.2f} s, p99 {np.percentile(steady, 99):.2f} s"
                          if steady else "no embedding written before it")
                say(f"cycle {cycle}/{args.cycles}: {before}; {done}; {recovered}; {traffic.sent} events so far, support "
                    f"sets checked after {waited:.1f} s: lost {check.lost}, doubled {check.doubled}, mismatched "
                    f"{check.mismatched}; regressed {sampler.regressed} ({sampler.reads} samples); cycle took "
                    f"{time.monotonic() - cycle_started:.0f} s")
                completed = cycle
        except KeyboardInterrupt:  # Ctrl-C: the summary of the cycles completed
            say(f"interrupted during cycle {completed + 1}")
        sampler.done.set()
        watcher.done.set()
        recovered_s = [seconds for kind in recoveries.values() for seconds in kind]
        say(f"{completed} cycles in {(time.monotonic() - bench_started) / 60:.1f} min, {traffic.sent} events; "
            f"recovery of freshness: {len(recovered_s)} cycles recovered, {unrecovered} did not within "
            f"{RECOVERY_TIMEOUT_S:g} s")
        for kind, seconds in sorted(recoveries.items()):
            say(f"  {kind}: {len(seconds)} recovered, median {np.median(seconds):.1f} s, max {max(seconds):.1f} s "
                f"({' / '.join(f'{s:.1f}' for s in seconds)})")
    p50, p99 = (np.percentile(recovered_s, [50, 99]) if recovered_s else (float("nan"), float("nan")))
    print(f"cycles={completed} lost={check.lost} doubled={check.doubled} mismatched={check.mismatched} "
          f"regressed={sampler.regressed} unrecovered={unrecovered} recovery_p50_s={p50:.1f} recovery_p99_s={p99:.1f}")


if __name__ == "__main__":
    main()

"""Changelog restore rate: how fast a stream worker rebuilds its support sets after a move.

A worker that takes over partitions (a restart on a new machine, a rebalance) rebuilds their
support sets from the `support-sets` changelog before it applies a single event: its events
wait that long. This fills the changelog with N members' full support sets (K examples each,
written as the stream worker writes them: key the JSON member id, value `SupportSet.dumps()`,
in the member's partition), starts `limaml stream` on an empty data dir and times, from the
worker's own log, its reading of the changelog and its readiness (after the table's recovery
callback indexed every member). A sample of members is then read back from the worker's
/members/ pages to check the restore is complete.

The last line is `restore_members_per_s=<x> restore_s=<y> members=<n>` (medians over the runs).

    python bench/restore_rate.py                       # 100,000 members, 3 runs, one broker
    python bench/restore_rate.py --members 10000 --runs 1
    python bench/restore_rate.py --brokers 3           # changelog replicated 3 times
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from limaml.adapters.replay import produce_when_queued
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, ChildProcess, free_port, local_kafka, poll, unwind_on_sigterm
from limaml.stream.policy import empty_support_set
from limaml.stream.records import SupportSet
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, member_partition

PARTITIONS = 4
SAMPLE = 200  # members read back from the worker after each restore
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
READING = "Restoring state from changelog topics..."
READ = "Done reading from changelog topics"
READY = "Worker ready"


def support_set(rng: random.Random, size: int, items: int) -> SupportSet:
    """A member's full support set, as the stream worker stores it after `size` events."""
    return empty_support_set().derive(
        seq=size + rng.randrange(1000), item_ids=[f"i{rng.randrange(1, items)}" for _ in range(size)],
        labels=[rng.randrange(2) for _ in range(size)],
        contexts=[{"slot": rng.random()} for _ in range(size)],
        newest_event_ts=1_700_000_000_000, newest_produced_at=time.time(), last_offset=rng.randrange(10**6))


def fill_changelog(kafka: KafkaConfig, members: int, support_size: int, seed: int) -> tuple[str, dict[str, int]]:
    """Write `members` support sets to the stream workers' changelog; its name and each
    written member's seq (for the read-back check)."""
    topic = f"{kafka.faust_app_id('stream')}-support-sets-changelog"  # Faust's changelog naming
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=kafka.partitions,
                                  replication_factor=kafka.replication_factor,
                                  config={"cleanup.policy": "compact", **kafka.topic_config})])[topic].result(60)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True,
                         "partitioner": PRODUCER_PARTITIONER, "linger.ms": 20})  # uncompressed, as Faust writes
    rng = random.Random(seed)
    seqs: dict[str, int] = {}
    for index in range(members):
        member_id = f"m{index}"
        state = support_set(rng, support_size, items=1000)
        seqs[member_id] = state.seq
        produce_when_queued(producer, topic, key=json.dumps(member_id).encode(), value=state.dumps(),
                            partition=member_partition(member_id, kafka.partitions))
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the changelog was not written in 120 s")
    return topic, seqs


def log_times(log_path: Path) -> dict[str, float]:
    """The time (epoch s) of the first log line holding each recovery milestone."""
    found: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = LOG_TIME.match(line)
        for milestone in (READING, READ, READY):
            if match and milestone in line and milestone not in found:
                found[milestone] = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def restore_once(kafka: KafkaConfig, work: Path, run: int, support_size: int,
                 seqs: dict[str, int]) -> dict[str, float]:
    """Start a stream worker on an empty data dir; its restore times from its log."""
    port = free_port()
    worker = ChildProcess(f"stream-{run}", [
        "stream", "--bootstrap", kafka.bootstrap, "--topic-prefix", kafka.topic_prefix,
        "--partitions", str(kafka.partitions), "--replication-factor", str(kafka.replication_factor),
        "--min-insync-replicas", str(kafka.min_insync_replicas),
        "--data-dir", str(work / f"stream-{run}"), "--web-port", str(port),
        "--support-size", str(support_size)], port, work)
    spawned = time.time()
    worker.spawn()
    try:
        def restored() -> dict[str, float] | None:
            worker.ensure_alive()
            found = log_times(worker.log_path)
            return found if READY in found else None

        times = poll(restored, 900, "the worker to restore its tables", interval_s=0.5,
                     describe=lambda: worker.log_tail(10))
        for member_id in random.Random(run).sample(sorted(seqs), min(SAMPLE, len(seqs))):
            state = worker.get_json(f"/members/{member_id}/")
            if state is None or state["seq"] != seqs[member_id]:
                raise RuntimeError(f"{member_id} restored as {state}, written with seq {seqs[member_id]}")
    finally:
        worker.stop()
    return {"read_s": times[READ] - times[READING], "ready_s": times[READY] - times[READING],
            "start_s": times[READY] - spawned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000, help="support sets in the changelog")
    parser.add_argument("--support-size", type=int, default=64, help="K: examples per support set")
    parser.add_argument("--runs", type=int, default=3, help="restores timed (the median is reported)")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                        help="3: replication factor 3, min.insync.replicas 2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    unwind_on_sigterm()
    with ExitStack() as exits:
        work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="limaml-restore-")))
        bootstrap = (os.environ.get(BOOTSTRAP_VARIABLE) if args.brokers == 1 else None) or \
            exits.enter_context(local_kafka(work / "kafka", brokers=args.brokers))
        replicated = args.brokers == 3
        kafka = KafkaConfig(bootstrap=bootstrap, topic_prefix=f"restore{uuid.uuid4().hex[:8]}",
                            partitions=PARTITIONS, replication_factor=3 if replicated else 1,
                            min_insync_replicas=2 if replicated else 0)
        started = time.monotonic()
        topic, seqs = fill_changelog(kafka, args.members, args.support_size, args.seed)
        value_bytes = len(support_set(random.Random(0), args.support_size, 1000).dumps())
        print(f"broker(s) {bootstrap}: {args.members:,} support sets of {args.support_size} examples "
              f"(about {value_bytes:,} bytes each) written to {topic} ({PARTITIONS} partitions, "
              f"replication {kafka.replication_factor}) in {time.monotonic() - started:.1f} s; "
              f"{os.cpu_count()} cores", flush=True)
        runs = []
        for run in range(args.runs):
            result = restore_once(kafka, work, run, args.support_size, seqs)
            runs.append(result)
            print(f"run {run + 1}/{args.runs}: changelog read in {result['read_s']:.1f} s "
                  f"({args.members / result['read_s']:,.0f} members/s), worker ready "
                  f"{result['ready_s']:.1f} s after its restore began ({args.members / result['ready_s']:,.0f} "
                  f"members/s), {result['start_s']:.1f} s after the process started", flush=True)
    ready_s = statistics.median(run["ready_s"] for run in runs)
    read_s = statistics.median(run["read_s"] for run in runs)
    print(f"median of {len(runs)}: read {read_s:.1f} s, ready {ready_s:.1f} s")
    print(f"restore_members_per_s={args.members / ready_s:.0f} restore_s={ready_s:.2f} members={args.members}")


if __name__ == "__main__":
    main()

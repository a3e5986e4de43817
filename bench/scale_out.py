"""Scale-out: two stream and two adaptation workers against one of each (issue 13, item 4).

A three-node cluster (deploy/kafka.sh --brokers 3) and 12 partitions per limaml topic
(replication factor 1: the partitions are spread over the three nodes, and no replica
traffic competes for the cores). For each worker count in --workers (default 1 and 2):

1. backlog: that many stream workers (`limaml stream`) start, and once their consumer
   group is stable with every worker in it (the admin API's group description) a backlog
   of --backlog synthetic events is replayed unpaced; events/s from the first applied event
   to the last (the workers' counters summed). The workers join before the backlog, not
   while it is applied: a rebalance in the middle of a backlog left a partition unread
   (see docs/benchmarks.md, Scale-out);
2. freshness: that many stream workers and as many adaptation workers (`limaml adapt`)
   on a fresh prefix with a trained model, each kind's group stable; after a warm-up of
   2,000 events, the log is
   replayed at each rate of --rates in turn (ascending; it stops after the first rate
   whose p99 is 2 s or more). Freshness is measured as in bench/freshness.py: the Kafka
   timestamp of each `meta-embeddings` record minus that of its newest event.

On one machine the workers share its cores, so this measures what coordinating two
workers of each kind costs, not a speed-up; docs/benchmarks.md projects to N machines.

The last line is `backlog_events_per_s_<n>=... best_rate_<n>=... p99_s_<n>=...` for each n.

    python bench/scale_out.py --quick     # 19 minutes at a load average of 30 on 2 cores
    python bench/scale_out.py --backlog 100000 --rates 250,500,1000,2000 --duration 30
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from freshness import WARMUP_EVENTS, EmbeddingWatcher, Stack, all_answered, percentiles, summed
from limaml.deploy.processes import ChildProcess, local_kafka, poll, unwind_on_sigterm
from limaml.stream.topics import TopicNames

BROKERS = 3
PARTITIONS = 12
P99_LIMIT_S = 2.0
NOT_READY = (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
             KafkaError.NOT_COORDINATOR, KafkaError.GROUP_ID_NOT_FOUND)
"""Errors of a group description while the group or its coordinator is still being set up."""


def group_stable(admin: AdminClient, group: str, members: int) -> bool:
    """Whether the consumer group is stable with `members` members (False while its
    coordinator is still loading or moving, or too busy to answer within 10 s)."""
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except TimeoutError:
        return False
    except KafkaException as error:
        if error.args[0].code() in NOT_READY:
            return False
        raise
    return description.state == ConsumerGroupState.STABLE and len(description.members) == members


def start_in_a_stable_group(stack: Stack, kind: str, count: int, *options: str) -> list[ChildProcess]:
    """`count` workers of a kind, once their consumer group is stable with all of them in it."""
    workers = [stack.start(kind, str(index), *options) for index in range(count)]
    admin, group = AdminClient({"bootstrap.servers": stack.kafka.bootstrap}), stack.kafka.faust_app_id(kind)
    poll(lambda: group_stable(admin, group, count), 300, f"{count} {kind} workers in a stable group",
         interval_s=0.1)
    return workers


def backlog_rate(bootstrap: str, dataset: str, work: Path, exits: ExitStack, count: int, backlog: int) -> float:
    """Events/s of `count` stream workers on a backlog replayed once their group is stable
    (no adaptation worker: requests are not re-sent during the run)."""
    stack = Stack(bootstrap, dataset, work, exits, partitions=PARTITIONS, serving=False)
    streams = start_in_a_stable_group(stack, "stream", count, "--request-timeout-s", "86400")
    stack.replay(limit=backlog)
    poll(lambda: summed(streams, "limaml_stream_events_total") > 0, 300, "the first applied event")
    started = time.monotonic()
    poll(lambda: summed(streams, "limaml_stream_events_total") >= backlog, 900, "the backlog applied",
         interval_s=0.05)
    rate = backlog / (time.monotonic() - started)
    for worker in streams:
        worker.stop()
    print(f"{count} stream worker(s): {rate:,.0f} events/s on a backlog of {backlog:,}", flush=True)
    return rate


def best_rate(bootstrap: str, dataset: str, work: Path, exits: ExitStack, count: int, rates: list[float],
              duration_s: float) -> tuple[float, float]:
    """The highest of `rates` whose freshness p99 stayed under the limit, and that p99 (0, inf
    when none did)."""
    stack = Stack(bootstrap, dataset, work, exits, partitions=PARTITIONS)
    streams = start_in_a_stable_group(stack, "stream", count)
    adapts = start_in_a_stable_group(stack, "adapt", count)
    label = f"{count} + {count} workers"
    stack.replay(limit=WARMUP_EVENTS, rate=rates[0])
    poll(lambda: summed(streams, "limaml_stream_events_total") >= WARMUP_EVENTS, 300, f"{label}: warm-up applied")
    poll(lambda: all_answered(streams, adapts), 300, f"{label}: warm-up requests answered")
    watcher = EmbeddingWatcher(bootstrap, TopicNames(stack.kafka.topic_prefix).meta_embeddings)
    watcher.start()
    position, best = WARMUP_EVENTS, (0.0, float("inf"))
    for rate in rates:
        events = int(rate * duration_s)
        if position + events > stack.log.n_events:
            print(f"{label}: the log has no {events} events left for {rate:g} events/s; stopping", flush=True)
            break
        since = time.time()
        stack.replay(start=position, limit=events, rate=rate)
        position += events
        poll(lambda: summed(streams, "limaml_stream_events_total") >= position, 600, f"{label}: events applied")
        poll(lambda: all_answered(streams, adapts), 600, f"{label}: every adapt request answered")
        p50, p95, p99 = percentiles(watcher.freshness_since(since))
        print(f"{label} at {rate:g} events/s: freshness p50 {p50:.3f} s  p95 {p95:.3f} s  p99 {p99:.3f} s",
              flush=True)
        if p99 >= P99_LIMIT_S:
            break
        best = (rate, p99)
    watcher.done.set()
    watcher.join(timeout=30)
    for worker in [*streams, *adapts]:
        worker.stop()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="backlog 20,000; 500 and 1,000 events/s for 15 s each")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (of each kind)")
    parser.add_argument("--backlog", type=int, default=100_000, help="events of the backlog phase")
    parser.add_argument("--rates", default="250,500,1000,2000", help="ascending events/s of the freshness phase")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds at each rate")
    args = parser.parse_args()
    if args.quick:
        args.backlog, args.rates, args.duration = 20_000, "500,1000", 15.0
    counts = [int(count) for count in args.workers.split(",")]
    rates = [float(rate) for rate in args.rates.split(",")]
    backlog_log = f"synthetic:n_members={max(1000, args.backlog // 50)},n_items=1000,seed=11"
    replay_events = WARMUP_EVENTS + int(sum(rates) * args.duration)
    replay_log = f"synthetic:n_members={max(1000, replay_events // 40)},n_items=1000,seed=12"

    figures: dict[str, float] = {}
    unwind_on_sigterm()
    with ExitStack() as exits:
        work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="limaml-bench-")))
        bootstrap = exits.enter_context(local_kafka(work / "kafka", brokers=BROKERS))
        print(f"broker {bootstrap}, {BROKERS} nodes, {PARTITIONS} partitions, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for count in counts:
            figures[f"backlog_events_per_s_{count}"] = backlog_rate(bootstrap, backlog_log, work, exits, count,
                                                                    args.backlog)
        for count in counts:
            rate, p99 = best_rate(bootstrap, replay_log, work, exits, count, rates, args.duration)
            figures[f"best_rate_{count}"], figures[f"p99_s_{count}"] = rate, p99
    print(" ".join(f"{name}={value:.3f}" if name.startswith("p99") else f"{name}={value:.0f}"
                   for name, value in figures.items()))


if __name__ == "__main__":
    main()

"""Adapt requests per second one adaptation worker serves from a backlog, and its CPU time
per request.

A real broker (deploy/kafka.sh, or LIMAML_KAFKA_BOOTSTRAP), the SQLite Feast store with the
synthetic log's member profiles and a model trained on it (as in bench/freshness.py).
N adapt requests, each a support set of the log's last 64 events of a random member, are
produced to `adapt-requests` first; then one adaptation worker (`limaml adapt`) starts and
serves them. Figures: requests/s from its first to its last served request, its mean
micro-batch and the time of each of a batch's stages, and the worker process's CPU seconds
(user + system) per request, which other load on the machine moves less than the rate.
The last line is `requests_per_s=<x> cpu_us_per_request=<y>`.

    python bench/adapt_backlog.py                       # 20,000 requests, 5,000 members
    python bench/adapt_backlog.py --requests 50000 --members 10000
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from confluent_kafka import Producer

from freshness import Stack, process_cpu_s  # bench/, this script's folder
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, local_kafka, poll, unwind_on_sigterm
from limaml.deploy.telemetry import parse_metrics, total
from limaml.stream.records import AdaptRequest
from limaml.stream.topics import TopicNames, ensure_topics, member_partition

SUPPORT_SIZE = 64
STAGES = ("read", "adapt", "write", "publish")


def produce_requests(stack: Stack, count: int, seed: int = 3) -> None:
    """`count` adapt requests of random members, each with a seq above its previous one."""
    log = stack.log
    members = list(log.members.tokens)
    rng = random.Random(seed)
    seqs = dict.fromkeys(members, 0)
    ensure_topics(stack.kafka)
    producer = Producer({"bootstrap.servers": stack.kafka.bootstrap, "linger.ms": 20})
    topic = TopicNames(stack.kafka.topic_prefix).adapt_requests
    now = time.time()
    for _ in range(count):
        member = rng.choice(members)
        seqs[member] += SUPPORT_SIZE
        events = [rng.randrange(log.n_events) for _ in range(SUPPORT_SIZE)]
        request = AdaptRequest(
            member_id=member, seq=seqs[member], item_ids=[log.items.token(int(log.item[e])) for e in events],
            labels=[int(log.label[e]) for e in events],
            contexts=[dict(zip(log.context_names, map(float, log.context[e]))) for e in events],
            newest_event_ts=int(now * 1000), newest_produced_at=now, reason="signals", requested_at=now)
        producer.produce(topic, key=member.encode(), value=request.dumps(),
                         partition=member_partition(member, stack.kafka.partitions))
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("the adapt requests were not all delivered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="adapt requests in the backlog")
    parser.add_argument("--members", type=int, default=5_000, help="members of the synthetic log")
    args = parser.parse_args()
    unwind_on_sigterm()
    with ExitStack() as exits:
        work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="limaml-bench-")))
        bootstrap = os.environ.get(BOOTSTRAP_VARIABLE) or exits.enter_context(local_kafka(work / "kafka"))
        stack = Stack(bootstrap, f"synthetic:n_members={args.members},n_items=1000,seed=11", work, exits)
        produce_requests(stack, args.requests)
        print(f"broker {bootstrap}, {os.cpu_count()} cores; {args.requests:,} adapt requests of "
              f"{args.members:,} members in the backlog")
        adapt = stack.start("adapt")

        def served() -> float:  # requests in finished batches (a batch serves a member's newest only)
            return adapt.metric("limaml_adapt_batch_size_sum")

        poll(lambda: served() > 0, 300, "the first served request", interval_s=0.05)
        first, cpu_first, served_first = time.monotonic(), process_cpu_s(adapt), served()
        poll(lambda: served() >= args.requests, 1200, "every request served", interval_s=0.05)
        seconds, cpu = time.monotonic() - first, process_cpu_s(adapt) - cpu_first
        count = served() - served_first
        metrics = parse_metrics((adapt.get("/metrics") or b"").decode())
        batches = total(metrics, "limaml_adapt_batch_size_count")
        stage_ms = {stage: 1000 * total(metrics, "limaml_adapt_stage_seconds_sum", stage=stage) / batches
                    for stage in STAGES}
        adapt.stop()
    rate, cpu_us = count / seconds, 1e6 * cpu / count
    print(f"{count:,.0f} requests in {seconds:.1f} s: {rate:,.0f} requests/s, {cpu_us:,.0f} CPU µs per request; "
          f"{batches:.0f} batches of {total(metrics, 'limaml_adapt_batch_size_sum') / batches:.0f} requests, "
          "stage ms per batch: " + ", ".join(f"{stage} {ms:.0f}" for stage, ms in stage_ms.items()))
    print(f"requests_per_s={rate:.0f} cpu_us_per_request={cpu_us:.0f}")


if __name__ == "__main__":
    main()

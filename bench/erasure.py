"""Erasure time under load: `limaml forget` from request to every store clean.

A real broker (deploy/kafka.sh, or LIMAML_KAFKA_BOOTSTRAP), one stream worker and one adaptation
worker with the SQLite Feast store, as in bench/freshness.py. Members of their own ("victims",
not in the replayed log, so no background event brings them back) get a few events each and
their embeddings; then the synthetic log is replayed at a sustained rate while victims are
forgotten a few at a time (`limaml.stream.forget.forget_members`). An erasure's time runs from its
request being sent to its confirmation, which the adaptation worker sends once the support
set's tombstone, the online rows' delete and the compacted embedding's tombstone are done.
At the end every victim is checked: no support set, no embedding.

The last line is `erasure_p99_s=<x> erasures=<n> rate=<events/s>`.

    python bench/erasure.py --quick       # about two minutes
    python bench/erasure.py --rate 1000 --duration 60
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from confluent_kafka import Producer
from freshness import WARMUP_EVENTS, Stack, percentiles

from limaml.adapters.events import InteractionEvent
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.embeddings import EmbeddingReader
from limaml.featurestore.store import open_feature_store
from limaml.stream.forget import forget_members
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, local_kafka, poll, unwind_on_sigterm
from limaml.stream.topics import PRODUCER_PARTITIONER, TopicNames

VICTIM_EVENTS = 6  # more than the stream worker's min_new_signals: adapted at once
ROUND_MEMBERS = 5  # victims forgotten per round
ROUND_EVERY_S = 2.0


def send_victim_events(stack: Stack, victims: list[str]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka.bootstrap, "partitioner": PRODUCER_PARTITIONER})
    items = stack.log.items.tokens
    now_ms = int(time.time() * 1000)
    for number, member in enumerate(victims):
        for event in range(VICTIM_EVENTS):
            sent = InteractionEvent(event_id=f"{member}-{event}", member_id=member,
                                    item_id=items[(number + event) % len(items)], label=event % 2,
                                    ts=now_ms + event, context={})
            producer.produce(TopicNames(stack.kafka.topic_prefix).interactions, key=sent.key(),
                             value=sent.to_json_bytes())
    if producer.flush(60):
        raise RuntimeError("victim events not delivered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about two minutes")
    parser.add_argument("--rate", type=float, default=1000.0, help="background events/s")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of background load")
    args = parser.parse_args()
    if args.quick:
        args.duration = 20.0
    rounds = int(args.duration / ROUND_EVERY_S)
    victims = [f"victim-{number}" for number in range(rounds * ROUND_MEMBERS)]
    synthetic = "synthetic:n_members=2000,n_items=1000,seed=11"

    unwind_on_sigterm()
    with ExitStack() as exits:
        work = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="limaml-bench-")))
        bootstrap = os.environ.get(BOOTSTRAP_VARIABLE) or exits.enter_context(local_kafka(work / "kafka"))
        print(f"broker {bootstrap}, {os.cpu_count()} cores")
        stack = Stack(bootstrap, synthetic, work, exits)
        stream, adapt = stack.start("stream"), stack.start("adapt")
        stack.replay(limit=WARMUP_EVENTS, rate=args.rate)
        send_victim_events(stack, victims)
        reader = EmbeddingReader(open_feature_store(FeatureStoreConfig(
            repo_dir=stack.work / "feast", profile_fields=",".join(sorted(stack.log.member_features)))))
        poll(lambda: all(e is not None for e in reader.read(victims).values()), 300,
             "every victim's embedding")

        background = threading.Thread(target=stack.replay, daemon=True, kwargs=dict(
            start=WARMUP_EVENTS, limit=int(args.rate * args.duration), rate=args.rate))
        background.start()
        seconds: list[float] = []
        unconfirmed = 0
        for number in range(rounds):
            started = time.monotonic()
            chosen = victims[number * ROUND_MEMBERS:(number + 1) * ROUND_MEMBERS]
            for erasure in forget_members(stack.kafka, chosen, timeout_s=60):
                if erasure.seconds is None:
                    unconfirmed += 1
                else:
                    seconds.append(erasure.seconds)
            time.sleep(max(0.0, ROUND_EVERY_S - (time.monotonic() - started)))  # pacing, not waiting
        background.join(timeout=600)
        applied = stream.metric("limaml_stream_events_total")

        left = [member for member, embedding in reader.read(victims).items() if embedding is not None]
        left += [member for member in victims if stream.get(f"/members/{member}/") != b"null"]
        p50, p95, p99 = percentiles(seconds)
        print(f"{len(seconds)} erasures at {args.rate:g} events/s of background load ({applied:.0f} "
              f"events applied): p50 {p50:.2f} s  p95 {p95:.2f} s  p99 {p99:.2f} s  max {max(seconds):.2f} s; "
              f"{unconfirmed} not confirmed in 60 s; {len(left)} victims with data left {left[:5]}; "
              f"{adapt.metric('limaml_adapt_erasures_total'):.0f} erased by the adaptation worker")
        if unconfirmed or left:
            raise SystemExit(1)
    print(f"erasure_p99_s={p99:.3f} erasures={len(seconds)} rate={args.rate:g}")


if __name__ == "__main__":
    main()

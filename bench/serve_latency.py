"""Scoring-service latency: `POST /v1/score` with 100 candidates over HTTP, against the bare
feature-store read it wraps, in the same run.

Setup: a model trained on a small synthetic log (1,000 items, the default model sizes), a
Feast SQLite store with the profiles of N members and meta embeddings of the active
version for 90 % of them (the other 10 % are cold and get the prior), and `limaml serve`
started as a child process. An aiohttp client keeps C requests in flight, each for a
random member and 100 random candidates.

Baseline: the one read the service cannot avoid, the member's embedding and profile, made
bare: the service's own read of Feast's layout (`MemberLookup.read`, one SELECT or HMGET),
and for reference Feast's `get_online_features(...).to_dict()` of the same features (the
service's read before 2026-12-01), alternated call by call on random members of the same
set, sequentially in this process while the service idles. After a warm-up the two phases
alternate in short slices (D seconds each in all), so both see the same background load
of a shared machine. overhead_ratio = service p99 / bare read p99: how many times longer
a full scoring request takes at the tail (HTTP, JSON, validation, the read, the forward
pass, the ranking, and queueing behind the C - 1 other requests in flight) than the one
feature-store read it wraps. (Up to 2026-12-01 the ratio was to Feast's read.) The client shares the machine's cores with the service;
requests/s is over the time the service phase ran.

The last line printed is `p99_ms=<x> rps=<y> overhead_ratio=<z>`.

    python bench/serve_latency.py            # about a minute on 2 CPU cores
    python bench/serve_latency.py --quick    # about 20 s
    python bench/serve_latency.py --online-store redis   # a private redis-server (deploy/redis.sh)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from limaml.adapters.registry import load_dataset
from limaml.artifacts import FeatureSchema, save_artifact
from limaml.model_config import default_tunables
from limaml.featurestore import embeddings, profiles
from limaml.featurestore.embeddings import EmbeddingWriter, MemberEmbedding
from limaml.featurestore.profiles import write_member_profiles
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import open_feature_store
from limaml.serving.lookup import MemberLookup
from limaml.deploy.processes import ChildProcess, free_port, local_redis, unwind_on_sigterm
from limaml.train import TrainConfig, meta_train

TRAIN_LOG = "synthetic:n_members=300,n_items=1000,mean_events=10,seed=11"
ADAPTED_FRACTION = 0.9
WARMUP_S = 2.0


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)  # one per request
    wall_s: float = 0.0  # time spent measuring

    def summary(self) -> tuple[float, float, float]:
        """p50 ms, p99 ms, requests/s."""
        p50, p99 = np.percentile(np.asarray(self.seconds) * 1000, [50, 99])
        return float(p50), float(p99), len(self.seconds) / self.wall_s


def build(work: Path, n_members: int, online_store: str) -> tuple[Path, FeatureStoreConfig, list[str], list[str]]:
    """A trained model, a store with N profiles and 90 % adapted embeddings; member and item ids."""
    train_log = load_dataset(TRAIN_LOG)
    model, metrics = meta_train(train_log, TrainConfig(epochs=1, valid_fraction=0.0), default_tunables(),
                                progress=False)
    version = save_artifact(work / "artifacts", model, FeatureSchema.from_log(train_log), metrics, {})
    members_log = load_dataset(f"synthetic:n_members={n_members},n_items=1000,mean_events=1,seed=11")
    feast = FeatureStoreConfig(repo_dir=work / "feast", online_store=online_store,
                               profile_fields=",".join(sorted(train_log.member_features)))
    store = open_feature_store(feast)
    write_member_profiles(store, members_log)
    member_ids = list(members_log.members.tokens)
    rng = np.random.default_rng(0)
    adapted = member_ids[: int(len(member_ids) * ADAPTED_FRACTION)]
    vectors = rng.normal(size=(len(adapted), model.config.meta_dim)).astype(np.float32)
    now = int(time.time() * 1000)
    writer = EmbeddingWriter(store, model.config.meta_dim)
    for start in range(0, len(adapted), 1000):
        writer.write([MemberEmbedding(member_id=m, vector=vectors[start + i], model_version=version, seq=1,
                                      support_size=10, newest_event_ts=now, adapted_at=now,
                                      newest_produced_at=now)
                      for i, m in enumerate(adapted[start:start + 1000])])
    return work / "artifacts", feast, member_ids, list(train_log.items.tokens)


class BareReads:
    """The one read a scoring request needs, without the service around it: the service's
    own (`MemberLookup`) and Feast's `get_online_features`, alternated call by call."""

    def __init__(self, feast: FeatureStoreConfig, member_ids: list[str]) -> None:
        self.store = open_feature_store(feast)
        fields = sorted(profiles.profile_fields(self.store))
        self.lookup = MemberLookup(self.store, tuple(fields))
        self.references = ([f"{embeddings.VIEW}:{name}" for name in embeddings.FEATURES]
                           + [f"{profiles.VIEW}:{name}" for name in fields])
        self.member_ids = member_ids
        self.rng = np.random.default_rng(1)

    def run(self, seconds: float, service_read: Latencies, feast_read: Latencies) -> None:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            member = self.member_ids[self.rng.integers(len(self.member_ids))]
            t0 = time.perf_counter()
            self.lookup.read(member)
            t1 = time.perf_counter()
            self.store.get_online_features(features=self.references,
                                           entity_rows=[{embeddings.JOIN_KEY: member}],
                                           full_feature_names=True).to_dict()
            service_read.seconds.append(t1 - t0)
            feast_read.seconds.append(time.perf_counter() - t1)
        service_read.wall_s += time.perf_counter() - started  # both rates are of the pair
        feast_read.wall_s += time.perf_counter() - started


class Client:
    """C concurrent request loops against /v1/score, each body a random member and candidates."""

    def __init__(self, session: aiohttp.ClientSession, url: str, member_ids: list[str], items: list[str],
                 candidates: int, concurrency: int) -> None:
        rng = np.random.default_rng(2)
        self.bodies = [{"member_id": member_ids[rng.integers(len(member_ids))],
                        "candidates": [items[i] for i in rng.choice(len(items), candidates, replace=False)],
                        "context": {"slot": float(rng.integers(0, 10)) / 9}} for _ in range(512)]
        self.session, self.url, self.candidates, self.concurrency = session, url, candidates, concurrency
        self.sent = 0

    async def run(self, seconds: float, into: Latencies) -> None:
        started = time.perf_counter()
        stop_at = started + seconds

        async def loop() -> None:
            while (t0 := time.perf_counter()) < stop_at:
                self.sent += 1
                async with self.session.post(self.url, json=self.bodies[self.sent % len(self.bodies)]) as reply:
                    body = await reply.json()
                if reply.status != 200 or len(body["ranked"]) != self.candidates:
                    raise RuntimeError(f"bad reply {reply.status}: {body}")
                into.seconds.append(time.perf_counter() - t0)

        await asyncio.gather(*(loop() for _ in range(self.concurrency)))
        into.wall_s += time.perf_counter() - started


async def measure(url: str, bare: BareReads, member_ids: list[str], items: list[str], args: argparse.Namespace
                  ) -> tuple[Latencies, Latencies, Latencies]:
    """Warm up, then alternate slices of bare reads and service load, so that both see the
    same background load on a shared machine. The service's, its read's and Feast's read's latencies."""
    served, service_read, feast_read = Latencies(), Latencies(), Latencies()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
        client = Client(session, url, member_ids, items, args.candidates, args.concurrency)
        await client.run(WARMUP_S, Latencies())
        bare.run(WARMUP_S / 4, Latencies(), Latencies())
        for _ in range(args.slices):
            bare.run(args.duration / args.slices, service_read, feast_read)
            await client.run(args.duration / args.slices, served)
    return served, service_read, feast_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer members, shorter phases")
    parser.add_argument("--members", type=int, default=20_000, help="N: members in the store")
    parser.add_argument("--candidates", type=int, default=100, help="candidates per request")
    parser.add_argument("--concurrency", type=int, default=4, help="C: requests in flight")
    parser.add_argument("--duration", type=float, default=20.0, help="D: seconds measured per phase")
    parser.add_argument("--slices", type=int, default=10, help="the phases alternate this many times")
    parser.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite",
                        help="Feast's online store: SQLite, or a private redis-server started for the run")
    args = parser.parse_args()
    if args.quick:
        args.members, args.duration, args.slices = 2_000, 5.0, 5

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; N={args.members} "
          f"candidates={args.candidates} C={args.concurrency} D={args.duration:g} s; {args.online_store}")
    unwind_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="limaml-serve-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        online_store = ("sqlite" if args.online_store == "sqlite"
                        else stack.enter_context(local_redis(work / "redis")))
        artifacts, feast, member_ids, items = build(work, args.members, online_store)
        bare = BareReads(feast, member_ids)
        port = free_port()
        server = ChildProcess("serve", ["serve", "--port", str(port), "--artifacts-dir", str(artifacts),
                                  "--repo-dir", str(feast.repo_dir), "--online-store", online_store,
                                  "--bootstrap", f"127.0.0.1:{free_port()}"],  # no broker: no refreshes here
                        port, work)
        try:
            server.start()
            served, service_read, feast_read = asyncio.run(measure(f"http://127.0.0.1:{port}/v1/score", bare, member_ids,
                                                   items, args))
            server_mean_ms = (1000 * server.metric("limaml_serve_request_seconds_sum")
                              / server.metric("limaml_serve_request_seconds_count"))
        finally:
            server.stop()
    bare_p50, bare_p99, _ = service_read.summary()
    feast_p50, feast_p99, _ = feast_read.summary()
    p50, p99, rps = served.summary()
    print(f"bare reads (sequential, alternated): the service's MemberLookup.read p50 {bare_p50:.3f} ms  "
          f"p99 {bare_p99:.3f} ms; Feast get_online_features p50 {feast_p50:.3f} ms  p99 {feast_p99:.3f} ms")
    print(f"POST /v1/score, {args.candidates} candidates, {args.concurrency} in flight: p50 {p50:.3f} ms  "
          f"p99 {p99:.3f} ms  {rps:,.0f} requests/s ({len(served.seconds)} requests; "
          f"{server_mean_ms:.3f} ms mean inside the service)")
    print(f"p99_ms={p99:.2f} rps={rps:.0f} overhead_ratio={p99 / bare_p99:.2f}")


if __name__ == "__main__":
    main()

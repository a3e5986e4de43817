"""Meta embeddings written and read per second through limaml's writer and reader, against
bare Feast calls on the same store in the same run.

EmbeddingWriter writes N members in batches of B (each batch: one atomic conditional
write, reading the stored (model_version, seq) and writing the newer rows); the baseline pushes the same rows
with a bare `store.push`. EmbeddingReader reads them back in batches of B; its baseline is
a bare `get_online_features(...).to_dict()`. Passes alternate and the median is kept.
SQLite always; Redis too when redis-server is on PATH (a private one via deploy/redis.sh)
or --redis-url names one. The last line printed is, for SQLite,
`writes_per_s=<x> overhead_ratio=<y>` (overhead_ratio = bare push rate / writer rate).

    python bench/featurestore_rw.py            # ~20 s on 2 CPU cores
    python bench/featurestore_rw.py --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import feast
import numpy as np
import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode

from limaml.featurestore.embeddings import (
    FEATURES,
    JOIN_KEY,
    PUSH_SOURCE,
    VIEW,
    EmbeddingReader,
    EmbeddingWriter,
    MemberEmbedding,
)
from limaml.featurestore.config import FeatureStoreConfig
from limaml.deploy.processes import local_redis, unwind_on_sigterm
from limaml.featurestore.store import open_feature_store


def embeddings(n: int, dim: int, seq: int, rng: np.random.Generator) -> list[MemberEmbedding]:
    now = int(time.time() * 1000)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return [MemberEmbedding(member_id=f"m{index}", vector=vectors[index], model_version="bench",
                            seq=seq, support_size=32, newest_event_ts=now - 1000, adapted_at=now,
                            newest_produced_at=now - 500)
            for index in range(n)]


def bare_frame(batch: list[MemberEmbedding]) -> pd.DataFrame:
    """The rows the writer would push, built the plain way (no stored-row lookup)."""
    return pd.DataFrame({
        JOIN_KEY: [e.member_id for e in batch],
        "meta_embedding": [e.vector for e in batch],
        "model_version": [e.model_version for e in batch],
        "seq": [e.seq for e in batch],
        "support_size": [e.support_size for e in batch],
        "newest_event_ts": [e.newest_event_ts for e in batch],
        "adapted_at": [e.adapted_at for e in batch],
        "event_timestamp": pd.Timestamp.now(tz="UTC"),
    })


def rate(n: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def measure(store: FeatureStore, n: int, batch: int, dim: int, repeats: int) -> dict[str, float]:
    writer, reader = EmbeddingWriter(store, dim), EmbeddingReader(store)
    rng = np.random.default_rng(0)
    ids = [f"m{index}" for index in range(n)]
    batches = [slice(start, start + batch) for start in range(0, n, batch)]
    rates: dict[str, list[float]] = {"ours_w": [], "bare_w": [], "ours_r": [], "bare_r": []}

    def ours_write(rows: list[MemberEmbedding]) -> None:
        for part in batches:
            assert len(writer.write(rows[part])) == len(rows[part]), "a fresh seq was not written"

    def bare_write(rows: list[MemberEmbedding]) -> None:
        for part in batches:
            store.push(PUSH_SOURCE, bare_frame(rows[part]), to=PushMode.ONLINE)

    def ours_read() -> None:
        for part in batches:
            reader.read(ids[part])

    def bare_read() -> None:
        for part in batches:
            store.get_online_features(features=[f"{VIEW}:{name}" for name in FEATURES],
                                      entity_rows=[{JOIN_KEY: m} for m in ids[part]]).to_dict()

    ours_write(embeddings(n, dim, 0, rng))  # warm-up: every member has a row
    for repeat in range(repeats):
        ours_rows, bare_rows = (embeddings(n, dim, 2 * repeat + step, rng) for step in (1, 2))
        rates["ours_w"].append(rate(n, lambda: ours_write(ours_rows)))
        rates["bare_w"].append(rate(n, lambda: bare_write(bare_rows)))
        rates["ours_r"].append(rate(n, ours_read))
        rates["bare_r"].append(rate(n, bare_read))
    return {name: statistics.median(values) for name, values in rates.items()}


def report(name: str, figures: dict[str, float]) -> None:
    print(f"{name:6s} writes/s: writer {figures['ours_w']:8.0f}  bare push {figures['bare_w']:8.0f}  "
          f"(x{figures['bare_w'] / figures['ours_w']:.2f})   reads/s: reader {figures['ours_r']:8.0f}  "
          f"bare get_online_features {figures['bare_r']:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, a few seconds")
    parser.add_argument("--members", type=int, default=2000, help="N: members written per pass")
    parser.add_argument("--batch", type=int, default=100, help="B: embeddings per write / read call")
    parser.add_argument("--meta-dim", type=int, default=32, help="meta embedding size")
    parser.add_argument("--repeats", type=int, default=5, help="passes per path (median kept)")
    parser.add_argument("--redis-url", help="an existing Redis to use instead of a private one")
    args = parser.parse_args()
    if args.quick:
        args.members, args.repeats = 500, 3

    print(f"python {platform.python_version()}, feast {feast.__version__}, {os.cpu_count()} CPUs; "
          f"N={args.members} B={args.batch} meta_dim={args.meta_dim} repeats={args.repeats}")
    unwind_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="limaml-feast-") as work:
        def run(online_store: str) -> dict[str, float]:
            config = FeatureStoreConfig(repo_dir=Path(work) / online_store.split(":")[0],
                                        online_store=online_store, project="limaml_bench")
            return measure(open_feature_store(config), args.members, args.batch, args.meta_dim,
                           args.repeats)

        sqlite = run("sqlite")
        report("sqlite", sqlite)
        if args.redis_url:
            report("redis", run(args.redis_url))
        elif shutil.which("redis-server"):
            with tempfile.TemporaryDirectory(prefix="limaml-redis-") as data_dir, local_redis(Path(data_dir)) as url:
                report("redis", run(url))
        else:
            print("redis  skipped: redis-server is not on PATH")
    print(f"writes_per_s={sqlite['ours_w']:.0f} overhead_ratio={sqlite['bare_w'] / sqlite['ours_w']:.2f}")


if __name__ == "__main__":
    main()

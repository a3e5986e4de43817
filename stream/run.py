"""Start a worker: create the topics it needs, build its Faust app, run until stopped.

Each worker imports only its own app's module: the adaptation worker's pulls in Feast and
torch, about 13 of the 15 s a stream worker took to import both on the loaded 2-core machine
(`python -X importtime`), all of it in the restart after a crash (bench/chaos.py), and about
680 MiB of its resident memory (749 MiB against 66 MiB after the imports).

The cyclic garbage collector is tuned for workers that allocate many short-lived objects per
event over a large heap (Faust, Feast, torch): what exists once the app is built (the imported
modules, the model) is frozen out of its reach (`gc.freeze`), and a collection of the youngest
generation waits for `GC_GEN0_THRESHOLD` new objects instead of 700. At 5,000 events/s, with
the freeze alone, the adaptation worker spent 21 % of its CPU time in collections (3,100 of
the youngest generation and 22 full ones in 20 s); with the threshold too, 5 %
(docs/benchmarks.md).
"""

from __future__ import annotations

import cProfile
import gc
import logging
import os

import faust

from limaml.featurestore.config import FeatureStoreConfig
from limaml.stream.config import AdaptConfig, StreamConfig
from limaml.stream.topics import KafkaConfig, ensure_topics


GC_GEN0_THRESHOLD = 10_000
"""New container objects between two collections of the youngest generation (Python's: 700)."""

PROFILE_ENV = "LIMAML_PROFILE"
"""A path prefix: the worker runs under cProfile and writes its statistics to
`<prefix>.<app id>.<pid>` when it stops (`python -m pstats FILE`). For finding where a
worker's time goes (cProfile is not asyncio-aware: read `tottime`); not for production."""


def freeze_long_lived() -> None:
    """Put what exists now out of the cyclic collector's reach (see the module): once the app
    is built, and again once the adaptation worker's inner loop is compiled, so collections
    need not traverse its graphs and generated code. The collection before the freeze holds
    the interpreter for a moment (0.33 s in an adaptation worker with its loop compiled,
    624,000 objects, on this VM), once per model version."""
    gc.collect()  # garbage frozen would never be freed
    gc.freeze()


def run_app(app: faust.App) -> None:
    """Faust's worker: handles SIGTERM/SIGINT with a graceful stop (commit, flush, close)."""
    level = "debug" if logging.getLogger().isEnabledFor(logging.DEBUG) else "info"
    profile_to = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile() if profile_to else None
    freeze_long_lived()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    if profiler is not None:
        profiler.enable()
    try:
        faust.Worker(app, loglevel=level, quiet=True).execute_from_commandline()
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_to}.{app.conf.id}.{os.getpid()}")


def run_stream_worker(kafka: KafkaConfig, config: StreamConfig, worker_id: str) -> None:
    from limaml.stream.ingest import create_stream_app
    from limaml.stream.table_state import tables_kept_only_after_a_clean_stop

    ensure_topics(kafka)
    app = create_stream_app(kafka, config, worker_id)
    with tables_kept_only_after_a_clean_stop(app):
        run_app(app)


def run_adapt_worker(kafka: KafkaConfig, config: AdaptConfig, feast: FeatureStoreConfig,
                     worker_id: str) -> None:
    from limaml.stream.adapt_worker import create_adapt_app

    ensure_topics(kafka)
    run_app(create_adapt_app(kafka, config, feast, worker_id))

"""Start a worker: create the topics it needs, build its Faust app, run until stopped.

Each worker imports only its own app's module: the adaptation worker's pulls in Feast and
torch, about 13 of the 15 s a stream worker took to import both on the loaded 2-core machine
(`python -X importtime`), all of it in the restart after a crash (bench/chaos.py), and about
680 MiB of its resident memory (749 MiB against 66 MiB after the imports).

The cyclic garbage collector is tuned as in the scoring service (`limaml.garbage_collection`).
"""

from __future__ import annotations

import cProfile
import logging
import os

import faust

from limaml.featurestore.config import FeatureStoreConfig
from limaml.garbage_collection import tune_for_a_long_running_process
from limaml.stream.config import AdaptConfig, StreamConfig
from limaml.stream.topics import KafkaConfig, ensure_topics


PROFILE_ENV = "LIMAML_PROFILE"
"""A path prefix: the worker runs under cProfile and writes its statistics to
`<prefix>.<app id>.<pid>` when it stops (`python -m pstats FILE`). For finding where a
worker's time goes (cProfile is not asyncio-aware: read `tottime`); not for production."""


def run_app(app: faust.App) -> None:
    """Faust's worker: handles SIGTERM/SIGINT with a graceful stop (commit, flush, close)."""
    level = "debug" if logging.getLogger().isEnabledFor(logging.DEBUG) else "info"
    profile_to = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile() if profile_to else None
    tune_for_a_long_running_process()
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

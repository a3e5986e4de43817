"""The Faust apps' Kafka consumer: built with the short broker fetch wait (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from limaml.adapters.registry import load_dataset
from limaml.featurestore.config import FeatureStoreConfig
from limaml.stream.adapt_worker import create_adapt_app
from limaml.stream.config import AdaptConfig, StreamConfig
from limaml.stream.faust_client import FETCH_MAX_WAIT_MS
from limaml.stream.ingest import create_stream_app
from limaml.stream.topics import KafkaConfig

from conftest import save_tiny_model


@pytest.mark.asyncio
async def test_both_worker_kinds_consume_with_the_short_fetch_wait(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "artifacts", load_dataset("synthetic:n_members=30,n_items=20,seed=3"))
    apps = [create_stream_app(KafkaConfig(), StreamConfig(data_dir=tmp_path / "stream")),
            create_adapt_app(KafkaConfig(), AdaptConfig(artifacts_dir=tmp_path / "artifacts",
                                                        data_dir=tmp_path / "adapt"),
                             FeatureStoreConfig(repo_dir=tmp_path / "feast"))]
    for app in apps:
        thread = app.consumer._thread  # where Faust creates its aiokafka consumer
        consumer = thread._create_worker_consumer(app.transport)
        try:
            assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS < 1500  # Faust's own: 1.5 s
        finally:
            await consumer.stop()
            thread.thread_loop.close()

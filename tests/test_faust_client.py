"""The Faust apps' Kafka consumer: built with the short broker fetch wait (no broker needed)."""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path

import pytest
from faust.types import TP, Message

from limaml.adapters.registry import load_dataset
from limaml.featurestore.config import FeatureStoreConfig
from limaml.stream.adapt_worker import create_adapt_app
from limaml.stream.config import AdaptConfig, StreamConfig
from limaml.stream.faust_client import FAUST_VERSION, FETCH_MAX_WAIT_MS
from limaml.stream.ingest import create_stream_app
from limaml.stream.topics import KafkaConfig

from conftest import save_tiny_model


@pytest.mark.asyncio
async def test_both_worker_kinds_consume_with_the_short_fetch_wait_as_static_members(tmp_path: Path) -> None:
    """Besides the fetch wait: each worker joins its group as a static member named after its
    host and web port, so that a worker restarted on its port takes its own place without
    waiting for the dead one's session to time out, and one restarted on another port (whose
    assignment would name another URL) is another member."""
    save_tiny_model(tmp_path / "artifacts", load_dataset("synthetic:n_members=30,n_items=20,seed=3"))
    kafka, host = KafkaConfig(topic_prefix="shop"), socket.gethostname()
    apps = {f"shop-stream-{host}-6070": create_stream_app(kafka, StreamConfig(data_dir=tmp_path / "stream",
                                                                              web_port=6070)),
            f"shop-adapt-{host}-6071": create_adapt_app(kafka, AdaptConfig(artifacts_dir=tmp_path / "artifacts",
                                                                           data_dir=tmp_path / "adapt", web_port=6071),
                                                        FeatureStoreConfig(repo_dir=tmp_path / "feast"))}
    for instance_id, app in apps.items():
        thread = app.consumer._thread  # where Faust creates its aiokafka consumer
        consumer = thread._create_worker_consumer(app.transport)
        try:
            assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS < 1500  # Faust's own: 1.5 s
            assert consumer._group_instance_id == instance_id
        finally:
            await consumer.stop()
            thread.thread_loop.close()


@pytest.mark.asyncio
async def test_a_message_is_delivered_without_the_suspend_race_only_when_its_delivery_cannot_wait(
        tmp_path: Path) -> None:
    """The stream worker's consumer awaits the conductor's callback directly (no `wait_first`
    tasks) only when nothing in it can suspend: flow running, room in the message's queues
    (the producer buffer, the other place it could wait, is never used). Otherwise it races
    the callback against a rebalance's suspension, as Faust does."""
    app = create_stream_app(KafkaConfig(), StreamConfig(data_dir=tmp_path / "stream"), store="memory://")
    consumer = app.consumer
    try:
        tp = TP(topic="limaml.interactions", partition=1)
        channel = app.topic(tp.topic)
        message = Message(topic=tp.topic, partition=tp.partition, offset=0, timestamp=0.0, timestamp_type=0,
                          headers=None, key=b"m", value=b"{}", checksum=None)
        assert not consumer._delivers_at_once(message)  # no channel subscribes to its partition yet
        app.topics._tp_index[tp].add(channel)
        app.flow_control.resume()
        assert consumer._delivers_at_once(message)

        consumer.suspend_flow.set()  # a rebalance began
        assert not consumer._delivers_at_once(message)
        consumer.suspend_flow.clear()
        app.flow_control.suspend()
        assert not consumer._delivers_at_once(message)
        app.flow_control.resume()

        with pytest.raises(NotImplementedError, match="send_soon"):  # nothing fills the buffer
            app.topic("limaml.dead-letters").send_soon(key=b"m", value=b"{}")

        queue = channel.queue
        while not queue.full():
            queue.put_nowait(None)
        assert not consumer._delivers_at_once(message)
    finally:
        consumer._thread.thread_loop.close()


def test_the_installed_faust_is_the_version_the_copies_of_its_private_code_follow() -> None:
    """`LowLatencyConsumer._drain_messages` copies faust-streaming's private fetch loop, and
    `event_batches` its stream iterator's bookkeeping: another version may have changed them.
    Compare the copies with the new version's before moving this."""
    assert version("faust-streaming") == FAUST_VERSION

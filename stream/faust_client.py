"""Faust apps on Kafka, with corrections to Faust's client for a low-latency stream.

1. A shorter broker-side fetch wait, and a larger least fetch (`FETCH_MIN_BYTES`). aiokafka
   keeps one fetch request in flight per broker, and leaves out of it every partition whose
   fetched records are not all consumed yet. When the partitions left in it are idle
   (Faust's leader topic, the refresh requests), the broker holds the request for the whole
   fetch wait, which Faust fixes at 1.5 s, and the busy partitions cannot be fetched until
   it returns: at 1,000 events/s the stream worker applied events 1.1 s after they were
   produced on average, 0.2 s with a 50 ms wait (docs/benchmarks.md).
2. Source partitions resume where the restored table says, not only where the group
   committed (see `resume_from_table_offsets` and `limaml.stream.source_offsets`).
3. A fetch loop that delivers a message without racing it against a rebalance's
   suspension (four asyncio tasks per message) when its delivery cannot suspend anyway,
   and that never delivers records a fetch brought back from before a seek of their
   partition (see `LowLatencyConsumer._drain_messages`).
4. A producer that sends through librdkafka, and tables whose changelog records skip
   Faust's per-message send path (`limaml.stream.librdkafka_producer`); nothing goes through
   Faust's producer buffer.

The apps connect with `[kafka]`'s security settings (see `broker_credentials`), the workers
join their consumer groups as static members (see `group_instance_id`), and every
topic Faust creates itself (table changelogs, internal topics) gets limaml's topic
config, `min.insync.replicas` above all (see `create_topics_with`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping, Set
from typing import Any
from weakref import WeakKeyDictionary

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from limaml.stream.librdkafka_producer import send_through_librdkafka
from limaml.stream.topics import KafkaConfig

log = logging.getLogger(__name__)

FAUST_VERSION = "0.15.3"
"""The faust-streaming version whose private code `LowLatencyConsumer._drain_messages` and
`limaml.stream.event_batches` copy (tests/test_faust_client.py fails on another one: compare
the copies with it first)."""

FETCH_MIN_BYTES = 64 * 1024
"""The broker answers a fetch once it has this much for it, or after `FETCH_MAX_WAIT_MS`.
With aiokafka's 1 byte, at 1,000 events/s the consumer fetched as fast as round trips
allowed, a few records at a time, and a stream worker spent 0.54 ms of CPU per event
(0.27 ms with this; an event waits at most the fetch wait longer)."""
FETCH_MAX_WAIT_MS = 50
"""The longest the broker holds a fetch request that finds too few new records. An idle
worker sends about 20 empty fetches a second: nothing for a broker."""


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer


ResumeOffsets = Callable[[Set[TP]], Mapping[TP, int]]
"""The assigned partitions -> where to resume reading some of them (the next offset)."""

_resume_offsets: WeakKeyDictionary[faust.App, ResumeOffsets] = WeakKeyDictionary()


class LowLatencyConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeks = 0
        """Seeks made so far (see `_drain_messages`)."""
        self._last_seeks: dict[TP, tuple[int, int]] = {}
        """partition -> (the count of seeks once its last seek was made, the offset it sought)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _note_seek(self, tp: TP, offset: int) -> None:
        self._seeks += 1
        self._last_seeks[tp] = (self._seeks, offset)

    async def _seek(self, partition: TP, offset: int) -> None:
        await super()._seek(partition, offset)
        self._note_seek(partition, offset)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets (after every rebalance, once the tables are restored),
        except where the app has resume offsets of its own; the offsets read from next."""
        committed = await super().seek_to_committed()
        for tp, offset in committed.items():
            if offset and offset > 0:  # the offsets aiokafka's `seek_to_committed` seeks to
                self._note_seek(tp, offset)
        resume = await self.seek_to_resume_offsets()
        for tp, offset in resume.items():
            if offset != committed.get(tp):
                log.info("%s[%d]: resuming at offset %d, where the restored table ends (committed: %s)",
                         tp.topic, tp.partition, offset, committed.get(tp))
        return {**committed, **resume}

    async def seek_to_resume_offsets(self) -> Mapping[TP, int]:
        """Seek the assigned partitions the app has resume offsets for to them; those offsets.
        Also called before the partitions resume (Faust resumes them, then seeks to the
        committed offsets, and reads in between)."""
        resume_offsets = _resume_offsets.get(self.app)
        offsets = {} if resume_offsets is None else resume_offsets(self.assignment())
        for tp, offset in offsets.items():
            await self._seek(tp, offset)
        return offsets

    def _delivers_at_once(self, message: Any) -> bool:
        """Whether the conductor's callback for `message` will run to its end without
        suspending: flow not suspended, no callback-map update under way, and room in every
        queue the message goes to: the places where `Conductor._build_handler`'s callback can
        wait. (It also waits while Faust's producer buffer is full, which cannot happen here:
        `LibrdkafkaProducer` refuses to buffer.)"""
        app = self.app
        conductor = app.topics
        if (self.suspend_flow.is_set() or not app.flow_control.is_active()
                or conductor._tp_to_callback_lock.locked()):
            return False
        channels = conductor._tp_index.get(message.tp)
        return channels is not None and not any(channel.queue.full() for channel in channels)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        """Faust's fetch loop (faust-streaming 0.15.3 `Consumer._drain_messages`, copied), with
        two changes.

        A message whose delivery cannot suspend (`_delivers_at_once`) is delivered by
        awaiting the callback directly. Faust races every delivery against `suspend_flow`
        with `wait_first`, which creates four asyncio tasks per message: the largest part of
        a stream worker's time per event (docs/benchmarks.md). A callback that does not
        suspend runs to its end before any other task, so the race could not have abandoned
        it: the result is the same.

        Records of a partition sought while the fetch that brought them was under way are
        not delivered: the partition is sought again to the same offset, and read from there.
        After a rebalance Faust resumes the flow (to read the changelogs) before it seeks the
        source partitions, so a fetch can return records read from a partition's position
        before the seek. Delivered, such a record moved the partition's read offset past the
        records at the sought offset, which were then dropped as already read: never applied,
        their partition's commit held back or moved past them (a gap), for good."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        delivers_at_once = self._delivers_at_once
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                seeks_before, sought_again = self._seeks, set()
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        if self._seeks != seeks_before and await self._sought_since(
                                tp, seeks_before, sought_again):
                            continue
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            if delivers_at_once(message):
                                await callback(message)
                            else:
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key,
                                         message.value)
                    unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    async def _sought_since(self, tp: TP, seeks_before: int, sought_again: set[TP]) -> bool:
        """Whether `tp` was sought since the count of seeks was `seeks_before` (a fetch began).
        If so, and not yet done for this fetch (`sought_again`), seek it once more to the same
        offset: the fetch may have moved its position past it (`_drain_messages`)."""
        seeks, offset = self._last_seeks.get(tp, (0, 0))
        if seeks <= seeks_before:
            return False
        if tp not in sought_again:
            sought_again.add(tp)
            await self.seek(tp, offset)
        return True


def resume_from_table_offsets(app: faust.App, resume_offsets: ResumeOffsets) -> None:
    """After each rebalance, resume reading the partitions `resume_offsets` names at the offsets
    it gives instead of the group's committed ones (`limaml.stream.source_offsets` says why).
    The app's table recovery callback must call `app.consumer.seek_to_resume_offsets()`."""
    _resume_offsets[app] = resume_offsets


def create_faust_app(kafka: KafkaConfig, role: str, **settings: Any) -> faust.App:
    """A Faust app of one worker kind ("stream", "adapt") with limaml's shared Kafka settings;
    a worker with a web port joins its consumer group as a static member (`group_instance_id`)."""
    web_port = settings.get("web_port")
    if web_port is not None:
        settings = {"consumer_group_instance_id": group_instance_id(kafka, role, web_port), **settings}
    app = faust.App(kafka.faust_app_id(role), **kafka.faust_settings(),
                    broker_credentials=broker_credentials(kafka), **settings)
    app.transport.Consumer = LowLatencyConsumer  # before `app.consumer` is first created
    send_through_librdkafka(app, kafka)  # before `app.producer` is first created and tables declared
    create_topics_with(app, kafka.topic_config)
    return app


def group_instance_id(kafka: KafkaConfig, role: str, web_port: int) -> str:
    """The worker's static membership of its consumer group (KIP-345): its host and web port.

    A dynamic member that dies holds its partitions until its session times out: the rebalance
    for its restarted successor waits for the dead member's session to end. In the chaos
    benchmark a stream worker killed with kill -9 rejoined its group 8.7 s after the kill and
    applied nothing in between (bench/chaos.py, 14:24 UTC run in docs/benchmarks.md). A static
    member restarted under the same id takes its own place at once, with its assignment.

    The web port is part of the id because Faust's assignor asserts that an assignment names
    the worker's own URL (`PartitionAssignor.on_assignment`): a worker restarted on another
    port is another member (and waits, as a dynamic one would), never the old one with a
    foreign URL; an id without the port made such a worker die in its coordinator. The host
    keeps copies of a worker on different machines (`--scale adapt=N`) apart. The cost: a static
    member that stops does not leave the group, so its partitions move to the other workers
    only after its session timeout (`[kafka] session_timeout_s`)."""
    return f"{kafka.faust_app_id(role)}-{socket.gethostname()}-{web_port}"


def broker_credentials(kafka: KafkaConfig) -> faust.types.auth.CredentialsT | None:
    """Faust's `broker_credentials` for `kafka`'s security settings; None for PLAINTEXT."""
    if kafka.uses_sasl:
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_secret(),
                                     mechanism=kafka.sasl_mechanism,
                                     ssl_context=tls_context(kafka) if kafka.uses_tls else None)
    if kafka.uses_tls:
        return faust.SSLCredentials(tls_context(kafka))
    return None


def tls_context(kafka: KafkaConfig) -> ssl.SSLContext:
    """The TLS context of the aiokafka clients: the CA, and the client certificate if any."""
    context = ssl.create_default_context(cafile=kafka.ssl_cafile or None)
    if kafka.ssl_client_certfile:
        context.load_cert_chain(kafka.ssl_client_certfile, kafka.ssl_client_keyfile)
    return context


def create_topics_with(app: faust.App, topic_config: Mapping[str, str]) -> None:
    """Give every topic Faust creates `topic_config` (under the topic's own settings, such as a
    changelog's compaction). Faust sets a created topic's replication factor from the app's
    settings but nothing else; a changelog whose writes were acknowledged by one replica
    would lose table rows with its leader."""
    if not topic_config:
        return
    transport = app.transport
    create_topic = transport._create_topic  # every Faust topic creation goes through it

    async def create_topic_with_config(owner: Any, client: Any, topic: str, partitions: int,
                                       replication: int, *, config: Mapping[str, Any] | None = None,
                                       **options: Any) -> None:
        await create_topic(owner, client, topic, partitions, replication,
                           config={**topic_config, **(config or {})}, **options)

    transport._create_topic = create_topic_with_config


"""Kafka connection settings, the topics of the data contracts, and their creation.

Every topic keyed by member_id has the same number of partitions and every producer uses
Kafka's default (murmur2) partitioner, so one worker owns all of a member's records and
table rows. Kafka would auto-create a missing topic with the broker's default partition
count on first use, so the workers and the replay producer create them first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from limaml.layered_config import ConfigError, read_secret

log = logging.getLogger(__name__)

PRODUCER_PARTITIONER = "murmur2_random"
"""confluent-kafka's name for the Java client's partitioner, which Faust (aiokafka) uses too."""
PRODUCER_ACKS = -1
"""acks=all for every limaml producer: a write is acknowledged only once every in-sync replica
has it (at least `KafkaConfig.min_insync_replicas`). Not configurable: acks=1 loses the
acknowledged writes a failed leader had not replicated yet. (The confluent-kafka producers are
idempotent, which implies acks=all.)"""


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "PLAIN")
PASSWORD_FIELDS = ("sasl_password", "sasl_password_file")
"""The settings that give the SASL password (for a file or an environment variable, and off
command lines)."""


class KafkaConnectionError(ConfigError):
    """No connection to the cluster: no broker answers, the credentials are refused, or the
    listener speaks another protocol (the bootstrap or the security settings are wrong).
    The message says which."""


def member_partition(member_id: str, partitions: int) -> int:
    """The partition a member's records land in: Kafka's default partitioner, murmur2 of
    the key (the producers' `PRODUCER_PARTITIONER` and Faust's)."""
    return (murmur2(member_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
    topic_prefix: str = "limaml"  # every topic name starts with this
    partitions: int = 4  # partitions of each limaml topic: the most workers of one kind
    replication_factor: int = 1  # copies of each partition of the topics limaml creates (3 on a production cluster)
    min_insync_replicas: int = 0  # copies a write must reach before it is acknowledged (2 with 3 copies; 0: the broker's default)
    session_timeout_s: float = 10.0  # a worker silent this long loses its partitions to the others
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    sasl_mechanism: str = "SCRAM-SHA-512"  # SCRAM-SHA-512 or PLAIN (with SASL_*)
    sasl_username: str = ""  # SASL user (with SASL_*)
    sasl_password: str = field(default="", repr=False)  # SASL password (with SASL_*); never logged
    sasl_password_file: str = ""  # file holding sasl_password, read at start (a mounted secret)
    ssl_cafile: str = ""  # CA certificate(s), PEM, the brokers' certificates are checked against (with SSL, SASL_SSL; "": the system's)
    ssl_client_certfile: str = ""  # client certificate, PEM, for brokers that require one (with SSL, SASL_SSL)
    ssl_client_keyfile: str = ""  # the client certificate's private key, PEM

    def __post_init__(self) -> None:
        self._check_security()
        if self.replication_factor < 1:
            raise ConfigError(f"replication_factor must be >= 1, got {self.replication_factor}")
        if not 0 <= self.min_insync_replicas <= self.replication_factor:
            raise ConfigError(f"min_insync_replicas must be between 0 (the broker's default) and "
                              f"replication_factor ({self.replication_factor}), got "
                              f"{self.min_insync_replicas}: no write could be acknowledged")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def _check_security(self) -> None:
        """Fail at start, with what to change, on a combination that could not connect or
        would silently ignore a credential."""
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                              f"got {self.security_protocol!r}")
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"sasl_mechanism must be {' or '.join(SASL_MECHANISMS)}, got {self.sasl_mechanism!r}")
        password = self.sasl_secret()
        if self.uses_sasl and not (self.sasl_username and password):
            raise ConfigError(f"security_protocol {self.security_protocol} needs sasl_username and "
                              "sasl_password (or sasl_password_file)")
        if not self.uses_sasl and (self.sasl_username or password):
            raise ConfigError(f"sasl_username/sasl_password are set but security_protocol is "
                              f"{self.security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
        tls_files = {"ssl_cafile": self.ssl_cafile, "ssl_client_certfile": self.ssl_client_certfile,
                     "ssl_client_keyfile": self.ssl_client_keyfile}
        given = [name for name, path in tls_files.items() if path]
        if given and not self.uses_tls:
            raise ConfigError(f"{', '.join(given)} set but security_protocol is {self.security_protocol}: "
                              "use SSL or SASL_SSL")
        if bool(self.ssl_client_certfile) != bool(self.ssl_client_keyfile):
            raise ConfigError("give ssl_client_certfile and ssl_client_keyfile together "
                              "(a client certificate and its key)")
        for name in given:
            if not Path(tls_files[name]).is_file():
                raise ConfigError(f"{name} {tls_files[name]} does not exist")

    def sasl_secret(self) -> str:
        """The SASL password, from `sasl_password` or read from `sasl_password_file`."""
        return read_secret(self.sasl_password, self.sasl_password_file, "sasl_password")

    def client_config(self) -> dict[str, Any]:
        """The librdkafka (confluent-kafka) settings of a producer, consumer or admin client
        of this cluster: its address and the security settings. Holds the password: never log it."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap,
                                  "security.protocol": self.security_protocol}
        if self.uses_sasl:
            config |= {"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.sasl_username,
                       "sasl.password": self.sasl_secret()}
        if self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        if self.ssl_client_certfile:
            config |= {"ssl.certificate.location": self.ssl_client_certfile,
                       "ssl.key.location": self.ssl_client_keyfile}
        return config

    @property
    def topic_config(self) -> dict[str, str]:
        """The Kafka config every topic limaml creates gets, Faust's changelogs included: with
        acks=all a write is acknowledged once `min_insync_replicas` copies have it, so losing
        fewer brokers than that loses no acknowledged event or table write. Empty when the
        broker's default applies."""
        return {"min.insync.replicas": str(self.min_insync_replicas)} if self.min_insync_replicas else {}

    def faust_app_id(self, role: str) -> str:
        """Consumer group and changelog-topic namespace of a worker kind, under the prefix."""
        return f"{self.topic_prefix}-{role}"

    def faust_settings(self) -> dict[str, object]:
        """The Faust settings every limaml worker shares."""
        return {
            "broker": self.faust_broker,
            "topic_partitions": self.partitions,
            "topic_replication_factor": self.replication_factor,
            # Every write (changelog, adapt request, embedding) waits for all in-sync replicas.
            "producer_acks": PRODUCER_ACKS,
            "broker_session_timeout": self.session_timeout_s,
            "broker_heartbeat_interval": self.session_timeout_s / 5,
            "consumer_auto_offset_reset": "earliest",
            # Batch produce requests (changelog writes, adapt requests) for a few ms instead of
            # sending one request per message (librdkafka's `linger.ms`).
            "producer_linger_ms": 5,
            # Hand the agents at most 200 fetched records at a time. Unbounded, one poll
            # returned thousands, delivered one by one before the next poll, so events waited
            # in the consumer's buffer: at 1,000 events/s the stream worker applied them 2.6-3.4 s
            # after they were produced, 1.3-1.8 s with this (docs/benchmarks.md).
            "broker_max_poll_records": 200,
            # Room for about a hundred 2.4 KB support-set changelog writes per partition in one
            # produce request (librdkafka's `batch.size`). With aiokafka, which the apps sent
            # through before, and Kafka's 16 KiB, the stream worker spent 17 % of a backlog
            # waiting for full batches (4,300 events/s; 4,800 with this).
            "producer_max_batch_size": 256 * 1024,
        }

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{server.strip()}" for server in self.bootstrap.split(","))


def _topic(suffix: str, doc: str) -> property:
    """A topic name: the prefix, a dot, `suffix`."""
    return property(lambda names: f"{names.prefix}.{suffix}", doc=doc)


@dataclass(frozen=True)
class TopicNames:
    prefix: str = "limaml"  # every topic name starts with this

    interactions = _topic("interactions", "JSON interaction events, keyed by member_id.")
    dead_letters = _topic("interactions.dlq", "Events that failed validation: raw bytes, reason, source offset.")
    adapt_requests = _topic("adapt-requests", "Support-set snapshots to adapt, keyed by member_id.")
    adapt_answers = _topic("adapt-answers", "Every served adapt request, its embedding written or superseded "
                           "by a stored newer one, keyed by member_id: what settles the stream workers' "
                           "outstanding request.")
    refresh_requests = _topic("refresh-requests", "Members to re-adapt from their stored support set (a "
                              "scoring service saw an embedding of another model version; a backfill after "
                              "a model switch), keyed by member_id.")
    erasure_requests = _topic("erasure-requests", "Members to forget (`limaml forget`), keyed by member_id: "
                              "the member's stream worker deletes its support set and forwards the erasure "
                              "to the adaptation workers.")
    erasure_answers = _topic("erasure-answers", "Erasures done: every store cleaned of the member, keyed by "
                             "member_id.")
    meta_embeddings = _topic("meta-embeddings", "Compacted: the latest meta embedding of each member.")


def topic_specs(config: KafkaConfig) -> dict[str, dict[str, str]]:
    """Topic name -> its Kafka config."""
    names = TopicNames(config.topic_prefix)
    common = config.topic_config
    return {
        names.interactions: common,
        names.dead_letters: common,
        names.adapt_requests: common,
        names.adapt_answers: common,
        names.refresh_requests: common,
        names.erasure_requests: common,
        names.erasure_answers: common,
        names.meta_embeddings: common | {"cleanup.policy": "compact"},  # the latest embedding per member
    }


def ensure_topics(config: KafkaConfig, timeout_s: float = 30.0) -> None:
    """Create missing topics; fail if an existing one has another partition count."""
    admin = connect_admin(config, timeout_s)
    existing = admin.list_topics(timeout=timeout_s).topics
    specs = topic_specs(config)
    missing = [NewTopic(name, num_partitions=config.partitions,
                        replication_factor=config.replication_factor, config=settings)
               for name, settings in specs.items() if name not in existing]
    for name, future in (admin.create_topics(missing) if missing else {}).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s with %d partitions", name, config.partitions)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another process won
                raise
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(name in topics and not topics[name].error for name in specs):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {sorted(specs)} not ready after {timeout_s} s")
        time.sleep(0.1)
    wrong = {name: len(topics[name].partitions) for name in specs
             if len(topics[name].partitions) != config.partitions}
    if wrong:
        raise ValueError(f"topics {wrong} do not have {config.partitions} partitions: members "
                         "would not be co-partitioned. Use the same --partitions everywhere, "
                         "or recreate the topics.")


def connect_admin(config: KafkaConfig, timeout_s: float = 30.0) -> AdminClient:
    """An admin client that has reached the cluster. Otherwise a KafkaConnectionError with
    the client's last error (refused credentials, a TLS listener spoken to in plaintext, no
    broker) once timeout_s has passed, or at once when the credentials are refused."""
    errors: list[KafkaError] = []
    admin = AdminClient(config.client_config() | {"error_cb": errors.append})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return admin
        except KafkaException:
            admin.poll(0)  # serves error_cb
        refused = next((error for error in errors if error.code() == KafkaError._AUTHENTICATION), None)
        if refused is not None:
            raise KafkaConnectionError(f"Kafka at {config.bootstrap} refused sasl_username "
                                       f"{config.sasl_username!r} ({config.sasl_mechanism}): {refused.str()}")
        if time.monotonic() > deadline:
            causes = [error for error in errors if error.code() != KafkaError._ALL_BROKERS_DOWN]
            reason = (causes or errors)[-1].str() if errors else "no answer"
            raise KafkaConnectionError(f"no Kafka broker answers at bootstrap {config.bootstrap} with "
                                       f"security_protocol {config.security_protocol} within {timeout_s} s: "
                                       f"{reason}")

"""Open limaml's Feast feature store: render the repo into a working dir and apply it.

The declarations live in `featurestore/repo/` (definitions.py, .feastignore, the default
profile_fields.json). `open_feature_store` copies them into the working dir, renders
`feature_store.yaml` for the configured online store (SQLite file or Redis), creates the
empty parquet batch sources Feast insists on, and applies the definitions. The result is
an ordinary Feast repo, so the plain CLI works in it too:

    cd .cache/feast && feast apply && feast feature-views list

A second call with the same configuration only re-reads a fingerprint and opens the store.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import feast
import pyarrow as pa
import pyarrow.parquet as pq
import redis.exceptions
from feast import Entity, FeatureStore, FeatureView, FileSource, PushSource
from feast.type_map import feast_value_type_to_pa

from limaml.featurestore.config import FeatureStoreConfig, without_password
from limaml.layered_config import ConfigError, read_secret

logger = logging.getLogger(__name__)

DECLARATIONS_DIR = Path(__file__).resolve().parent / "repo"
COPIED_FILES = ("definitions.py", ".feastignore")
PROFILE_FIELDS_FILE = "profile_fields.json"
FINGERPRINT_FILE = "data/applied.sha256"
REGISTRY_PATH = "data/registry.db"
SQLITE_PATH = "data/online_store.db"
EVENT_TIMESTAMP = "event_timestamp"  # the timestamp_field of every source in definitions.py
_FEAST_OBJECTS = (Entity, FeatureView, FileSource, PushSource)
REDIS_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
"""The query options a rediss:// URL may carry (redis-py's names): a private CA, a client
certificate and key, and whether the server's certificate is checked ("required", the default)."""


class OnlineStoreUnavailable(ConfigError):
    """The Redis online store did not answer (down, or out of reach): the CLI reports it in
    one line, not as a traceback."""


@contextmanager
def online_store_answering(config: FeatureStoreConfig) -> Iterator[None]:
    """Raise redis-py's connection errors as an OnlineStoreUnavailable that names the store
    (its password masked) and what to do."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        raise OnlineStoreUnavailable(f"the online store {config.shown_online_store} did not answer ({error}): "
                                     "start it, or set online_store to a server that runs") from None


def open_feature_store(config: FeatureStoreConfig) -> FeatureStore:
    """The applied feature store of `config`; renders and applies the repo when it changed."""
    repo = config.repo_dir.resolve()
    (repo / "data").mkdir(parents=True, exist_ok=True)
    with _locked(repo / "data" / ".lock"):  # workers sharing a working dir apply one at a time
        texts = {name: (DECLARATIONS_DIR / name).read_text() for name in COPIED_FILES}
        texts[PROFILE_FIELDS_FILE] = _profile_fields_json(config.profile_fields)
        texts["feature_store.yaml"] = render_feature_store_yaml(config)
        settings_file = repo / "feature_store.yaml"  # it may hold the Redis password: its owner's only
        settings_file.touch(mode=0o600)
        settings_file.chmod(0o600)
        for name, text in texts.items():
            _write_if_changed(repo / name, text)
        # Without a password given apart: changing it (a rotation) needs no new apply.
        applied_texts = texts | {"feature_store.yaml": render_feature_store_yaml(
            replace(config, redis_password="", redis_password_file=""))}
        fingerprint = hashlib.sha256(json.dumps([feast.__version__, applied_texts]).encode()).hexdigest()
        fingerprint_path = repo / FINGERPRINT_FILE
        store = FeatureStore(repo_path=str(repo))
        applied = [fingerprint_path, repo / REGISTRY_PATH]
        if config.online_store == "sqlite":
            applied.append(repo / SQLITE_PATH)
        if all(path.is_file() for path in applied) and fingerprint_path.read_text() == fingerprint:
            return store
        objects = declared_objects(repo / "definitions.py")
        for source in objects:
            if isinstance(source, FileSource):
                _seed_batch_source(repo / source.path, _source_schema(source, objects))
        with online_store_answering(config):  # Redis is touched only to delete a removed view's rows
            store.apply(objects)
        if config.online_store == "sqlite":
            _use_write_ahead_log(repo / SQLITE_PATH)
        fingerprint_path.write_text(fingerprint)
        logger.info("applied the Feast repo in %s (online store %s)", repo, config.shown_online_store)
        return store


def render_feature_store_yaml(config: FeatureStoreConfig) -> str:
    """feature_store.yaml for the local provider, a file registry and the chosen online store."""
    if config.online_store == "sqlite":
        online = {"type": "sqlite", "path": SQLITE_PATH}
    elif config.online_store.startswith(("redis://", "rediss://")):
        password = read_secret(config.redis_password, config.redis_password_file, "redis_password")
        online = {"type": "redis", "connection_string": redis_connection_string(config.online_store, password)}
    else:
        raise ValueError(f"online_store must be 'sqlite' or a redis:// URL, got {config.shown_online_store!r}")
    lines = [
        "# Rendered by limaml.featurestore.store.open_feature_store; edits are overwritten.",
        f"project: {json.dumps(config.project)}",
        "provider: local",
        f"registry: {REGISTRY_PATH}",
        "online_store:",
        *(f"  {key}: {json.dumps(value)}" for key, value in online.items()),
        "offline_store:",
        "  type: dask",
        "entity_key_serialization_version: 3",
        "auth:",
        "  type: no_auth",
    ]
    return "\n".join(lines) + "\n"


def redis_connection_string(url: str, password: str = "") -> str:
    """A redis[s]://[[user]:password@]host[:port][/db][?ssl_option=value&...] URL (redis-py's
    form; the password may instead come apart) in Feast's `host:port,db=N,...` form. Feast
    hands these keys to redis-py's client; string values are written as JSON strings, which
    Feast reads back as such (a bare 123 or true would become a number or a boolean)."""
    shown = without_password(url)
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"Redis URL {shown!r} has no host")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"Redis URL {shown!r}: the path must be a database number, got {db!r}")
    if parts.password and password:
        raise ValueError(f"Redis URL {shown!r} holds a password and redis_password gives another: give one")
    values: dict[str, str] = {}
    if parts.username:
        values["username"] = urllib.parse.unquote(parts.username)
    if parts.password or password:
        values["password"] = urllib.parse.unquote(parts.password) if parts.password else password
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in REDIS_TLS_OPTIONS:
            raise ValueError(f"Redis URL {shown!r}: unknown option {name!r}; known: {', '.join(REDIS_TLS_OPTIONS)}")
        if parts.scheme != "rediss":
            raise ValueError(f"Redis URL {shown!r}: {name} needs a rediss:// URL")
        values[name] = value
    if any(mark in value for value in values.values() for mark in ",$"):
        # Feast splits its connection string at ',' and expands $VARIABLES in feature_store.yaml.
        raise ValueError(f"Redis URL {shown!r}: Feast's connection string cannot hold a ',' or a '$'")
    params = [f"{parts.hostname}:{parts.port or 6379}", f"db={db}"]
    params += [f"{name}={json.dumps(value)}" for name, value in values.items()]
    if parts.scheme == "rediss":
        params.append("ssl=true")
    return ",".join(params)


def declared_objects(definitions: Path) -> list[Any]:
    """The Feast objects a definitions module declares (what `feast apply` would collect)."""
    module = _load_module(definitions)
    objects: list[Any] = []
    for value in vars(module).values():
        if isinstance(value, _FEAST_OBJECTS) and not any(value is known for known in objects):
            objects.append(value)
    return objects


def _load_module(path: Path) -> ModuleType:
    # A name of its own per working dir: two stores in one process never share a module.
    name = "limaml_feast_repo_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the Feast definitions {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _profile_fields_json(profile_fields: str) -> str:
    if not profile_fields.strip():
        return (DECLARATIONS_DIR / PROFILE_FIELDS_FILE).read_text()
    names = [name.strip() for name in profile_fields.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"profile_fields must be distinct non-empty names, got {profile_fields!r}")
    return json.dumps(names) + "\n"


def _source_schema(source: FileSource, objects: list[Any]) -> pa.Schema:
    """Arrow schema of a file source: join keys, the features of the views it feeds, the time."""
    entities = {entity.name: entity for entity in objects if isinstance(entity, Entity)}
    fields: dict[str, pa.DataType] = {}
    for view in objects:
        if isinstance(view, FeatureView) and view.batch_source is source:
            for name in view.entities:
                fields[entities[name].join_key] = feast_value_type_to_pa(entities[name].value_type)
            for feature in view.features:
                fields[feature.name] = feast_value_type_to_pa(feature.dtype.to_value_type())
    fields[EVENT_TIMESTAMP] = pa.timestamp("us", tz="UTC")
    return pa.schema(list(fields.items()))


def _seed_batch_source(path: Path, schema: pa.Schema) -> None:
    """An empty parquet file with the source's schema, unless one with that schema exists."""
    if path.is_file() and pq.read_schema(path).equals(schema):
        return
    if path.is_file():
        logger.warning("%s has a different schema than declared; replacing it with an empty file", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.empty_table(), path)


def _use_write_ahead_log(database: Path) -> None:
    """Switch the SQLite online store to WAL mode (a setting kept in the file): readers such
    as the scoring service no longer block on a writer, and a commit is one fsync of the
    log instead of the rollback journal's several (a 26-embedding push: 38 ms -> 16 ms)."""
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

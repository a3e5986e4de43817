"""The scoring service's API contract against a real Feast SQLite store and a small trained
model; the refresh requester is the only stand-in (the Kafka path is in the integration test)."""

from __future__ import annotations

import hmac
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import httpx2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from feast import FeatureStore

from limaml.adapters.registry import load_dataset
from limaml.artifacts import Artifact, load_artifact, save_artifact
from limaml.data import InteractionLog
from limaml.featurestore.embeddings import EmbeddingWriter, MemberEmbedding
from limaml.featurestore.profiles import write_member_profiles
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.store import REGISTRY_PATH, SQLITE_PATH, open_feature_store
from certificates import make_certificates
from conftest import require_component
from limaml.deploy.processes import ChildProcess, free_port, poll
from limaml.serving.app import create_app
from limaml.serving.config import ServeConfig
from limaml.serving.run import check_certificate
from limaml.serving.scorer import VersionScorer
from limaml.serving.refresh_dedup import RefreshDedup
from limaml.layered_config import ConfigError
from limaml.stream.topics import KafkaConfig

DATASET = "synthetic:n_members=30,n_items=40,mean_events=12,seed=5"
MAX_CANDIDATES = 20
AGE_S = 5.0


@pytest.fixture(scope="module")
def dataset() -> InteractionLog:
    return load_dataset(DATASET)


@pytest.fixture(scope="module")
def artifact(artifacts: Path) -> Artifact:
    """The served version, loaded independently of the service."""
    return load_artifact(artifacts)


def members(dataset: InteractionLog) -> dict[str, str]:
    tokens = dataset.members.tokens
    return {"adapted": tokens[0], "cold": tokens[1], "old_version": tokens[2], "other_cold": tokens[3]}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, dataset: InteractionLog,
           artifact: Artifact) -> tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]:
    """A store with every member's profile, an embedding of the served version for one member
    and one of another version for another."""
    config = FeatureStoreConfig(repo_dir=tmp_path_factory.mktemp("feast"),
                                profile_fields=",".join(sorted(dataset.member_features)))
    store = open_feature_store(config)
    write_member_profiles(store, dataset)
    rng = np.random.default_rng(3)
    adapted_at = int(time.time() * 1000 - AGE_S * 1000)
    named = members(dataset)
    written = {
        kind: MemberEmbedding(member_id=named[kind], model_version=version, seq=seq, support_size=seq,
                              vector=rng.normal(scale=2.0, size=artifact.model.config.meta_dim).astype(np.float32),
                              newest_event_ts=adapted_at - 100, adapted_at=adapted_at,
                              newest_produced_at=adapted_at - 50)
        for kind, version, seq in (("adapted", artifact.version, 11), ("old_version", "an-old-version", 7))
    }
    assert len(EmbeddingWriter(store, artifact.model.config.meta_dim).write(list(written.values()))) == 2
    return replace(config, profile_fields=""), written  # the service reads the model's fields


class RecordingRequester:
    """Records what the service asks to re-adapt, in place of the Kafka producer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def request(self, member_id: str, reason: str, model_version: str) -> None:
        self.calls.append((member_id, reason, model_version))


@pytest.fixture
def requester() -> RecordingRequester:
    return RecordingRequester()


def open_client(artifacts: Path, feast: FeatureStoreConfig, requester: RecordingRequester) -> TestClient:
    config = ServeConfig(artifacts_dir=artifacts, max_candidates=MAX_CANDIDATES, model_poll_s=0.05)
    return TestClient(create_app(config, feast, KafkaConfig(), requester))


@pytest.fixture
def client(artifacts: Path, stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]],
           requester: RecordingRequester) -> Iterator[TestClient]:
    with open_client(artifacts, stored[0], requester) as client:
        yield client


def profile_codes(dataset: InteractionLog, member_id: str) -> torch.Tensor:
    """[1, n_fields] the member's meta feature codes, straight from the dataset."""
    member = dataset.members.index(member_id)
    return torch.tensor([[int(dataset.member_features[name][member])
                          for name in sorted(dataset.member_features)]])


def model_probabilities(artifact: Artifact, embedding: torch.Tensor, item_ids: list[str],
                        context: dict[str, float]) -> np.ndarray:
    """[K] click probabilities by the model's own forward pass: embedding [1, E]."""
    items = torch.tensor([[artifact.schema.items.index(item) for item in item_ids]])
    ctx = torch.tensor([context.get(name, 0.0) for name in artifact.schema.context_names])
    with torch.no_grad():
        logits = artifact.model(embedding, items, ctx.expand(1, len(item_ids), -1))
    return torch.sigmoid(logits[0]).numpy()


def assert_ranked_as(body: dict, item_ids: list[str], probabilities: np.ndarray) -> None:
    expected = np.argsort(-probabilities, kind="stable")
    assert [entry["item_id"] for entry in body["ranked"]] == [item_ids[i] for i in expected]
    np.testing.assert_allclose([entry["score"] for entry in body["ranked"]], probabilities[expected],
                               rtol=1e-5, atol=1e-6)


def candidates(dataset: InteractionLog, count: int = 15) -> list[str]:
    return list(dataset.items.tokens[:count])


def samples(client: TestClient) -> dict[str, float]:
    """The service's Prometheus samples by name and labels. Counters are compared before and
    after: once Feast is imported, prometheus_client keeps values in per-process files
    (Feast sets PROMETHEUS_MULTIPROC_DIR), so apps in one process share same-named series."""
    lines = client.get("/metrics").text.splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}


def increases(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: value - before.get(name, 0.0) for name, value in after.items()
            if value != before.get(name, 0.0) and not name.endswith("_created")}


def score(client: TestClient, member_id: str, item_ids: list[str], context: dict | None = None) -> dict:
    reply = client.post("/v1/score", json={"member_id": member_id, "candidates": item_ids,
                                           "context": context or {}})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_fast_scorer_matches_the_model_forward_pass(artifact: Artifact) -> None:
    scorer = VersionScorer(artifact)
    rng = np.random.default_rng(0)
    tokens = artifact.schema.items.tokens
    for size in (1, 7, 40):
        item_ids = [str(token) for token in rng.choice(tokens, size)] + ["never-seen"]
        embedding = rng.normal(size=artifact.model.config.meta_dim).astype(np.float32)
        context = {"slot": float(rng.integers(0, 5)), "not-a-model-feature": 3.0}
        ranking = scorer.rank(embedding, item_ids, context)
        expected = model_probabilities(artifact, torch.from_numpy(embedding)[None], item_ids, context)
        np.testing.assert_allclose(ranking.scores, expected[ranking.order], rtol=1e-5, atol=1e-6)
        assert (np.diff(ranking.scores) <= 0).all()
        assert sorted(ranking.order.tolist()) == list(range(len(item_ids)))
        np.testing.assert_array_equal(ranking.known, np.array(item_ids)[ranking.order] != "never-seen")


def test_a_member_with_an_embedding_is_ranked_with_it(
        client: TestClient, dataset: InteractionLog, artifact: Artifact,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]) -> None:
    embedding = stored[1]["adapted"]
    item_ids, context = candidates(dataset), {"slot": 2.0}
    body = score(client, embedding.member_id, item_ids, context)
    assert body["model_version"] == artifact.version
    used = body["embedding"]
    assert used["source"] == "adapted" and used["model_version"] == artifact.version
    assert used["seq"] == embedding.seq and used["ignored_model_version"] is None
    assert AGE_S <= used["age_s"] < AGE_S + 60
    assert_ranked_as(body, item_ids, model_probabilities(
        artifact, torch.from_numpy(embedding.vector)[None], item_ids, context))
    assert all(entry["known"] for entry in body["ranked"])
    # The context reaches the scores: another slot, other probabilities.
    other = score(client, embedding.member_id, item_ids, {"slot": 0.0})
    assert [e["score"] for e in other["ranked"]] != [e["score"] for e in body["ranked"]]


def test_a_cold_member_is_ranked_with_the_prior_of_their_profile(
        client: TestClient, dataset: InteractionLog, artifact: Artifact) -> None:
    item_ids = candidates(dataset)
    for member_id in (members(dataset)["cold"], members(dataset)["other_cold"]):
        body = score(client, member_id, item_ids)
        assert body["embedding"] == {"source": "prior", "model_version": artifact.version, "age_s": None,
                                     "seq": None, "ignored_model_version": None}
        with torch.no_grad():
            prior = artifact.model.meta_block(profile_codes(dataset, member_id))
        assert_ranked_as(body, item_ids, model_probabilities(artifact, prior, item_ids, {}))
    # A member the store has no profile of: every meta feature out of vocabulary.
    body = score(client, "nobody-knows-me", item_ids)
    with torch.no_grad():
        prior = artifact.model.meta_block(torch.zeros(1, len(dataset.member_features), dtype=torch.int64))
    assert body["embedding"]["source"] == "prior"
    assert_ranked_as(body, item_ids, model_probabilities(artifact, prior, item_ids, {}))


def test_an_embedding_of_another_version_is_not_used_and_a_refresh_is_asked_once(
        client: TestClient, dataset: InteractionLog, artifact: Artifact, requester: RecordingRequester,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]) -> None:
    member_id = stored[1]["old_version"].member_id
    item_ids = candidates(dataset)
    before = samples(client)
    for _ in range(3):
        body = score(client, member_id, item_ids)
        assert body["embedding"]["source"] == "prior"
        assert body["embedding"]["model_version"] == artifact.version
        assert body["embedding"]["ignored_model_version"] == "an-old-version"
    with torch.no_grad():
        prior = artifact.model.meta_block(profile_codes(dataset, member_id))
    assert_ranked_as(body, item_ids, model_probabilities(artifact, prior, item_ids, {}))
    assert requester.calls == [(member_id, "version", artifact.version)]  # then rate-limited
    counted = increases(before, samples(client))
    assert counted['limaml_serve_embeddings_total{source="version_mismatch"}'] == 3
    assert counted["limaml_serve_refresh_requests_total"] == 1
    assert counted["limaml_serve_refresh_throttled_total"] == 2


def test_the_refresh_rate_limit_expires_and_its_memory_is_bounded() -> None:
    requester, now = RecordingRequester(), [0.0]
    refresh_dedup = RefreshDedup(requester, interval_s=30.0, max_members=3, clock=lambda: now[0])
    assert refresh_dedup.request("a", "v") and not refresh_dedup.request("a", "v")
    now[0] = 29.9
    assert not refresh_dedup.request("a", "v")
    now[0] = 30.0
    assert refresh_dedup.request("a", "v")
    for member in "bcdef":
        assert refresh_dedup.request(member, "v")
        assert len(refresh_dedup) <= 3
    assert refresh_dedup.request("a", "v2")  # forgotten early to stay within max_members
    assert [call[0] for call in requester.calls] == ["a", "a", "b", "c", "d", "e", "f", "a"]
    assert requester.calls[-1] == ("a", "version", "v2")


def test_unknown_items_are_scored_as_out_of_vocabulary_and_flagged(
        client: TestClient, dataset: InteractionLog, artifact: Artifact,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]) -> None:
    embedding = stored[1]["adapted"]
    item_ids = ["brand-new", *candidates(dataset, 5), "also-new"]
    before = samples(client)
    body = score(client, embedding.member_id, item_ids)
    known = {entry["item_id"]: entry["known"] for entry in body["ranked"]}
    assert known == {item: not item.endswith("new") for item in item_ids}
    oov = model_probabilities(artifact, torch.from_numpy(embedding.vector)[None], [""], {})[0]
    scores = {entry["item_id"]: entry["score"] for entry in body["ranked"]}
    assert scores["brand-new"] == scores["also-new"] == pytest.approx(float(oov), rel=1e-5)
    assert increases(before, samples(client))["limaml_serve_unknown_items_total"] == 2


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"member_id": "", "candidates": ["i1"]}, 422, "at least 1 character"),
    ({"candidates": ["i1"]}, 422, "Field required"),
    ({"member_id": "m0", "candidates": []}, 422, "at least 1 item"),
    ({"member_id": "m0", "candidates": ["i1", ""]}, 422, "at least 1 character"),
    ({"member_id": "m0", "candidates": [f"i{i}" for i in range(MAX_CANDIDATES + 1)]}, 422,
     f"at most {MAX_CANDIDATES} items"),
    ({"member_id": "m0", "candidates": ["i1"], "context": {"slot": "front"}}, 422, "valid number"),
    ('{"member_id": "m0", "candidates": ["i1"], "context": {"slot": NaN}}', 422, "finite number"),
    ('{"member_id": "m0", "candidates": ["i1"], "context": {"slot": 1e999}}', 422, "finite number"),
    ({"member_id": "m0", "items": ["i1"]}, 422, "Extra inputs are not permitted"),
    ('{"member_id": "m0", "candidates": ["i1"', 422, "JSON decode error"),
])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(
        client: TestClient, body: dict | str, status: int, message: str) -> None:
    before = samples(client)
    if isinstance(body, str):
        reply = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    else:
        reply = client.post("/v1/score", json=body)
    assert reply.status_code == status
    assert message in reply.text
    counted = increases(before, samples(client))
    assert counted[f'limaml_serve_requests_total{{status="{status}"}}'] == 1
    assert counted["limaml_serve_request_seconds_count"] == 1


def test_on_started_is_called_once_the_model_is_open_and_before_the_first_request(
        artifact: Artifact, artifacts: Path, stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]],
        requester: RecordingRequester, dataset: InteractionLog) -> None:
    """`limaml serve` freezes the heap there (limaml.garbage_collection)."""
    served_when_started: list[str] = []
    config = ServeConfig(artifacts_dir=artifacts, max_candidates=MAX_CANDIDATES)
    app = create_app(config, stored[0], KafkaConfig(), requester,
                     on_started=lambda: served_when_started.append(app.state.active.current.version))
    assert served_when_started == []
    with TestClient(app) as client:
        assert served_when_started == [artifact.version]
        assert score(client, members(dataset)["adapted"], candidates(dataset, 3))["model_version"] == artifact.version
    assert served_when_started == [artifact.version]


def test_one_online_store_read_per_request(client: TestClient, dataset: InteractionLog,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rows = client.app.state.active.current.lookup.rows
    reads: list[list[str]] = []
    real = rows.read

    def counted(values: list[str]) -> dict:  # type: ignore[type-arg]
        reads.append(list(values))
        return real(values)

    monkeypatch.setattr(rows, "read", counted)
    monkeypatch.setattr(FeatureStore, "get_online_features", lambda *_, **__: pytest.fail(
        "the service reads Feast's layout directly, not through get_online_features"))
    member = members(dataset)["adapted"]
    assert score(client, member, candidates(dataset, MAX_CANDIDATES))["embedding"]["source"] == "adapted"
    assert reads == [[member]]
    assert set(rows.features) == {"member_meta_embedding", "member_profile"}


def test_health_metrics_and_openapi(client: TestClient, dataset: InteractionLog, artifact: Artifact) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model_version": artifact.version, "feature_store": "ok",
                             "model_error": None}
    before = samples(client)
    score(client, members(dataset)["adapted"], candidates(dataset))
    score(client, members(dataset)["cold"], candidates(dataset))
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    counted = increases(before, samples(client))
    assert counted['limaml_serve_requests_total{status="200"}'] == 2
    assert counted["limaml_serve_request_seconds_count"] == 2
    assert counted['limaml_serve_embeddings_total{source="adapted"}'] == 1
    assert counted['limaml_serve_embeddings_total{source="prior"}'] == 1
    assert 'limaml_serve_embeddings_total{source="version_mismatch"}' in samples(client)
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/v1/score", "/healthz", "/metrics"}
    score_op = schema["paths"]["/v1/score"]["post"]
    assert score_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreRequest")
    assert score_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreResponse")
    assert {"422", "503"} <= set(score_op["responses"])
    assert "ScoredItem" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_a_new_active_version_is_served_without_a_restart(
        tmp_path: Path, artifacts: Path, dataset: InteractionLog, requester: RecordingRequester,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(artifacts, root)
    adapted = stored[1]["adapted"]
    with open_client(root, stored[0], requester) as client:
        before = score(client, adapted.member_id, candidates(dataset))
        assert before["embedding"]["source"] == "adapted"
        retrained = load_artifact(root)
        with torch.no_grad():
            retrained.model.global_block.item_vector.weight.mul_(3.0)
        version = save_artifact(root, retrained.model, retrained.schema, {}, {})
        poll(lambda: client.get("/healthz").json()["model_version"] == version, 30,
             f"the service to switch to {version}")
        after = score(client, adapted.member_id, candidates(dataset))
    # The stored embedding is of the previous version: never paired with the new global block.
    assert after["model_version"] == version
    assert after["embedding"]["source"] == "prior"
    assert after["embedding"]["ignored_model_version"] == adapted.model_version
    assert requester.calls == [(adapted.member_id, "version", version)]


def test_a_broken_active_version_keeps_the_served_one_and_says_why(
        tmp_path: Path, artifacts: Path, artifact: Artifact, requester: RecordingRequester,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(artifacts, root)
    with open_client(root, stored[0], requester) as client:
        (root / "ACTIVE").write_text("no-such-version\n")
        health = poll(lambda: (h := client.get("/healthz").json())["model_error"] and h, 30,
                      "/healthz to report the broken ACTIVE version")
        assert health["model_version"] == artifact.version and "no-such-version" in health["model_error"]
        score(client, "m0", ["i1"])


def test_an_unreachable_store_gives_503_with_the_reason(
        tmp_path: Path, artifacts: Path, dataset: InteractionLog, requester: RecordingRequester) -> None:
    feast = FeatureStoreConfig(repo_dir=tmp_path / "feast")
    with open_client(artifacts, feast, requester) as client:
        score(client, "m0", ["i1"])
        with sqlite3.connect(tmp_path / "feast" / SQLITE_PATH) as database:
            database.execute("DROP TABLE limaml_member_meta_embedding")
        reply = client.post("/v1/score", json={"member_id": "m0", "candidates": ["i1"]})
        assert reply.status_code == 503
        assert "online feature store did not answer" in reply.json()["detail"]
        assert "no such table" in reply.json()["detail"]
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"


class RedisServer:
    """A private redis-server started with deploy/redis.sh, which can be paused (SIGSTOP: it
    holds every connection without answering), resumed, stopped and started again."""

    SCRIPT = str(Path(__file__).resolve().parents[1] / "deploy/redis.sh")

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _run(self, *args: str) -> None:
        result = subprocess.run([self.SCRIPT, *args, "--data-dir", str(self.data_dir)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        self._run("start", "--port", str(self.port))

    def stop(self) -> None:
        self._run("stop")

    def signal(self, number: signal.Signals) -> None:
        os.kill(int((self.data_dir / "redis.pid").read_text()), number)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_component("redis-server", shutil.which("redis-server") is not None,
                      "install it (apt-get install redis-server) to test the service on a Redis store")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    if (server.data_dir / "redis.pid").is_file():
        server.signal(signal.SIGCONT)
        server.stop()


@pytest.fixture
def redis_feast(tmp_path: Path, redis_server: RedisServer, dataset: InteractionLog) -> FeatureStoreConfig:
    """A Redis online store with every member's profile, applied as the service will open it."""
    config = FeatureStoreConfig(repo_dir=tmp_path / "feast", online_store=redis_server.url,
                                profile_fields=",".join(sorted(dataset.member_features)))
    write_member_profiles(open_feature_store(config), dataset)
    return replace(config, profile_fields="")


STORE_TIMEOUT_S = 1.0
SERVE_STOP_S = 15.0
"""A stopping service waits for no store read, which may never return: it exits in the time
the interpreter takes to tear torch and Feast down (seconds on a loaded machine)."""
T = TypeVar("T")


def timed_score(client: TestClient, member_id: str) -> tuple[httpx2.Response, float]:
    started = time.monotonic()
    reply = client.post("/v1/score", json={"member_id": member_id, "candidates": ["i1"]})
    return reply, time.monotonic() - started


def test_a_stalled_redis_gives_503_within_the_timeout_and_the_service_keeps_answering(
        artifacts: Path, dataset: InteractionLog, requester: RecordingRequester, redis_server: RedisServer,
        redis_feast: FeatureStoreConfig) -> None:
    config = ServeConfig(artifacts_dir=artifacts, store_timeout_s=STORE_TIMEOUT_S, store_threads=2)
    member = members(dataset)["cold"]
    with TestClient(create_app(config, redis_feast, KafkaConfig(), requester)) as client, \
            ThreadPoolExecutor(2) as background:
        def within(seconds: float, call: Callable[[], T]) -> T:
            """call() from another thread, failing (not hanging) if it takes longer."""
            return background.submit(call).result(timeout=seconds)

        assert score(client, member, candidates(dataset))["embedding"]["source"] == "prior"
        before = samples(client)
        redis_server.signal(signal.SIGSTOP)
        try:
            scoring = background.submit(timed_score, client, member)
            # While that read hangs, the event loop serves /metrics (which shows the read) ...
            poll(lambda: within(STORE_TIMEOUT_S, lambda: increases(before, samples(client)))
                 .get("limaml_serve_store_reads_in_flight") == 1, 5, "/metrics to show the hanging read")
            # ... and /healthz, which says the store did not answer.
            health = within(STORE_TIMEOUT_S + 2, lambda: client.get("/healthz"))
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            assert f"did not answer within {STORE_TIMEOUT_S} s" in health.json()["feature_store"]
            reply, elapsed = scoring.result(timeout=STORE_TIMEOUT_S + 2)
            assert reply.status_code == 503, reply.text
            assert reply.json() == {"detail": f"the online feature store did not answer within {STORE_TIMEOUT_S} s"}
            assert STORE_TIMEOUT_S <= elapsed < STORE_TIMEOUT_S + 2
            # Both threads still wait for Redis: no third is started, the answer is at once.
            reply, elapsed = within(STORE_TIMEOUT_S + 2, lambda: timed_score(client, member))
            assert reply.status_code == 503 and "all 2 store reads are still waiting" in reply.json()["detail"]
            assert elapsed < STORE_TIMEOUT_S / 2
            counted = increases(before, samples(client))
            assert counted["limaml_serve_store_timeouts_total"] == 2  # the score and the health check
            assert counted["limaml_serve_store_busy_total"] == 1
            assert counted['limaml_serve_requests_total{status="503"}'] == 2
            assert counted["limaml_serve_store_reads_in_flight"] == 2
        finally:
            redis_server.signal(signal.SIGCONT)
        # Redis answers the waiting reads, which free their threads: the service recovers.
        poll(lambda: timed_score(client, member)[0].status_code == 200, 10, "scoring to recover")
        assert client.get("/healthz").status_code == 200
        assert "limaml_serve_store_reads_in_flight" not in increases(before, samples(client))


def test_a_redis_down_at_startup_gives_503_until_it_is_up(
        artifacts: Path, dataset: InteractionLog, requester: RecordingRequester, redis_server: RedisServer,
        redis_feast: FeatureStoreConfig) -> None:
    redis_server.stop()
    config = ServeConfig(artifacts_dir=artifacts, store_timeout_s=STORE_TIMEOUT_S)
    member = members(dataset)["cold"]
    with TestClient(create_app(config, redis_feast, KafkaConfig(), requester)) as client:
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        # redis-py retries a refused connection with backoff: refused or timed out, the
        # answer comes within the timeout.
        reply, elapsed = timed_score(client, member)
        assert reply.status_code == 503 and "online feature store did not answer" in reply.json()["detail"]
        assert elapsed < STORE_TIMEOUT_S + 1
        redis_server.start()
        body = poll(lambda: (reply := timed_score(client, member)[0]).status_code == 200 and reply.json(),
                    10, "scoring to work once Redis is up")
        assert client.get("/healthz").status_code == 200
    assert body["member_id"] == member and body["embedding"]["source"] == "prior"


TOKEN = "t0ken-" + "x" * 26


def test_an_expired_embedding_is_served_as_the_prior_and_a_refresh_is_asked_once(
        artifacts: Path, dataset: InteractionLog, artifact: Artifact, requester: RecordingRequester,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]) -> None:
    embedding = stored[1]["adapted"]  # adapted AGE_S ago by the served version
    item_ids = candidates(dataset)
    config = ServeConfig(artifacts_dir=artifacts, max_embedding_age_s=AGE_S / 2)
    with TestClient(create_app(config, stored[0], KafkaConfig(), requester)) as client:
        before = samples(client)
        for _ in range(2):
            body = score(client, embedding.member_id, item_ids)
            used = body["embedding"]
            assert (used["source"], used["model_version"], used["seq"]) == ("expired", artifact.version, None)
            assert AGE_S <= used["age_s"] < AGE_S + 60
        with torch.no_grad():
            prior = artifact.model.meta_block(profile_codes(dataset, embedding.member_id))
        assert_ranked_as(body, item_ids, model_probabilities(artifact, prior, item_ids, {}))
        assert requester.calls == [(embedding.member_id, "expired", artifact.version)]  # then rate-limited
        counted = increases(before, samples(client))
        assert counted['limaml_serve_embeddings_total{source="expired"}'] == 2
        assert counted["limaml_serve_refresh_requests_total"] == 1
        assert counted["limaml_serve_refresh_throttled_total"] == 1
    # Younger than the limit, it is served.
    config = replace(config, max_embedding_age_s=AGE_S + 60)
    with TestClient(create_app(config, stored[0], KafkaConfig(), requester)) as client:
        assert score(client, embedding.member_id, item_ids)["embedding"]["source"] == "adapted"


def test_with_a_token_every_endpoint_but_healthz_answers_401_without_it(
        artifacts: Path, dataset: InteractionLog, requester: RecordingRequester,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]], monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def recorded_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recorded_compare)
    config = ServeConfig(artifacts_dir=artifacts, api_token=TOKEN)
    member = members(dataset)["adapted"]
    body = {"member_id": member, "candidates": candidates(dataset)}
    with TestClient(create_app(config, stored[0], KafkaConfig(), requester)) as client:
        requests = [("POST", "/v1/score", body), ("GET", "/metrics", None), ("GET", "/openapi.json", None),
                    ("GET", "/docs", None)]
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}):
            for method, path, payload in requests:
                reply = client.request(method, path, json=payload, headers=headers)
                assert reply.status_code == 401, (path, headers)
                assert reply.headers["www-authenticate"] == "Bearer"
                assert reply.json()["detail"] == ("invalid bearer token" if headers else
                                                  "this endpoint needs the header 'Authorization: Bearer <token>'")
        # Refused before the body is read: malformed JSON gets a 401 too, not a 422.
        assert client.post("/v1/score", content=b'{"member_id": ', headers={"content-type": "application/json"}
                           ).status_code == 401
        assert client.get("/healthz").status_code == 200  # a load balancer's probe needs no token
        assert not requester.calls
        authorized = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
        for method, path, payload in requests:
            assert client.request(method, path, json=payload, headers=authorized).status_code == 200, path
        assert (TOKEN.encode(), TOKEN.encode()) in compared  # the check is constant-time
        exposed = client.get("/metrics", headers=authorized).text
        assert 'limaml_serve_requests_total{status="401"} 5.0' in exposed  # 4 refused /v1 requests + 1 malformed
        assert TOKEN not in exposed


def test_the_token_is_read_from_a_file_at_start_and_a_bad_one_is_refused(
        tmp_path: Path, artifacts: Path, requester: RecordingRequester,
        stored: tuple[FeatureStoreConfig, dict[str, MemberEmbedding]]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as `echo` writes it
    config = ServeConfig(artifacts_dir=artifacts, api_token_file=str(token_file))
    assert TOKEN not in repr(replace(config, api_token=TOKEN))
    with TestClient(create_app(config, stored[0], KafkaConfig(), requester)) as client:
        token_file.write_text("another-token-of-enough-length")  # read at start: a change needs a restart
        assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/metrics").status_code == 401
    for wrong, message in ((replace(config, api_token=TOKEN), "not both"),
                           (replace(config, api_token_file=str(tmp_path / "missing")), "cannot read it"),
                           (ServeConfig(api_token="short"), "at least 16 printable ASCII"),
                           (ServeConfig(api_token="with a space in the token"), "without spaces")):
        with pytest.raises(ConfigError, match=message) as refused:
            create_app(wrong, stored[0], KafkaConfig(), requester)
        assert TOKEN not in str(refused.value)
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        create_app(config, stored[0], KafkaConfig(), requester)


def test_a_certificate_that_does_not_load_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    check_certificate(str(certificates.cert), str(certificates.key))  # the pair uvicorn will serve
    for certfile, keyfile in ((certificates.cert, tmp_path / "ca.key"),  # another key
                              (tmp_path / "missing.pem", certificates.key)):
        with pytest.raises(ConfigError, match="does not load"):
            check_certificate(str(certfile), str(keyfile))
    with pytest.raises(ValueError, match="both ssl_certfile and ssl_keyfile"):
        ServeConfig(ssl_certfile=str(certificates.cert))


# The `limaml serve` processes: last, as they take long and the module's stored embeddings age.
def serve_process(artifacts: Path, feast: FeatureStoreConfig, log_dir: Path) -> ChildProcess:
    """`limaml serve` on a free port (no broker: its refresh requests are only queued)."""
    port = free_port()
    return ChildProcess("serve", ["serve", "--port", str(port), "--artifacts-dir", str(artifacts),
                                  "--repo-dir", str(feast.repo_dir), "--online-store", feast.online_store,
                                  "--store-timeout-s", str(STORE_TIMEOUT_S), "--bootstrap", f"127.0.0.1:{free_port()}"],
                        port, log_dir)


def status_of(serve: ChildProcess, path: str, body: dict | None = None) -> int:
    """The HTTP status of a GET (a POST of `body`) to the `serve` process."""
    request = urllib.request.Request(f"http://127.0.0.1:{serve.web_port}{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=STORE_TIMEOUT_S + 5) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def post_score(serve: ChildProcess, member_id: str) -> int:
    return status_of(serve, "/v1/score", {"member_id": member_id, "candidates": ["i1"]})


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_stops_at_once_while_its_reads_wait_for_a_stalled_redis(
        stop: signal.Signals, artifacts: Path, dataset: InteractionLog, redis_server: RedisServer,
        redis_feast: FeatureStoreConfig, tmp_path: Path) -> None:
    serve = serve_process(artifacts, redis_feast, tmp_path).start()
    try:
        member = members(dataset)["cold"]
        assert post_score(serve, member) == 200
        redis_server.signal(signal.SIGSTOP)
        assert post_score(serve, member) == 503  # its read thread now waits for Redis
        assert serve.process is not None
        serve.process.send_signal(stop)
        try:
            code = serve.process.wait(timeout=SERVE_STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"limaml serve still runs {SERVE_STOP_S} s after {stop.name}:\n{serve.log_tail(20)}")
        # uvicorn ends its shutdown by raising the signal that asked for it again: SIGTERM
        # then kills the process; `limaml serve` ends a Ctrl-C with status 130.
        assert code == {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130}[stop], serve.log_tail(20)
        assert "Application shutdown complete" in serve.log_tail(5) and "Traceback" not in serve.log_tail(5)
    finally:
        redis_server.signal(signal.SIGCONT)
        serve.stop()


def test_serve_starts_on_a_fresh_repo_while_redis_is_down_and_scores_once_it_is_up(
        artifacts: Path, dataset: InteractionLog, redis_server: RedisServer, tmp_path: Path) -> None:
    """Applying the Feast repo writes the registry file only, so a first start needs no Redis."""
    redis_server.stop()
    feast = FeatureStoreConfig(repo_dir=tmp_path / "fresh-feast", online_store=redis_server.url)
    serve = serve_process(artifacts, feast, tmp_path).start()
    try:
        assert (feast.repo_dir / REGISTRY_PATH).is_file()  # applied while Redis was down
        member = members(dataset)["cold"]
        assert (status_of(serve, "/healthz"), post_score(serve, member)) == (503, 503)
        redis_server.start()
        poll(lambda: post_score(serve, member) == 200, 10, "scoring to work once Redis is up",
             describe=lambda: serve.log_tail(10))
        assert status_of(serve, "/healthz") == 200
    finally:
        serve.stop()

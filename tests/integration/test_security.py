"""Bearer tokens, HTTPS and a Redis password with the real processes: a real broker and Redis
(started with a password), `limaml stream`, `limaml adapt` and `limaml serve` (over HTTPS,
with a certificate of a CA made at test time), each given its secrets in its environment or
a file. A member's events go in and the member is scored with their adapted embedding; every
page refuses a request without its token; no secret shows in any page, log or command line."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import pytest
from certificates import make_certificates
from conftest import require_component, save_tiny_model
from confluent_kafka import Producer

from limaml.adapters.events import events_from_log
from limaml.adapters.registry import load_dataset
from limaml.deploy.processes import LIMAML, ChildProcess, free_port, poll
from limaml.stream.topics import PRODUCER_PARTITIONER, KafkaConfig, TopicNames, ensure_topics

from .conftest import write_profiles

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DATASET = "synthetic:n_members=30,n_items=25,mean_events=12,seed=5"
PARTITIONS = 2
TOKENS = {name: f"{name}-token-{uuid.uuid4().hex}" for name in ("stream", "adapt", "serve")}
REDIS_PASSWORD = f"redis pass\"word {uuid.uuid4().hex}"
SECRETS = [*TOKENS.values(), REDIS_PASSWORD]
NEEDS_TOKEN = "this endpoint needs the header 'Authorization: Bearer <token>'"


def fetch(url: str, token: str | None = None, context: ssl.SSLContext | None = None,
          body: dict | None = None) -> tuple[int, Message, bytes]:
    """(status, headers, body) of a GET, or a POST of `body` as JSON; an HTTP error is an answer."""
    headers = {"content-type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def answers(url: str, token: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        return fetch(url, token, context)[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    require_component("redis-server", shutil.which("redis-server") is not None,
                      "run `deploy/redis.sh install` (Debian's redis-server)")
    script, data_dir = str(ROOT / "deploy/redis.sh"), str(tmp_path / "redis")
    started = subprocess.run([script, "start", "--data-dir", data_dir, "--port", str(free_port())],
                             env={**os.environ, "LIMAML_REDIS_PASSWORD": REDIS_PASSWORD, "LIMAML_REDIS_APPENDONLY": "no"},
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().removeprefix("REDIS_URL=")
    subprocess.run([script, "stop", "--data-dir", data_dir], capture_output=True, timeout=60, check=True)


def test_tokens_https_and_a_redis_password_guard_the_pipeline_and_no_secret_leaks(
        kafka_bootstrap: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = load_dataset(DATASET)
    artifacts = tmp_path / "artifacts"
    save_tiny_model(artifacts, dataset)
    certificates = make_certificates(tmp_path / "tls")
    feast_dir = tmp_path / "feast"
    write_profiles(dataset, feast_dir, online_store=redis_url, redis_password=REDIS_PASSWORD)
    kafka = KafkaConfig(bootstrap=kafka_bootstrap, topic_prefix=f"sec{uuid.uuid4().hex[:10]}", partitions=PARTITIONS)
    ensure_topics(kafka)

    # The secrets reach the processes as a deployment would hand them: environment and files.
    adapt_token_file = tmp_path / "adapt-token"
    adapt_token_file.write_text(TOKENS["adapt"] + "\n")
    monkeypatch.setenv("LIMAML_SERVE_API_TOKEN", TOKENS["serve"])
    monkeypatch.setenv("LIMAML_STREAM_WEB_API_TOKEN", TOKENS["stream"])
    monkeypatch.setenv("LIMAML_ADAPT_WEB_API_TOKEN_FILE", str(adapt_token_file))
    monkeypatch.setenv("LIMAML_FEAST_REDIS_PASSWORD", REDIS_PASSWORD)
    kafka_args = ["--bootstrap", kafka.bootstrap, "--topic-prefix", kafka.topic_prefix, "--partitions", str(PARTITIONS)]
    feast_args = ["--repo-dir", str(feast_dir), "--online-store", redis_url]
    ports = {name: free_port() for name in TOKENS}
    workers = {  # -v: debug logging, the most a log could give away
        "stream": ChildProcess("stream", ["-v", "stream", *kafka_args, "--data-dir", str(tmp_path / "stream"),
                                    "--web-port", str(ports["stream"]), "--min-new-signals", "3",
                                    "--max-staleness-s", "1", "--check-interval-s", "0.2"], ports["stream"], tmp_path),
        "adapt": ChildProcess("adapt", ["-v", "adapt", *kafka_args, *feast_args, "--artifacts-dir", str(artifacts),
                                  "--data-dir", str(tmp_path / "adapt"), "--web-port", str(ports["adapt"]),
                                  "--device", "cpu"], ports["adapt"], tmp_path),
        "serve": ChildProcess("serve", ["-v", "serve", *kafka_args, *feast_args, "--port", str(ports["serve"]),
                                  "--artifacts-dir", str(artifacts), "--ssl-certfile", str(certificates.cert),
                                  "--ssl-keyfile", str(certificates.key)], ports["serve"], tmp_path),
    }
    trusted = ssl.create_default_context(cafile=str(certificates.ca))
    base = {"stream": f"http://127.0.0.1:{ports['stream']}", "adapt": f"http://127.0.0.1:{ports['adapt']}",
            "serve": f"https://127.0.0.1:{ports['serve']}"}
    context = {"stream": None, "adapt": None, "serve": trusted}
    ready_page = {"stream": "/metrics", "adapt": "/metrics", "serve": "/healthz"}
    try:
        for worker in workers.values():
            worker.spawn()
        with ThreadPoolExecutor(len(workers)) as waiting:
            for name in workers:
                waiting.submit(poll, lambda name=name: workers[name].ensure_alive() and answers(
                    base[name] + ready_page[name], TOKENS[name], context[name]), 120, f"{name} to answer").result()
        command_lines = [Path(f"/proc/{worker.process.pid}/cmdline").read_bytes() for worker in workers.values()
                         if worker.process is not None]

        # A member's events in; scored over HTTPS, with the token, with their adapted embedding.
        events = list(events_from_log(dataset))
        member = max(dataset.members.tokens, key=lambda m: sum(e.member_id == m for e in events))
        producer = Producer({"bootstrap.servers": kafka.bootstrap, "partitioner": PRODUCER_PARTITIONER})
        for event in events:
            if event.member_id == member:
                producer.produce(TopicNames(kafka.topic_prefix).interactions, key=event.key(),
                                 value=event.to_json_bytes())
        assert producer.flush(30) == 0
        request = {"member_id": member, "candidates": list(dataset.items.tokens)}

        def scored_adapted() -> bool:
            status, _, body = fetch(base["serve"] + "/v1/score", TOKENS["serve"], trusted, request)
            assert status == 200, body
            return json.loads(body)["embedding"]["source"] == "adapted"

        poll(scored_adapted, 60, f"{member} to be scored with an adapted embedding",
             describe=lambda: workers["adapt"].log_tail(10))

        # Every page refuses a request without its token, with a wrong one, or with another
        # service's; with its own, it answers.
        pages = {"stream": ["/metrics", f"/members/{member}/", "/router/"], "adapt": ["/metrics", "/model"],
                 "serve": ["/v1/score", "/metrics", "/openapi.json"]}
        seen: list[bytes] = []
        for name, paths in pages.items():
            other = TOKENS["serve" if name != "serve" else "stream"]
            for path in paths:
                body = request if path == "/v1/score" else None
                for token in (None, TOKENS[name] + "x", other):
                    status, headers, answer = fetch(base[name] + path, token, context[name], body)
                    assert status == 401, (name, path, token)
                    assert headers["WWW-Authenticate"] == "Bearer"
                    assert json.loads(answer)["detail"] == (NEEDS_TOKEN if token is None else "invalid bearer token")
                status, _, answer = fetch(base[name] + path, TOKENS[name], context[name], body)
                assert status == 200, (name, path, answer)
                seen.append(answer)
        status, _, health = fetch(base["serve"] + "/healthz", None, trusted)
        assert status == 200 and json.loads(health)["status"] == "ok"  # a probe needs no token
        seen.append(health)
        assert json.loads(fetch(base["stream"] + f"/members/{member}/", TOKENS["stream"])[2])["seq"] > 0

        # The service speaks only TLS, with the certificate of the CA it was given.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(base["serve"] + "/healthz", context=ssl.create_default_context())
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            fetch(f"http://127.0.0.1:{ports['serve']}/healthz")
    finally:
        for worker in workers.values():
            worker.stop()
    logs = [worker.log_path.read_bytes() for worker in workers.values()]
    assert b"DEBUG" in logs[0] and b"Uvicorn running on https://" in logs[2]
    for secret in SECRETS:
        for text in (*seen, *logs, *command_lines):
            assert secret.encode() not in text


def test_limaml_demo_runs_with_the_configured_tokens_and_shows_no_secret(
        kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    """`limaml up` (here its finite run, `limaml demo`) keeps the tokens configured for its
    workers and scrapes and scores with them; the Redis password, given apart from the URL,
    reaches every process; no secret shows in any of its output."""
    dataset = load_dataset(DATASET)
    artifacts = tmp_path / "artifacts"
    save_tiny_model(artifacts, dataset)
    work, ports = tmp_path / "demo", [free_port() for _ in range(3)]
    env = {**os.environ, "LIMAML_SERVE_API_TOKEN": TOKENS["serve"], "LIMAML_STREAM_WEB_API_TOKEN": TOKENS["stream"],
           "LIMAML_ADAPT_WEB_API_TOKEN": TOKENS["adapt"], "LIMAML_FEAST_REDIS_PASSWORD": REDIS_PASSWORD}
    result = subprocess.run(
        [LIMAML, "demo", "--dataset", DATASET, "--artifacts-dir", str(artifacts),
         "--work-dir", str(work), "--stream-port", str(ports[0]), "--adapt-port", str(ports[1]),
         "--serve-port", str(ports[2]), "--device", "cpu", "--partitions", "2", "--max-staleness-s", "0.5",
         "--view", "plain", "--refresh-s", "0.5", "--bootstrap", kafka_bootstrap, "--online-store", redis_url,
         "--topic-prefix", f"demo{uuid.uuid4().hex[:8]}", "--rate", "0", "--limit", "0"],
        capture_output=True, text=True, timeout=240, check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    assert "scored with its adapted embedding" in result.stdout  # through Redis, with the password
    shown = [result.stdout, result.stderr, *(path.read_text(errors="replace") for path in work.rglob("*.log"))]
    assert len(shown) >= 5  # the view, its log, the three workers' logs
    for secret in SECRETS:
        assert not any(secret in text for text in shown)

"""`limaml up` and `limaml demo` as a user runs them: real broker, workers, scoring service
and replay as child processes; a Ctrl-C stops every one of them and frees every port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import save_tiny_model
from limaml.adapters.events import events_from_log
from limaml.adapters.registry import load_dataset
from limaml.featurestore.config import FeatureStoreConfig
from limaml.featurestore.embeddings import EmbeddingReader
from limaml.featurestore.store import open_feature_store
from limaml.deploy.processes import BOOTSTRAP_VARIABLE, KAFKA_SH, LIMAML, free_port, poll
from limaml.deploy.supervisor import running, start_time
from limaml.deploy.telemetry import parse_metrics, total
from limaml.stream.config import StreamConfig

from .conftest import embeddings_behind

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DATASET = "synthetic:n_members=30,n_items=25,mean_events=12,seed=5"
BUSY_DATASET = "synthetic:n_members=500,n_items=25,mean_events=50,seed=6"  # 25 s of replay at 1,000 ev/s


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    log = load_dataset(DATASET)
    save_tiny_model(root, log)
    return root


def distinct_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def stack_command(command: str, artifacts: Path, work: Path, ports: list[int], *extra: str,
                  dataset: str = DATASET) -> list[str]:
    return [LIMAML, command, "--dataset", dataset, "--artifacts-dir", str(artifacts), "--work-dir", str(work),
            "--stream-port", str(ports[0]), "--adapt-port", str(ports[1]), "--serve-port", str(ports[2]),
            "--device", "cpu", "--partitions", "2", "--max-staleness-s", "0.5", "--view", "plain",
            "--refresh-s", "0.5", "--stop-timeout-s", "20", *extra]


def own_broker_env() -> dict[str, str]:
    """The environment of a `limaml up` that starts its own broker: without the inherited
    LIMAML_KAFKA_BOOTSTRAP, which would name another one."""
    return {name: value for name, value in os.environ.items() if name != BOOTSTRAP_VARIABLE}


def metric(port: int, name: str) -> float:
    """The sum of a metric's samples over their labels (0 when the worker does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            body = reply.read().decode()
    except OSError:
        return 0.0
    return total(parse_metrics(body), name)


def alive(pid: int, started: float | None) -> bool:
    """The process runs (not a zombie) and is the one recorded (not a reused pid)."""
    return start_time(pid) is not None and running(pid, started)


def processes_mentioning(text: str) -> list[str]:
    """The processes (other than this one) whose command line holds `text`."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        args = " ".join(process.info["cmdline"] or ())
        if text in args and process.info["pid"] != os.getpid():
            found.append(f"{process.info['pid']}: {args[:200]}")
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server would: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ctrl_c(up: subprocess.Popen) -> int:
    """What a Ctrl-C in its terminal does (to its process group), then its exit status."""
    if up.poll() is None:
        os.killpg(up.pid, signal.SIGINT)
    return up.wait(timeout=120)


def output(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_up_runs_the_pipeline_and_ctrl_c_stops_everything(artifacts: Path, tmp_path: Path) -> None:
    work, ports = tmp_path / "up", distinct_ports(3)
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        # A session of its own, so the Ctrl-C below reaches what a terminal's would: its group.
        up = subprocess.Popen(stack_command("up", artifacts, work, ports, "--rate", "200"),
                              stdout=out, stderr=err, start_new_session=True, env=own_broker_env())
    try:
        def running_pipeline() -> bool:
            if up.poll() is not None:
                raise AssertionError(f"limaml up exited with {up.returncode}:\n{output(stderr)[-3000:]}")
            return (metric(ports[0], "limaml_stream_events_total") > 0
                    and metric(ports[1], "limaml_adapt_embeddings_total") > 0)

        poll(running_pipeline, 150, "events applied and embeddings written",
             describe=lambda: output(stderr)[-2000:] + output(stdout)[-1000:])
        member = load_dataset(DATASET).members.tokens[0]
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports[2]}/v1/score", headers={"Content-Type": "application/json"},
            data=json.dumps({"member_id": member, "candidates": ["i1", "i2", "i3"]}).encode())

        def scored_with_adapted_embedding() -> dict | None:
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    body = json.loads(reply.read())
            except urllib.error.HTTPError as error:
                if error.code == 503:  # the online store was slower than store_timeout_s: ask again
                    return None
                raise
            return body if body["embedding"]["source"] == "adapted" else None

        scored = poll(scored_with_adapted_embedding, 60, f"the service to score {member} with its embedding")
        assert len(scored["ranked"]) == 3 and scored["embedding"]["seq"] > 0
        record = json.loads((work / "pids.json").read_text())
        children = record["children"]
        assert set(children) == {"broker", "stream", "adapt", "serve"}
        assert all(alive(child["pid"], child["started"]) for child in children.values())
        broker_port = int(record["bootstrap"].rsplit(":", 1)[1])
    finally:
        code = ctrl_c(up)

    text = output(stdout)
    assert code == 128 + signal.SIGINT, output(stderr)[-3000:]
    assert "limaml up: stopped by Ctrl-C" in text
    applied = next(row for row in text.splitlines() if row.startswith("  stream "))
    assert int(applied.split()[1].replace(",", "")) > 0, text
    served = next(row for row in text.splitlines() if row.startswith("  serve "))
    assert int(served.split()[1]) >= 1 and "adapted" in served, text  # counted before the stop
    for name in ("replay", "serve", "adapt", "stream", "broker"):
        assert f"{name} (" in text.split("  stopped ", 1)[1], text  # each one's teardown reported
    survivors = [f"{name} {child['pid']}" for name, child in children.items()
                 if alive(child["pid"], child["started"])]
    assert not survivors, f"still running after limaml up exited: {survivors}"
    assert not processes_mentioning(str(work)), processes_mentioning(str(work))
    assert all(port_free(port) for port in (*ports, broker_port, broker_port + 1))
    status = subprocess.run(["bash", str(KAFKA_SH), "status", "--data-dir", str(work / "kafka")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert status.returncode == 3, status.stdout  # 3: stopped
    assert not (work / "pids.json").exists()


def test_demo_catches_up_scores_a_member_and_stops_on_its_own(artifacts: Path, kafka_bootstrap: str,
                                                               tmp_path: Path) -> None:
    work, ports = tmp_path / "demo", distinct_ports(3)
    result = subprocess.run(
        stack_command("demo", artifacts, work, ports, "--bootstrap", kafka_bootstrap,
                      "--topic-prefix", f"demo{uuid.uuid4().hex[:8]}", "--rate", "0", "--limit", "0"),
        capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    text = result.stdout
    events = load_dataset(DATASET).n_events
    assert f"replay     {events:,} events delivered" in text and f"{events:,} events applied" in text
    assert "scored with its adapted embedding" in text  # caught up: the busiest member has one
    ranked = [row for row in text.splitlines() if row.strip().split(" ", 1)[0].isdigit()]
    assert len(ranked) == 10
    assert "limaml demo: done" in text and "2 scoring requests (adapted 1, prior 1)" in text
    assert not processes_mentioning(str(work))
    assert all(port_free(port) for port in ports)


def test_up_without_a_model_says_how_to_get_one(tmp_path: Path) -> None:
    empty = tmp_path / "no-artifacts"
    result = subprocess.run(stack_command("up", empty, tmp_path / "up", distinct_ports(3)),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "limaml train --dataset" in result.stderr and "limaml demo" in result.stderr
    assert not (tmp_path / "up" / "kafka").exists()  # failed before starting anything


@pytest.fixture(scope="module")
def busy_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busy-artifacts")
    save_tiny_model(root, load_dataset(BUSY_DATASET))
    return root


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
            return True
    except OSError:
        return False


def child_pid(work: Path, name: str) -> int | None:
    try:
        return json.loads((work / "pids.json").read_text())["children"][name]["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_up_restarts_a_killed_worker_and_loses_or_doubles_no_event(busy_artifacts: Path, tmp_path: Path) -> None:
    """kill -9 the stream worker, then the adaptation worker, while 1,000 events/s arrive: `limaml up`
    restarts each, every event ends in its member's support set once, the embeddings catch up."""
    work, ports = tmp_path / "up", distinct_ports(3)
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    dataset = load_dataset(BUSY_DATASET)
    expected: dict[str, list[str]] = {}
    for event in events_from_log(dataset):
        expected.setdefault(event.member_id, []).append(event.item_id)
    support_size = StreamConfig().support_size
    with stdout.open("wb") as out, stderr.open("wb") as err:
        up = subprocess.Popen(stack_command("up", busy_artifacts, work, ports, "--rate", "1000",
                                            dataset=BUSY_DATASET),
                              stdout=out, stderr=err, start_new_session=True, env=own_broker_env())

    def running() -> None:
        if up.poll() is not None:
            raise AssertionError(f"limaml up exited with {up.returncode}:\n{output(stderr)[-3000:]}")

    def kill_and_await_restart(name: str, port: int) -> None:
        killed = child_pid(work, name)
        assert killed is not None
        os.kill(killed, signal.SIGKILL)

        def restarted() -> bool:
            running()
            pid = child_pid(work, name)
            return pid not in (None, killed) and answers(port)

        poll(restarted, 120, f"limaml up to restart the killed {name} worker",
             describe=lambda: output(stderr)[-2000:])

    behind: dict[str, object] = {}

    def support_sets_hold_every_event_once() -> bool:
        running()
        behind.clear()
        for member_id, items in expected.items():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/members/{member_id}/", timeout=5) as reply:
                    state = json.loads(reply.read())
            except OSError:
                state = None
            if state is None or state["seq"] < len(items):
                behind[member_id] = None if state is None else (state["seq"], len(items))
                continue
            assert state["seq"] == len(items), f"{member_id}: counted {state['seq']} of {len(items)} events"
            assert state["item_ids"] == items[-support_size:]
        return not behind

    try:
        poll(lambda: running() or metric(ports[0], "limaml_stream_events_total") >= 1000, 150,
             "the stream worker to apply its first 1,000 events", describe=lambda: output(stderr)[-2000:])
        kill_and_await_restart("stream", ports[0])
        kill_and_await_restart("adapt", ports[1])
        poll(support_sets_hold_every_event_once, 180, "every event in its member's support set, once",
             describe=lambda: f"members behind (seq, events): {dict(list(behind.items())[:5])} of {len(behind)}")
        reader = EmbeddingReader(open_feature_store(FeatureStoreConfig(
            repo_dir=work / "feast", profile_fields=",".join(sorted(dataset.member_features)))))

        def embeddings_caught_up() -> bool:
            running()
            behind.clear()
            behind.update(embeddings_behind(reader, {member: len(items) for member, items in expected.items()}))
            return not behind

        poll(embeddings_caught_up, 120, "every member's embedding to cover all its events",
             describe=lambda: f"members behind (stored seq): {dict(list(behind.items())[:5])} of {len(behind)}")
    finally:
        code = ctrl_c(up)
    text = output(stdout)
    assert code == 128 + signal.SIGINT, output(stderr)[-3000:]
    assert "restarted  stream 1 time after a crash, adapt 1 time after a crash" in text, text
    assert "exited with code -9; restarting it in 1 s" in output(stderr)

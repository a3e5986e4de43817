"""`limaml up`'s restart policy (backoff that doubles, and giving up on a crash loop only),
the one stop path of its children (SIGTERM, then SIGKILL after a deadline), and the
settings it hands to its workers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from limaml import cli
from limaml.adapters.replay import ReplayConfig
from limaml.deploy.processes import Target, stop_all
from limaml.deploy.stack import StackConfig, worker_options
from limaml.deploy.supervisor import RestartPolicy, Restarts, running, start_time
from limaml.featurestore.config import FeatureStoreConfig
from limaml.serving.config import ServeConfig
from limaml.layered_config import Section, command_line, handed_on, resolve
from limaml.stream.config import AdaptConfig, StreamConfig
from limaml.stream.topics import KafkaConfig


def test_backoff_doubles_with_each_recent_crash_and_is_capped() -> None:
    restarts = Restarts(RestartPolicy(max_crashes=10, window_s=1000, first_backoff_s=1, max_backoff_s=5))
    backoffs = [restarts.crashed(now=float(t)) for t in range(5)]
    assert backoffs == [1, 2, 4, 5, 5]


def test_a_restart_is_due_once_its_backoff_is_over() -> None:
    restarts = Restarts(RestartPolicy(first_backoff_s=2))
    assert restarts.crashed(now=10.0) == 2
    assert not restarts.take_due(11.9)
    assert restarts.take_due(12.0) and restarts.count == 1
    assert not restarts.take_due(13.0)  # once


def test_it_gives_up_after_max_crashes_within_the_window_only() -> None:
    policy = RestartPolicy(max_crashes=3, window_s=60)
    spaced = Restarts(policy)
    assert all(spaced.crashed(now=t) is not None for t in (0.0, 61.0, 122.0, 183.0))  # never 3 in 60 s
    looping = Restarts(policy)
    assert looping.crashed(now=0.0) is not None and looping.crashed(now=5.0) is not None
    assert looping.crashed(now=10.0) is None and looping.recent == 3


def _group(*command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(command), start_new_session=True)


def _target(name: str, process: subprocess.Popen[bytes]) -> Target:
    return Target(name, process.pid, lambda: process.poll() is None)


def test_stop_all_asks_first_and_kills_what_ignores_sigterm_after_the_deadline() -> None:
    polite = _group("sleep", "60")
    stubborn = _group("sh", "-c", "trap '' TERM; sleep 60 & wait")  # its sleep ignores SIGTERM too
    time.sleep(0.2)  # the trap is set
    ended = dict(stop_all([_target("polite", polite), _target("stubborn", stubborn)], timeout_s=1.0))
    assert ended["polite"].startswith("SIGTERM, ") and ended["stubborn"].startswith("SIGKILL after ")
    assert polite.returncode == -signal.SIGTERM and stubborn.returncode == -signal.SIGKILL


def test_a_hurried_stop_kills_at_once() -> None:
    process = _group("sleep", "60")
    started = time.monotonic()
    assert stop_all([_target("sleep", process)], timeout_s=60.0, hurry=lambda: True)[0][1].startswith("SIGKILL")
    assert time.monotonic() - started < 5 and process.returncode == -signal.SIGKILL


def test_a_recorded_process_is_told_from_a_later_one_with_its_pid() -> None:
    process = _group("sleep", "60")
    started = start_time(process.pid)
    assert started is not None and running(process.pid, started)
    assert not running(process.pid, started + 1.0)  # another process that got the same pid
    process.kill()
    process.wait()
    assert start_time(process.pid) is None and not running(process.pid, started)


def test_the_stack_hands_its_settings_to_the_workers_as_their_own_options(tmp_path: Path) -> None:
    """What `limaml up` sets of a worker's section reaches it through that worker's own
    command line, parsed by the worker's parser and resolved as the worker resolves it."""
    config = StackConfig(dataset="synthetic:n_members=5", rate=7.0, limit=9, artifacts_dir=tmp_path / "models",
                         topic_prefix="t", partitions=3, online_store="redis://127.0.0.1:1/0", host="0.0.0.0",
                         stream_port=7001, adapt_port=7002, serve_port=7003, device="cpu", max_staleness_s=0.5)
    options = worker_options(config, tmp_path / "work", "127.0.0.1:9999", tmp_path / "feast")
    resolved = {name: resolve(cli.sections(name), None, cli.build_parser().parse_args([name, *command_line(values)]),
                              environ={})
                for name, values in options.items()}
    stream, adapt, serve = (StreamConfig(**resolved["stream"]["stream"]), AdaptConfig(**resolved["adapt"]["adapt"]),
                            ServeConfig(**resolved["serve"]["serve"]))
    assert (stream.web_port, stream.max_staleness_s, stream.data_dir) == (7001, 0.5, tmp_path / "work" / "stream")
    assert (adapt.web_port, adapt.device, adapt.artifacts_dir) == (7002, "cpu", tmp_path / "models")
    assert (serve.host, serve.port, serve.artifacts_dir, serve.ssl_certfile) == ("0.0.0.0", 7003, tmp_path / "models", "")
    for name in options:
        kafka = KafkaConfig(**resolved[name]["kafka"])
        assert (kafka.bootstrap, kafka.topic_prefix, kafka.partitions) == ("127.0.0.1:9999", "t", 3), name
    for name in ("adapt", "serve"):
        feast = FeatureStoreConfig(**resolved[name]["feast"])
        assert (feast.repo_dir, feast.online_store) == (tmp_path / "feast", "redis://127.0.0.1:1/0"), name
    assert handed_on(config, ReplayConfig) == {"dataset": "synthetic:n_members=5", "rate": 7.0, "limit": 9}


def test_borrowed_settings_keep_the_workers_defaults_and_help() -> None:
    defaults = StackConfig()
    assert (defaults.stream_port, defaults.adapt_port, defaults.serve_port) == (
        StreamConfig().web_port, AdaptConfig().web_port, ServeConfig().port)
    assert defaults.max_staleness_s == 2.0 and defaults.rate == 500.0  # the stack's own defaults
    options = {option.name: option for option in Section.of("up", StackConfig).options}
    assert options["adapt_port"].help.endswith("(sets AdaptConfig.web_port)")
    assert options["work_dir"].help.startswith("broker data")

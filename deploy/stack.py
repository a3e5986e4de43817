"""`limaml up` and `limaml demo`: the whole pipeline on one machine, no Docker.

Bring-up, in order: the model (the ACTIVE one, which must fit the dataset; `demo` trains
one when none does), a private Kafka broker (deploy/kafka.sh, unless a bootstrap is given),
the topics, the Feast store with the dataset's member profiles, then the stream worker,
the adaptation worker and the scoring service (started together, each waited for until it
serves /metrics), then the replay of the dataset (a thread of this process). A live view follows them until Ctrl-C
or SIGTERM (or `duration_s`, or `until_caught_up`); `demo` waits until the adaptations
have caught up with the replay, scores one member through the service, and stops.

A worker that exits while the stack runs is restarted after a backoff (1 s, doubling); the
view and the summary say so. The stack gives up, and stops, only when one worker crashes
`restart_max_crashes` times within `restart_window_s`. Catching up is judged from Kafka
(the workers' committed offsets), which a restart does not reset.

Teardown runs whatever ended the run, in stages: the replay (stopped between two events,
flushed), then the service and the workers together (SIGTERM to each process group in
reverse order of start, SIGKILL after `stop_timeout_s`; a second Ctrl-C kills at once),
the broker last. Everything lives
under `work_dir`: broker data, worker state, the Feast store, one log per process, and
`pids.json` (the running children, so a later run stops what a killed one left behind).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaException, TopicPartition
from limaml.adapters.replay import ReplayConfig

from limaml.data import InteractionLog
from limaml.featurestore.config import FeatureStoreConfig
from limaml.serving.config import ServeConfig
from limaml.layered_config import ConfigError, Section, borrow, command_line, handed_on, resolve
from limaml.stream.config import AdaptConfig, StreamConfig
from limaml.stream.topics import KafkaConfig, TopicNames, ensure_topics

from .live_view import MODES, LiveView, StackInfo, many, summary
from .processes import BOOTSTRAP_VARIABLE, poll, stop_all
from .replayer import ReplayThread
from .supervisor import Broker, Child, PidFile, RestartPolicy, Restarts
from .telemetry import Backlog, CatchUp, Figures, History, Scrape, Snapshot, add_counters, parse_metrics

log = logging.getLogger("limaml.up")

CHECK_INTERVAL_S = 0.5  # the stream worker's staleness timer period
RATE_WINDOW_S = 10.0  # span of the view's rates and recent freshness
WORKERS = ("stream", "adapt", "serve")


@dataclass(frozen=True)
class StackConfig:
    """`limaml up`'s settings. The `borrow`ed ones are the workers' (replay, Kafka, Feast,
    stream, adapt, serve) settings of the same meaning, with their defaults unless given
    here: the stack hands their values on (`handed_on`) as those workers' own options."""

    dataset: str = borrow(ReplayConfig, "dataset")  # log to replay: synthetic[:key=value,...], movielens (downloads ml-100k once) or movielens:/path/to/ml-100k
    rate: float = borrow(ReplayConfig, "rate", 500.0)  # replay pace in events per second (0: as fast as the broker takes them)
    limit: int = borrow(ReplayConfig, "limit")
    artifacts_dir: Path = borrow(AdaptConfig, "artifacts_dir", also=((ServeConfig, "artifacts_dir"),))
    work_dir: Path = Path(".cache/up")  # broker data, worker state, Feast store, logs and pids.json
    bootstrap: str = ""  # an existing Kafka broker to use (else env LIMAML_KAFKA_BOOTSTRAP, else a private one)
    topic_prefix: str = borrow(KafkaConfig, "topic_prefix")
    partitions: int = borrow(KafkaConfig, "partitions")
    online_store: str = borrow(FeatureStoreConfig, "online_store")
    host: str = borrow(ServeConfig, "host")
    stream_port: int = borrow(StreamConfig, "web_port")
    adapt_port: int = borrow(AdaptConfig, "web_port")
    serve_port: int = borrow(ServeConfig, "port")
    device: str = borrow(AdaptConfig, "device")
    max_staleness_s: float = borrow(StreamConfig, "max_staleness_s", 2.0)  # the longest a member's new event waits for an adaptation
    fresh: bool = True  # start from an empty broker, worker state and store (a private broker only)
    duration_s: float = 0.0  # stop after this many seconds of replay (0: run until Ctrl-C)
    until_caught_up: bool = False  # stop once the replay is delivered and the adaptations have caught up
    view: str = "auto"  # live view: auto (redrawn on a terminal, plain lines otherwise), tty, plain or none
    refresh_s: float = 1.0  # seconds between view updates (plain lines: every 10th)
    start_timeout_s: float = 180.0  # longest wait for the workers to answer
    stop_timeout_s: float = 30.0  # per process: SIGTERM, then SIGKILL after this
    restart_max_crashes: int = 5  # a worker crashing this often within restart_window_s stops the stack
    restart_window_s: float = 60.0  # span over which a worker's crashes are counted

    def __post_init__(self) -> None:
        if self.view not in MODES:
            raise ConfigError(f"view must be one of {', '.join(MODES)}, got {self.view!r}")
        for name in ("rate", "duration_s", "max_staleness_s", "refresh_s", "start_timeout_s", "stop_timeout_s",
                     "restart_window_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (value == 0 and name == "refresh_s"):
                raise ConfigError(f"{name} must be a finite number >= 0 (refresh_s > 0), got {value}")
        for name in ("stream_port", "adapt_port", "serve_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ConfigError(f"{name} must be a TCP port, got {getattr(self, name)}")
        if len({self.stream_port, self.adapt_port, self.serve_port}) < 3:
            raise ConfigError("stream_port, adapt_port and serve_port must differ")
        if self.limit < 0 or self.partitions < 1 or self.restart_max_crashes < 1:
            raise ConfigError("limit must be >= 0, partitions and restart_max_crashes >= 1")


DEMO_DEFAULTS = {"up": {"rate": 500.0, "limit": 10_000}}
"""`limaml demo`: a finite replay, so that `make demo` ends on its own."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: stop the stack."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class KafkaProgress:
    """The replay's progress and the workers' backlogs, read from the brokers: high
    watermarks of the interactions and adapt-requests topics, and the offsets the stream and
    adaptation workers' consumer groups have committed (read without joining the groups)."""

    def __init__(self, kafka: KafkaConfig) -> None:
        names = TopicNames(kafka.topic_prefix)
        connection = {**kafka.client_config(), "enable.auto.commit": False}
        self.consumers = {group: Consumer({**connection, "group.id": group})
                          for group in ("limaml-up-progress", kafka.faust_app_id("stream"),
                                        kafka.faust_app_id("adapt"))}
        self.watermarks = self.consumers["limaml-up-progress"]
        self.stream_group = self.consumers[kafka.faust_app_id("stream")]
        self.adapt_group = self.consumers[kafka.faust_app_id("adapt")]
        self.interactions = [TopicPartition(names.interactions, p) for p in range(kafka.partitions)]
        self.requests = [TopicPartition(names.adapt_requests, p) for p in range(kafka.partitions)]
        self.baseline = self._ends(self.interactions) or 0
        self.last = 0

    def _ends(self, partitions: list[TopicPartition]) -> int | None:
        try:
            offsets = [self.watermarks.get_watermark_offsets(tp, timeout=2.0, cached=False)
                       for tp in partitions]
        except KafkaException:
            return None
        return None if any(o is None for o in offsets) else sum(high for _low, high in offsets)

    @staticmethod
    def _committed(group: Consumer, partitions: list[TopicPartition]) -> int | None:
        try:
            offsets = group.committed(partitions, timeout=2.0)
        except KafkaException:
            return None
        return sum(max(0, tp.offset) for tp in offsets)  # no commit yet: a negative sentinel

    def produced(self) -> int:
        """Events produced since the start (the previous count when the broker did not answer)."""
        high = self._ends(self.interactions)
        if high is not None:
            self.last = high - self.baseline
        return self.last

    def backlog(self) -> Backlog | None:
        """What the workers have not committed; None when a broker did not answer."""
        events, requests = self._ends(self.interactions), self._ends(self.requests)
        events_done = self._committed(self.stream_group, self.interactions)
        requests_done = self._committed(self.adapt_group, self.requests)
        if events is None or requests is None or events_done is None or requests_done is None:
            return None
        return Backlog(events=max(0, events - events_done), requests=max(0, requests - requests_done),
                       requests_written=requests)

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()


@dataclass
class Outcome:
    code: int = 0
    ended: str = "stopped"


class Stack:
    def __init__(self, config: StackConfig, demo: bool = False, config_file: Path | None = None,
                 out: TextIO = sys.stdout) -> None:
        self.config = config
        self.demo = demo
        self.config_file = config_file.resolve() if config_file else None
        self.work = config.work_dir.resolve()  # children get absolute paths
        self.logs = self.work / "logs"
        self.view = LiveView(out, config.view, plain_every=10)
        self.info = StackInfo(command="demo" if demo else "up", topic_prefix=config.topic_prefix,
                              log_dir=self.logs)
        self.bootstrap = config.bootstrap or os.environ.get(BOOTSTRAP_VARIABLE, "").strip()
        self.broker: Broker | None = None
        self.workers: dict[str, Child] = {}
        self.replay: ReplayThread | None = None
        self.progress: KafkaProgress | None = None
        self.history = History(RATE_WINDOW_S)
        self.pids = PidFile(self.work / "pids.json")
        self.stopping = False  # a first signal raises Interrupted; later ones hurry the teardown
        self.hurry = False
        self._scrapes: dict[str, Scrape] = {}  # the last good scrape of each worker
        self._earlier_lives: dict[str, Scrape] = {}  # what restarted workers counted before
        policy = RestartPolicy(max_crashes=config.restart_max_crashes, window_s=config.restart_window_s)
        self.restarts = {name: Restarts(policy) for name in WORKERS}
        self._pool = ThreadPoolExecutor(max_workers=len(WORKERS), thread_name_prefix="scrape")

    # ----------------------------------------------------------------- the whole run
    def run(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        with self._locked(), self._signals():
            try:
                dataset = self._prepare()
            except Interrupted as stop:
                log.warning("interrupted before the stack started")
                return 128 + stop.signum
            outcome = Outcome()
            try:
                with self.view.logs_above():
                    self._bring_up(dataset)
                    self._watch(dataset, outcome)
            except Interrupted as stop:
                outcome.code = 128 + stop.signum
                outcome.ended = "stopped by " + ("Ctrl-C" if stop.signum == signal.SIGINT else stop.args[0])
            except Exception as error:  # a failed start or a dead process: stop the rest
                log.error("%s", error, exc_info=log.isEnabledFor(logging.DEBUG))
                outcome.code, outcome.ended = 1, f"failed: {str(error).splitlines()[0]}"
            finally:
                self.stopping = True
                figures = self._final_figures()
                stops = self._teardown(outcome)
            report = self.replay.summary() if self.replay is not None else None
            self.view.end(summary(figures, self.info, outcome.ended, report, stops))
            return outcome.code

    # ----------------------------------------------------------------- before anything runs
    def _prepare(self) -> InteractionLog:
        """Checks that need no process: leftovers, dataset, model, free ports; the fresh start."""
        from limaml.adapters.registry import load_dataset

        from .demo import model_for_demo, model_for_up

        left = self.pids.stop_leftovers(self.config.stop_timeout_s)
        if left:
            log.warning("stopped what a previous run left running: %s", ", ".join(left))
        dataset = load_dataset(self.config.dataset)
        choose = model_for_demo if self.demo else model_for_up
        self.info.model_version = choose(self.config.artifacts_dir, dataset, self.config.dataset)
        self.info.replay_total = min(dataset.n_events, self.config.limit or dataset.n_events)
        log.info("dataset %s: %s events of %s members; model %s", self.config.dataset,
                 f"{self.info.replay_total:,}", f"{len(dataset.members) - 1:,}", self.info.model_version)
        for name in ("stream_port", "adapt_port", "serve_port"):
            port = getattr(self.config, name)
            host = self.config.host if name == "serve_port" else "127.0.0.1"
            if not _port_free(host, port):
                raise ConfigError(f"port {port} ({name}) on {host} is in use, perhaps by another "
                                  f"limaml worker; stop it or pass --{name.replace('_', '-')}")
        if not self.bootstrap:
            how = Broker(self.work / "kafka").stop(self.config.stop_timeout_s)
            if how != "not running":
                log.warning("stopped the Kafka broker a previous run left running (%s)", how)
        if self.config.fresh and not self.bootstrap:
            for name in ("kafka", "stream", "adapt", "feast", "logs"):
                shutil.rmtree(self.work / name, ignore_errors=True)
        elif self.bootstrap:
            log.info("using the broker at %s; its topics and the state in %s are kept",
                     self.bootstrap, self.work)
        self.logs.mkdir(parents=True, exist_ok=True)
        return dataset

    # ----------------------------------------------------------------- bring-up
    def _bring_up(self, dataset: InteractionLog) -> None:
        from limaml.featurestore.config import PASSWORD_FIELDS, SETTINGS
        from limaml.featurestore.profiles import write_member_profiles
        from limaml.featurestore.store import online_store_answering, open_feature_store

        config = self.config
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("feast").setLevel(logging.WARNING)  # registry chatter
        started = time.monotonic()
        if not self.bootstrap:
            self.broker = Broker(self.work / "kafka")
            self.info.broker_logs = self.broker.data_dir / "node-1" / "logs"
            self.info.processes["broker"] = "starting"
            self.bootstrap = self.broker.start()
            self.info.processes["broker"] = self.bootstrap
            log.info("Kafka broker %s ready in %.1f s", self.bootstrap, time.monotonic() - started)
        else:
            self.info.processes["broker"] = f"{self.bootstrap} (external)"
        self._write_pids()
        # Replication and the rest of [kafka] from where the workers read them (file, environment).
        configured_kafka = resolve((Section.of("kafka", KafkaConfig),), self.config_file, None)["kafka"]
        kafka = KafkaConfig(**{**configured_kafka, "bootstrap": self.bootstrap, **handed_on(config, KafkaConfig)})
        ensure_topics(kafka)
        fields = ",".join(sorted(dataset.member_features))
        configured = resolve((Section.of("feast", FeatureStoreConfig, SETTINGS),), self.config_file, None)["feast"]
        password = {name: configured[name] for name in PASSWORD_FIELDS}  # from where the workers read it
        feast = FeatureStoreConfig(repo_dir=self.work / "feast", profile_fields=fields, **password,
                                   **handed_on(config, FeatureStoreConfig))
        with online_store_answering(feast):
            profiles = write_member_profiles(open_feature_store(feast), dataset)
        log.info("Feast store %s (%s): %s member profiles", feast.repo_dir, feast.shown_online_store,
                 f"{profiles:,}")

        # The workers' bearer tokens, and the settings the stack does not set, come from the
        # config file and the environment (as the view reads the tokens to scrape them).
        config_file = ["--config", str(self.config_file)] if self.config_file else []
        tokens = self._configured_tokens()
        started = time.monotonic()
        for name, values in worker_options(config, self.work, self.bootstrap, feast.repo_dir).items():
            port = getattr(config, f"{name}_port")
            self.workers[name] = Child(name, [name, *command_line(values), *config_file], port, self.logs,
                                       tokens[name]).spawn()
            self.info.processes[name] = f":{port} starting"
        self._write_pids()
        poll(lambda: not [name for name, child in self.workers.items() if not child.ready()],  # all checked
             config.start_timeout_s,
             "the stream, adapt and serve processes to answer on /metrics",
             describe=lambda: ", ".join(f"{name} {'up' if child.get('/metrics') else 'not answering'}"
                                        for name, child in self.workers.items()))
        for name, child in self.workers.items():
            self.info.processes[name] = f":{child.web_port}"
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        self.info.score_url = f"http://{host}:{config.serve_port}/v1/score"
        log.info("stream, adapt and serve ready in %.1f s; logs in %s", time.monotonic() - started, self.logs)

        topic = TopicNames(config.topic_prefix).interactions
        self.progress = KafkaProgress(kafka)
        self.replay = ReplayThread(kafka, ReplayConfig(**handed_on(config, ReplayConfig)), dataset)
        self.replay.start()
        self.info.replay_state = self.info.processes["replay"] = "running"
        pace = f"{config.rate:g} events/s" if config.rate else "full speed"
        log.info("replaying %s events of %s into %s at %s", f"{self.info.replay_total:,}", config.dataset,
                 topic, pace)

    # ----------------------------------------------------------------- the live phase
    def _watch(self, dataset: InteractionLog, outcome: Outcome) -> None:
        config = self.config
        catch_up = CatchUp(quiet_s=config.max_staleness_s + CHECK_INTERVAL_S + 1.0)
        started = time.monotonic()
        while True:
            tick = time.monotonic()
            snapshot = self._snapshot()
            self._check_processes()
            caught_up = catch_up.update(snapshot) and self.info.replay_state == "done"
            self.view.show(self.history.figures(), self.info)
            if caught_up and (self.demo or config.until_caught_up):
                outcome.ended = "stopped once caught up with the replay"
                break
            if config.duration_s and tick - started >= config.duration_s:
                outcome.ended = f"stopped at --duration-s {config.duration_s:g}"
                break
            time.sleep(max(0.0, config.refresh_s - (time.monotonic() - tick)))
        if self.demo:
            from .demo import demo_query, score_demo_member

            query = demo_query(dataset, 0, self.info.replay_total)
            for text in score_demo_member(self.info.score_url, query, self.workers["serve"].token):
                self.view.note(text)
            self._snapshot()  # the summary counts the two scoring requests
            outcome.ended = "done"

    def _snapshot(self) -> Snapshot:
        futures = {name: self._pool.submit(child.get, "/metrics") for name, child in self.workers.items()}
        produced = self.progress.produced() if self.progress else 0
        backlog = self.progress.backlog() if self.progress else None
        for name, future in futures.items():
            body = future.result()
            if body is not None:  # a scrape that timed out keeps the previous figures
                self._scrapes[name] = parse_metrics(body.decode())
        snapshot = Snapshot(at=time.monotonic(), produced=produced, backlog=backlog,
                            **{name: add_counters(self._earlier_lives.get(name, {}), self._scrapes.get(name, {}))
                               for name in WORKERS})
        self.history.add(snapshot)
        return snapshot

    def _check_processes(self) -> None:
        """Restart the workers that exited, when their backoff is over; raise when one keeps
        crashing or the replay has failed; note the replay's end."""
        now = time.monotonic()
        for name, child in self.workers.items():
            restarts = self.restarts[name]
            if restarts.take_due(now):
                child.respawn()
                self._write_pids()
                self.info.processes[name] = f":{child.web_port} (restarted {many(restarts.count, 'time', 'times')})"
                self.info.restarts[name] = restarts.count
                log.warning("%s restarted (restart %d)", name, restarts.count)
                continue
            code = child.exit_code()
            if code is None or restarts.due is not None:
                continue
            # Its counters die with it: keep what it counted, so totals and rates go on.
            self._earlier_lives[name] = add_counters(self._earlier_lives.get(name, {}), self._scrapes.pop(name, {}))
            backoff = restarts.crashed(now)
            if backoff is None:
                self.info.processes[name] = f"exited {code}"
                raise RuntimeError(
                    f"{name} exited with code {code}: {restarts.recent} crashes within "
                    f"{self.config.restart_window_s:g} s, so it is not restarted again. The end of "
                    f"{child.log_path}:\n{child.log_tail(30)}")
            self.info.processes[name] = f"exited {code}, restart in {backoff:g} s"
            log.warning("%s exited with code %s; restarting it in %g s. The end of %s:\n%s",
                        name, code, backoff, child.log_path, child.log_tail(10))
        if self.replay is not None:
            self.info.replay_state = self.info.processes["replay"] = self.replay.state
            if self.replay.state == "failed":
                raise RuntimeError(self.replay.failure())

    # ----------------------------------------------------------------- teardown
    def _final_figures(self) -> Figures | None:
        """The figures just before the processes stop (their counters die with them)."""
        try:
            if self.workers and not self.hurry:
                self._snapshot()
        except Exception as error:  # noqa: BLE001 - the summary shows the last good scrape
            log.debug("final scrape failed: %s", error)
        return self.history.figures()

    def _teardown(self, outcome: Outcome) -> list[tuple[str, str]]:
        """The replay, then the workers together (signalled in reverse order of start), the broker last."""
        stops: list[tuple[str, str]] = []
        if self.replay is not None:
            stops.append(("replay", self.replay.stop(self.config.stop_timeout_s)))
        workers = list(reversed(self.workers.values()))
        stops += [(child.name, f"already exited, code {child.exit_code()}") for child in workers
                  if child.target() is None]
        stops += stop_all([target for child in workers if (target := child.target()) is not None],
                          self.config.stop_timeout_s, lambda: self.hurry)
        self._pool.shutdown(wait=True)
        if self.progress is not None:
            self.progress.close()
        if self.broker is not None:
            try:
                stops.append(("broker", self.broker.stop(self.config.stop_timeout_s, lambda: self.hurry)))
            except (RuntimeError, OSError) as error:
                log.error("%s", error)
                stops.append(("broker", "stop failed"))
                outcome.code = outcome.code or 1
        self.pids.remove()
        return stops

    # ----------------------------------------------------------------- plumbing
    def _write_pids(self) -> None:
        children = {name: child.record() for name, child in self.workers.items()}
        if self.broker is not None and (broker := self.broker.record()):
            children["broker"] = broker
        self.pids.write(children, bootstrap=self.bootstrap, work_dir=str(self.work),
                        ports={name: getattr(self.config, f"{name}_port") for name in WORKERS})

    def _configured_tokens(self) -> dict[str, str | None]:
        """The bearer token each worker's pages require (None: open), from where they read it."""
        sections = (Section.of("stream", StreamConfig), Section.of("adapt", AdaptConfig),
                    Section.of("serve", ServeConfig))
        values = resolve(sections, self.config_file, None)
        return {"stream": StreamConfig(**values["stream"]).web_token(),
                "adapt": AdaptConfig(**values["adapt"]).web_token(),
                "serve": ServeConfig(**values["serve"]).bearer_token()}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        path = self.work / "up.lock"
        with path.open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another limaml up or demo is running with the work dir {self.work}; "
                                  "stop it, or pass another --work-dir") from None
            yield

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def on_signal(signum: int, _frame: Any) -> None:
            if not self.stopping:
                self.stopping = True
                raise Interrupted(signum)
            if not self.hurry:
                self.hurry = True
                self.view.note(f"{signal.Signals(signum).name} again: killing what is left")

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def worker_options(config: StackConfig, work: Path, bootstrap: str, repo_dir: Path) -> dict[str, dict[str, Any]]:
    """The options of each worker's command line, by worker: the stack's settings of its
    section, its state under the work dir, the [kafka] and [feast] settings the stack uses;
    the service over plain HTTP."""
    kafka = {"bootstrap": bootstrap, **handed_on(config, KafkaConfig)}
    feast = {"repo_dir": repo_dir, **handed_on(config, FeatureStoreConfig)}
    artifacts = {"artifacts_dir": config.artifacts_dir.resolve()}
    return {
        "stream": {**handed_on(config, StreamConfig), "data_dir": work / "stream",
                   "check_interval_s": CHECK_INTERVAL_S, **kafka},
        "adapt": {**handed_on(config, AdaptConfig), **artifacts, "data_dir": work / "adapt", **feast, **kafka},
        "serve": {**handed_on(config, ServeConfig), **artifacts, **feast, "ssl_certfile": "", "ssl_keyfile": "",
                  **kafka},
    }


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on the port now (as servers do, ignoring TIME_WAIT)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def run_stack(config: StackConfig, demo: bool = False, config_file: Path | None = None) -> int:
    """Run the stack until it is told to stop; the exit status (130 after Ctrl-C, 143 after SIGTERM)."""
    return Stack(config, demo, config_file).run()

"""Settings of the stream and adaptation workers (derived into CLI, env and TOML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from limaml.bearer import load_bearer_token


@dataclass(frozen=True)
class StreamConfig:
    support_size: int = 64  # K: most recent examples kept per member
    min_new_signals: int = 5  # M: new events that make a member due at once
    max_staleness_s: float = 10.0  # S: the longest a new event waits for an adaptation
    request_timeout_s: float = 60.0  # an unanswered adapt request is re-sent after this
    check_interval_s: float = 1.0  # how often the timer looks for stale members
    batch_max_events: int = 1000  # most interaction events applied in one batch (one table write per member per batch)
    batch_wait_s: float = 0.05  # longest wait to fill a batch of interaction events
    data_dir: Path = Path(".cache/stream")  # RocksDB tables and worker state
    worker_id: str = "0"  # names this worker's state directory, under data_dir (one per worker)
    web_port: int = 6066  # HTTP port of /metrics and /members/<id>/
    web_bind: str = "127.0.0.1"  # interface of that port (loopback unless exposed on purpose)
    web_api_token: str = field(default="", repr=False)  # bearer token the HTTP pages require ("": open); never logged
    web_api_token_file: str = ""  # file holding web_api_token, read at start (a mounted secret)
    rocksdb_cache_mb: int = 32  # RocksDB block cache per table partition
    max_event_bytes: int = 65536  # larger events go to the dead-letter topic

    def web_token(self) -> str | None:
        """The token the HTTP pages require, None when they are open; the file is read now."""
        return load_bearer_token(self.web_api_token, self.web_api_token_file, "web_api_token")


@dataclass(frozen=True)
class AdaptConfig:
    artifacts_dir: Path = Path("artifacts")  # model versions; the ACTIVE one is served
    batch_size: int = 256  # a micro-batch this large starts as soon as no more requests are waiting
    max_batch: int = 4096  # the most adapt requests in one micro-batch
    max_wait_s: float = 0.05  # longest wait to fill a smaller micro-batch
    device: str = "auto"  # "auto" picks CUDA when present
    compile: bool = True  # torch.compile the inner loop, in the background (eager until compiled)
    torch_threads: int = 1  # CPU threads of the inner loop (1: no OpenMP spin contention on shared cores)
    model_poll_s: float = 2.0  # how often the ACTIVE model pointer is checked
    data_dir: Path = Path(".cache/adapt")  # worker state
    worker_id: str = "0"  # names this worker's state directory, under data_dir (one per worker)
    web_port: int = 6067  # HTTP port of /metrics
    web_bind: str = "127.0.0.1"  # interface of that port
    web_api_token: str = field(default="", repr=False)  # bearer token the HTTP pages require ("": open); never logged
    web_api_token_file: str = ""  # file holding web_api_token, read at start (a mounted secret)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= self.max_batch:
            raise ValueError(f"[adapt] batch_size must be between 1 and max_batch ({self.max_batch}), "
                             f"got {self.batch_size}: lower batch_size or raise max_batch")
        if self.max_wait_s < 0:
            raise ValueError(f"[adapt] max_wait_s must be 0 or more, got {self.max_wait_s}")

    def web_token(self) -> str | None:
        """The token the HTTP pages require, None when they are open; the file is read now."""
        return load_bearer_token(self.web_api_token, self.web_api_token_file, "web_api_token")

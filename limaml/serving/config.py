"""Settings of the scoring service (derived into CLI options, env variables and TOML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from limaml.bearer import load_bearer_token


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # interface to listen on (loopback unless exposed on purpose)
    port: int = 8000  # HTTP port of /v1/score, /healthz, /metrics and /docs
    artifacts_dir: Path = Path("artifacts")  # model versions; the ACTIVE one is served
    model_poll_s: float = 2.0  # how often the ACTIVE model pointer is checked
    max_candidates: int = 1000  # most candidate items one request may rank
    refresh_interval_s: float = 30.0  # at most one re-adaptation request per member this often
    refresh_max_members: int = 100_000  # members the refresh rate limit remembers (bounds its memory)
    store_timeout_s: float = 0.5  # longest wait for an online-store read before answering 503
    store_threads: int = 8  # online-store reads in flight at most, timed-out ones included
    torch_threads: int = 1  # CPU threads of torch (1: no OpenMP spin contention on shared cores)
    shutdown_timeout_s: int = 10  # longest wait for open requests on SIGTERM
    max_embedding_age_s: float = 0.0  # an embedding adapted longer ago is served as the prior ("expired") and a re-adaptation asked (0: no limit)
    api_token: str = field(default="", repr=False)  # bearer token every endpoint but /healthz requires ("": open); never logged
    api_token_file: str = ""  # file holding api_token, read at start (a mounted secret)
    ssl_certfile: str = ""  # PEM certificate (chain) to serve HTTPS with, as uvicorn's --ssl-certfile ("": plain HTTP)
    ssl_keyfile: str = ""  # PEM private key of ssl_certfile, unencrypted

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be at least 1, got {self.max_candidates}")
        if self.model_poll_s <= 0 or self.refresh_interval_s < 0:
            raise ValueError("model_poll_s must be > 0 and refresh_interval_s >= 0")
        if self.refresh_max_members < 1 or self.torch_threads < 1 or self.store_threads < 1:
            raise ValueError("refresh_max_members, torch_threads and store_threads must be at least 1")
        if self.store_timeout_s <= 0:
            raise ValueError(f"store_timeout_s must be > 0, got {self.store_timeout_s}")
        if self.max_embedding_age_s < 0:
            raise ValueError(f"max_embedding_age_s must be >= 0 (0: no limit), got {self.max_embedding_age_s}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("HTTPS needs both ssl_certfile and ssl_keyfile")

    def bearer_token(self) -> str | None:
        """The token the endpoints require, None when they are open; api_token_file is read now."""
        return load_bearer_token(self.api_token, self.api_token_file, "api_token")

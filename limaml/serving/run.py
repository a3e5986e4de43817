"""Start the scoring service: torch settings, the app, uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import torch
import uvicorn

from limaml.artifacts import active_version
from limaml.featurestore.config import FeatureStoreConfig
from limaml.serving.app import create_app
from limaml.serving.config import ServeConfig
from limaml.topics import KafkaConfig

STARTUP_FAILED = 3  # uvicorn's exit status when the app's lifespan fails to start


def run_serve(kafka: KafkaConfig, config: ServeConfig, feast: FeatureStoreConfig) -> int:
    """Serve until stopped; the exit status (STARTUP_FAILED when the model or the store could
    not be opened; uvicorn has logged why)."""
    active_version(config.artifacts_dir)  # no model: a plain error now, not a traceback from the lifespan
    torch.set_num_threads(config.torch_threads)
    server = uvicorn.Server(uvicorn.Config(
        create_app(config, feast, kafka), host=config.host, port=config.port,
        loop="auto", http="auto",  # uvloop and httptools: the fastest installed
        lifespan="on",  # a model or store that cannot be opened stops the start
        access_log=False, server_header=False, log_config=None,  # logs go through limaml's logging
        timeout_graceful_shutdown=config.shutdown_timeout_s))
    server.run()
    return 0 if server.started else STARTUP_FAILED

"""Start the scoring service: torch settings, the app, uvicorn (HTTPS when given a certificate)
until SIGTERM/SIGINT. Once the model and the store are open, the heap is frozen out of the
cyclic collector's reach, as in the workers (`limaml.garbage_collection`)."""

from __future__ import annotations

import ssl

import torch
import uvicorn

from limaml.artifacts import active_version
from limaml.featurestore.config import FeatureStoreConfig
from limaml.garbage_collection import tune_for_a_long_running_process
from limaml.serving.app import create_app
from limaml.serving.config import ServeConfig
from limaml.layered_config import ConfigError
from limaml.stream.topics import KafkaConfig

STARTUP_FAILED = 3  # uvicorn's exit status when the app's lifespan fails to start
STOPPED_BY_CTRL_C = 130  # 128 + SIGINT, as a shell reports it


def check_certificate(certfile: str, keyfile: str) -> None:
    """ConfigError unless the certificate and its key load as uvicorn will load them."""
    try:  # an encrypted key gets no password (not a terminal prompt) and fails
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile, password=b"")
    except OSError as error:  # ssl.SSLError included
        raise ConfigError(f"ssl_certfile {certfile} with ssl_keyfile {keyfile} does not load: {error}") from None


def run_serve(kafka: KafkaConfig, config: ServeConfig, feast: FeatureStoreConfig) -> int:
    """Serve until stopped; the exit status (STARTUP_FAILED when the model or the store could
    not be opened; uvicorn has logged why)."""
    active_version(config.artifacts_dir)  # no model: a plain error now, not a traceback from the lifespan
    if config.ssl_certfile:  # likewise a certificate or key that does not load
        check_certificate(config.ssl_certfile, config.ssl_keyfile)
    torch.set_num_threads(config.torch_threads)
    app = create_app(config, feast, kafka, on_started=tune_for_a_long_running_process)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port,
        loop="auto", http="auto",  # uvloop and httptools: the fastest installed
        lifespan="on",  # a model or store that cannot be opened stops the start
        access_log=False, server_header=False, log_config=None,  # logs go through limaml's logging
        timeout_graceful_shutdown=config.shutdown_timeout_s,
        ssl_certfile=config.ssl_certfile or None, ssl_keyfile=config.ssl_keyfile or None))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises a Ctrl-C again once it has shut down
        return STOPPED_BY_CTRL_C
    return 0 if server.started else STARTUP_FAILED

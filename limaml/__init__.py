"""limaml: streaming near-real-time personalization via meta learning (LiMAML)."""

# Importing Feast switches prometheus_client to multi-process mode (metric values in files
# under a temporary directory, for pre-forking servers) unless prometheus_client was
# imported first. A limaml process keeps its own registries in memory: import it first.
import prometheus_client  # noqa: E402,F401

__version__ = "0.1.0"

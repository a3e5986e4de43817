"""limaml: streaming near-real-time personalization via meta learning (LiMAML)."""

__version__ = "0.1.0"

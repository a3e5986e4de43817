"""Settings of the Feast feature store (derived into CLI, env and TOML).

Apart from `store.py` so that reading settings, and the `limaml` command's start, do not
import Feast (about 2.7 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FeatureStoreConfig:
    repo_dir: Path = Path(".cache/feast")  # Feast working dir: rendered repo, registry, parquet, SQLite file
    online_store: str = "sqlite"  # "sqlite" (a file in repo_dir) or a Redis URL, e.g. redis://127.0.0.1:6379/0
    project: str = "limaml"  # Feast project name; namespaces the online tables and keys
    profile_fields: str = ""  # member_profile's fields, comma-separated ("": the repo's, MovieLens's)

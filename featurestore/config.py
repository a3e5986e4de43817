"""Settings of the Feast feature store (derived into CLI, env and TOML).

Apart from `store.py` so that reading settings, and the `limaml` command's start, do not
import Feast (about 2.7 s).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path

PASSWORD_FIELDS = ("redis_password", "redis_password_file")
"""The settings that give the Redis password apart from the URL (for a file or an environment
variable, and off command lines)."""
SETTINGS = ("repo_dir", "online_store", "project", *PASSWORD_FIELDS)
"""What a `[feast]` table, the environment or the command line set (profile_fields is a model's)."""


@dataclass(frozen=True)
class FeatureStoreConfig:
    repo_dir: Path = Path(".cache/feast")  # Feast working dir: rendered repo, registry, parquet, SQLite file
    online_store: str = "sqlite"  # "sqlite" (a file in repo_dir) or a Redis URL, e.g. redis://127.0.0.1:6379/0, rediss://host:6380/0?ssl_ca_certs=ca.pem
    project: str = "limaml"  # Feast project name; namespaces the online tables and keys
    profile_fields: str = ""  # member_profile's fields, comma-separated ("": the repo's, MovieLens's)
    redis_password: str = field(default="", repr=False)  # password of a Redis online store, if not in its URL; never logged
    redis_password_file: str = ""  # file holding redis_password, read at start (a mounted secret)

    def __repr__(self) -> str:  # the dataclass's, with a URL's password masked
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.repr}
        values["online_store"] = self.shown_online_store
        return f"{type(self).__name__}({', '.join(f'{name}={value!r}' for name, value in values.items())})"

    @property
    def shown_online_store(self) -> str:
        """`online_store` as logs and reports may show it: a URL's password masked."""
        return without_password(self.online_store)


def without_password(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))

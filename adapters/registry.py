"""Dataset specs (`synthetic:seed=3`, `movielens:/path`, `table:/path`) to interaction logs."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

from limaml.adapters.movielens import fetch_movielens, load_movielens
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.adapters.tabular import load_table
from limaml.data import InteractionLog

ACCEPTED_FORMS = (
    "'synthetic' (default SyntheticConfig)",
    "'synthetic:key=value,...' (SyntheticConfig overrides, e.g. synthetic:n_members=2000,seed=3)",
    "'movielens' (download ml-100k into the cache, or reuse it)",
    "'movielens:/path/to/ml-100k' (an extracted ml-100k directory)",
    "'table:/path/to/dir' (your own data: interactions.csv or .parquet, optional members and "
    "items tables; see adapters/tabular.py)",
)


def _convert(key: str, text: str, kind: type) -> int | float:
    """The override value parsed as the field's type (int or float), or a ValueError."""
    try:
        value: int | float = int(text) if kind is int else float(text)
    except ValueError:
        raise ValueError(f"synthetic option {key} expects {kind.__name__}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"synthetic option {key} expects a finite number, got {text!r}")
    return value


def parse_synthetic_config(options: str) -> SyntheticConfig:
    """SyntheticConfig from `key=value,...`, each value checked against its field's type."""
    types = typing.get_type_hints(SyntheticConfig)
    known = [field.name for field in dataclasses.fields(SyntheticConfig)]
    overrides: dict[str, int | float] = {}
    for pair in options.split(","):
        key, separator, text = (part.strip() for part in pair.partition("="))
        if not separator or not key or not text:
            raise ValueError(f"synthetic option {pair!r} is not of the form key=value")
        if key not in types:
            raise ValueError(f"unknown synthetic option {key!r}; known: {', '.join(known)}")
        if key in overrides:
            raise ValueError(f"synthetic option {key!r} is given twice")
        overrides[key] = _convert(key, text, types[key])
    return SyntheticConfig(**overrides)


def load_dataset(spec: str) -> InteractionLog:
    """The interaction log a dataset spec names (see ACCEPTED_FORMS)."""
    name, separator, argument = spec.partition(":")
    if name == "synthetic":
        config = parse_synthetic_config(argument) if separator else SyntheticConfig()
        return generate_synthetic(config).log
    if name == "movielens":
        if separator and not argument:
            raise ValueError("dataset spec 'movielens:' needs a directory after the colon")
        return load_movielens(Path(argument) if separator else fetch_movielens())
    if name == "table":
        if not argument:
            raise ValueError(f"dataset spec {spec!r} needs a directory: table:/path/to/dir")
        return load_table(Path(argument))
    raise ValueError(f"unknown dataset spec {spec!r}; accepted forms: {'; '.join(ACCEPTED_FORMS)}")

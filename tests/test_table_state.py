"""A stream worker's local tables are kept across a restart only after a clean stop."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from limaml.stream.table_state import IN_USE_MARKER, tables_kept_only_after_a_clean_stop


def worker_app(datadir: Path) -> Any:
    """What the guard reads of a Faust app: its data and tables directories."""
    return SimpleNamespace(conf=SimpleNamespace(datadir=datadir, tabledir=datadir / "v1" / "tables"))


def run_once(app: Any, stop: BaseException | None) -> None:
    """One worker's life on the data directory: a row written, then `stop` (None: returns)."""
    with tables_kept_only_after_a_clean_stop(app):
        tables = Path(app.conf.tabledir)
        tables.mkdir(parents=True, exist_ok=True)
        (tables / "support-sets-0.db").write_text("rows")
        if stop is not None:
            raise stop


@pytest.mark.parametrize("stop", [None, SystemExit(0), SystemExit(None)], ids=["return", "exit-0", "exit-None"])
def test_a_clean_stop_keeps_the_local_tables(tmp_path: Path, stop: BaseException | None) -> None:
    app = worker_app(tmp_path)
    with pytest.raises(SystemExit) if stop is not None else nullcontext():
        run_once(app, stop)
    assert not (tmp_path / IN_USE_MARKER).exists()
    with tables_kept_only_after_a_clean_stop(app):
        assert (Path(app.conf.tabledir) / "support-sets-0.db").read_text() == "rows"
        assert (tmp_path / IN_USE_MARKER).exists()


@pytest.mark.parametrize("stop", [SystemExit(1), RuntimeError("agent crashed")], ids=["exit-1", "exception"])
def test_after_an_unclean_stop_the_next_worker_starts_without_local_tables(
        tmp_path: Path, stop: BaseException) -> None:
    app = worker_app(tmp_path)
    with pytest.raises(type(stop)):
        run_once(app, stop)
    assert (tmp_path / IN_USE_MARKER).exists()
    with tables_kept_only_after_a_clean_stop(app):
        assert not Path(app.conf.tabledir).exists()


def test_a_killed_worker_leaves_the_marker_so_its_successor_deletes_the_tables(tmp_path: Path) -> None:
    """kill -9 runs no exit handler: the marker written at start stays behind."""
    app = worker_app(tmp_path)
    guard = tables_kept_only_after_a_clean_stop(app)
    guard.__enter__()  # never exited: the process is gone
    Path(app.conf.tabledir).mkdir(parents=True)
    with tables_kept_only_after_a_clean_stop(app):
        assert not Path(app.conf.tabledir).exists()

"""A stream worker keeps its local tables across a restart only after a clean stop.

Faust writes a table row to the local RocksDB at once, and to the table's changelog topic
through the producer buffer; a partition's persisted offset (kept in its RocksDB) moves when
the broker acknowledges a changelog record. A worker killed with kill -9 (or crashed) can
leave local rows whose changelog records were never sent, and changelog records whose
acknowledgement it never saw. At the next start Faust replays the changelog from the
persisted offset over the local rows: a member row whose newest local write never reached the
changelog goes back to the older value the changelog holds, while the partition's resume-offset
row (`limaml.stream.source_offsets`), with no record in the replayed tail, keeps its newer
local value. The worker then resumes past events the reverted row lacks: events lost, seen on
a 3-broker cluster, where acks=all keeps more changelog records in flight (bench/chaos.py).

So a marker file says that a worker uses the data directory. A worker that finds it at
start (its predecessor did not stop cleanly) deletes the local tables first, and Faust
restores them from the changelogs alone: a prefix of the writes, in order, where each
partition's resume offset matches the rows it covers. Kafka Streams treats a task's local
state the same way after an unclean shutdown under exactly-once (no checkpoint file: wipe,
then restore from the changelog). The cost is a full restore after a crash
(docs/benchmarks.md: restore rate); a clean stop keeps the local tables.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faust

log = logging.getLogger(__name__)

IN_USE_MARKER = "tables-in-use"
"""The marker's file name, in the app's data directory (beside its tables directory)."""


@contextmanager
def tables_kept_only_after_a_clean_stop(app: faust.App) -> Iterator[None]:
    """Run the worker inside this: at start, delete the app's local tables if the previous
    worker on this data directory did not stop cleanly; at a clean stop (a normal return, or
    SystemExit with status 0, which Faust's worker raises after its graceful stop), mark the
    tables fit to keep."""
    tables, marker = Path(app.conf.tabledir), Path(app.conf.datadir) / IN_USE_MARKER
    if marker.exists() and tables.exists():
        log.warning("the previous worker on %s did not stop cleanly: its local tables are deleted "
                    "and restored from their changelogs", app.conf.datadir)
        shutil.rmtree(tables)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    stopped_cleanly = False
    try:
        yield
        stopped_cleanly = True
    except SystemExit as exit_:
        stopped_cleanly = exit_.code in (0, None)
        raise
    finally:
        if stopped_cleanly:
            marker.unlink(missing_ok=True)

"""The collector settings of the long-running processes (workers, scoring service)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from limaml.garbage_collection import GC_GEN0_THRESHOLD, tune_for_a_long_running_process


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def tracked(container: object) -> bool:
    """The collector traverses `container` (frozen objects are left out of gc.get_objects)."""
    return any(candidate is container for candidate in gc.get_objects())


@pytest.mark.usefixtures("restored_collector")
def test_what_exists_is_frozen_and_what_comes_after_is_collected() -> None:
    before = [object()]
    assert tracked(before)
    tune_for_a_long_running_process()
    after = [object()]
    assert not tracked(before)
    assert tracked(after)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD

"""Cyclic-garbage-collector settings for long-running processes (the workers, the scoring
service) that allocate many short-lived objects per event or request over a large heap
(Faust, Feast, torch, FastAPI).

What exists once a process has started (the imported modules, the model, the feature
store's registry) is frozen out of the collector's reach (`gc.freeze`), and a collection of
the youngest generation waits for `GC_GEN0_THRESHOLD` new objects instead of 700. At 5,000
events/s, with the freeze alone, the adaptation worker spent 21 % of its CPU time in
collections (3,100 of the youngest generation and 22 full ones in 20 s); with the threshold
too, 5 %. Without the freeze a full collection of the scoring service traverses about
375,000 objects and holds every request in flight for about 200 ms (192–238 ms) on a 2-core VM
(docs/benchmarks.md).
"""

from __future__ import annotations

import gc

GC_GEN0_THRESHOLD = 10_000
"""New container objects between two collections of the youngest generation (Python's: 700)."""


def freeze_long_lived() -> None:
    """Put what exists now out of the cyclic collector's reach: once a process has started,
    and again once the adaptation worker's inner loop is compiled, so collections need not
    traverse its graphs and generated code. The collection before the freeze holds the
    interpreter for a moment (0.33 s in an adaptation worker with its loop compiled, 624,000
    objects, on a 2-core VM), once per model version in a worker, once in the service."""
    gc.collect()  # garbage frozen would never be freed
    gc.freeze()


def tune_for_a_long_running_process() -> None:
    """Freeze what exists now and collect the youngest generation less often."""
    freeze_long_lived()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])

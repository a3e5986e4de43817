"""Online-store reads off the event loop, each waited for at most `store_timeout_s`.

Feast's `get_online_features` blocks (a Redis round trip, a SQLite query). Run on the event
loop, one read that hangs (a stalled Redis, a lost connection) would stop every request,
/healthz and /metrics included. So each read runs in a small thread pool of its own and the
request gives up on it after the timeout with a 503. A thread stays busy until its read
returns, however long that is, so threads are never added past `store_threads`: while all
of them wait for an unanswering store, a request gets its 503 at once.

The default timeout, 0.5 s, is about 50 times a read's p99 on a busy 2-core machine
(bench/serve_latency.py: p50 0.15 ms, p99 under 10 ms), so a read that late is not coming,
and it leaves a caller with a typical 1 s budget the time to fall back to something else.
8 threads serve several hundred reads a second at that p99; a stalled store holds at most
those 8, and they return when it does.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from limaml.serving.errors import FeatureStoreUnavailable
from limaml.serving.lookup import MemberFeatures, MemberLookup
from limaml.serving.metrics import ServeMetrics


class StoreReads:
    def __init__(self, threads: int, timeout_s: float, metrics: ServeMetrics) -> None:
        self.threads = threads
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="store-read")
        self._free = threading.BoundedSemaphore(threads)  # taken per read until its thread returns

    async def read(self, lookup: MemberLookup, member_id: str) -> MemberFeatures:
        """`lookup.read(member_id)` in the pool; FeatureStoreUnavailable after the timeout,
        or at once when every thread is still busy."""
        if not self._free.acquire(blocking=False):
            self.metrics.store_busy.inc()
            raise FeatureStoreUnavailable(
                f"the online feature store did not answer: all {self.threads} store reads are "
                f"still waiting for it")
        self.metrics.store_reads_in_flight.inc()
        running = self._executor.submit(lookup.read, member_id)
        running.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(running), self.timeout_s)
        except TimeoutError:
            self.metrics.store_timeouts.inc()
            raise FeatureStoreUnavailable(
                f"the online feature store did not answer within {self.timeout_s} s") from None

    def _release(self, _: Future[MemberFeatures]) -> None:
        self.metrics.store_reads_in_flight.dec()
        self._free.release()

    def close(self) -> None:
        """Stop taking reads; threads still waiting for the store are not waited for."""
        self._executor.shutdown(wait=False, cancel_futures=True)

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

The threads are daemon threads of this pool, not a `ThreadPoolExecutor`'s: Python joins an
executor's threads at exit, so a read stuck on a stalled store would hold a stopping
service until the store answered. A daemon thread is dropped at exit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future

from limaml.serving.errors import FeatureStoreUnavailable
from limaml.serving.lookup import MemberFeatures, MemberLookup
from limaml.serving.metrics import ServeMetrics

Read = tuple[Future[MemberFeatures], MemberLookup, str]


class StoreReads:
    def __init__(self, threads: int, timeout_s: float, metrics: ServeMetrics) -> None:
        self.threads = threads
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._free = threading.BoundedSemaphore(threads)  # taken per read until its thread returns
        self._reads: queue.SimpleQueue[Read | None] = queue.SimpleQueue()  # None: a thread's stop
        for index in range(threads):
            threading.Thread(target=self._serve, name=f"store-read-{index}", daemon=True).start()

    async def read(self, lookup: MemberLookup, member_id: str) -> MemberFeatures:
        """`lookup.read(member_id)` in the pool; FeatureStoreUnavailable after the timeout,
        or at once when every thread is still busy."""
        if not self._free.acquire(blocking=False):
            self.metrics.store_busy.inc()
            raise FeatureStoreUnavailable(
                f"the online feature store did not answer: all {self.threads} store reads are "
                f"still waiting for it")
        self.metrics.store_reads_in_flight.inc()
        running: Future[MemberFeatures] = Future()
        running.add_done_callback(self._release)
        self._reads.put((running, lookup, member_id))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(running), self.timeout_s)
        except TimeoutError:
            self.metrics.store_timeouts.inc()
            raise FeatureStoreUnavailable(
                f"the online feature store did not answer within {self.timeout_s} s") from None

    def _release(self, _: Future[MemberFeatures]) -> None:
        self.metrics.store_reads_in_flight.dec()
        self._free.release()

    def _serve(self) -> None:
        while (read := self._reads.get()) is not None:
            running, lookup, member_id = read
            if not running.set_running_or_notify_cancel():
                continue  # its request gave up before a thread was free
            try:
                running.set_result(lookup.read(member_id))
            except BaseException as error:
                running.set_exception(error)

    def close(self) -> None:
        """Stop the idle threads; threads still waiting for the store are not waited for."""
        for _ in range(self.threads):
            self._reads.put(None)

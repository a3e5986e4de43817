"""Re-adaptation requests for members whose stored embedding belongs to another model
version or is too old, at most one per member per interval, with bounded memory."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

VERSION = "version"  # a RefreshRequest reason: the stored embedding is of another model version
EXPIRED = "expired"  # a RefreshRequest reason: the stored embedding is older than max_embedding_age_s


class Requester(Protocol):
    """What sends a request (`limaml.stream.refresh.RefreshRequester` in production)."""

    def request(self, member_id: str, reason: str, model_version: str) -> None: ...


class RefreshDedup:
    """Passes a member's request on unless one was passed on less than `interval_s` ago.

    Members are remembered in the order they were asked for, so expired entries are dropped
    from the front; beyond `max_members` the oldest are forgotten early (such a member may be
    asked for again before its interval is over, which only costs one redundant request)."""

    def __init__(self, requester: Requester, interval_s: float, max_members: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.requester = requester
        self.interval_s = interval_s
        self.max_members = max_members
        self.clock = clock
        self._asked: OrderedDict[str, float] = OrderedDict()  # member -> when, oldest first

    def request(self, member_id: str, model_version: str, reason: str = VERSION) -> bool:
        """Ask for `member_id` to be re-adapted under `model_version`; False when one was asked for recently (a duplicate)."""
        now = self.clock()
        while self._asked and (len(self._asked) >= self.max_members
                               or now - next(iter(self._asked.values())) >= self.interval_s):
            self._asked.popitem(last=False)
        if member_id in self._asked:
            return False
        self._asked[member_id] = now
        self.requester.request(member_id, reason, model_version)
        return True

    def __len__(self) -> int:
        """Members currently remembered."""
        return len(self._asked)

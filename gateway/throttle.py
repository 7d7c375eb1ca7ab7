"""Slow down guessing: an address with too many failed authentications in a minute gets 429s for a while.

A sliding window per address, kept in memory per worker and bounded in size; keys are never the reason a
request is refused here, only the count of recent failures from where it came.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW_S = 60.0
MAX_ADDRESSES = 50_000  # beyond this the quietest addresses are forgotten (memory stays bounded)


class AuthThrottle:
    def __init__(self, failures_per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit, self._clock = failures_per_minute, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after_s(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None when it is not throttled."""
        recent = self._recent(address)
        if recent is None or len(recent) < self._limit:
            return None
        return max(0.0, recent[0] + WINDOW_S - self._clock())

    def failed(self, address: str) -> None:
        recent = self._recent(address)
        if recent is None:
            recent = self._failures[address] = deque(maxlen=self._limit)
        recent.append(self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent(self, address: str) -> deque[float] | None:
        recent = self._failures.get(address)
        if recent is None:
            return None
        horizon = self._clock() - WINDOW_S
        while recent and recent[0] < horizon:
            recent.popleft()
        return recent

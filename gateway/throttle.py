"""Slow down guessing: too many unsettled guesses at one credential from one client get 429s for a while.

A guess is counted when it *starts*, so two hundred concurrent wrong keys cannot all reach bcrypt before the
first failure is known, and it is withdrawn as soon as the credential proves valid. The count is kept per
(client address, key prefix) for gateway keys and per (client address, token fingerprint) for other
credentials, so one caller's failures never refuse another caller's credential: a colleague behind the same
proxy or NAT trying a different key, or a valid key someone else is guessing at from elsewhere, is not
affected. Kept in memory per worker, bounded in size.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from gateway.errors import TooManyAuthFailures

WINDOW_S = 60.0
MAX_SUBJECTS = 50_000  # beyond this the quietest (address, credential) pairs are forgotten: memory stays bounded


class AuthThrottle:
    """A sliding one-minute window of attempts per subject, `(client address, credential id)`."""

    def __init__(self, failures_per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit, self._clock = failures_per_minute, clock
        self._attempts: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def attempt(self, subject: Hashable) -> int:
        """Count an attempt at `subject`; returns how many were already counted in the window.

        Raises TooManyAuthFailures (429, with Retry-After) instead of counting when the window is full.
        """
        now = self._clock()
        recent = self._attempts.get(subject)
        if recent is None:
            recent = self._attempts[subject] = deque()
            while len(self._attempts) > MAX_SUBJECTS:
                self._attempts.popitem(last=False)
        else:
            self._attempts.move_to_end(subject)
            while recent and recent[0] <= now - WINDOW_S:
                recent.popleft()
        if len(recent) >= self._limit:
            wait = max(1, round(recent[0] + WINDOW_S - now))
            raise TooManyAuthFailures(
                f"too many failed authentications with this key from this address; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        recent.append(now)
        return len(recent) - 1

    def withdraw(self, subject: Hashable) -> None:
        """Take back one attempt at `subject` (the credential proved valid, or was never checked)."""
        recent = self._attempts.get(subject)
        if recent:
            recent.pop()
            if not recent:
                del self._attempts[subject]

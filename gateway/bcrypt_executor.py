"""bcrypt checks on a few dedicated threads, with a short queue served most deserving first.

bcrypt costs ~250 ms of CPU at 12 rounds, on purpose. Run in the loop's shared thread pool, forty wrong
secrets for one known key prefix took 33 s of CPU and made a never-seen valid key wait 17.8 s. Here:

- at most `workers` checks run at once, on threads of their own (the default pool stays free for the rest);
- a check is ordered by `priority` (lower first: the caller passes how many attempts its (client, key
  prefix) already made this minute), so a first attempt overtakes a guesser's twentieth; and repeat attempts
  (priority > 0) may use all threads but one, so a first attempt (a valid key never seen, usually) finds a
  free thread even while someone guesses at full speed;
- at most `max_queued` wait;
- when the queue is full, the least deserving check (the newcomer, or a queued one it outranks) is refused
  with 503 and Retry-After, and logged: a flood costs a bounded amount of CPU and never an unbounded wait.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import structlog

from gateway.errors import ServiceUnavailable

log = structlog.get_logger("gateway.keys")


def bcrypt_matches(key: str, key_hash: str) -> bool:
    """bcrypt.checkpw for a presented key and a stored hash; a corrupt hash is no match."""
    try:
        return bcrypt.checkpw(key.encode(), key_hash.encode())
    except ValueError:
        return False


class BcryptExecutor:
    """`await check(key, key_hash, priority=n)`: bcrypt on dedicated threads behind a bounded priority queue."""

    def __init__(self, workers: int = 2, max_queued: int = 8) -> None:
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="bcrypt")
        self._workers, self._max_queued = workers, max_queued
        self._running = 0
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []  # heap of (priority, arrival, turn)
        self._arrivals = itertools.count()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def check(self, key: str, key_hash: str, *, priority: int = 0) -> bool:
        """Whether `key` matches `key_hash`; ServiceUnavailable (503) when the queue has no room for it."""
        if self._running < self._threads_for(priority) and (not self._queue or priority < self._queue[0][0]):
            self._running += 1
        else:
            await self._wait_turn(priority)  # the finishing check counted this one as running
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._threads, bcrypt_matches, key, key_hash)
        finally:
            self._running -= 1
            self._next()

    async def _wait_turn(self, priority: int) -> None:
        entry = (priority, next(self._arrivals), asyncio.get_running_loop().create_future())
        if len(self._queue) >= self._max_queued:
            worst = max(self._queue)
            if worst < entry:
                raise self._refusal()
            self._queue.remove(worst)  # the newcomer outranks it: the queued one is refused instead
            heapq.heapify(self._queue)
            if not worst[2].done():
                worst[2].set_exception(self._refusal())
        heapq.heappush(self._queue, entry)
        try:
            await entry[2]
        except asyncio.CancelledError:
            if entry in self._queue:  # the caller hung up while waiting: it no longer needs its place
                self._queue.remove(entry)
                heapq.heapify(self._queue)
            elif not entry[2].cancelled():  # its turn came as it left: pass the turn on
                self._running -= 1
                self._next()
            raise

    def _threads_for(self, priority: int) -> int:
        return self._workers if priority == 0 else max(1, self._workers - 1)

    def _next(self) -> None:
        while self._queue:
            priority, _, turn = self._queue[0]
            if not turn.done() and self._running >= self._threads_for(priority):
                return  # the best waiting check may not take the thread left free for first attempts
            heapq.heappop(self._queue)
            if not turn.done():
                self._running += 1
                turn.set_result(None)
                return

    def _refusal(self) -> ServiceUnavailable:
        log.warning("bcrypt_queue_full", workers=self._workers, queued=len(self._queue))
        return ServiceUnavailable(
            "the gateway is verifying too many new keys right now; retry shortly", headers={"Retry-After": "1"}
        )

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

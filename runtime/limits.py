"""A model's declared limits, kept on our side of the wire: requests in flight, requests
per minute and tokens per minute.

A request takes a slot before it is sent and keeps it until its answer is in: the
concurrency slot for its whole life, one entry in the requests-per-minute window and, in
the tokens-per-minute window, its prompt estimate plus its max output tokens, corrected
to what the server reports it used. Every attempt of a retried request takes a new slot,
since the server counts it too.

A window entry is stamped when the request *ends* (its answer is in, or the try failed),
and counts, without expiring, while the request is in flight. The server counted the
request at some moment in between, so an entry never leaves our window before it leaves
the server's, however long a pause between taking the slot and the request reaching the
server (a garbage collection, a descheduled process, a slow connection). Stamping when
the slot is taken instead let a 0.47 s pause send 6 requests over a server's limit
(docs/benchmarks.md, "Dataset runs"); this costs about one call's latency per window.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llmflow.compiler.models import Limits
from llmflow.runtime.backends.base import BackendError

PERIOD = 60.0
MARGIN = 0.1
"""Seconds added to each window, for clocks that tick apart."""


@dataclass
class Permit:
    """One request's entry in a window: [end time (inf while in flight), weight]."""

    entry: list[float]

    def settle(self, tokens: int) -> None:
        """Correct the entry to what the request really used."""
        self.entry[1] = float(tokens)

    def end(self) -> None:
        self.entry[0] = time.monotonic()


class SlidingWindow:
    """At most `limit` (requests, or tokens) per `period` seconds, as a log of entries
    stamped when their requests end."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._log: list[list[float]] = []
        self._changed = asyncio.Condition()

    def _used(self, now: float) -> float:
        self._log = [e for e in self._log if now - e[0] <= self.period]  # inf stays
        return sum(weight for _, weight in self._log)

    async def take(self, weight: int) -> Permit:
        if weight > self.limit:
            raise BackendError(
                f"a request of ~{weight} tokens can never fit a limit of {self.limit} tokens "
                "per minute; raise tpm or lower the output's max_tokens"
            )
        while True:
            now = time.monotonic()
            used = self._used(now)
            if used + weight <= self.limit:
                entry = [math.inf, float(weight)]
                self._log.append(entry)
                return Permit(entry)
            # The earliest moment enough ended entries leave the window; else a request
            # ending (notify) is what frees room.
            freed, wait = used, None
            for stamp, spent in sorted(e for e in self._log if e[0] != math.inf):
                freed -= spent
                if freed + weight <= self.limit:
                    wait = stamp + self.period - now
                    break
            with contextlib.suppress(TimeoutError):
                async with self._changed:
                    timeout = max(wait, 0.01) if wait is not None else None
                    await asyncio.wait_for(self._changed.wait(), timeout)

    async def notify(self) -> None:
        """A request ended or used less than it reserved: waiting ones may fit now."""
        async with self._changed:
            self._changed.notify_all()


class Limiter:
    """The limits of one model, as declared (None: that limit is not enforced)."""

    def __init__(self, limits: Limits, period: float = PERIOD) -> None:
        window = period + MARGIN
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.concurrency) if limits.concurrency else None
        self._requests = SlidingWindow(limits.rpm, window) if limits.rpm else None
        self._tokens = SlidingWindow(limits.tpm, window) if limits.tpm else None

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[Permit]:
        """Hold a slot for one request of about `tokens` tokens (prompt + max output)."""
        async with self._slots or contextlib.nullcontext():
            permit = await self._tokens.take(tokens) if self._tokens else Permit([0.0, 0.0])
            try:
                request = await self._requests.take(1) if self._requests else None
            except BaseException:
                if self._tokens:
                    permit.end()
                    await self._tokens.notify()
                raise
            try:
                yield permit
            finally:
                for window, held in ((self._tokens, permit), (self._requests, request)):
                    if window is not None and held is not None:
                        held.end()
                        await window.notify()

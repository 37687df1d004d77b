"""A model's declared limits, kept on our side of the wire: requests in flight, requests
per minute and tokens per minute.

A request takes a slot before it is sent and keeps it until its answer is in: the
concurrency slot for its whole life, one entry in the requests-per-minute window
(asyncio-throttle's sliding log) and, in the tokens-per-minute window, its prompt
estimate plus its max output tokens, corrected to what the server reports it used. Every
attempt of a retried request takes a new slot, since the server counts it too. The
windows are a little longer than a minute (`MARGIN`) so that a request sent just inside
our window cannot land just inside the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asyncio_throttle import Throttler

from llmflow.compiler.models import Limits
from llmflow.runtime.backends.base import BackendError

PERIOD = 60.0
MARGIN = 0.5
"""Seconds added to each window: network delay between our clock and the server's."""


@dataclass
class Permit:
    """One request's share of the token window; `settle` corrects it to the real usage."""

    entry: list[float]

    def settle(self, tokens: int) -> None:
        self.entry[1] = float(tokens)


class TokenWindow:
    """Tokens per period, as a sliding log of (time, tokens)."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._log: deque[list[float]] = deque()
        self._changed = asyncio.Condition()

    def _used(self, now: float) -> float:
        while self._log and now - self._log[0][0] > self.period:
            self._log.popleft()
        return sum(tokens for _, tokens in self._log)

    async def take(self, tokens: int) -> Permit:
        if tokens > self.limit:
            raise BackendError(
                f"a request of ~{tokens} tokens can never fit a limit of {self.limit} tokens "
                "per minute; raise tpm or lower the output's max_tokens"
            )
        while True:
            now = time.monotonic()
            used = self._used(now)
            if used + tokens <= self.limit:
                entry = [now, float(tokens)]
                self._log.append(entry)
                return Permit(entry)
            # The earliest moment enough old entries have left the window.
            freed, wait = used, 0.0
            for stamp, spent in self._log:
                freed -= spent
                wait = stamp + self.period - now
                if freed + tokens <= self.limit:
                    break
            with contextlib.suppress(TimeoutError):
                async with self._changed:
                    await asyncio.wait_for(self._changed.wait(), max(wait, 0.01))

    async def notify(self) -> None:
        """Usage was corrected downwards: waiting requests may fit now."""
        async with self._changed:
            self._changed.notify_all()


class Limiter:
    """The limits of one model, as declared (None: that limit is not enforced)."""

    def __init__(self, limits: Limits, period: float = PERIOD) -> None:
        window = period + MARGIN
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.concurrency) if limits.concurrency else None
        self._requests = Throttler(limits.rpm, period=window) if limits.rpm else None
        self._tokens = TokenWindow(limits.tpm, window) if limits.tpm else None

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[Permit]:
        """Hold a slot for one request of about `tokens` tokens (prompt + max output)."""
        async with self._slots or contextlib.nullcontext():
            permit = await self._tokens.take(tokens) if self._tokens else Permit([0.0, 0.0])
            if self._requests:
                await self._requests.acquire()
            try:
                yield permit
            finally:
                if self._tokens:
                    await self._tokens.notify()

"""When to try a failed request again, and how long to wait first.

Capped exponential backoff with full jitter (AWS's "exponential backoff and jitter"): the
n-th wait is uniform in [0, min(cap, base * 2**n)], so clients that failed together do
not come back together. A server's `Retry-After` is a floor: we never come back sooner
than it asked. This is the only retry loop in a run; the SDK's own is turned off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from llmflow.runtime.backends.base import BackendError


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    """Tries per request, the first included."""
    base: float = 0.5
    """Seconds: the first backoff is at most this."""
    cap: float = 30.0
    """Seconds: no backoff is longer, unless the server's Retry-After asks for more."""
    max_retry_after: float = 120.0
    """A Retry-After longer than this is not worth waiting for: give up on the model."""

    def delay(self, retry: int, error: BackendError, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry)."""
        backoff = (rng or random).uniform(0.0, min(self.cap, self.base * 2**retry))
        if error.retry_after is not None:
            return max(error.retry_after, backoff)
        return backoff

    def gives_up(self, attempt: int, error: BackendError) -> bool:
        """After `attempt` tries (1 = the first failed), is this error final?"""
        if not error.retryable or attempt >= self.attempts:
            return True
        return error.retry_after is not None and error.retry_after > self.max_retry_after


class RetriesExhausted(BackendError):
    """A request failed every try; another model that qualifies may take over."""

    def __init__(
        self, model: str, attempts: int, last: BackendError, events: list[dict[str, Any]]
    ) -> None:
        tries = f"{attempts} tr{'y' if attempts == 1 else 'ies'}"
        super().__init__(
            f"{model}: gave up after {tries}: {last.message}",
            status=last.status,
            retryable=True,
        )
        self.last = last
        self.attempts = attempts
        self.events = events
        """The retries before giving up, for the call's trace."""

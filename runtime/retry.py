"""When to try a failed request again, and how long to wait first.

Capped exponential backoff with full jitter (AWS's "exponential backoff and jitter"): the
n-th wait is uniform in [0, min(cap, base * 2**n)], so clients that failed together do
not come back together. A server's `Retry-After` is a floor: we never come back sooner
than it asked, and never sooner than the backoff either (a `Retry-After: 0` does not
turn the backoff off). A wait the server asks for that is not a finite number of seconds
(NaN, infinity, negative) is ignored. This is the only retry loop in a run; the SDK's own
is turned off.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from llmflow.runtime.backends.base import BackendError


def server_wait(error: BackendError) -> float | None:
    """The seconds the server asked to wait, if it asked for a usable number."""
    wait = error.retry_after
    if wait is None or not isinstance(wait, int | float) or not math.isfinite(wait) or wait < 0:
        return None
    return float(wait)


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
        backoff = (rng or random).uniform(0.0, min(self.cap, self.base * 2 ** min(retry, 64)))
        wait = server_wait(error)
        return backoff if wait is None else max(wait, backoff)

    def gives_up(self, attempt: int, error: BackendError) -> bool:
        """After `attempt` tries (1 = the first failed), is this error final?"""
        if not error.retryable or attempt >= self.attempts:
            return True
        return self.waits_too_long(error)

    def waits_too_long(self, error: BackendError) -> bool:
        """Did the server ask to wait longer than we ever do?"""
        wait = server_wait(error)
        return wait is not None and wait > self.max_retry_after


class RetriesExhausted(BackendError):
    """A request failed every try (or the server asked to wait longer than the policy
    allows); another model that qualifies may take over."""

    def __init__(
        self,
        model: str,
        attempts: int,
        last: BackendError,
        events: list[dict[str, Any]],
        policy: RetryPolicy | None = None,
    ) -> None:
        tries = f"{attempts} tr{'y' if attempts == 1 else 'ies'}"
        why = f"gave up after {tries}"
        if policy is not None and policy.waits_too_long(last):
            wait = server_wait(last)
            why += (
                f": the server asked to wait {_seconds(wait or 0.0)}, more than the "
                f"{_seconds(policy.max_retry_after)} llmflow waits"
            )
        super().__init__(f"{model}: {why}: {last.message}", status=last.status, retryable=True)
        self.last = last
        self.attempts = attempts
        self.events = events
        """The retries before giving up, for the call's trace."""


def _seconds(value: float) -> str:
    if value >= 1e7:
        return f"{value:.3g} s"
    return f"{value:.1f}".removesuffix(".0") + " s"

"""The retry policy with hostile waits: a server's NaN, infinite, negative or huge
`Retry-After` never removes the backoff, and a wait longer than the policy allows ends
the call with a message that says so."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from llmflow.compiler.catalog import resolve
from llmflow.runtime.backends.base import BackendError, Generation, GenerationRequest, Turn
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.gateway import Gateway
from llmflow.runtime.retry import RetriesExhausted, RetryPolicy, server_wait

MODELS = {"m": resolve("m", "openai_compatible", "served", [])}


def rate_limited(retry_after: float | None) -> BackendError:
    return BackendError("m: 429 slow down", status=429, retryable=True, retry_after=retry_after)


@pytest.mark.parametrize("wait", [math.nan, -math.nan, math.inf, -math.inf, -1.0, None])
def test_a_wait_that_is_no_number_of_seconds_keeps_the_backoff(wait: float | None) -> None:
    policy = RetryPolicy(base=1.0, cap=8.0)
    assert server_wait(rate_limited(wait)) is None
    for retry in range(6):
        ours = policy.delay(retry, rate_limited(wait), random.Random(retry))
        plain = policy.delay(retry, rate_limited(None), random.Random(retry))
        assert ours == plain and math.isfinite(ours) and ours >= 0
    assert not policy.gives_up(1, rate_limited(wait))  # retried, with backoff


def test_a_usable_wait_is_a_floor_and_never_shortens_the_backoff() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0)
    assert policy.delay(0, rate_limited(7.0), random.Random(1)) == 7.0
    for retry in range(6):
        zero = policy.delay(retry, rate_limited(0.0), random.Random(retry))
        assert zero == policy.delay(retry, rate_limited(None), random.Random(retry))


def test_backoff_survives_a_policy_with_very_many_attempts() -> None:
    delay = RetryPolicy(attempts=10_000).delay(5_000, rate_limited(None))
    assert 0 <= delay <= RetryPolicy().cap


@pytest.mark.parametrize(
    ("wait", "shown"), [(600.0, "600 s"), (120.5, "120.5 s"), (1e300, "1e+300 s")]
)
def test_a_wait_longer_than_the_policy_allows_says_so(wait: float, shown: str) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    calls = 0

    def script(request: GenerationRequest) -> Generation:
        nonlocal calls
        calls += 1
        raise rate_limited(wait)

    gateway = Gateway(ScriptedBackend(script), MODELS, sleep=sleep)
    request = GenerationRequest(model="m", turns=[Turn(role="user", text="hi")])
    with pytest.raises(RetriesExhausted) as caught:
        asyncio.run(gateway.generate(request))
    assert calls == 1 and sleeps == []
    assert str(caught.value) == (
        f"m: gave up after 1 try: the server asked to wait {shown}, more than the 120 s "
        "llmflow waits: m: 429 slow down"
    )


def test_nan_waits_are_retried_with_finite_sleeps() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    errors = [rate_limited(math.nan), rate_limited(math.inf), rate_limited(-3.0)]

    def script(request: GenerationRequest) -> Generation | str:
        if errors:
            raise errors.pop(0)
        return "fine"

    policy = RetryPolicy(base=0.5)
    gateway = Gateway(ScriptedBackend(script), MODELS, sleep=sleep, policy=policy)
    request = GenerationRequest(model="m", turns=[Turn(role="user", text="hi")])
    answer = asyncio.run(gateway.generate(request))
    assert answer.text == "fine" and answer.retries == 3
    assert len(sleeps) == 3 and all(math.isfinite(s) and 0 <= s <= 2.0 for s in sleeps)

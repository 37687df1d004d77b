"""Everything between a call and the model that answers it.

A request goes through, in order: the run journal (a resumed run takes the answers it
already has), the response cache (deterministic requests), the budget (reserve the most
it could cost), the model's limits (a slot per try) and the retry loop (transient
failures, with backoff). Backends stay simple: one try, one answer or one
`BackendError` that says whether trying again could help.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llmflow.compiler.models import ModelSpec
from llmflow.compiler.optimizer.costs import token_dollars
from llmflow.runtime import secrets
from llmflow.runtime.backends.base import Backend, BackendError, Generation, GenerationRequest
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache, deterministic, request_key
from llmflow.runtime.journal import Journal
from llmflow.runtime.limits import Limiter
from llmflow.runtime.retry import RetriesExhausted, RetryPolicy

CHARS_PER_TOKEN_AT_MOST = 3.0
"""Prompt tokens are estimated before sending (for limits and the budget) on the high
side: English text runs about four characters per token."""


def prompt_tokens_at_most(request: GenerationRequest) -> int:
    chars = sum(len(turn.text) for turn in request.turns)
    return int(chars / CHARS_PER_TOKEN_AT_MOST) + 8 * len(request.turns)


class Gateway:
    """A backend wrapped in the run's journal, cache, budget, limits and retries."""

    def __init__(
        self,
        backend: Backend,
        models: dict[str, ModelSpec],
        *,
        cache: ResponseCache | None = None,
        journal: Journal | None = None,
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.models = models
        self.cache = cache
        self.journal = journal
        self.budget = budget
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self._limiters = {name: Limiter(spec.limits) for name, spec in models.items()}

    async def generate(self, request: GenerationRequest) -> Generation:
        spec = self.models[request.model]
        key = request_key(spec, request) if self.journal or self.cache else ""  # ~15 µs
        replayed = {"seconds": 0.0, "dollars": 0.0}
        if self.journal and (answer := self.journal.take(key)):
            return answer.model_copy(update={"source": "journal", **replayed})
        if self.cache and deterministic(request) and (answer := self.cache.get(key)):
            if self.journal:
                self.journal.record(key, answer)
            return answer.model_copy(update={"source": "cache", **replayed})
        prompt_tokens = prompt_tokens_at_most(request)
        most = token_dollars(spec, prompt_tokens, 0, request.max_tokens)
        if self.budget:
            self.budget.reserve(most)
        cost = 0.0
        try:
            answer = await self._send(spec, request, prompt_tokens)
            fresh = answer.input_tokens - answer.cached_tokens
            cost = token_dollars(spec, fresh, answer.cached_tokens, answer.output_tokens)
            answer.dollars = cost
        finally:
            if self.budget:
                self.budget.settle(most, cost)
        stored = self.journal or self.cache
        recorded = answer.model_copy(update={"retries": 0, "events": []}) if stored else answer
        if self.journal:
            self.journal.record(key, recorded)
        if self.cache and deterministic(request):
            self.cache.put(key, recorded)
        return answer

    async def _send(
        self, spec: ModelSpec, request: GenerationRequest, prompt_tokens: int
    ) -> Generation:
        limiter = self._limiters[spec.name]
        events: list[dict[str, Any]] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                async with limiter.slot(prompt_tokens + request.max_tokens) as permit:
                    try:
                        answer = await self.backend.generate(request)
                    except BackendError as err:
                        if err.status is not None:  # the server answered: it generated nothing
                            permit.settle(prompt_tokens)
                        raise
                    permit.settle(answer.input_tokens + answer.output_tokens)
                # A key echoed by a server must not reach the journal, the cache or outputs.
                text = secrets.mask_keys(answer.text)
                update = {"retries": attempt - 1, "events": events, "seed": request.seed}
                return answer.model_copy(update={**update, "text": text})
            except BackendError as err:
                if self.policy.gives_up(attempt, err):
                    if err.retryable:
                        raise RetriesExhausted(
                            spec.name, attempt, err, events, self.policy
                        ) from None
                    raise
                reason = str(err.status) if err.status else secrets.clip(err.message, 60)
                events.append({"name": "retry", "time": time.time(), "reason": reason})
                await self.sleep(self.policy.delay(attempt - 1, err))

    async def aclose(self) -> None:
        await self.backend.aclose()

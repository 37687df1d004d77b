"""Everything between a call and the model that answers it.

A request goes through, in order: a test's cassette if there is one (it replays the
recorded answer, or records what the rest of the way answers), the run journal (a
resumed run takes the answers it already has), the response cache (deterministic
requests), the budget (reserve the most it could cost), the model's limits (a slot per
try) and the retry loop (transient failures, with backoff). Backends stay simple: one
try, one answer or one `BackendError` that says whether trying again could help.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from llmflow.compiler import prices, tokens
from llmflow.compiler.models import ModelSpec
from llmflow.runtime import secrets
from llmflow.runtime.backends.base import Backend, BackendError, Generation, GenerationRequest
from llmflow.runtime.budget import Budget, Reservation
from llmflow.runtime.cache import ResponseCache, deterministic, request_key
from llmflow.runtime.calls import RowId
from llmflow.runtime.journal import Journal
from llmflow.runtime.limits import Limiter
from llmflow.runtime.retry import RetriesExhausted, RetryPolicy

if TYPE_CHECKING:
    from llmflow.runtime.cassette import Cassette


Exchange = Callable[[GenerationRequest, Generation], None]
"""Told every request a run sends and the answer it gets (`llmflow run --prompts`)."""


def prompt_tokens_at_most(request: GenerationRequest) -> int:
    """The most tokens a request's prompt can be on any model (`tokens.prompt_at_most`):
    what the budget reserves when the model's tokenizer is not at hand."""
    return tokens.prompt_at_most(turn.text for turn in request.turns)


def prompt_tokens_high(request: GenerationRequest) -> int:
    """A request's prompt tokens on the high side (`tokens.prompt_high`): what the
    tokens-per-minute window counts until the server reports the real figure."""
    return tokens.prompt_high(turn.text for turn in request.turns)


def billed(spec: ModelSpec, request: GenerationRequest, answer: Generation, prompt: int) -> float:
    """What an answer costs, from the usage its server reported, by the arithmetic plans
    use (`prices.prompt_dollars`: its cached tokens at the cached price). A count left
    out (0 where it cannot be: no prompt is empty, no text is free) is charged at its
    bound, `prompt` tokens and max_tokens; a count above the bound is charged as
    reported."""
    prompt = answer.input_tokens or prompt  # counts are ≥ 0 (Generation validates them)
    cached = answer.cached_tokens if answer.input_tokens else 0
    output = answer.output_tokens or (request.max_tokens if answer.text else 0)
    return prices.prompt_dollars(spec, prompt, cached, output)


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
        limiters: dict[str, Limiter] | None = None,
        row: RowId | None = None,
        cassette: Cassette | None = None,
        show: Exchange | None = None,
    ) -> None:
        self.backend = backend
        self.cassette = cassette
        self.show = show
        self.models = models
        self.cache = cache
        self.journal = journal
        self.row = row
        self.budget = budget
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        # `limiters`: the models' limits shared with other gateways (a session's runs).
        self._limiters = limiters if limiters is not None else {}
        for name, spec in models.items():
            if name not in self._limiters:
                self._limiters[name] = Limiter(spec.limits)

    async def generate(self, request: GenerationRequest) -> Generation:
        if self.cassette is not None:
            spec = self.models[request.model]
            answer = await self.cassette.answer(spec, request, self._generate)
        else:
            answer = await self._generate(request)
        if self.show is not None:
            self.show(request, answer)
        return answer

    async def _generate(self, request: GenerationRequest) -> Generation:
        spec = self.models[request.model]
        key = request_key(spec, request) if self.journal or self.cache else ""  # ~15 µs
        replayed = {"seconds": 0.0, "dollars": 0.0}
        if self.journal and (answer := self.journal.take(key)):
            return answer.model_copy(update={"source": "journal", **replayed})
        if self.cache and deterministic(request) and (answer := self.cache.get(key)):
            answer = answer.model_copy(update={"source": "cache", **replayed})
            if self.journal:  # at $0: a resumed run counts the journal's dollars as spent
                self.journal.record(key, answer, self.row)
            return answer
        count = getattr(self.backend, "count_tokens", None)  # the model's own tokenizer
        exact: int | None = count(request) if count is not None else None
        most = exact if exact is not None else prompt_tokens_at_most(request)
        hold = Reservation(self.budget, prices.dollars(spec, most, 0, request.max_tokens))
        await hold.take()
        cost = 0.0
        try:
            likely = exact if exact is not None else prompt_tokens_high(request)
            answer = await self._send(spec, request, likely, hold)
            cost = answer.dollars = billed(spec, request, answer, most)
        finally:
            await hold.settle(cost)
        stored = self.journal or self.cache
        recorded = answer.model_copy(update={"retries": 0, "events": []}) if stored else answer
        if self.journal:
            self.journal.record(key, recorded, self.row)
        if self.cache and deterministic(request):
            self.cache.put(key, recorded)
        return answer

    async def _send(
        self, spec: ModelSpec, request: GenerationRequest, prompt_tokens: int, hold: Reservation
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
                    except BaseException as err:
                        if isinstance(err, BackendError) and err.status is not None:
                            permit.settle(prompt_tokens)  # the server answered: no output
                        elif isinstance(err, BackendError) and not err.sent:
                            permit.settle(0)  # never reached the server: nothing billed
                        else:  # no answer (or cancelled): the try may have been billed
                            await hold.lose()
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
                await hold.take()  # again, if the failed try was counted as spent

    async def aclose(self) -> None:
        await self.backend.aclose()

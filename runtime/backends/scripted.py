"""A backend that answers from a script: for tests, and for replaying recorded runs.

A script is a function from the request to the reply text (or a `Generation`), optionally
async, so a test can answer by prompt content and simulate latency.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import Generation, GenerationRequest

Script = Callable[[GenerationRequest], "str | Generation | Awaitable[str | Generation]"]


@dataclass
class Served:
    request: GenerationRequest
    start: float
    end: float


@dataclass
class ScriptedBackend:
    script: Script
    delay: float = 0.0
    """Seconds each reply takes, so tests can see what runs concurrently."""
    served: list[Served] = field(default_factory=list)
    """Every request, for a test to look at; not kept with `keep_served=False` (a
    program's `scripted` models: a dataset of 100,000 rows must not grow memory)."""
    keep_served: bool = True
    in_flight: int = 0
    max_in_flight: int = 0

    async def generate(self, request: GenerationRequest) -> Generation:
        start = time.perf_counter()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            reply = self.script(request)
            if inspect.isawaitable(reply):
                reply = await reply
        finally:
            self.in_flight -= 1
        end = time.perf_counter()
        if self.keep_served:
            self.served.append(Served(request, start, end))
        if isinstance(reply, Generation):
            return reply
        prompt = "".join(t.text for t in request.turns)
        return Generation(
            text=reply,
            input_tokens=len(prompt.split()),
            output_tokens=len(reply.split()),
            seconds=end - start,
        )

    async def aclose(self) -> None:
        return None


def settings_script(models: dict[str, ModelSpec]) -> ScriptedBackend:
    """The backend of `scripted` models: each call gets its model's `reply` setting, or
    the last line of its prompt, after the model's `delay`."""
    from llmflow.runtime.backends.kinds import ScriptedSettings

    settings = {name: ScriptedSettings.model_validate(m.settings) for name, m in models.items()}

    async def script(request: GenerationRequest) -> str:
        own = settings[request.model]
        if own.delay:
            await asyncio.sleep(own.delay)
        if own.reply is not None:
            return own.reply
        lines = request.turns[-1].text.strip().splitlines() if request.turns else []
        return lines[-1] if lines else ""

    return ScriptedBackend(script, keep_served=False)

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

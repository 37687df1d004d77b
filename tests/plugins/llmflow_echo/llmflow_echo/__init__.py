"""A backend kind `echo`, as a plugin package would write one: `model e = echo("parrot")`
answers every call with the last line of its prompt (upper-cased with `shout=true`).

Everything llmflow knows about it comes from this declaration: its setting, its price
list, its capabilities (concurrent, no prefix reuse, no structured output) and its
backend. llmflow's code never names it.
"""

from __future__ import annotations

import time
from pathlib import Path

from llmflow.backends import (
    BackendKind,
    Capabilities,
    Catalog,
    Generation,
    GenerationRequest,
    ModelIdError,
    ModelSettings,
    ModelSpec,
    Timing,
    settings_of,
)

PRICE_LIST = "echo price list"
VOICES = ("parrot", "canyon")


class EchoSettings(ModelSettings):
    shout: bool = False
    """Answer in capitals."""


class EchoBackend:
    """Serves every `echo` model of a run."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self.settings = {name: settings_of(spec) for name, spec in models.items()}

    async def generate(self, request: GenerationRequest) -> Generation:
        start = time.perf_counter()
        settings = self.settings[request.model]
        assert isinstance(settings, EchoSettings)
        prompt = "".join(turn.text for turn in request.turns)
        lines = prompt.strip().splitlines()
        text = lines[-1].strip() if lines else ""
        return Generation(
            text=text.upper() if settings.shout else text,
            input_tokens=len(prompt.split()),
            output_tokens=len(text.split()),
            seconds=time.perf_counter() - start,
        )

    async def aclose(self) -> None:
        return None


class EchoKind(BackendKind):
    name = "echo"
    provider = "echo"
    settings = EchoSettings
    example_id = "parrot"

    def catalog(self, model_id: str, settings: ModelSettings) -> Catalog:
        found = Catalog()
        found.put(PRICE_LIST, price_in=1.5, price_out=3.0, context=2048, chat=True)
        found.put(PRICE_LIST, skills={"writing": 0.4})
        return found

    def capabilities(self, found: Catalog) -> Capabilities:
        return Capabilities(
            concurrent=True,
            prefix_reuse_min_tokens=None,
            structured_output=False,
            timing=Timing(first_token_seconds=0.01, decode_tps=5000.0),
        )

    def model_id(self, model_id: str, base: Path, base_name: str) -> str:
        if model_id not in VOICES:
            raise ModelIdError(f"no echo voice '{model_id}'", "voices: " + ", ".join(VOICES))
        return model_id

    def create(self, models: dict[str, ModelSpec]) -> EchoBackend:
        return EchoBackend(models)

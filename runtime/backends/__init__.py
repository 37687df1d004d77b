"""Backends behind one interface (`base.Backend`), and the router that sends each request
to the backend that serves its model."""

from __future__ import annotations

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import (
    Backend,
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
    Turn,
)


class Router:
    """Serves every model of a plan; backends are created on first use, so a run that
    never calls an embedded model never imports llama.cpp (nor one that calls no hosted
    model the `openai` SDK)."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self.models = models
        self._backends: dict[str, Backend] = {}

    def check(self, used: set[str]) -> None:
        """Fail before anything runs if a used hosted model lacks its key or address."""
        for name in sorted(used):
            spec = self.models[name]
            if spec.backend != "local":
                from llmflow.runtime.backends.openai import check_model

                check_model(spec)

    def open(self, used: set[str]) -> None:
        """Create the hosted models' HTTP clients now, before the run starts, rather than
        in its first call (embedded models still load on first use)."""
        hosted = {name for name in used if self.models[name].backend != "local"}
        if hosted:
            from llmflow.runtime.backends.openai import OpenAIBackend

            backend = self._backend("openai")
            assert isinstance(backend, OpenAIBackend)
            backend.open(hosted)

    async def generate(self, request: GenerationRequest) -> Generation:
        kind = "local" if self.models[request.model].backend == "local" else "openai"
        return await self._backend(kind).generate(request)

    def count_tokens(self, request: GenerationRequest) -> int | None:
        """The prompt's exact size, if its model's backend can tell without waiting."""
        kind = "local" if self.models[request.model].backend == "local" else "openai"
        count = getattr(self._backends.get(kind), "count_tokens", None)
        return count(request) if count is not None else None

    def _backend(self, kind: str) -> Backend:
        backend = self._backends.get(kind)
        if backend is None:
            backend = self._backends[kind] = self._create(kind)
        return backend

    def _create(self, kind: str) -> Backend:
        if kind == "local":
            from llmflow.runtime.backends.local import LocalBackend

            return LocalBackend({n: m for n, m in self.models.items() if m.backend == "local"})
        from llmflow.runtime.backends.openai import OpenAIBackend

        return OpenAIBackend({n: m for n, m in self.models.items() if m.backend != "local"})

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()


__all__ = [
    "Backend",
    "BackendError",
    "Constraint",
    "Generation",
    "GenerationRequest",
    "Router",
    "Turn",
]

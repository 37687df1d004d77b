"""Backends behind one interface (`base.Backend`), and the router that sends each request
to the backend that serves its model."""

from __future__ import annotations

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends import registry
from llmflow.runtime.backends.base import (
    Backend,
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
    Turn,
)


class Router:
    """Serves every model of a plan through the backend its kind creates (see
    `registry`). Backends are created on first use, so a run that never calls an
    embedded model never imports llama.cpp (nor one that calls no hosted model the
    `openai` SDK). Kinds that share an engine share one backend object."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self.models = models
        self._backends: dict[str, Backend] = {}

    def check(self, used: set[str]) -> None:
        """Fail before anything runs if a used model cannot be reached (a hosted model
        without its key or address): each kind checks its own."""
        for name in sorted(used):
            spec = self.models[name]
            registry.kind_of(spec).check(spec)

    def open(self, used: set[str]) -> None:
        """Create the backends of used models whose backends can open early (the hosted
        models' HTTP clients) now, before the run starts, rather than in its first call;
        the others (embedded models) still load on first use."""
        by_engine: dict[str, set[str]] = {}
        for name in used:
            by_engine.setdefault(self._engine(name), set()).add(name)
        for engine, names in sorted(by_engine.items()):
            kind = registry.kind_of(self.models[min(names)])
            opener = getattr(self._backend(engine), "open", None) if kind.open_early else None
            if callable(opener):
                opener(names)

    async def generate(self, request: GenerationRequest) -> Generation:
        return await self._backend(self._engine(request.model)).generate(request)

    def count_tokens(self, request: GenerationRequest) -> int | None:
        """The prompt's exact size, if its model's backend can tell without waiting."""
        count = getattr(self._backends.get(self._engine(request.model)), "count_tokens", None)
        return count(request) if count is not None else None

    def _engine(self, model: str) -> str:
        kind = registry.kind_of(self.models[model])
        return kind.engine or kind.name

    def _backend(self, engine: str) -> Backend:
        backend = self._backends.get(engine)
        if backend is None:
            served = {n: m for n, m in self.models.items() if self._engine(n) == engine}
            kind = registry.kind_of(served[min(served)])
            backend = self._backends[engine] = kind.create(served)
        return backend

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

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
    never calls an embedded model never imports llama.cpp."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self.models = models
        self._backends: dict[str, Backend] = {}

    def check(self, used: set[str]) -> None:
        """Fail before anything runs if a used model has no backend here."""
        for name in sorted(used):
            spec = self.models[name]
            if spec.backend != "local":
                raise BackendError(
                    f"model '{name}' uses the {spec.backend} backend, which this version of "
                    "llmflow does not include yet; use local(...) models"
                )

    async def generate(self, request: GenerationRequest) -> Generation:
        spec = self.models[request.model]
        backend = self._backends.get(spec.backend)
        if backend is None:
            from llmflow.runtime.backends.local import LocalBackend

            local = {n: m for n, m in self.models.items() if m.backend == "local"}
            backend = self._backends[spec.backend] = LocalBackend(local)
        return await backend.generate(request)

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

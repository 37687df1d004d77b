"""The public error hierarchy: everything llmflow raises on purpose is an LLMFlowError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmflow.compiler.diagnostics import Diagnostic


class LLMFlowError(Exception):
    """Base class of every error llmflow reports to a user."""


class CompileError(LLMFlowError):
    """A program has errors; `diagnostics` holds all of them, `render()` prints them."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str]) -> None:
        self.diagnostics = diagnostics
        self.sources = sources
        super().__init__(f"{len(diagnostics)} error{'s' if len(diagnostics) != 1 else ''}")

    def render(self) -> str:
        from llmflow.compiler.diagnostics import render_all

        return render_all(self.diagnostics, self.sources)


class InputError(LLMFlowError):
    """An input value is missing or does not match the flow's declared type."""


class RunError(LLMFlowError):
    """A run finished with failed nodes; `outputs` keeps every output that was computed."""

    def __init__(self, message: str, outputs: dict[str, object], failures: list[str]) -> None:
        super().__init__(message)
        self.outputs = outputs
        self.failures = failures

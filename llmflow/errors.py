"""The public error hierarchy: every error llmflow lets a user see is an LLMFlowError.

    LLMFlowError
    ├── CompileError        a program has errors (all of them, as diagnostics)
    ├── InputError          input values that do not fit the flow (one problem per input)
    ├── RunError            a run finished with failed nodes (the outputs it computed kept)
    ├── BackendError        a model could not answer (runtime.backends.base), and
    │   ├── RetriesExhausted    it kept failing (runtime.retry)
    │   └── BudgetExceeded      a call the budget could not pay (runtime.budget)
    ├── NodeFailed          one node's failure, as RunError and RunResult list them
    ├── UnknownPrice        a budget without a model's price (compiler.prices)
    ├── UnknownOption       an optimizer option no pass takes (compiler.optimizer)
    ├── PlanError           a saved plan's JSON that is not a plan (compiler.ir)
    ├── PluginError         a backend plugin that cannot be loaded (runtime.backends.registry)
    ├── StoreError          a run folder, journal or cache that cannot be used
    └── TraceError, DrawError   a trace or picture that cannot be drawn

The subclasses defined elsewhere live beside the code that raises them; this module holds
the base and the errors of the public API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmflow.compiler.diagnostics import Diagnostic
    from llmflow.runtime.scheduler import NodeFailed


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
    """Input values are missing or do not match the flow's declared types. `problems`:
    one message per input name (the name "" for a problem with all of them); the error's
    text is every message, one a line."""

    def __init__(self, problems: Mapping[str, str] | str) -> None:
        self.problems = dict(problems) if isinstance(problems, Mapping) else {"": problems}
        super().__init__("\n".join(self.problems.values()))


class RunError(LLMFlowError):
    """A run finished with failed nodes; `outputs` keeps every output that was computed.
    `failures`: one line per failure (`file:line:col: node: why`); `failed`: the
    failures as values (node, message, span); `render()` shows each like a compile
    error, with the line of the program that failed and a caret under the call."""

    def __init__(
        self,
        message: str,
        outputs: dict[str, object],
        failures: list[str],
        failed: Sequence[NodeFailed] = (),
    ) -> None:
        super().__init__(message)
        self.outputs = outputs
        self.failures = failures
        self.failed = list(failed)

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return [failure.diagnostic() for failure in self.failed]

    def render(self) -> str:
        from llmflow.compiler.diagnostics import render_run

        return render_run(self.diagnostics)

"""One error tree: whatever llmflow lets a user see is an LLMFlowError, and a failed
run's errors render like compile errors, at the call that failed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.externs import ExternError
from llmflow.compiler.ir import Plan
from llmflow.compiler.picture import DrawError
from llmflow.compiler.prices import UnknownPrice
from llmflow.errors import LLMFlowError, RunError
from llmflow.runtime.backends.base import BackendError, GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.budget import Budget, BudgetExceeded, InvalidBudget
from llmflow.runtime.calls import CallFailed
from llmflow.runtime.retry import RetriesExhausted
from llmflow.runtime.scheduler import NodeFailed
from llmflow.runtime.store import StoreError
from llmflow.runtime.timeline import TraceError
from llmflow.runtime.values import InvalidValue
from llmflow.stdlib.builtins import BuiltinError, LimitError


@pytest.mark.parametrize(
    "kind",
    [
        llmflow.CompileError,
        llmflow.InputError,
        llmflow.RunError,
        BackendError,
        RetriesExhausted,
        BudgetExceeded,
        InvalidBudget,
        NodeFailed,
        CallFailed,
        UnknownPrice,
        InvalidValue,
        StoreError,
        TraceError,
        DrawError,
        BuiltinError,
        LimitError,
        ExternError,
    ],
)
def test_every_error_a_user_can_see_is_an_llmflow_error(kind: type[Exception]) -> None:
    assert issubclass(kind, LLMFlowError)


def test_a_hosted_model_without_its_key_is_an_llmflow_error(
    compile_source: Callable[..., Plan], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = compile_source("""
    model mini = openai("gpt-4o-mini")

    fn hi(x: str) -> y: str
    \"\"\"Hi {{x}}: {{y}}\"\"\"

    flow main(x: str) -> y: str {
        y = hi(x)
    }
    """)
    with pytest.raises(LLMFlowError, match="needs an API key"):
        llmflow.run(plan, {"x": "a"})


def test_a_wrong_budget_is_an_llmflow_error() -> None:
    with pytest.raises(LLMFlowError, match="finite amount"):
        Budget(float("nan"))


PROGRAM = """\
fn ok(x: str) -> y: str
\"\"\"Fine {{x}}: {{y}}\"\"\"

fn broken(x: str) -> y: str
\"\"\"Broken {{x}}: {{y}}\"\"\"

flow main(x: str) -> a: str, b: str {
    a = ok(x)
    b = broken(x)
}
"""


def _refuse_broken(request: GenerationRequest) -> str:
    if request.turns[-1].text.startswith("Broken"):
        raise BackendError("the server said no", status=400)
    return "fine"


def test_a_run_error_renders_each_failure_at_its_call(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(PROGRAM)
    with pytest.raises(RunError) as caught:
        llmflow.run(plan, {"x": "q"}, backend=ScriptedBackend(_refuse_broken))
    err = caught.value
    assert err.outputs == {"a": "fine"}
    (failure,) = err.failed
    assert failure.node.label == "broken"
    source = str(tmp_path / "prog.llmflow")
    assert err.failures == [f"{source}:9:9: broken: the server said no"]
    assert err.render() == (
        f"{source}:9:9: error: broken failed: the server said no\n"
        "  |\n"
        "9 |     b = broken(x)\n"
        "  |         ^^^^^^^^^\n"
    )


def test_run_failures_are_data_too(compile_source: Callable[..., Plan]) -> None:
    """A Session's result holds the failures as values; each is a diagnostic (kind
    "run") with the call's span, for a terminal, an editor or a golden file alike."""
    plan = compile_source(PROGRAM)

    async def main() -> None:
        async with llmflow.Session(backend=ScriptedBackend(_refuse_broken)) as session:
            result = await session.run(plan, {"x": "q"})
        (failure,) = result.failures
        diagnostic = failure.diagnostic()
        assert diagnostic.kind == "run" and diagnostic.span == failure.node.span
        assert diagnostic.span is not None
        assert (diagnostic.span.line, diagnostic.span.col) == (9, 9)

    asyncio.run(main())

"""llmflow: compile programs that call several LLMs into a plan, then run it."""

from llmflow.api import bind_inputs, compile, run, run_async, run_batch, run_batch_sync
from llmflow.compiler.ir import Plan, PlanError
from llmflow.errors import CompileError, InputError, LLMFlowError, RunError
from llmflow.evals import evaluate, evaluate_sync, pin_functions
from llmflow.runtime.batch import RowResult
from llmflow.runtime.evals import EvalReport
from llmflow.runtime.session import Session

__all__ = [
    "CompileError",
    "EvalReport",
    "InputError",
    "LLMFlowError",
    "Plan",
    "PlanError",
    "RowResult",
    "RunError",
    "Session",
    "bind_inputs",
    "compile",
    "evaluate",
    "evaluate_sync",
    "pin_functions",
    "run",
    "run_async",
    "run_batch",
    "run_batch_sync",
]

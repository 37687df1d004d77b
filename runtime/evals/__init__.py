"""Evals: a program scored on labeled rows (docs/evals.md).

`evaluate` runs the rows through the dataset runner and scores each output with its
metric (`metrics.py`), `EvalReport` is what it measured, `pin_functions` puts semantic
functions on chosen models (the assignment an eval, or a tuner, runs with)."""

from llmflow.runtime.evals.assign import functions, pin_functions, unpinned
from llmflow.runtime.evals.report import EvalReport, OutputScore, RowScore, Usage, summarize
from llmflow.runtime.evals.runner import EvalError, evaluate, evaluate_sync, prepare

__all__ = [
    "EvalError",
    "EvalReport",
    "OutputScore",
    "RowScore",
    "Usage",
    "evaluate",
    "evaluate_sync",
    "functions",
    "pin_functions",
    "prepare",
    "summarize",
    "unpinned",
]

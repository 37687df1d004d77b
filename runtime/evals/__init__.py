"""Evals: a program scored on labeled rows (docs/evals.md).

`run_eval` runs the rows through the dataset runner and scores each output with its
metric (`metrics.py`); `EvalReport` is what it measured; `assign.py` pins semantic
functions to models. Compiling and optimizing the plan to measure is the API layer's
(`llmflow.evals`): the runtime loads no optimizer pass."""

from llmflow.runtime.evals.assign import check_assignment, functions, unpinned, with_pins
from llmflow.runtime.evals.report import EvalReport, OutputScore, RowScore, Usage, summarize
from llmflow.runtime.evals.runner import EvalError, judges, run_eval

__all__ = [
    "EvalError",
    "EvalReport",
    "OutputScore",
    "RowScore",
    "Usage",
    "check_assignment",
    "functions",
    "judges",
    "run_eval",
    "summarize",
    "unpinned",
    "with_pins",
]

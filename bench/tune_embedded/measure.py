"""Run the support-desk program's rows under a model assignment and score each output.

Shared by `run.py` (the tune) and `explore.py` (template variants). Everything goes through
the real runtime: `llmflow.run_batch` on the embedded llama.cpp backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.runtime.cache import ResponseCache


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The labeled rows: each a flow's inputs plus an `expected` object of outputs."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("expected"), dict):
            raise SystemExit(f"{path}:{number}: a row needs an 'expected' object")
    return rows


def pinned(unoptimized: Plan, assignment: Mapping[str, str]) -> Plan:
    """`unoptimized` (compiled with `optimize=False`) with every call of each named
    function pinned to its model, then optimized: the optimizer keeps pins, and plans
    prefix groups and fallbacks around them.

    TODO: switch to `llmflow.evaluate(plan, assignment=...)` when it lands; this is the
    one place that reaches into the plan."""
    copy = unoptimized.copy()
    for node in copy.calls():
        model = assignment.get(node.call.function)
        if model is not None:
            node.call.model = model
            node.call.pinned = True
    return llmflow.compile(copy)


@dataclass(frozen=True)
class Scored:
    """One row's run: which outputs matched what was expected, and its time."""

    correct: dict[str, bool]
    outputs: dict[str, Any]
    error: str | None
    seconds: float


def same(value: Any, expected: Any) -> bool:
    """Exact match; enums and strings compared as trimmed lower-case text."""
    if isinstance(expected, str):
        return isinstance(value, str) and value.strip().lower() == expected.strip().lower()
    return type(value) is type(expected) and value == expected


async def run_rows(
    plan: Plan,
    assignment: Mapping[str, str],
    rows: Sequence[Mapping[str, Any]],
    expected_key: Mapping[str, str],
    cache: ResponseCache | None = None,
) -> list[Scored]:
    """Each row run under `assignment` (function → model); `expected_key` maps each flow
    output to its key in the row's `expected` object."""
    inputs = [{k: v for k, v in row.items() if k != "expected"} for row in rows]
    results: dict[int, Scored] = {}
    async for result in llmflow.run_batch(pinned(plan, assignment), inputs, cache=cache):
        row = rows[result.line - 1]
        correct = {
            output: result.error is None and same(result.outputs.get(output), row["expected"][key])
            for output, key in expected_key.items()
        }
        results[result.line - 1] = Scored(
            correct, dict(result.outputs), result.error, result.stats.seconds
        )
    return [results[i] for i in range(len(rows))]

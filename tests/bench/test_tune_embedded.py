"""The embedded tuning workload: its program compiles, its labeled rows fit the flow, and
two rows run on both embedded models with outputs of the declared types."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

import llmflow

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "examples" / "support_desk.llmflow"
DATA = ROOT / "examples" / "data" / "support_desk_dev.jsonl"
CATEGORIES = {"billing", "shipping", "technical", "account"}


def bench_module() -> ModuleType:
    path = ROOT / "bench" / "tune_embedded" / "measure.py"
    spec = importlib.util.spec_from_file_location("tune_embedded_measure", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_rows_fit_the_flow() -> None:
    plan = llmflow.compile(PROGRAM, optimize=False)
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 60
    assert len({row["message"] for row in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"message", "expected"}
        assert set(row["expected"]) == set(plan.outputs)
        assert row["expected"]["category"] in CATEGORIES
        assert str(row["expected"]["order_id"]) in row["message"]
        assert row["expected"]["refund"] in {"yes", "no"}


def test_pinning_moves_only_the_named_function() -> None:
    plan = llmflow.compile(PROGRAM, optimize=False)
    pinned = bench_module().pinned(plan, {"order_number": "base"})
    models = {node.call.function: (node.call.model, node.call.pinned) for node in pinned.calls()}
    assert models == {
        "categorize": ("small", False),
        "order_number": ("base", True),
        "refund": ("small", False),
    }
    assert {node.call.model for node in plan.calls()} == {"small"}  # the original is kept


@pytest.mark.model
def test_two_rows_run_on_both_models_with_declared_types() -> None:
    plan = llmflow.compile(PROGRAM, optimize=False)
    pinned = bench_module().pinned(plan, {"categorize": "small", "order_number": "base"})
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()][:2]
    results = llmflow.run_batch_sync(pinned, [{"message": row["message"]} for row in rows])
    assert [r.error for r in results] == [None, None]
    for result in results:
        assert set(result.outputs) == {"category", "order_id", "refund"}
        assert result.outputs["refund"] in {"yes", "no"}
        assert result.outputs["category"] in CATEGORIES
        assert type(result.outputs["order_id"]) is int
        assert set(result.models) == {"small", "base"}

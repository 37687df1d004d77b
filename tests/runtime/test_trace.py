"""Reading a run's trace back: a line cut by a crash, or one that is not a call record, is
skipped and counted; appending after a cut line keeps the new record whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.calls import CallStats
from llmflow.runtime.store import StoreError
from llmflow.runtime.trace import TraceWriter, call_record, read_trace

SPEC = ModelSpec(name="mini", backend="openai", id="gpt-4o-mini")


def stats(node: str) -> CallStats:
    return CallStats(node=node, function="ask", model="mini", start=1.0, end=2.0)


def test_records_are_written_owner_only_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path, {"mini": SPEC})
    writer.write(stats("n1"))
    writer.write(stats("n2"))
    writer.close()
    assert path.stat().st_mode & 0o777 == 0o600
    records, unreadable = read_trace(path)
    assert unreadable == 0
    assert records == [json.loads(json.dumps(call_record(stats(n), SPEC))) for n in ("n1", "n2")]


def test_a_cut_line_and_lines_that_are_not_records_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    good = json.dumps(call_record(stats("n1"), SPEC)) + "\n"
    wrong = {**call_record(stats("n9"), SPEC), "start": "noon"}
    path.write_text(
        good + "[1, 2]\n" + json.dumps(wrong) + '\n{"llmflow.node": "n3"}\n' + good[:50]
    )
    writer = TraceWriter(path, {"mini": SPEC})  # a resumed run appends after the cut
    writer.write(stats("n2"))
    writer.close()
    records, unreadable = read_trace(path)
    assert [r["llmflow.node"] for r in records] == ["n1", "n2"]
    assert unreadable == 4


def test_a_missing_trace_is_empty_and_a_directory_is_an_error(tmp_path: Path) -> None:
    assert read_trace(tmp_path / "trace.jsonl") == ([], 0)
    (tmp_path / "trace.jsonl").mkdir()
    with pytest.raises(StoreError, match=r"trace\.jsonl is a directory, not a file"):
        read_trace(tmp_path / "trace.jsonl")
    with pytest.raises(StoreError, match=r"trace\.jsonl is a directory, not a file"):
        TraceWriter(tmp_path / "trace.jsonl", {"mini": SPEC})

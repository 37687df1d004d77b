"""The standard library's modules: each checks, documents every declaration (the
`llmflow doc` convention), plans into the calls its pattern promises, and the short ones
run on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.cli_doc import module_entries
from llmflow.compiler import check_file
from llmflow.compiler.modules import STDLIB_DIR, stdlib_modules
from llmflow.stdlib.tokenizers import chunk_tokens

DOC = (Path(__file__).resolve().parents[2] / "examples/data/lighthouse.txt").read_text()
PATTERNS = [
    "classify",
    "critique",
    "debate",
    "extract",
    "mapreduce",
    "rank",
    "refine",
    "route",
    "summarize",
    "text",
]


def module(name: str) -> Path:
    return STDLIB_DIR / f"{name}.llmflow"


def test_the_library_has_its_modules() -> None:
    assert set(PATTERNS) <= set(stdlib_modules())


@pytest.mark.parametrize("name", PATTERNS)
def test_every_module_checks_and_documents_every_declaration(name: str) -> None:
    check_file(module(name))  # raises CompileError with every error
    doc, entries = module_entries(module(name), name)
    assert doc, f"{name} has no module doc (a comment block, then a blank line)"
    assert entries
    undocumented = [e.name for e in entries if not e.doc]
    assert not undocumented, f"{name}: no doc comment above {undocumented}"


def calls(name: str, flow: str, inputs: dict[str, Any]) -> list[str]:
    plan = llmflow.compile(module(name), flow, inputs=inputs)
    return sorted({node.label for node in plan.calls()})


@pytest.mark.parametrize(
    ("name", "flow", "inputs", "expected"),
    [
        (
            "mapreduce",
            "map_reduce_summary",
            {"text": DOC},
            ["combine_summaries", "summarize_piece"],
        ),
        ("refine", "refine_summary", {"text": DOC}, ["refine_step"]),
        (
            "critique",
            "critique_and_revise",
            {"task": "t"},
            ["critique_answer", "draft_answer", "revise_answer"],
        ),
        ("debate", "debate", {"claim": "c"}, ["argue_against", "argue_for", "judge_debate"]),
        ("classify", "classify", {"text": "t", "labels": ["a", "b"]}, ["choose_label"]),
        ("extract", "extract", {"text": "t", "fields": ["name"]}, ["extract_value"]),
        ("rank", "rank", {"items": ["a", "b"], "criterion": "c"}, ["prefer"]),
        (
            "route",
            "route",
            {"question": "q"},
            ["answer_code", "answer_general", "answer_math", "categorize"],
        ),
        ("text", "clip", {"text": DOC, "size": 10}, []),
    ],
)
def test_each_pattern_plans_into_its_calls(
    name: str, flow: str, inputs: dict[str, Any], expected: list[str]
) -> None:
    assert calls(name, flow, inputs) == expected


def test_map_reduce_fans_out_one_call_per_token_chunk() -> None:
    plan = llmflow.compile(
        module("mapreduce"), "map_reduce_summary", inputs={"text": DOC, "size": 100}
    )
    decisions = " ".join(d.message for d in plan.decisions)
    assert f"runs {len(chunk_tokens(DOC, 100))} items" in decisions


def test_text_flows_need_no_model() -> None:
    items = ["apples", "pears"]
    assert llmflow.run(llmflow.compile(module("text"), "numbered"), {"items": items}) == {
        "text": "1. apples\n2. pears"
    }
    assert llmflow.run(llmflow.compile(module("text"), "bullets"), {"items": items}) == {
        "text": "- apples\n- pears"
    }
    words = llmflow.run(llmflow.compile(module("text"), "words"), {"text": "a b\nc  d"})
    assert words == {"words": ["a", "b", "c", "d"]}
    paragraphs = llmflow.run(
        llmflow.compile(module("text"), "paragraphs"), {"text": "a\n\n b \n\nc"}
    )
    assert paragraphs == {"paragraphs": ["a", "b", "c"]}
    clipped = llmflow.run(llmflow.compile(module("text"), "clip"), {"text": DOC, "size": 8})
    assert clipped["clipped"].endswith(" …") and DOC.startswith(clipped["clipped"][:-2])
    whole = llmflow.run(llmflow.compile(module("text"), "clip"), {"text": "short", "size": 8})
    assert whole == {"clipped": "short"}
    parts = llmflow.run(
        llmflow.compile(module("text"), "labeled_chunks"), {"text": DOC, "size": 200}
    )
    assert parts["pieces"][0].startswith("[part 1 of 3]\nThe Harrow Point")


@pytest.mark.model
def test_rank_two_items_on_the_embedded_model() -> None:
    out = llmflow.run(
        llmflow.compile(module("rank")),
        {"items": ["a cold rainy day", "a warm sunny day"], "criterion": "the nicer weather"},
    )
    assert sorted(out["ranked"]) == ["a cold rainy day", "a warm sunny day"]
    assert sorted(out["wins"]) in ([0, 2], [1, 1])  # two comparisons, each won by one side


@pytest.mark.model
def test_classify_always_answers_one_of_the_labels() -> None:
    out = llmflow.run(
        llmflow.compile(module("classify")),
        {"text": "The lid cracked after two days.", "labels": ["positive", "negative"]},
    )
    assert out["label"] in ("positive", "negative") and out["reason"].strip()
    assert isinstance(out["valid"], bool)


@pytest.mark.model
def test_extract_reads_a_field_with_one_call() -> None:
    out = llmflow.run(
        llmflow.compile(module("extract")),
        {"text": "Invoice 1182 from Harrow Supplies, due 3 May.", "fields": ["invoice number"]},
    )
    assert [v["name"] for v in out["values"]] == ["invoice number"]
    assert out["missing"] in ([], ["invoice number"])

"""Token builtins count in the tokens of the model their result goes to: the optimizer
binds that model's tokenizer where the program names none, at plan time and at run time."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.compiler.ir import BuiltinNode, Plan
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.optimizer.choose_tokenizers import choose_tokenizers
from llmflow.stdlib import tokenizers
from tests.runtime.local_models import needs_gemma, needs_smollm2

pytestmark = [needs_smollm2, needs_gemma]

# Gemma's vocabulary spells Japanese in a quarter of SmolLM2's tokens, so the two
# tokenizers cut this text into different pieces.
TEXT = "東京は日本の首都です。" * 12
MODELS = '''
model gemma = local("gemma3-270m")
model smol = local("smollm2-135m")
model mini = openai("gpt-4o-mini", price_in=0.15, price_out=0.6)

@model(gemma)
fn on_gemma(piece: str) -> s: str
"""
{{piece}} {{s | max_tokens=1}}
"""

@model(smol)
fn on_smol(piece: str) -> s: str
"""
{{piece}} {{s | max_tokens=1}}
"""

@model(mini)
fn on_mini(piece: str) -> s: str
"""
{{piece}} {{s | max_tokens=1}}
"""
'''


def compiled(tmp_path: Path, flow: str, inputs: dict[str, Any] | None = None) -> Plan:
    path = tmp_path / "prog.llmflow"
    path.write_text(MODELS + textwrap.dedent(flow))
    return optimize(llmflow.compile(path, optimize=False), inputs=inputs)


def token_nodes(plan: Plan) -> list[BuiltinNode]:
    return [n for n in plan.graph.walk() if isinstance(n, BuiltinNode) and "tokens" in n.op]


def said(plan: Plan) -> list[str]:
    return [d.message for d in plan.decisions if d.rule == "tokenizers"]


def test_the_tokenizers_differ_on_the_test_text() -> None:
    gemma = tokenizers.chunk_tokens(TEXT, 20, model="gemma3-270m")
    smol = tokenizers.chunk_tokens(TEXT, 20, model="smollm2-135m")
    assert len(smol) > 2 * len(gemma)


def test_pieces_for_a_gemma_call_are_cut_in_gemmas_tokens(tmp_path: Path) -> None:
    plan = compiled(
        tmp_path,
        """
        flow main(text: str) -> out: list[str] {
            out = map p in chunk_tokens(text, 20): on_gemma(p)
        }
        """,
        {"text": TEXT},
    )
    (node,) = token_nodes(plan)
    assert node.bound == {"model": "gemma3-270m"}
    assert plan.known[node.id] == tokenizers.chunk_tokens(TEXT, 20, model="gemma3-270m")
    assert said(plan) == [
        "chunk_tokens() counts in gemma3-270m's tokens: its result goes to calls on gemma"
    ]
    (call,) = plan.calls()
    pieces = len(plan.known[node.id])
    assert plan.estimates[call.id].instances == pieces


def test_a_named_model_is_kept(tmp_path: Path) -> None:
    plan = compiled(
        tmp_path,
        """
        flow main(text: str) -> out: list[str] {
            out = map p in chunk_tokens(text, 20, model="smollm2-135m"): on_gemma(p)
        }
        """,
        {"text": TEXT},
    )
    (node,) = token_nodes(plan)
    assert node.bound == {} and said(plan) == []
    assert plan.known[node.id] == tokenizers.chunk_tokens(TEXT, 20, model="smollm2-135m")


def test_through_a_loop_a_branch_and_other_builtins(tmp_path: Path) -> None:
    plan = compiled(
        tmp_path,
        """
        flow main(text: str, long: bool) -> out: str, n: int {
            for piece in chunk_tokens(text, 20) with out = "" {
                if long {
                    step = on_gemma(upper(piece) + out)
                } else {
                    step = out
                }
                out = step
            }
            n = count_tokens(text)
        }
        """,
    )
    bound = {n.op: n.bound.get("model") for n in token_nodes(plan)}
    assert bound["chunk_tokens"] == "gemma3-270m"
    assert (
        "count_tokens() counts in gemma3-270m's tokens, the default model's: "
        "no call reads its result"
    ) in said(plan)


@pytest.mark.parametrize("bound", ["3", "rounds"])
def test_through_the_carried_value_of_a_repeat(tmp_path: Path, bound: str) -> None:
    """A repeat's carried values start at its first argument (after the count it reads,
    if any): the piece carried in reaches the smol call (not the default, gemma)."""
    plan = compiled(
        tmp_path,
        f"""
        flow main(text: str, rounds: int) -> out: str {{
            repeat at most {bound} with out = first(chunk_tokens(text, 20)) {{
                out = on_smol(out)
            }}
        }}
        """,
    )
    assert {n.op: n.bound.get("model") for n in token_nodes(plan)} == {
        "chunk_tokens": "smollm2-135m"
    }


@pytest.mark.parametrize(
    ("readers", "why"),
    [
        (
            "on_gemma(p) + on_smol(p)",
            "the default model's: its result goes to calls on gemma and smol",
        ),
        ("on_mini(p)", "the default model's: mini has no tokenizer here"),
    ],
)
def test_readers_without_one_embedded_tokenizer_count_on_the_default(
    tmp_path: Path, readers: str, why: str
) -> None:
    plan = compiled(
        tmp_path,
        f"""
        flow main(text: str) -> out: list[str] {{
            out = map p in chunk_tokens(text, 20): {readers}
        }}
        """,
    )
    (node,) = token_nodes(plan)
    assert node.bound == {"model": "gemma3-270m"}  # the first declared model: the default
    assert any(message.endswith(why) for message in said(plan)), said(plan)


def test_the_pass_alone_leaves_its_input_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "prog.llmflow"
    path.write_text(
        MODELS
        + "flow main(t: str) -> o: list[str] { o = map p in chunk_tokens(t, 9): on_gemma(p) }\n"
    )
    plan = llmflow.compile(path, optimize=False)
    bound = choose_tokenizers(plan, inputs={"t": TEXT})
    assert [n.bound for n in token_nodes(plan)] == [{}]
    assert [n.bound for n in token_nodes(bound)] == [{"model": "gemma3-270m"}]


def test_a_run_cuts_an_input_known_only_then_in_the_readers_tokens(tmp_path: Path) -> None:
    path = tmp_path / "prog.llmflow"
    path.write_text(
        MODELS
        + textwrap.dedent(
            """
            flow main(text: str) -> pieces: list[str], out: list[str] {
                pieces = chunk_tokens(text, 20)
                out = map p in pieces: on_gemma(p)
            }
            """
        )
    )
    outputs = llmflow.run(path, {"text": TEXT})
    assert outputs["pieces"] == tokenizers.chunk_tokens(TEXT, 20, model="gemma3-270m")
    assert len(outputs["out"]) == len(outputs["pieces"])

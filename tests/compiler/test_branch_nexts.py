"""A loop's carried variable given its next value inside an if of the body: the branches
that assign it give the next value, the others keep the current one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import llmflow
from llmflow.compiler.branch_nexts import lift_branch_nexts, shown
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.parse import parse_module

Write = Callable[[str, str], Path]


def run(write: Write, source: str, **inputs: Any) -> dict[str, Any]:
    return llmflow.run(llmflow.compile(write("prog.llmflow", source)), inputs)


def test_best_so_far_is_kept_unless_a_better_item_comes(write: Write) -> None:
    source = """
        flow main(xs: list[int]) -> best: int, where: int, ties: int {
            for x in xs with best = -1, where = -1, ties = 0, i = 0 {
                if x > best {
                    best = x
                    where = i
                } else if x == best {
                    ties = ties + 1
                }
                i = i + 1
            }
        }
        """
    assert run(write, source, xs=[3, 7, 7, 2, 9]) == {"best": 9, "where": 4, "ties": 1}
    assert run(write, source, xs=[]) == {"best": -1, "where": -1, "ties": 0}


def test_nested_ifs_and_a_loop_inside_an_if(write: Write) -> None:
    source = """
        flow main(xs: list[int], go: bool) -> total: int, big_evens: int {
            if go {
                for x in xs with total = 0, big_evens = 0 {
                    total = total + x
                    if x % 2 == 0 {
                        if x > 2 {
                            big_evens = big_evens + 1
                        }
                    }
                }
            } else {
                total = -1
                big_evens = -1
            }
        }
        """
    assert run(write, source, xs=[1, 2, 4, 6], go=True) == {"total": 13, "big_evens": 2}
    assert run(write, source, xs=[1], go=False) == {"total": -1, "big_evens": -1}


def test_repeat_until_reads_the_next_value_given_in_a_branch(write: Write) -> None:
    source = """
        flow main(start: int) -> n: int, steps: int {
            repeat at most 20 with n = start, steps = 0 {
                if n % 2 == 0 {
                    n = n // 2
                } else {
                    n = 3 * n + 1
                }
                steps = steps + 1
            } until n == 1
        }
        """
    assert run(write, source, start=6) == {"n": 1, "steps": 8}


def summary(diags: list[Diagnostic]) -> list[tuple[str, int, int]]:
    return [(d.message, d.span.line, d.span.col) for d in diags if d.span is not None]


def test_a_branch_value_of_the_wrong_type_is_one_error_where_it_is_assigned(
    diagnostics: Callable[..., list[Diagnostic]],
) -> None:
    diags = diagnostics(
        """
        flow main(xs: list[str]) -> kind: str {
            for x in xs with kind = "none" {
                if len(x) > 3 {
                    kind = "long"
                } else if len(x) == 0 {
                    kind = 0
                }
            }
        }
        """
    )
    assert summary(diags) == [("'kind' is carried as str but assigned int", 6, 13)]


def test_a_next_value_given_at_the_top_and_in_a_branch_is_assigned_twice(
    diagnostics: Callable[..., list[Diagnostic]],
) -> None:
    diags = diagnostics(
        """
        flow main(xs: list[int]) -> total: int {
            for x in xs with total = 0 {
                total = total + x
                if x == 1 {
                    total = 0
                }
            }
        }
        """
    )
    assert summary(diags) == [("loop variable 'total' is assigned twice in one iteration", 5, 13)]


def test_outside_a_loop_an_if_is_unchanged_and_the_rewrite_is_idempotent() -> None:
    source = """flow main(xs: list[int], c: bool) -> out: int {
    if c { out = 1 } else { out = 2 }
    for x in xs with acc = 0 { if x > 0 { acc = acc + x } }
}
"""
    module, diags = parse_module(source, "p.llmflow")
    assert not diags
    flow = module.decls[0]
    assert lift_branch_nexts(flow) is flow  # parsing already rewrote it
    first = flow.body[0]
    assert first.then[0].targets[0].name == "out"  # no loop: no rewrite
    loop = flow.body[1]
    branch, after = loop.body
    assert [t.name for s in branch.then for t in s.targets] == ["acc (next)"]
    assert [t.name for s in branch.orelse for t in s.targets] == ["acc (next)"]  # keeps acc
    assert after.targets[0].name == "acc" and after.value.id == "acc (next)"
    assert shown("acc (next 2)") == "acc"


def test_errors_name_the_variable_as_written_not_its_next_value(
    diagnostics: Callable[..., list[Diagnostic]],
) -> None:
    diags = diagnostics(
        """
        flow main(xs: list[int]) -> best: int {
            for x in xs with best = 0 {
                if x > best {
                    best = x
                    best = x + 1
                }
            }
        }
        """
    )
    assert [d.message for d in diags] == ["variable 'best' is assigned twice"]

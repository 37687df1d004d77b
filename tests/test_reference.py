"""docs/language.md covers the whole language, checked so that it cannot drift: every
builtin, every construct of the grammar, every decorator, output option, performance goal
and template block tag has a ```llmflow runnable example, and every kind of error has an
```llmflow error=KIND example (tests/test_tutorial.py runs both kinds of blocks).

The lists are read from the compiler itself (grammar.lark, BUILTINS, the checker's
tables, `Kind`), so new syntax or a new builtin without an example in the reference
fails here, naming what is missing.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lark import Lark, Token, Tree

from llmflow.compiler.check import DECORATORS, OUTPUT_OPTIONS, PERF_GOALS, RESERVED
from llmflow.compiler.diagnostics import Kind
from llmflow.compiler.parse import BLOCK_TAGS
from llmflow.stdlib.builtins import BUILTINS
from tests.test_tutorial import LANGUAGE, Block, blocks

GRAMMAR = Path(__file__).resolve().parent.parent / "compiler/grammar.lark"

NO_PROGRAM_TEXT: dict[str, str] = {
    "file": "the main or config file itself cannot be read (§4, §13)",
    "config": "a mistake in llmflow.toml, not in a program (§5.4 shows one)",
    "profile": "a tuning profile that cannot be used (docs/tuning.md)",
}
"""Kinds of error no program text can produce: documented, without an error example."""


@cache
def _parser() -> Lark:
    """The language's grammar, keeping every token: keywords and punctuation included."""
    return Lark(
        GRAMMAR.read_text(),
        parser="lalr",
        start=["start", "placeholder"],
        keep_all_tokens=True,
        maybe_placeholders=False,
    )


@dataclass
class Seen:
    """What the runnable examples of the reference use."""

    rules: set[str] = field(default_factory=set)
    tokens: set[tuple[str, str]] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)
    decorators: set[str] = field(default_factory=set)
    perf: set[str] = field(default_factory=set)
    options: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)


def _note(tree: Tree, seen: Seen) -> None:
    for sub in tree.iter_subtrees():
        seen.rules.add(str(sub.data))
        first = sub.children[0] if sub.children else None
        name = next((c for c in sub.children if isinstance(c, Token) and c.type == "NAME"), None)
        if sub.data == "call" and isinstance(first, Token):
            seen.calls.add(str(first))
        elif sub.data == "decorator" and name is not None:
            seen.decorators.add(str(name))
        elif sub.data == "perf" and name is not None:
            seen.perf.add(str(name))
        elif sub.data in ("option", "flag") and isinstance(first, Token):
            seen.options.add(str(first))
        for child in sub.children:
            if isinstance(child, Token):
                seen.tokens.add((child.type, str(child)))


def _templates(tree: Tree) -> Iterator[str]:
    for sub in tree.find_data("fn_decl"):
        last = sub.children[-1]
        assert isinstance(last, Token) and last.type == "TRIPLE"
        yield str(last)[3:-3]


@cache
def _runnable() -> tuple[Block, ...]:
    return tuple(b for b in blocks(LANGUAGE) if b.lang == "llmflow" and "runnable" in b.marks)


@cache
def seen() -> Seen:
    """Everything the runnable blocks of docs/language.md use, from their parse trees."""
    found = Seen()
    for block in _runnable():
        tree = _parser().parse(block.body, start="start")
        _note(tree, found)
        for template in _templates(tree):
            for inner in re.findall(r"\{\{(.*?)\}\}", template, re.S):
                _note(_parser().parse(inner.strip(), start="placeholder"), found)
            found.tags.update(re.findall(r"\{%[ \t]*(\w+)[ \t]*%\}", template))
    return found


def _grammar_constructs() -> set[str]:
    """Each construct of grammar.lark, as the test names it: rules and their aliases
    (`rule:for_stmt`, `rule:map_expr`; not the `?rules` inlined into their forms),
    keywords and punctuation (`token:repeat`, `token:->`), each operator a terminal lists
    (`token:COMP_OP <=`), and the terminals written as patterns (`terminal:FLOAT`)."""
    lark = _parser()
    wanted: set[str] = set()
    for rule in lark.rules:
        name = rule.origin.name
        if rule.alias:
            wanted.add(f"rule:{rule.alias}")
        elif not rule.options.expand1 and not name.startswith("_") and name != "start":
            wanted.add(f"rule:{name}")
    ignored = set(lark.ignore_tokens)
    text = GRAMMAR.read_text()
    for terminal in lark.terminals:
        if terminal.name in ignored:
            continue
        definition = re.search(rf"^{terminal.name}(?:\.\d+)?:(.*)$", text, re.M)
        written = definition.group(1).strip() if definition else None
        literals = re.findall(r'"((?:\\.|[^"\\])*)"', written or "")
        if written is None:  # an anonymous keyword or punctuation, written in a rule
            wanted.add(f"token:{terminal.pattern.value}")
        elif literals and re.fullmatch(r'\s*"[^"]*"(\s*\|\s*"[^"]*")*\s*', written):
            for literal in literals:
                wanted.add(f"token:{terminal.name} {literal}")
        else:
            wanted.add(f"terminal:{terminal.name}")
    return wanted


def _uses(key: str, found: Seen) -> bool:
    what, _, rest = key.partition(":")
    if what == "rule":
        return rest in found.rules
    if what == "terminal":
        return any(t == rest for t, _ in found.tokens)
    if " " in rest and rest.split(" ", 1)[0].isupper():
        terminal, literal = rest.split(" ", 1)
        return (terminal, literal) in found.tokens
    return any(value == rest for _, value in found.tokens)


def test_the_grammar_inventory_sees_the_grammar() -> None:
    """The inventory is not empty or blind: it finds constructs it must."""
    wanted = _grammar_constructs()
    for key in ("rule:for_stmt", "rule:map_expr", "token:repeat", "token:COMP_OP <="):
        assert key in wanted, key
    assert "rule:expr" not in wanted  # inlined: its forms are listed, not the rule
    assert not _uses("rule:no_such_rule", seen())


def test_every_construct_of_the_grammar_has_a_runnable_example() -> None:
    found = seen()
    missing = sorted(k for k in _grammar_constructs() if not _uses(k, found))
    assert not missing, (
        f"constructs of compiler/grammar.lark no ```llmflow runnable block of "
        f"docs/language.md uses: {', '.join(missing)}"
    )


def test_the_keywords_of_the_reference_are_the_grammars_and_are_reserved() -> None:
    words = {
        str(t.pattern.value)
        for t in _parser().terminals
        if t.pattern.type == "str" and re.fullmatch(r"[a-z]+", t.pattern.value)
    }
    text = LANGUAGE.read_text()
    listed = text[text.index("### Keywords") :].split("```")[1].split()
    assert set(listed) == words, f"§2 Keywords lists {sorted(set(listed) ^ words)} wrongly"
    assert words == RESERVED, (
        f"keywords not reserved (or reserved words that are not): {sorted(words ^ RESERVED)}"
    )


def test_every_builtin_is_in_the_reference_table() -> None:
    table = set(re.findall(r"^\| `(\w+)\(", LANGUAGE.read_text(), re.M))
    missing = sorted(set(BUILTINS) - table)
    assert not missing, f"builtins with no row in docs/language.md §10: {', '.join(missing)}"


def test_every_builtin_has_a_runnable_example() -> None:
    missing = sorted(set(BUILTINS) - seen().calls)
    assert not missing, (
        f"builtins no ```llmflow runnable block of docs/language.md calls: {', '.join(missing)}"
    )


def test_every_decorator_option_goal_and_block_tag_has_a_runnable_example() -> None:
    found = seen()
    missing = (
        [f"@{d}" for d in DECORATORS if d not in found.decorators]
        + [f"@{g} (an output's goal)" for g in PERF_GOALS if g not in found.perf]
        + [f"| {o} (an output option)" for o in sorted(OUTPUT_OPTIONS) if o not in found.options]
        + [f"{{% {t} %}}" for t in BLOCK_TAGS if t not in found.tags]
    )
    assert not missing, f"no ```llmflow runnable block of docs/language.md uses: {missing}"


def _error_table_kinds() -> set[str]:
    text = LANGUAGE.read_text()
    section = text[text.index("## 13. Errors") : text.index("## 14.")]
    return set(re.findall(r"^\| `([\w-]+)` \|", section, re.M))


def test_every_kind_of_error_has_a_row_in_the_error_table() -> None:
    kinds, rows = set(typing.get_args(Kind)), _error_table_kinds()
    assert not kinds - rows, f"kinds with no row in §13: {sorted(kinds - rows)}"
    assert not rows - kinds, f"rows of §13 that are no Kind: {sorted(rows - kinds)}"


def test_every_kind_of_error_has_an_example() -> None:
    shown = {b.option("error") for b in blocks(LANGUAGE) if b.lang == "llmflow"}
    missing = sorted(set(typing.get_args(Kind)) - shown - set(NO_PROGRAM_TEXT))
    assert not missing, (
        f"kinds of error with no ```llmflow error=KIND block in docs/language.md: {missing}"
    )
    assert set(NO_PROGRAM_TEXT) <= set(typing.get_args(Kind)), "an exemption names no kind"

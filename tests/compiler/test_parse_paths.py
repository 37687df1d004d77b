"""The parser's two paths build the same thing: the fast one (one regular expression for
all tokens, the AST built as lark's LALR parser reduces) and lark's own (its contextual
lexer), which parses whatever the fast one cannot and reports every syntax error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from lark.exceptions import UnexpectedInput

from llmflow.compiler import parse
from llmflow.compiler.parse import parse_module

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("examples", "stdlib", "tests") for p in (ROOT / d).rglob("*.llmflow"))
NOISE = ["(", ")", "{", "}", "[", "]", ",", "=", "==", "->", "-", "if", "in", "for", "else"]
NOISE += ['"', '"""', "{{", "}}", "|", ".", ":", "@", "x", "1", "1.5", "\n", " ", "#", "\\"]


def _dump(source: str) -> tuple[object, object]:
    module, diags = parse_module(source, "t.llmflow")
    return module.model_dump(), [d.model_dump() for d in diags]


def _lark_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str, start: str) -> None:
        raise parse._Retry

    monkeypatch.setattr(parse, "_fast_parse", refuse)


def _variants() -> list[str]:
    """The sources, and each cut or spliced with bits of syntax at random places."""
    rng = random.Random(8)
    texts = [p.read_text() for p in SOURCES]
    out = list(texts)
    for _ in range(300):
        text = rng.choice(texts)
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.5:
            text = text[:at] + text[at + rng.randint(1, 5) :]
        else:
            text = text[:at] + rng.choice(NOISE) + text[at:]
        out.append(text)
    return out


def test_the_corpus_is_there() -> None:
    assert len(SOURCES) >= 10


def test_both_paths_build_the_same_ast_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _variants()
    fast = [_dump(s) for s in sources]
    _lark_only(monkeypatch)
    exact = [_dump(s) for s in sources]
    differ = [s for s, a, b in zip(sources, fast, exact, strict=True) if a != b]
    assert not differ, differ[0][:300]
    assert any(diags for _, diags in fast) and any(not diags for _, diags in fast)


@pytest.mark.parametrize(
    "source",
    [
        # Where lark's contextual lexer reads a keyword as a name, or a name as two tokens,
        # the fast lexer's token does not fit the parser's state: lark's own path decides.
        "flow main(xs: list[str]) -> out: list[str] {\n    out = [in for in in xs]\n}\n",
        "flow main(xs: list[str]) -> out: str {\n    out = join(xs)\n    for x inxs {\n"
        "        out = x\n    }\n}\n",
        # A character no token starts with.
        "flow main(x: int) -> out: int {\n    out = x $ 1\n}\n",
    ],
)
def test_what_the_fast_lexer_cannot_cut_is_parsed_by_lark(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parse._local, "builder", parse._Builder("t.llmflow"), raising=False)
    with pytest.raises((parse._Retry, UnexpectedInput)):
        parse._fast_parse(source, "start")
    monkeypatch.undo()
    fast = _dump(source)
    _lark_only(monkeypatch)
    assert fast == _dump(source)

"""Rendering diagnostics: a bounded window of a long line with the caret still under the
span, and no secret in any shown line or message, whichever diagnostic shows it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow.cli import main
from llmflow.compiler import check_file
from llmflow.compiler.ast import Span
from llmflow.compiler.diagnostics import (
    MAX_QUOTED,
    MAX_SHOWN_LINE,
    MAX_SHOWN_TEXT,
    Diagnostic,
    render,
    render_all,
)
from llmflow.errors import CompileError
from llmflow.runtime import secrets

FILE = "prog.llmflow"


def at(line: int, col: int, end: int) -> Span:
    return Span(file=FILE, line=line, col=col, end_line=line, end_col=end)


def shown(text: str) -> tuple[str, str]:
    """The source line and the caret line of a rendered diagnostic, without the gutter."""
    lines = text.split("\n")
    return lines[2].split(" | ", 1)[1], lines[3].split(" | ", 1)[1]


def under_caret(text: str) -> str:
    line, caret = shown(text)
    start = caret.index("^")
    return line[start : start + caret.count("^")]


# ---- long lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("col", [1, 2, 50, 999, 5_000, 9_990, 10_000, 10_001])
def test_a_long_line_is_cut_to_a_window_with_the_caret_under_the_span(col: int) -> None:
    line = "".join(chr(ord("a") + i % 26) for i in range(10_000))
    end = min(col + 3, 10_002)
    text = render(Diagnostic(kind="type", message="m", span=at(1, col, end)), {FILE: line})
    source, caret = shown(text)
    assert len(source) <= MAX_SHOWN_LINE + 2
    assert source.startswith("…") == (col - 1 - MAX_SHOWN_LINE // 3 > 0)
    assert source.endswith("…") == (col - 1 - MAX_SHOWN_LINE // 3 < 10_000 - MAX_SHOWN_LINE)
    assert under_caret(text) == line[col - 1 : end - 1]
    assert len(caret) <= MAX_SHOWN_LINE + 2


def test_a_span_wider_than_the_window_is_marked_to_the_window_edge() -> None:
    line = "x = " + "y" * 5_000
    text = render(Diagnostic(kind="type", message="m", span=at(1, 5, 5_005)), {FILE: line})
    source, caret = shown(text)
    assert source == "x = " + "y" * (MAX_SHOWN_LINE - 4) + "…"
    assert caret == "    " + "^" * (MAX_SHOWN_LINE - 4)


def test_tabs_and_control_characters_keep_the_caret_in_place() -> None:
    line = "\t\tx = \x1b[2J\u202e bad"
    text = render(Diagnostic(kind="type", message="m", span=at(1, 13, 16)), {FILE: line})
    source, caret = shown(text)
    assert "\x1b" not in text and "\u202e" not in text and "\t" not in source
    assert under_caret(text) == "bad"


def test_lines_are_counted_at_newlines_only_as_the_parser_counts_them() -> None:
    source = "a = 1\u2028b\x0cc\r\nbad here\n"
    text = render(Diagnostic(kind="type", message="m", span=at(2, 1, 4)), {FILE: source})
    assert shown(text) == ("bad here", "^^^")


def test_a_long_message_keeps_its_start_and_end() -> None:
    name = "n" * 100_000
    text = render(
        Diagnostic(kind="type", message=f"unknown variable '{name}' here", hint="h" * 5000),
        {},
    )
    message, hint = text.split("\n")
    assert len(message) <= len("error: ") + MAX_SHOWN_TEXT
    assert message.startswith("error: unknown variable 'nnn") and message.endswith("' here")
    assert len(hint) <= len("  = hint: ") + MAX_SHOWN_TEXT


def test_a_syntax_error_quotes_a_bounded_slice_of_a_huge_token(
    write: Callable[[str, str], Path],
) -> None:
    path = write(FILE, 'flow main() -> y: str {\n    y = "a" "' + "b" * 100_000 + '"\n}\n')
    with pytest.raises(CompileError) as info:
        check_file(path)
    [diag] = info.value.diagnostics
    assert diag.message == "unexpected string " + repr('"' + "b" * (MAX_QUOTED - 1)) + "…"
    assert len(info.value.render()) < 1_500


# ---- secrets -------------------------------------------------------------------------------

KEY = "hunter2-is-my-real-key"


def test_a_key_written_in_the_program_is_masked_by_every_diagnostic_on_its_line(
    write: Callable[[str, str], Path],
) -> None:
    path = write(
        FILE,
        f'model m = openai("gpt-4o-mini", api_key="{KEY}", bogus=1, rpm="x")\n'
        f"fn f(x: str) -> y: str\n"
        f'"""{{{{x}}}} {{{{y}}}}"""\n',
    )
    with pytest.raises(CompileError) as info:
        check_file(path)
    kinds = [d.message for d in info.value.diagnostics]
    assert kinds == [
        "API keys do not belong in program text",
        "unknown model option 'bogus'",
        "model option 'rpm' expects int",
    ]
    text = info.value.render()
    assert KEY not in text and KEY[:6] not in text
    assert text.count("api_key=" + "*" * (len(KEY) + 2)) == 3


@pytest.mark.parametrize(
    "line",
    [
        f'model m = openai("gpt-4o-mini", api_key="{KEY}" rpm=5)',  # syntax error after it
        f'model m = openai("gpt-4o-mini", api_key="{KEY}',  # an unterminated string
        f'model m = openai("gpt-4o-mini", token="{KEY}") )',
        f'model m = openai("gpt-4o-mini", base_url="http://me:{KEY}@host/v1") )',
        'model m = openai("sk-proj-abcdefghijklmnop1234" ))',  # key-shaped, no key name
        'model m = openai("x", rpm=8sk-proj-abcdefghijklmnop1234)',  # typed against a digit
    ],
)
def test_a_key_on_the_line_of_a_syntax_error_is_masked(
    line: str, write: Callable[[str, str], Path]
) -> None:
    path = write(FILE, line + "\n")
    with pytest.raises(CompileError) as info:
        check_file(path)
    assert info.value.diagnostics[0].kind == "syntax"
    text = info.value.render()
    assert KEY not in text and KEY[:5] not in text
    assert "abcdefghijklmnop" not in text


def test_a_written_key_is_masked_on_other_lines_and_in_messages_too() -> None:
    source = f'model m = openai("x", api_key="{KEY}")\n# {KEY}\n'
    diags = [
        Diagnostic(kind="type", message=f"unexpected name '{KEY}'", span=at(2, 3, 3 + len(KEY))),
        Diagnostic(kind="type", message="m", hint=f"not {KEY}", label=KEY, span=at(1, 1, 6)),
    ]
    text = render_all(diags, {FILE: source})
    assert KEY not in text
    assert f"2 | # {'*' * len(KEY)}" in text


def test_a_registered_key_is_masked_and_the_caret_stays_on_its_span() -> None:
    key = "s3cr3t-for-the-renderer-test"  # as if read from the environment
    secrets.register(key)
    line = f"x = {key} + {key} + bad"
    span = at(1, line.index("bad") + 1, line.index("bad") + 4)
    text = render(Diagnostic(kind="type", message=f"about {key}", span=span), {FILE: line})
    assert key not in text and "s3cr3t" not in text
    assert under_caret(text) == "bad"
    assert text.splitlines()[0] == f"{FILE}:{span.line}:{span.col}: error: about {secrets.MASK}"


def test_a_key_is_masked_before_a_long_line_is_cut() -> None:
    """A key across the window's edge leaks no prefix."""
    for offset in range(0, 200, 7):
        line = "x" * offset + f'api_key="{KEY}"' + " y" * 200
        text = render(Diagnostic(kind="type", message="m", span=at(1, 1, 2)), {FILE: line})
        assert KEY[:4] not in text, offset
        text = render(
            Diagnostic(kind="type", message="m", span=at(1, len(line) - 2, len(line))),
            {FILE: line},
        )
        assert KEY[:4] not in text, offset


def test_check_masks_keys_in_what_it_prints(
    write: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(FILE, f'model m = openai("gpt-4o-mini", api_key = "{KEY}"  ,, )\n')
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert KEY not in err and "error: unexpected ','" in err


def test_a_registered_key_across_the_window_edge_leaks_no_prefix() -> None:
    key = "registered-key-across-the-edge"
    secrets.register(key)
    for offset in range(MAX_SHOWN_LINE - len(key), MAX_SHOWN_LINE + 2):
        line = "x" * offset + key + " y" * 200
        text = render(Diagnostic(kind="type", message="m", span=at(1, 1, 2)), {FILE: line})
        assert "registered" not in text, offset
        assert text.split("\n")[2].endswith("…")


def test_many_errors_on_one_huge_line_render_in_linear_time() -> None:
    """Each shown line is masked once, not once per diagnostic (a generous bound)."""
    line = "x = " + "k" * 5_000_000
    diags = [Diagnostic(kind="type", message="m", span=at(1, 1 + i, 2 + i)) for i in range(100)]
    started = time.monotonic()
    text = render_all(diags, {FILE: line})
    assert time.monotonic() - started < 20
    assert len(text) < 100 * 500


def test_a_piece_of_a_written_key_quoted_alone_is_masked_too(
    write: Callable[[str, str], Path],
) -> None:
    """`{{sk-proj-…}}` reads as names: the error quotes the key's long piece alone."""
    piece = "KDck6ETEQTyeM2788pFimIYidre6HLWf7FVmsMSi"
    path = write(FILE, f'fn f(a: str) -> b: str\n"""{{{{sk-proj-{piece}}}}} {{{{b}}}}"""\n')
    with pytest.raises(CompileError) as info:
        check_file(path)
    text = info.value.render()
    assert "unknown variable" in text and piece[:12] not in text


def test_a_key_typed_against_a_word_is_masked() -> None:
    assert secrets.redact("{{gsk-6CZI8crf97UKxJEpOpRBb81m0FYgreeting}}") == "{{g[redacted]}}"

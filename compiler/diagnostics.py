"""Errors as data, rendered in one place.

Every stage reports `Diagnostic` values; nothing else formats them. The same value can
go to a terminal (`render`), to JSON for an editor (`model_dump`), or into a golden file.

Rendering never prints a secret, nor an unbounded amount of text: every key the process
registered (`runtime/secrets.py`) and every key written in a shown program is masked, in
the source line and in the message, before a long line is cut to a window around the
caret and a long message is shortened.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from llmflow.compiler.ast import Span
from llmflow.runtime.secrets import redact

Kind = Literal[
    "syntax",
    "import",
    "declaration",
    "unknown-name",
    "type",
    "template",
    "output",
    "assign",
    "cycle",
    "limit",
    "eval",
    "extern",
    "file",
    "config",
    "profile",
    "run",
]
"""Every kind of error, one family of messages each: docs/language.md §13 has a row and an
example for each (tests/test_reference.py holds the reference to that)."""


class Diagnostic(BaseModel):
    kind: Kind
    """A stable identifier of the message's family (`Kind`): what an editor or a test
    may branch on, where the message is for people."""
    message: str
    span: Span | None = None
    label: str = ""
    """Said under the caret, about the marked text."""
    hint: str = ""
    file: str | None = None
    """The file a diagnostic without a position is about (one that cannot be read)."""


SUGGEST_CUTOFF = 0.65
"""How alike (difflib's ratio) a name must be to be suggested: `lenght` → `len` (0.67)
is, `sort` → `format` (0.6) is not; a far-fetched suggestion misleads more than none."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=SUGGEST_CUTOFF)
    return f"did you mean '{close[0]}'?" if close else ""


MAX_SHOWN_LINE = 120
"""Characters of a source line shown; a longer line is cut to a window around the caret."""
MAX_SHOWN_TEXT = 400
"""Characters of a message, label or hint; a longer one loses its middle."""
MAX_QUOTED = 40
"""Characters of source text a message quotes (`unexpected string '…'`)."""

_STRING = r"""'[^'\n]*'?|"(?:[^"\\\n]|\\.)*"?"""
"""A string literal (single-quoted in TOML), or the rest of the line after an opening
quote that is not closed."""
_WRITTEN_KEY = re.compile(
    rf"""\bapi_key\s*=\s*({_STRING}|[^\s,)}}\]#]+)"""
    rf"""|\b\w*(?:key|secret|token|passw(?:or)?d)\s*[=:]\s*({_STRING})"""
    r"""|(sk-(?=[a-z0-9_\-]*\d)[a-z0-9_\-]{8,})"""  # with a digit: also inside a word
    r"""|(?<![a-z])(sk-[A-Za-z0-9_\-]{8,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}"""
    r"""|github_pat_\w{20,}|xox[abposr]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{30,}"""
    r"""|hf_[A-Za-z0-9]{20,})"""
    r"""|://[^/\s:@"']{1,200}:([^@\s/"']{1,200})@""",
    re.IGNORECASE,
)
"""Keys written in a program: any value of `api_key=`, a string given to a name that says
key, secret, token or password, a string shaped like a provider's key, a URL's password."""
_MIN_KEY_PART = 12
"""A piece of a written key this long (between `-`, `_` or `.`) is masked on its own."""
_MIN_REPEATED_KEY = 6
"""A written key this long is masked wherever else it appears too (shorter ones only where
they are written: masking every `abc` would garble the output)."""
_UNPRINTABLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
"""Control and invisible characters (terminal escapes, bidi overrides) but tab and newline:
shown as U+FFFD, so that shown text can neither drive the terminal nor hide what it says."""


def shorten(text: str, limit: int) -> str:
    """`text`, or its start and end around a "…" when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return text[:head] + "…" + text[len(text) - (limit - head - 1) :]


def quote(text: str) -> str:
    """Source text as a message quotes it: repr'd, and cut after MAX_QUOTED characters."""
    first = text.split("\n", 1)[0]
    if len(first) > MAX_QUOTED or first != text:
        return repr(first[:MAX_QUOTED]) + "…"
    return repr(text)


def render(diag: Diagnostic, sources: dict[str, str]) -> str:
    """`file:line:col: error: message`, the source line, a caret under the span, a hint."""
    return _Renderer(sources).render(diag)


def render_all(diags: Iterable[Diagnostic], sources: dict[str, str]) -> str:
    renderer = _Renderer(sources)
    rendered = [renderer.render(d) for d in diags]
    return "\n\n".join(rendered) + "\n" if rendered else ""


def render_run(diags: Iterable[Diagnostic], sources: dict[str, str] | None = None) -> str:
    """Runtime errors (a call that failed, with the span of the call in the program),
    one after another like `llmflow run` prints them: each the way `render` shows a
    compile error, against the source it points into. Sources not given are read from
    the files the spans name (a file that cannot be read shows no line)."""
    diags = list(diags)
    known = dict(sources or {})
    for diag in diags:
        file = diag.span.file if diag.span else None
        if file is not None and file not in known:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                known[file] = Path(file).read_text(encoding="utf-8")
    renderer = _Renderer(known)
    return "".join(redact(renderer.render(diag)) + "\n" for diag in diags)


def sort_key(diag: Diagnostic) -> tuple[str, int, int]:
    if diag.span is None:
        return (diag.file or "", 0, 0)
    return (diag.span.file, diag.span.line, diag.span.col)


class _Renderer:
    """Renders diagnostics against one set of sources, each line split and masked once."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources
        written = {
            value
            for text in sources.values()
            for match in _WRITTEN_KEY.finditer(text)
            for value in _key_parts(_key_text(match))
            if len(value) >= _MIN_REPEATED_KEY
        }
        self.keys = sorted(written, key=len, reverse=True)
        self._lines: dict[str, list[str]] = {}
        self._masked: dict[tuple[str, int], tuple[str, str]] = {}

    def render(self, diag: Diagnostic) -> str:
        message = self.text(diag.message)
        hint = self.text(diag.hint)
        if diag.span is None:
            where = f"{self.text(diag.file)}: " if diag.file else ""
            lines = [f"{where}error: {message}"]
            if hint:
                lines.append(f"  = hint: {hint}")
            return "\n".join(lines)
        span = diag.span
        lines = [f"{self.text(str(span))}: error: {message}"]
        line_text = self.line(span.file, span.line)
        if line_text is None:
            if hint:
                lines.append(f"  = hint: {hint}")
            return "\n".join(lines)
        end = span.end_col if span.end_line == span.line else len(line_text) + 1
        masked = self._masked.get((span.file, span.line))
        if masked is None:
            stars = self.mask(line_text)
            masked = self._masked[(span.file, span.line)] = (stars, redact(stars))
        shown, col, end = _window(*masked, span.col, max(end, span.col + 1))
        gutter = " " * len(str(span.line))
        caret = " " * (col - 1) + "^" * max(1, end - col)
        if diag.label:
            caret += " " + self.text(diag.label)
        lines += [f"{gutter} |", f"{span.line} | {shown}", f"{gutter} | {caret}"]
        if hint:
            lines += [f"{gutter} |", f"{gutter} = hint: {hint}"]
        return "\n".join(lines)

    def text(self, text: str) -> str:
        """A message, hint or label: keys masked, then shortened."""
        for key in self.keys:
            if key in text:
                text = text.replace(key, "*" * len(key))
        text = _UNPRINTABLE.sub("\ufffd", redact(text)).replace("\n", "\\n")  # one line each
        return shorten(text, MAX_SHOWN_TEXT)

    def line(self, file: str, number: int) -> str | None:
        """Line `number` of a source (lines end at "\\n" only, as the parser counts them)."""
        source = self.sources.get(file)
        if source is None:
            return None
        if file not in self._lines:
            self._lines[file] = source.split("\n")
        lines = self._lines[file]
        return lines[number - 1].removesuffix("\r") if 0 < number <= len(lines) else ""

    def mask(self, line: str) -> str:
        """Stars over every key written on this line or elsewhere (same length: columns
        stay where they were)."""
        pieces, done = [], 0
        for match in _WRITTEN_KEY.finditer(line):
            group = match.lastindex or 0
            if match.group(group).strip("\"'*"):  # not masked already (a config's "***")
                a, b = match.span(group)
                pieces += [line[done:a], "*" * (b - a)]
                done = b
        masked = "".join([*pieces, line[done:]])
        for key in self.keys:
            if key in masked:
                masked = masked.replace(key, "*" * len(key))
        return masked


def _window(masked: str, redacted: str, col: int, end: int) -> tuple[str, int, int]:
    """A line as shown: `redacted` (the masked line with registered keys replaced too)
    cut to a window around columns col..end, which move to where they are shown."""
    if redacted != masked:  # a registered key: "[redacted]" is not as long as the key
        col = len(redact(masked[: col - 1])) + 1
        end = max(col + 1, len(redact(masked[: end - 1])) + 1)
    if len(redacted) > MAX_SHOWN_LINE:
        start = max(0, min(col - 1 - MAX_SHOWN_LINE // 3, len(redacted) - MAX_SHOWN_LINE))
        stop = start + MAX_SHOWN_LINE
    else:
        start, stop = 0, len(redacted)
    shown = _UNPRINTABLE.sub("\ufffd", redacted[start:stop].replace("\t", " "))
    end = min(end, stop + 1)
    if start > 0:
        shown, start = "…" + shown, start - 1
    if stop < len(redacted):
        shown += "…"
    return shown, col - start, end - start


def _key_parts(key: str) -> list[str]:
    """A written key and its long pieces: a mistyped program can show a piece alone
    (`{{sk-proj-…}}` reads as names, so `unknown variable 'KDck6…'` quotes one)."""
    return [key, *(part for part in re.split(r"[-_.]", key) if len(part) >= _MIN_KEY_PART)]


def _key_text(match: re.Match[str]) -> str:
    """The key a `_WRITTEN_KEY` match found, without its quotes."""
    value = match.group(match.lastindex or 0)
    if value[:1] in "\"'":
        value = value[1:-1] if len(value) > 1 and value.endswith(value[0]) else value[1:]
    return value.strip("*")

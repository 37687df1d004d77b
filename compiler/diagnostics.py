"""Errors as data, rendered in one place.

Every stage reports `Diagnostic` values; nothing else formats them. The same value can
go to a terminal (`render`), to JSON for an editor (`model_dump`), or into a golden file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import BaseModel

from llmflow.compiler.ast import Span


class Diagnostic(BaseModel):
    kind: str
    """A stable identifier: syntax, unknown-name, type, template, output, assign,
    cycle, import, extern, declaration, input."""
    message: str
    span: Span | None = None
    label: str = ""
    """Said under the caret, about the marked text."""
    hint: str = ""
    secret: Span | None = None
    """Text on the shown line that must not be printed (a key written in a program)."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def render(diag: Diagnostic, sources: dict[str, str]) -> str:
    """`file:line:col: error: message`, the source line, a caret under the span, a hint."""
    if diag.span is None:
        lines = [f"error: {diag.message}"]
        if diag.hint:
            lines.append(f"  = hint: {diag.hint}")
        return "\n".join(lines)
    span = diag.span
    lines = [f"{span}: error: {diag.message}"]
    source = sources.get(span.file)
    if source is not None:
        text_lines = source.splitlines() or [""]
        line_text = text_lines[span.line - 1] if span.line - 1 < len(text_lines) else ""
        line_text = line_text.expandtabs(1)
        if diag.secret is not None and diag.secret.line == span.line:
            start, end = diag.secret.col - 1, diag.secret.end_col - 1
            line_text = line_text[:start] + "*" * (end - start) + line_text[end:]
        gutter = " " * len(str(span.line))
        end = span.end_col if span.end_line == span.line else len(line_text) + 1
        width = max(1, end - span.col)
        caret = " " * (span.col - 1) + "^" * width
        if diag.label:
            caret += " " + diag.label
        lines += [f"{gutter} |", f"{span.line} | {line_text}", f"{gutter} | {caret}"]
        if diag.hint:
            lines += [f"{gutter} |", f"{gutter} = hint: {diag.hint}"]
    elif diag.hint:
        lines.append(f"  = hint: {diag.hint}")
    return "\n".join(lines)


def render_all(diags: Iterable[Diagnostic], sources: dict[str, str]) -> str:
    rendered = [render(d, sources) for d in diags]
    return "\n\n".join(rendered) + "\n" if rendered else ""


def sort_key(diag: Diagnostic) -> tuple[str, int, int]:
    if diag.span is None:
        return ("", 0, 0)
    return (diag.span.file, diag.span.line, diag.span.col)

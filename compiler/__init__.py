"""Source → Plan: parse, check, lower (and, from the optimizer on, optimize)."""

from __future__ import annotations

import os

from llmflow.compiler.check import Checked, check
from llmflow.compiler.diagnostics import Diagnostic, sort_key
from llmflow.compiler.ir import Plan
from llmflow.compiler.lower import lower
from llmflow.compiler.modules import load_program
from llmflow.errors import CompileError


def check_file(path: str | os.PathLike[str], source: str | None = None) -> Checked:
    """Parse and check a program and everything it imports; raise with every error."""
    program, diags = load_program(path, source)
    if program.main not in program.modules:  # the main file could not be read
        raise CompileError(diags, program.sources)
    checked, more = check(program)
    diags = sorted(diags + more, key=sort_key)
    if diags:
        raise CompileError(_dedupe(diags), program.sources)
    return checked


def compile_file(
    path: str | os.PathLike[str], flow: str | None = None, source: str | None = None
) -> Plan:
    checked = check_file(path, source)
    flows = checked.flows()
    if flow is None:
        flow = "main" if "main" in flows or len(flows) != 1 else flows[0]
    if checked.flow(flow) is None:
        hint = (
            f"flows in this program: {', '.join(flows)}"
            if flows
            else "declare one: flow main(...) -> ... { }"
        )
        raise CompileError(
            [
                Diagnostic(
                    kind="declaration",
                    message=f"no flow '{flow}' in this program",
                    file=checked.program.main,
                    hint=hint,
                )
            ],
            checked.program.sources,
        )
    return lower(checked, flow)


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[object, str]] = set()
    out = []
    for d in diags:
        key = (d.span, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


__all__ = ["CompileError", "Plan", "check_file", "compile_file"]

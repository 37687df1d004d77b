"""Helpers for the compiler tests: write programs into tmp_path and check or compile them."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmflow.compiler import check_file, compile_file
from llmflow.compiler.check import Checked
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.ir import Plan
from llmflow.errors import CompileError


@pytest.fixture(autouse=True)
def _isolate_extern_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The checker puts each program's directory on sys.path and imports extern modules:
    undo both after each test so tests cannot see each other's Python files."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("llmflow_test_"):
            del sys.modules[name]


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write(name, source): a dedented file under tmp_path (directories created)."""

    def write_(name: str, source: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
        return path

    return write_


@pytest.fixture
def diagnostics(write: Callable[[str, str], Path]) -> Callable[..., list[Diagnostic]]:
    """diagnostics(source): every diagnostic for a program (empty list: it checks)."""

    def diagnostics_(source: str, name: str = "prog.llmflow") -> list[Diagnostic]:
        path = write(name, source)
        try:
            check_file(path)
        except CompileError as err:
            return err.diagnostics
        return []

    return diagnostics_


@pytest.fixture
def checked(write: Callable[[str, str], Path]) -> Callable[..., Checked]:
    """checked(source): the checker's result for a program that must have no errors."""

    def checked_(source: str, name: str = "prog.llmflow") -> Checked:
        path = write(name, source)
        try:
            return check_file(path)
        except CompileError as err:  # show the rendered errors, not just a count
            pytest.fail("unexpected compile errors:\n" + err.render())

    return checked_


@pytest.fixture
def plan(write: Callable[[str, str], Path]) -> Callable[..., Plan]:
    """plan(source, flow=None): the lowered plan of a valid program."""

    def plan_(source: str, flow: str | None = None, name: str = "prog.llmflow") -> Plan:
        path = write(name, source)
        try:
            return compile_file(path, flow)
        except CompileError as err:
            pytest.fail("unexpected compile errors:\n" + err.render())

    return plan_

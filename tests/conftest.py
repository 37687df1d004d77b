"""Shared helpers: compile a program written inline in a test; a private LLMFLOW_HOME."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.ir import Plan


@pytest.fixture(autouse=True)
def llmflow_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs keep their cache and run folders in a fresh place per test, not in the repo."""
    home = tmp_path_factory.mktemp("llmflow-home")
    monkeypatch.setenv("LLMFLOW_HOME", str(home))
    return home


@pytest.fixture
def compile_source(tmp_path: Path) -> Callable[..., Plan]:
    def compile_(source: str, name: str = "prog.llmflow", flow: str | None = None) -> Plan:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return llmflow.compile(path, flow)

    return compile_

"""Shared helpers: compile a program written inline in a test."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.ir import Plan


@pytest.fixture
def compile_source(tmp_path: Path) -> Callable[..., Plan]:
    def compile_(source: str, name: str = "prog.llmflow", flow: str | None = None) -> Plan:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return llmflow.compile(path, flow)

    return compile_

"""Shared helpers: compile a program written inline in a test; a private LLMFLOW_HOME;
the `graphviz` mark for tests that call Graphviz's programs."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.ir import Plan

GRAPHVIZ_HINT = (
    "install Graphviz to run it: apt-get install graphviz (Debian, Ubuntu), "
    "brew install graphviz (macOS), conda install -c conda-forge graphviz, "
    "or choco install graphviz (Windows)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "graphviz(program): runs Graphviz's `program` (dot, neato); skipped without it"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose Graphviz program is missing, saying how to get it; where
    LLMFLOW_REQUIRE_GRAPHVIZ is set (CI), fail instead, so CI runs every test."""
    for mark in item.iter_markers("graphviz"):
        program = mark.args[0] if mark.args else "dot"
        if shutil.which(program) is None:
            message = f"Graphviz's `{program}` is not on PATH; {GRAPHVIZ_HINT}"
            if os.environ.get("LLMFLOW_REQUIRE_GRAPHVIZ"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)


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

"""docs/cli.md is the CLI's own --help output: it fails here when they drift apart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmflow import cli_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _written_by() -> str | None:
    found = re.search(r"\(Python (\d+\.\d+)\)", DOC.read_text())
    return found.group(1) if found else None


def test_docs_cli_md_is_what_the_generator_prints() -> None:
    if _written_by() != cli_reference.PYTHON:
        pytest.skip(f"docs/cli.md was printed by Python {_written_by()}'s argparse")
    assert DOC.read_text() == cli_reference.reference(), (
        "docs/cli.md is out of date: python -m llmflow.cli_reference > docs/cli.md"
    )


def test_the_reference_does_not_depend_on_the_terminal_width() -> None:
    env = {**os.environ, "COLUMNS": "40"}
    printed = subprocess.run(
        [sys.executable, "-m", "llmflow.cli_reference"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == cli_reference.reference()


def test_generating_leaves_the_terminal_width_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "33")
    cli_reference.reference()
    assert os.environ["COLUMNS"] == "33"


def test_every_command_has_a_section_with_its_options_and_example() -> None:
    text = cli_reference.reference()
    for name in ("run", "eval", "tune", "test", "check", "plan", "trace", "models"):
        assert f"## llmflow {name}\n" in text
        section = text.split(f"## llmflow {name}\n", 1)[1].split("\n## ", 1)[0]
        assert f"usage: llmflow {name}" in section
        assert "example:" in section
    assert "--max-failures N" in text

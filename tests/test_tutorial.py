"""docs/tutorial.md is run as written: its files are written and its commands run, in
order, in a fresh folder; and every ```llmflow runnable block of the tutorial and of
docs/language.md compiles (those that need no model and no input also run), and every
```llmflow error=KIND block of docs/language.md fails with errors of that kind.

Markers (the words after a fence's language):
- `sh run`: a script that must succeed; `sh fails`: one that must fail with a program
  error (exit 1, an `error:` line, no traceback); `sh install`: shown, not run (the
  README's install command, checked to be the same).
- `llmflow file=NAME`, `json file=NAME`: written as NAME (`append`: added to its end).
- `llmflow runnable`: a whole program: checked and planned, and run when it calls no
  model and needs no input.
- In docs/language.md, `file=NAME` blocks (`llmflow`, `python`) are written beside every
  runnable and error block, so an example may import a module or bind an extern.
- `llmflow error=KIND` (docs/language.md): a program that `llmflow.compile` rejects with
  errors of kind KIND only (`error=run`: it compiles, and running it fails); checked as
  `file=NAME` if given, else as `example.llmflow`. A ```text rendered block right after
  it is what the error looks like: `CompileError.render()` (or `RunError.render()`),
  optionally followed by `llmflow check`'s summary line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler import check_file
from llmflow.errors import CompileError, RunError

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs/tutorial.md"
LANGUAGE = ROOT / "docs/language.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
SUMMARY = re.compile(r"\n\d+ files? checked: [^\n]*\n\Z")
"""The line `llmflow check` ends with, which a rendered error may show."""


@dataclass(frozen=True)
class Block:
    lang: str
    marks: tuple[str, ...]
    body: str
    line: int

    def option(self, name: str) -> str | None:
        for mark in self.marks:
            if mark.startswith(name + "="):
                return mark.split("=", 1)[1]
        return None


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [
        Block(m.group(1), tuple(m.group(2).split()), m.group(3), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
    ]


def test_the_tutorial_marks_its_blocks() -> None:
    found = blocks(TUTORIAL)
    assert any("run" in b.marks for b in found) and any(b.option("file") for b in found)
    for b in found:
        assert b.lang in ("sh", "llmflow", "json", "text"), b
        if b.lang == "sh":
            assert set(b.marks) & {"run", "fails", "install"}, f"line {b.line}: unmarked commands"
        if b.lang in ("llmflow", "json"):
            assert b.option("file") or "runnable" in b.marks, f"line {b.line}: unmarked code"


def test_the_install_command_is_the_readmes() -> None:
    (install,) = [b for b in blocks(TUTORIAL) if "install" in b.marks]
    assert install.body.strip() in (ROOT / "README.md").read_text()


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.model
def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    for block in blocks(TUTORIAL):
        name = block.option("file")
        if name:
            target = tmp_path / name
            if "append" in block.marks:
                target.write_text(target.read_text() + "\n" + block.body)
            else:
                target.write_text(block.body)
        elif block.lang == "sh" and "run" in block.marks:
            done = _bash(block.body, tmp_path)
            assert done.returncode == 0, f"tutorial.md:{block.line}: {block.body}\n{done.stderr}"
            assert "Traceback" not in done.stderr
        elif block.lang == "sh" and "fails" in block.marks:
            done = _bash(block.body, tmp_path)
            assert done.returncode == 1, f"tutorial.md:{block.line}: {done.stderr}"
            assert "error:" in done.stderr and "Traceback" not in done.stderr
    rows = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(rows) == 3  # the second run resumed: no row twice


def _runnable() -> list[tuple[str, Block]]:
    return [
        (path.name, b)
        for path in (TUTORIAL, LANGUAGE)
        for b in blocks(path)
        if b.lang == "llmflow" and "runnable" in b.marks
    ]


def _errors() -> list[tuple[Block, Block | None]]:
    """The error blocks of the reference, each with the ```text rendered block after it."""
    found = blocks(LANGUAGE)
    return [
        (b, after if after.lang == "text" and "rendered" in after.marks else None)
        for b, after in zip(found, [*found[1:], found[0]], strict=True)
        if b.lang == "llmflow" and b.option("error")
    ]


def _write_files(folder: Path) -> None:
    """The reference's `file=NAME` blocks, written where its examples can import them."""
    for b in blocks(LANGUAGE):
        name = b.option("file")
        if name and b.lang in ("llmflow", "python") and not b.option("error"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(b.body)


def test_the_reference_marks_its_whole_programs() -> None:
    assert len([b for name, b in _runnable() if name == "language.md"]) >= 20
    assert len(_errors()) >= 13


def test_the_reference_marks_its_blocks_with_marks_it_knows() -> None:
    found = blocks(LANGUAGE)
    for b in found:
        assert not re.search(r"^```", b.body, re.M), f"language.md:{b.line}: a fence inside"
        known = {"runnable", "rendered"} | {m for m in b.marks if re.match(r"(file|error)=", m)}
        assert set(b.marks) <= known, f"language.md:{b.line}: unknown marks {b.marks}"
        if "rendered" in b.marks:
            assert any(after == b for _, after in _errors()), (
                f"language.md:{b.line}: a rendered error that follows no error block"
            )


@pytest.mark.parametrize(
    ("doc", "block"), _runnable(), ids=[f"{n}:{b.line}" for n, b in _runnable()]
)
def test_runnable_blocks_compile_and_the_short_ones_run(
    doc: str, block: Block, tmp_path: Path
) -> None:
    if doc == LANGUAGE.name:
        _write_files(tmp_path)
    program = tmp_path / (block.option("file") or "block.llmflow")
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text(block.body)
    if not re.search(r"^flow ", block.body, re.M):  # a module of declarations only
        check_file(program)
        return
    plan = llmflow.compile(program)
    if not plan.calls() and all(not spec.required for spec in plan.inputs):
        outputs = llmflow.run(plan, {})
        assert set(outputs) == set(plan.outputs)


@pytest.mark.parametrize(
    ("block", "rendered"), _errors(), ids=[f"language.md:{b.line}" for b, _ in _errors()]
)
def test_error_blocks_fail_with_the_kind_they_name(
    block: Block, rendered: Block | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_files(tmp_path)
    monkeypatch.chdir(tmp_path)  # errors name the file as the reader would: example.llmflow
    name = block.option("file") or "example.llmflow"
    Path(name).write_text(block.body)
    kind = block.option("error")
    error: CompileError | RunError
    if kind == "run":
        plan = llmflow.compile(name)
        assert not plan.calls(), f"language.md:{block.line}: a run error needs no model"
        with pytest.raises(RunError) as failed:
            llmflow.run(plan, {})
        error = failed.value
    else:
        with pytest.raises(CompileError) as rejected:
            llmflow.compile(name)
        error = rejected.value
    kinds = [d.kind for d in error.diagnostics]
    assert kinds and set(kinds) == {kind}, (
        f"language.md:{block.line}: expected {kind} errors, got\n{error.render()}(kinds {kinds})"
    )
    if rendered is not None:
        assert SUMMARY.sub("\n", rendered.body) == error.render(), f"language.md:{rendered.line}"

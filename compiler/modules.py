"""Loading a program: the main file and every file it imports, each parsed once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmflow import stdlib
from llmflow.compiler import ast
from llmflow.compiler.diagnostics import Diagnostic, did_you_mean
from llmflow.compiler.parse import parse_module

STDLIB_DIR = Path(stdlib.__file__).resolve().parent


@dataclass
class Program:
    main: str
    """The main file's name as the user gave it; imported files are named relative to it."""
    modules: dict[str, ast.Module] = field(default_factory=dict)
    imports: dict[str, list[str]] = field(default_factory=dict)
    """For each module, the modules it imports (their names), in order."""
    sources: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    """Each module's file on disk."""
    base_dir: Path = Path(".")
    """The main file's directory: where `extern` Python modules are looked up first."""


def stdlib_modules() -> list[str]:
    return sorted(p.stem for p in STDLIB_DIR.glob("*.llmflow"))


def load_program(
    path: str | os.PathLike[str], source: str | None = None
) -> tuple[Program, list[Diagnostic]]:
    main = str(path)
    program = Program(main=main, base_dir=Path(main).resolve().parent)
    diags: list[Diagnostic] = []
    if source is None:
        source = Path(main).read_text(encoding="utf-8")
    pending: list[tuple[str, str, Path]] = [(main, source, Path(main))]
    by_file: dict[Path, str] = {Path(main).resolve(): main}
    while pending:
        name, text, real = pending.pop()
        module, parse_diags = parse_module(text, name)
        diags.extend(parse_diags)
        program.modules[name] = module
        program.sources[name] = text
        program.paths[name] = real
        program.imports[name] = []
        for decl in module.decls:
            if not isinstance(decl, ast.ImportDecl):
                continue
            resolved = _resolve(decl, name, real)
            if isinstance(resolved, Diagnostic):
                diags.append(resolved)
                continue
            dep_name, dep_real = resolved
            # One file is one module, however it is reached (an import cycle, ./x vs x).
            dep_name = by_file.setdefault(dep_real.resolve(), dep_name)
            program.imports[name].append(dep_name)
            if dep_name not in program.modules and all(dep_name != p[0] for p in pending):
                pending.append((dep_name, dep_real.read_text(encoding="utf-8"), dep_real))
    return program, diags


def _resolve(
    decl: ast.ImportDecl, importer: str, importer_real: Path
) -> tuple[str, Path] | Diagnostic:
    if decl.module is not None:
        real = STDLIB_DIR / (decl.module.replace(".", "/") + ".llmflow")
        if real.is_file():
            return f"<stdlib>/{decl.module}.llmflow", real
        return Diagnostic(
            kind="import",
            message=f"no standard library module '{decl.module}'",
            span=decl.span,
            hint=did_you_mean(decl.module, stdlib_modules())
            or "available: "
            + ", ".join(stdlib_modules())
            + '; import a file of yours with a quoted path: import "lib/util.llmflow"',
        )
    assert decl.path is not None
    real = importer_real.parent / decl.path
    if not real.is_file():
        return Diagnostic(
            kind="import",
            message=f"cannot find '{decl.path}'",
            span=decl.span,
            hint=f"paths are relative to the importing file; looked for {real}",
        )
    if importer.startswith("<stdlib>/"):
        name = f"<stdlib>/{os.path.normpath(decl.path)}"
    else:
        name = os.path.normpath(os.path.join(os.path.dirname(importer), decl.path))
    return name, real

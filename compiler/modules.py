"""Loading a program: the main file and every file it imports, each parsed once.

A file is read only if it is a program's text: a regular file (a FIFO or a device would
block or never end) of at most MAX_SOURCE_BYTES of UTF-8 without NUL bytes; otherwise the
error says why, and never quotes the file. `import` reads only `.llmflow` files.
"""

from __future__ import annotations

import codecs
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from llmflow import stdlib
from llmflow.compiler import ast
from llmflow.compiler.diagnostics import Diagnostic, did_you_mean, quote
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


MAX_SOURCE_BYTES = 8 * 1024 * 1024
"""The largest file read as a program (or config file): 8 MiB."""
SOURCE_SUFFIX = ".llmflow"


class UnreadableSource(Exception):
    """A file that is not a program's text; the message says why, without quoting it."""


def read_source(path: str | os.PathLike[str]) -> str:
    """The text of a program file (a UTF-8 byte order mark dropped), or UnreadableSource."""
    return decode_source(read_file(path, MAX_SOURCE_BYTES, "a program"))


def read_file(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (`what` it is, for the
    message), or UnreadableSource: never blocks on a FIFO or reads a device forever."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise UnreadableSource("no such file") from None
    except IsADirectoryError:
        raise UnreadableSource("not a file: it is a directory") from None
    except OSError as err:
        raise UnreadableSource(f"cannot read it: {err.strerror or err}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UnreadableSource("not a file: it is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableSource(
                "not a regular file: a FIFO, socket or device could block or never end"
            )
        raise UnreadableSource(_too_big(info.st_size, limit, what))
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(limit + 1)
        except OSError as err:
            raise UnreadableSource(f"cannot read it: {err.strerror or err}") from None
    if len(data) > limit:
        raise UnreadableSource(_too_big(len(data), limit, what))
    return data


def decode_source(data: bytes) -> str:
    """Program text from bytes: UTF-8, a leading UTF-8 byte order mark allowed."""
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if data.startswith(bom):
            raise UnreadableSource(
                f"not UTF-8 text: it starts with a {encoding} byte order mark; save it as UTF-8"
            )
    data = data.removeprefix(codecs.BOM_UTF8)
    nul = data.find(b"\0")
    if nul >= 0:
        raise UnreadableSource(f"not a text file: a NUL byte at byte offset {nul}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        col = len(data[line_start : err.start].decode("utf-8")) + 1
        raise UnreadableSource(
            f"not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} "
            f"(line {line}, column {col}) is invalid; save it as UTF-8"
        ) from None


def _too_big(size: int, limit: int, what: str) -> str:
    return f"too big: {size:,} bytes; {what} is at most {limit:,} bytes ({limit >> 20} MiB)"


def stdlib_modules() -> list[str]:
    return sorted(p.stem for p in STDLIB_DIR.glob("*.llmflow"))


def load_program(
    path: str | os.PathLike[str], source: str | None = None
) -> tuple[Program, list[Diagnostic]]:
    main = str(path)
    program = Program(main=main, base_dir=Path(main).resolve().parent)
    diags: list[Diagnostic] = []
    if source is None:
        try:
            source = read_source(main)
        except UnreadableSource as err:
            return program, [Diagnostic(kind="file", message=str(err), file=main)]
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
            if dep_name in program.modules or any(dep_name == p[0] for p in pending):
                program.imports[name].append(dep_name)
                continue
            try:
                dep_text = read_source(dep_real)
            except UnreadableSource as err:
                diags.append(_cannot_import(decl, str(err)))
                continue
            program.imports[name].append(dep_name)
            pending.append((dep_name, dep_text, dep_real))
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
    if not decl.path.endswith(SOURCE_SUFFIX):
        return Diagnostic(
            kind="import",
            message=f"cannot import {quote(decl.path)}: import reads only .llmflow files",
            span=decl.span,
            hint='import a program file of yours: import "lib/util.llmflow"',
        )
    real = importer_real.parent / decl.path
    try:
        found = real.exists()
    except OSError as err:  # a name too long for the file system, say
        return _cannot_import(decl, err.strerror or str(err))
    if not found:
        return Diagnostic(
            kind="import",
            message=f"cannot find {quote(decl.path)}",
            span=decl.span,
            hint=f"paths are relative to the importing file; looked for {real}",
        )
    if importer.startswith("<stdlib>/"):
        name = f"<stdlib>/{os.path.normpath(decl.path)}"
    else:
        name = os.path.normpath(os.path.join(os.path.dirname(importer), decl.path))
    return name, real


def _cannot_import(decl: ast.ImportDecl, why: str) -> Diagnostic:
    return Diagnostic(
        kind="import", message=f"cannot import {quote(decl.path or '')}: {why}", span=decl.span
    )

"""`llmflow doc [NAME]`: the signature and documentation of a standard-library module,
one of its declarations, or a builtin, read from the source so the docs cannot drift
from the code.

The convention: a declaration's doc is the block of `#` comment lines directly above it
(above its decorators, no blank line between); a module's doc is the comment block that
opens its file, when a blank line separates it from the first declaration. A builtin's
doc is its `doc` text beside its type rule (stdlib/builtins.py), and the docstring of its
Python implementation when that says more.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from llmflow.compiler import ast
from llmflow.compiler.diagnostics import did_you_mean
from llmflow.compiler.modules import STDLIB_DIR, UnreadableSource, read_source, stdlib_modules
from llmflow.compiler.parse import parse_module
from llmflow.compiler.types import ANY
from llmflow.errors import LLMFlowError
from llmflow.stdlib.builtins import BUILTINS, Builtin

EXAMPLE = (
    "llmflow doc                 # the standard library's modules\n"
    "  llmflow doc rank            # a module: its declarations\n"
    "  llmflow doc chunk_tokens    # one function: its signature and doc"
)
BUILTINS_MODULE = "builtins"


@dataclass(frozen=True)
class Entry:
    """One documented declaration: where it is, how it is called, what it is for."""

    name: str
    kind: str
    signature: str
    doc: str
    where: str


def add_command(sub: argparse.ArgumentParser) -> None:
    """The options of `llmflow doc` (the parser is made by cli.py)."""
    sub.add_argument(
        "name",
        nargs="?",
        help="a stdlib module, a declaration (NAME or MODULE.NAME), a builtin, or a "
        ".llmflow file (default: list the modules)",
    )


def run_doc(args: argparse.Namespace) -> int:
    sys.stdout.write(describe(args.name))
    return 0


def describe(name: str | None) -> str:
    """What `llmflow doc NAME` prints (LLMFlowError for a name it does not know)."""
    if name is None:
        return _listing()
    if name == BUILTINS_MODULE:
        return _module_text(BUILTINS_MODULE, _builtins_doc(), builtin_entries())
    if name.endswith(".llmflow"):
        doc, entries = module_entries(Path(name), name)
        return _module_text(name, doc, entries)
    if name in stdlib_modules():
        doc, entries = module_entries(STDLIB_DIR / f"{name}.llmflow", name)
        return _module_text(name, doc, entries)
    module, _, short = name.rpartition(".")
    candidates = [e for e in all_entries() if e.name == short]
    if module:
        candidates = [e for e in candidates if e.where.split(":")[0] in (module, _stdlib(module))]
    if not candidates:
        known = [e.name for e in all_entries()] + stdlib_modules()
        hint = did_you_mean(short, known) or "`llmflow doc` lists the modules"
        raise LLMFlowError(f"no module, declaration or builtin named '{name}': {hint}")
    return "\n".join(_entry_text(e) for e in candidates)


def all_entries() -> list[Entry]:
    """Every builtin and every declaration of every standard-library module."""
    entries = builtin_entries()
    for module in stdlib_modules():
        entries.extend(module_entries(STDLIB_DIR / f"{module}.llmflow", module)[1])
    return entries


def builtin_entries() -> list[Entry]:
    return [_builtin_entry(b) for b in BUILTINS.values()]


def module_entries(path: Path, name: str) -> tuple[str, list[Entry]]:
    """A module's doc and its documented declarations, in file order."""
    try:
        source = read_source(path)
    except UnreadableSource as err:
        raise LLMFlowError(f"cannot read {path}: {err}") from None
    module, diags = parse_module(source, str(path))
    if diags:
        raise LLMFlowError(f"{path} has syntax errors: run `llmflow check {path}`")
    lines = source.splitlines()
    entries = []
    first_decl = len(lines) + 1
    for decl in module.decls:
        if isinstance(decl, ast.ImportDecl):
            continue
        start = min([decl.span.line, *(d.span.line for d in getattr(decl, "decorators", []))])
        first_decl = min(first_decl, start)
        kind, title = _kind_and_name(decl)
        entries.append(
            Entry(
                name=title,
                kind=kind,
                signature=signature(decl, lines),
                doc=comment_above(lines, start),
                where=f"{_where(name)}:{start}",
            )
        )
    return _module_doc(lines, first_decl), entries


def comment_above(lines: list[str], line: int) -> str:
    """The `#` lines directly above 1-based `line`, without their `# ` marks."""
    doc: list[str] = []
    i = line - 2
    while i >= 0 and lines[i].lstrip().startswith("#"):
        doc.append(_uncomment(lines[i]))
        i -= 1
    return "\n".join(reversed(doc))


def signature(decl: ast.Decl, lines: list[str]) -> str:
    """How a declaration is written, without its body (template, statements)."""
    decorators = "".join(_source(d.span, lines) + "\n" for d in getattr(decl, "decorators", []))
    match decl:
        case ast.FnDecl() | ast.FlowDecl() | ast.ExternDecl():
            keyword = {"FnDecl": "fn", "FlowDecl": "flow", "ExternDecl": "extern fn"}
            params = ", ".join(_param(p, lines) for p in decl.params)
            if isinstance(decl, ast.ExternDecl) and decl.single:
                outputs = str(decl.outputs[0].type)
            else:
                outputs = ", ".join(f"{o.name.name}: {o.type}" for o in decl.outputs)
            head = f"{keyword[type(decl).__name__]} {decl.name.name}({params}) -> {outputs}"
            return decorators + head
        case ast.EnumDecl():
            return f"enum {decl.name.name} {{ {', '.join(m.name for m in decl.members)} }}"
        case ast.RecordDecl():
            fields = ", ".join(f"{f.name.name}: {f.type}" for f in decl.fields)
            return f"record {decl.name.name} {{ {fields} }}"
    return _source(decl.span, lines).split("\n", 1)[0]


def _builtin_entry(builtin: Builtin) -> Entry:
    if builtin.shown:
        forms = "\n".join(builtin.name + form for form in builtin.shown)
    else:
        params = []
        for p in builtin.params:
            text = p.name if p.type is None else f"{p.name}: {p.type}"
            if not p.required:
                text += f" = {_constant(p.default)}"
            params.append(text)
        if builtin.variadic:
            params.append("name=value, …")
        result = builtin.result([p.type or ANY for p in builtin.params])
        returns = "T" if isinstance(result, str) or result == ANY else str(result)
        forms = f"{builtin.name}({', '.join(params)}) -> {returns}"
    doc = builtin.doc
    extra = getattr(builtin.impl, "__doc__", None)
    if extra and getattr(builtin.impl, "__module__", "").startswith("llmflow"):
        extra = " ".join(extra.split())
        if extra != doc:
            doc = f"{doc}\n{extra}"
    return Entry(
        name=builtin.name,
        kind="builtin",
        signature=forms,
        doc=doc,
        where=BUILTINS_MODULE,
    )


def _builtins_doc() -> str:
    return "Builtin functions: always visible, no import needed (stdlib/builtins.py)."


def _listing() -> str:
    rows = [(BUILTINS_MODULE, _builtins_doc())]
    for module in stdlib_modules():
        doc, _ = module_entries(STDLIB_DIR / f"{module}.llmflow", module)
        rows.append((module, _first_sentence(doc)))
    width = max(len(name) for name, _ in rows)
    text = "".join(f"{name:<{width}}  {doc}\n" for name, doc in rows)
    return text + "\n`llmflow doc MODULE` lists a module; `llmflow doc NAME` shows one name.\n"


def _module_text(name: str, doc: str, entries: list[Entry]) -> str:
    out = [f"module {name}\n"]
    if doc:
        out.append(_indent(doc) + "\n")
    for entry in entries:
        out.append("\n" + _indent(entry.signature, "  ") + "\n")
        if entry.doc:
            out.append(_indent(_first_sentence(entry.doc), "      ") + "\n")
    return "".join(out)


def _entry_text(entry: Entry) -> str:
    text = f"{entry.signature}\n    ({entry.kind}, {entry.where})\n"
    if entry.doc:
        text += "\n" + _indent(entry.doc, "    ") + "\n"
    return text


def _module_doc(lines: list[str], first_decl: int) -> str:
    doc: list[str] = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("#"):
            # The opening block belongs to the first declaration if nothing separates them.
            return "" if i + 1 == first_decl else "\n".join(doc)
        doc.append(_uncomment(line))
    return "\n".join(doc)


def _kind_and_name(decl: ast.Decl) -> tuple[str, str]:
    kinds = {
        "FnDecl": "semantic function",
        "FlowDecl": "flow",
        "ExternDecl": "extern function",
        "EnumDecl": "enum",
        "RecordDecl": "record",
        "ModelDecl": "model",
        "EvalDecl": "eval",
        "ConstDecl": "constant",
    }
    return kinds[type(decl).__name__], decl.name.name  # type: ignore[union-attr]


def _param(p: ast.Param, lines: list[str]) -> str:
    text = f"{p.name.name}: {p.type}"
    return text if p.default is None else f"{text} = {_source(p.default.span, lines)}"


def _source(span: ast.Span, lines: list[str]) -> str:
    if span.line == span.end_line:
        return lines[span.line - 1][span.col - 1 : span.end_col - 1]
    first = lines[span.line - 1][span.col - 1 :]
    middle = lines[span.line : span.end_line - 1]
    return "\n".join([first, *middle, lines[span.end_line - 1][: span.end_col - 1]])


def _constant(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def _uncomment(line: str) -> str:
    text = line.lstrip()[1:]
    return text[1:] if text.startswith(" ") else text


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.")


def _first_sentence(doc: str) -> str:
    """The summary line of a doc: up to the first full stop that ends a sentence, not
    one inside quotes or backticks (`one "1. item" a line`), after a bare number or
    another dot (`3.`, `0 .. n-1`), or of an abbreviation (`e.g.`)."""
    flat = " ".join(doc.split())
    for found in _SENTENCE_END.finditer(flat):
        end = found.start()
        before, head = flat[end - 1 : end], flat[: end + 1]
        word = flat[:end].rsplit(" ", 1)[-1]
        if not before or before in ". " or word.isdigit():  # `0 ..`, a numbering `3.`
            continue
        if head.count('"') % 2 or head.count("`") % 2 or head.endswith(_ABBREVIATIONS):
            continue
        return head
    return flat


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.split("\n"))


def _where(module: str) -> str:
    return module if module.endswith(".llmflow") else f"stdlib/{module}.llmflow"


def _stdlib(module: str) -> str:
    return f"stdlib/{module}.llmflow"

"""Mutated llmflow programs for tests/test_fuzz.py.

A case is `(seed, index)`: its base program (an example, the stdlib, a golden program, or
a synthetic program of a given shape and size) and its mutations are drawn from a
`random.Random` seeded with both, so the same pair always builds the same files. The
mutations are structural (lines, tokens and declarations deleted, duplicated, swapped,
spliced in from other programs), hostile (10,000-deep nesting, huge literals, `{{`
storms, very long lines, imports of directories, devices and binary files, key-like
strings) and byte-level (non-UTF-8 bytes, BOMs, NUL bytes, UTF-16).
"""

from __future__ import annotations

import os
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS_GLOBS = ("examples/*.llmflow", "stdlib/*.llmflow", "tests/compiler/golden/*.llmflow")
HELPERS = ROOT / "tests" / "compiler" / "golden" / "golden_helpers.py"
MAIN = "main.llmflow"
ENV_SECRET = "fuzzenvsecret" + "q7Zr2Xw9Lm4Tb8Kd"
"""Put in the checking process's environment: a program must never get it printed."""

SIZES = (10, 200, 1_000, 10_000)


@dataclass
class Build:
    """What a case made: the files of its folder, and what the test must check."""

    text: str
    description: list[str]
    files: dict[str, bytes | str] = field(default_factory=dict)
    """Beside the program: name → content; a str content starting with '->' is a
    symlink target, 'DIR' a folder, 'FIFO' a named pipe."""
    secrets: list[str] = field(default_factory=list)
    """Key-like strings written in the program: a diagnostic never shows them (a plan
    may, as the data of a template or a string)."""
    must_pass: bool = False
    """An ordinary program (a 10,000-long chain, a BOM on an example): exit 0 expected."""
    must_fail: bool = False
    """A program that can never work (a `base_url` of `ftp://`): exit 1 expected."""
    encoded: bytes | None = None

    def content(self) -> bytes:
        return self.encoded if self.encoded is not None else self.text.encode("utf-8")


# ---- the corpus -------------------------------------------------------------------------

TOKEN = re.compile(
    r'""".*?(?:"""|\Z)|"(?:\\.|[^"\\\n])*"|\{\{|\}\}|[A-Za-z_]\w*|\d+(?:\.\d+)?|#[^\n]*'
    r"|==|!=|<=|>=|->|\s+|.",
    re.S,
)
DECL_START = re.compile(r"^(import|model|enum|record|extern|fn|flow|@)\b", re.M)


@cache
def corpus() -> dict[str, str]:
    files: dict[str, str] = {}
    for pattern in CORPUS_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            files[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    return files


def valid_examples() -> set[str]:
    """Corpus programs that check and plan without errors."""
    return {name for name in corpus() if name.startswith("examples/")}


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


@cache
def token_pool() -> tuple[str, ...]:
    pool = {t for text in corpus().values() for t in tokens(text) if not t.isspace()}
    return tuple(sorted(pool))


def declarations(text: str) -> list[str]:
    """Top-level pieces: each starts at a declaration keyword (or its decorators)."""
    starts = []
    in_triple = False
    offset = 0
    for line in text.splitlines(keepends=True):
        follows_decorator = line.startswith(("fn", "flow", "extern")) and _decorated(
            text, starts[-1] if starts else 0, offset
        )
        if not in_triple and DECL_START.match(line) and not (starts and follows_decorator):
            starts.append(offset)
        if not line.startswith("#") and line.count('"""') % 2:
            in_triple = not in_triple
        offset += len(line)
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _decorated(text: str, start: int, offset: int) -> bool:
    """A `fn` right after its decorators belongs to the piece they start."""
    between = text[start:offset]
    return all(line.startswith("@") for line in between.splitlines() if line.strip())


@cache
def all_declarations() -> tuple[str, ...]:
    return tuple(d for text in corpus().values() for d in declarations(text) if DECL_START.match(d))


# ---- synthetic programs -----------------------------------------------------------------

ECHO = '''fn echo(x: str) -> y: str
"""
Repeat {{x}}.
{{y | max_tokens=8}}
"""

'''


def _main(body: str, params: str = "a: str", outputs: str = "out: str") -> str:
    return f"{ECHO}flow main({params}) -> {outputs} {{\n{body}}}\n"


def _out(expr: str) -> str:
    return f"    v = {expr}\n    out = echo(str(v))\n"


def chain_assign(n: int) -> str:
    lines = ["    v0 = len(a)\n"] + [f"    v{i} = v{i - 1} + 1\n" for i in range(1, n + 1)]
    return _main("".join(lines) + f"    out = echo(str(v{n}))\n")


def long_sum(n: int) -> str:
    terms = "".join(" + 1" if i % 20 else "\n        + 1" for i in range(n))
    return _main(_out(f"len(a){terms}"))


def else_if_chain(n: int) -> str:
    parts = [f'    if a == "{i}" {{\n        out = "{i}"\n    }} else ' for i in range(n)]
    return _main("".join(parts) + "{\n        out = echo(a)\n    }\n")


def nested_if(n: int) -> str:
    opening = "".join(f"if len(a) > {i} {{\n" for i in range(n))
    closing = "".join(f'}} else {{\nout = "{i}"\n}}\n' for i in reversed(range(n)))
    return _main(opening + "out = echo(a)\n" + closing)


def nested_parens(n: int) -> str:
    return _main(_out("(" * n + "len(a)" + ")" * n))


def nested_calls(n: int) -> str:
    return _main(_out("str(" * n + "a" + ")" * n))


def nested_fn_calls(n: int) -> str:
    return _main("    out = " + "echo(" * n + "a" + ")" * n + "\n")


def nested_lists(n: int) -> str:
    return _main(_out("len(" + "[" * n + "a" + "]" * n + ")"))


def nested_not(n: int) -> str:
    return _main(_out("not " * n + "true"))


def nested_neg(n: int) -> str:
    return _main(_out("-" * n + "1"))


def nested_index(n: int) -> str:
    return _main(_out("[a]" + "[0]" * n))


def many_calls(n: int) -> str:
    lines = ["    v0 = a\n"] + [f"    v{i} = echo(v{i - 1})\n" for i in range(1, n + 1)]
    return _main("".join(lines) + f"    out = v{n}\n")


def many_decls(n: int) -> str:
    fns = "".join(
        f'fn f{i}(x: str) -> y: str\n"""\nStep {i}: {{{{x}}}} {{{{y | max_tokens=4}}}}\n"""\n\n'
        for i in range(n)
    )
    return fns + _main(f"    out = f{n - 1}(echo(a))\n")


def many_placeholders(n: int) -> str:
    template = "".join("{{x}} " if i % 10 else "{{x}}\n" for i in range(n))
    return f'fn wide(x: str) -> y: str\n"""\n{template}\n{{{{y | max_tokens=4}}}}\n"""\n\n' + _main(
        "    out = wide(a)\n"
    )


def many_records(n: int) -> str:
    fields = ", ".join(f"f{i}: int" for i in range(n))
    return f"record Big {{ {fields} }}\n\n" + _main("    out = echo(a)\n")


def many_enum(n: int) -> str:
    members = ", ".join(f"m{i}" for i in range(n))
    return f"enum Big {{ {members} }}\n\n" + _main("    out = echo(a)\n", "a: str, b: Big")


def deep_type(n: int) -> str:
    return _main("    out = echo(a)\n", "a: str, b: " + "list[" * n + "str" + "]" * n)


def deep_placeholder(n: int) -> str:
    path = ".".join(["a"] * n)
    return (
        f'record R {{ a: str }}\nfn deep(r: R) -> y: str\n"""\n{{{{r.{path}}}}} '
        f'{{{{y | max_tokens=4}}}}\n"""\n\n' + _main('    out = deep(R(a="x"))\n')
    )


SHAPES: dict[str, tuple[Callable[[int], str], bool, int]] = {
    # name: (program of size n, must check and plan, largest size)
    "chain_assign": (chain_assign, True, 10_000),
    "long_sum": (long_sum, True, 10_000),
    "else_if_chain": (else_if_chain, True, 3_000),  # 10,000: tests/compiler/test_deep.py
    "many_calls": (many_calls, True, 3_000),
    "many_decls": (many_decls, True, 3_000),
    "many_placeholders": (many_placeholders, True, 20_000),
    "many_records": (many_records, True, 10_000),
    "many_enum": (many_enum, True, 10_000),
    "nested_if": (nested_if, False, 10_000),
    "nested_parens": (nested_parens, False, 10_000),
    "nested_calls": (nested_calls, False, 10_000),
    "nested_fn_calls": (nested_fn_calls, False, 2_000),
    "nested_lists": (nested_lists, False, 10_000),
    "nested_not": (nested_not, False, 10_000),
    "nested_neg": (nested_neg, False, 10_000),
    "nested_index": (nested_index, False, 10_000),
    "deep_type": (deep_type, False, 10_000),
    "deep_placeholder": (deep_placeholder, False, 10_000),
}
"""Nesting may be refused past a stated limit (with a positioned error); chains and
wide programs may not."""


# ---- hostile pieces ---------------------------------------------------------------------

HUGE_INT = "9" * 5_000
HUGE_FLOAT = "1" + "0" * 400 + ".0"  # overflows to inf
HAZARDS = (
    HUGE_INT,
    f"{HUGE_INT} * {HUGE_INT}",
    f"str({HUGE_INT})",
    f"{HUGE_FLOAT}",
    f"{HUGE_FLOAT} - {HUGE_FLOAT}",
    f"str({HUGE_FLOAT})",
    f'int("{HUGE_INT}")',
    "str(" + " * ".join(["99999999999999999999"] * 300) + ")",
    'float("1e400")',
    'float("nan")',
    "len(range(10000000000))",
    "len(range(-10000000000))",
    'format("{x:>10000000000}", x="y")',
    'format("{x:.10000000000f}", x=1.5)',
    'format("{x.__class__.__mro__}", x="y")',
    "1 / 0",
    "1 % 0",
    "1.0 / 0.0",
    '"abc"[99999999999999999999]',
    "[1][5]",
    '["z"][-99999999999999999999]',
    'len(split("a b", ""))',
    'len(chunk("abc", 0))',
    'len(chunk("abc", -1))',
    'len(chunk("abc", 2, 5))',
    "first([])",
    "max(1, [1])",
    "len(take([a], -1))",
    "len(flatten([[[a]]]))",
    'format("{x")',
    'format("{0}")',
    'replace(a, "", "x")',
    'int("x")',
    'int("")',
    "99999999999999999999 - -99999999999999999999",
    "none ?? first([])",
    "none ?? len(range(10000000000))",
    "[none, 1][0] ?? 99999999999999999999",
)
TEMPLATE_JUNK = (
    "{{",
    "}}",
    "{{x",
    "x}}",
    "{{ {{ }}",
    "{{}}",
    "{{|}}",
    "{{ . }}",
    "{{y | max_tokens=}}",
    "{{y | max_tokens=" + HUGE_INT + "}}",
    "{{y | max_tokens=" + HUGE_FLOAT + "}}",
    "{{y | temperature=" + "(" * 3000 + "1" + ")" * 3000 + "}}",
    "{{y | stop=[" + ", ".join(['"x"'] * 3000) + "]}}",
    "{{x.a.b.c.d.e}}",
    "{{ x | foo=bar( }}",
    "{{{{{{x}}}}}}",
    "{{\n}}",
    '{{"""}}',
    "{{x | max_tokens=1, max_tokens=2}}",
    "{{é}}",
    "{{\x00}}",
)
IMPORT_TARGETS = (
    ".",
    "folder.llmflow",
    "/proc/self/environ",
    "binary.llmflow",
    "binary.bin",
    "latin1.llmflow",
    "utf16.llmflow",
    "empty.llmflow",
    MAIN,
    "sibling.llmflow",
    "environ.llmflow",
    "zero.llmflow",
    "fifo.llmflow",
    "/dev/null",
    "/proc/self/cmdline",
    "/",
    "",
    "nul\x00name.llmflow",
    "x" * 5_000 + ".llmflow",
    "../" * 200 + "etc/hostname",
    "~/none.llmflow",
    "sibling",
    "a\\nb.llmflow",
)
STD_IMPORTS = ("summarize", "summarize.summarize", "os", ".".join(["a"] * 2_000), "__init__")
EXTERN_TARGETS = (
    "",
    ":",
    "::",
    "os:",
    ":f",
    "os.path:join",
    "json:loads",
    "golden_helpers:count_words",
    "golden_helpers:NOT_CALLABLE",
    "no_such_module_for_llmflow:f",
    "a" * 300 + ":f",
    "é:f",
    ".:f",
    "..x:f",
    "os:sep",
    "os.path.join:x",
    "json:loads.__call__.__call__",
    "nul\x00:f",
    "binary:f",
    "sibling:f",
)
INVALID_URLS = (
    "not a url",
    "ftp://example.invalid",
    "http://[::1",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:-1",
    "http://127.0.0.1:abc",
    "http://",
    "http://a b",
    "file:///etc/passwd",
)
"""`base_url`s that can never work: `check` must refuse them (with a position)."""
BASE_URLS = (
    "",
    "http:///x",
    "\x00",
    "http://" + "a" * 5_000,
    "https://user:sk-@127.0.0.1/v1",
    "//127.0.0.1",
    "http://127.0.0.1:8080/v1",
)
BAD_BYTES = (b"\xff", b"\xfe", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80\x80", b"\xf8\x88")
ODD_CHARS = ("\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\r", "\x1b[31m", "\u202e", "\ufeff", "\t")


def key_like(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits
    return rng.choice(("sk-", "sk-proj-")) + "".join(rng.choice(alphabet) for _ in range(40))


# ---- mutations --------------------------------------------------------------------------


def _lines(b: Build) -> list[str]:
    return b.text.splitlines(keepends=True) or [""]


def _span(rng: random.Random, n: int) -> tuple[int, int]:
    start = rng.randrange(n)
    return start, min(n, start + rng.randint(1, 3))


def delete_lines(rng: random.Random, b: Build) -> str:
    lines = _lines(b)
    a, z = _span(rng, len(lines))
    b.text = "".join(lines[:a] + lines[z:])
    return f"delete_lines({a + 1}-{z})"


def duplicate_lines(rng: random.Random, b: Build) -> str:
    lines = _lines(b)
    a, z = _span(rng, len(lines))
    b.text = "".join(lines[:z] + lines[a:z] + lines[z:])
    return f"duplicate_lines({a + 1}-{z})"


def swap_lines(rng: random.Random, b: Build) -> str:
    lines = _lines(b)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    b.text = "".join(lines)
    return f"swap_lines({i + 1},{j + 1})"


def _token_edit(rng: random.Random, b: Build, how: str) -> str:
    toks = tokens(b.text)
    solid = [i for i, t in enumerate(toks) if not t.isspace()] or [0]
    i = rng.choice(solid)
    j = rng.choice(solid)
    old = toks[i] if toks else ""
    if not toks:
        toks = [""]
    if how == "delete":
        toks[i] = ""
    elif how == "duplicate":
        toks[i] = toks[i] + " " + toks[i]
    elif how == "swap":
        toks[i], toks[j] = toks[j], toks[i]
    elif how == "replace":
        toks[i] = rng.choice(token_pool())
    else:
        toks[i] = toks[i] + " " + rng.choice(token_pool())
    b.text = "".join(toks)
    return f"{how}_token({old[:20]!r})"


def delete_token(rng: random.Random, b: Build) -> str:
    return _token_edit(rng, b, "delete")


def duplicate_token(rng: random.Random, b: Build) -> str:
    return _token_edit(rng, b, "duplicate")


def swap_tokens(rng: random.Random, b: Build) -> str:
    return _token_edit(rng, b, "swap")


def replace_token(rng: random.Random, b: Build) -> str:
    return _token_edit(rng, b, "replace")


def insert_token(rng: random.Random, b: Build) -> str:
    return _token_edit(rng, b, "insert")


def splice_decl(rng: random.Random, b: Build) -> str:
    decls = declarations(b.text)
    piece = rng.choice(all_declarations())
    at = rng.randrange(len(decls) + 1)
    b.text = "".join(decls[:at]) + piece.rstrip("\n") + "\n\n" + "".join(decls[at:])
    return f"splice_decl({piece.split(maxsplit=2)[:2]}@{at})"


def replace_decl(rng: random.Random, b: Build) -> str:
    decls = declarations(b.text)
    at = rng.randrange(len(decls))
    decls[at] = rng.choice(all_declarations()).rstrip("\n") + "\n\n"
    b.text = "".join(decls)
    return f"replace_decl({at})"


def drop_decl(rng: random.Random, b: Build) -> str:
    decls = declarations(b.text)
    at = rng.randrange(len(decls))
    del decls[at]
    b.text = "".join(decls)
    return f"drop_decl({at})"


def truncate(rng: random.Random, b: Build) -> str:
    at = rng.randrange(len(b.text) + 1)
    b.text = b.text[:at]
    return f"truncate({at})"


def _insert_at_line(rng: random.Random, b: Build, piece: str) -> int:
    lines = _lines(b)
    at = rng.randrange(len(lines) + 1)
    b.text = "".join(lines[:at]) + piece + "".join(lines[at:])
    return at + 1


def _in_template(rng: random.Random, b: Build, piece: str) -> str | None:
    """Put `piece` somewhere inside a triple-quoted template; None if there is none."""
    spans = [m.span() for m in re.finditer(r'"""(?:.|\n)*?"""', b.text)]
    if not spans:
        return None
    start, end = rng.choice(spans)
    at = rng.randint(start + 3, end - 3)
    b.text = b.text[:at] + piece + b.text[at:]
    return f"at offset {at}"


def template_storm(rng: random.Random, b: Build) -> str:
    kind = rng.choice(("junk", "open_storm", "close_storm", "mixed_storm", "unbalanced"))
    if kind == "junk":
        piece = rng.choice(TEMPLATE_JUNK)
    elif kind == "open_storm":
        piece = "{{" * rng.choice((10, 1_000, 50_000))
    elif kind == "close_storm":
        piece = "}}" * rng.choice((10, 1_000, 50_000))
    elif kind == "mixed_storm":
        piece = "".join(rng.choice(("{{", "}}", "{", "}", "x", "|", " ")) for _ in range(5_000))
    else:
        piece = "{{x" * rng.choice((1, 100, 5_000))
    where = _in_template(rng, b, piece)
    if where is None:
        b.text += f'\nfn storm(x: str) -> y: str\n"""\n{piece}\n{{{{y}}}}\n"""\n'
        where = "in a new fn"
    return f"template_storm({kind}, {len(piece)} chars, {where})"


def huge_number(rng: random.Random, b: Build) -> str:
    numbers = [m for m in re.finditer(r"\b\d+(?:\.\d+)?\b", b.text)]
    big = rng.choice((HUGE_INT, HUGE_FLOAT, "0." + "0" * 400 + "1", "9" * 30, "1" * 4_301))
    if numbers:
        m = rng.choice(numbers)
        b.text = b.text[: m.start()] + big + b.text[m.end() :]
        return f"huge_number({len(big)} chars at offset {m.start()})"
    line = _insert_at_line(rng, b, f"    n = {big}\n")
    return f"huge_number({len(big)} chars, line {line})"


def hazard(rng: random.Random, b: Build) -> str:
    """A constant expression that is costly or undefined to compute at plan time."""
    expr = rng.choice(HAZARDS)
    m = re.search(r"^flow main\(([^)]*)\)\s*->\s*([^{]*)\{", b.text, re.M)
    if m:
        at = m.end()
        b.text = b.text[:at] + f"\n    hz = {expr}\n" + b.text[at:]
        # Make it reach an output where one is a string.
        out = re.match(r"\s*(?:@\w+\s+)?(\w+)\s*:\s*str\b", m.group(2))
        if out:
            b.text = re.sub(
                rf"^(\s*){out.group(1)} = (.*)$",
                rf"\1{out.group(1)} = str(hz) + \2",
                b.text,
                count=1,
                flags=re.M,
            )
        return f"hazard({expr[:40]!r}, in main)"
    b.text += "\n" + _main(_out(expr))
    return f"hazard({expr[:40]!r}, new main)"


def deep_inside(rng: random.Random, b: Build) -> str:
    """Wrap a name or number inside a flow in up to 10,000 parentheses, `+ 0` terms or
    `first([...])` calls."""
    flows = [m.span() for m in re.finditer(r"^flow[^{]*\{(?:.|\n)*?^\}", b.text, re.M)]
    offsets = [
        (start + m.start(), start + m.end())
        for start, end in flows
        for m in re.finditer(r"\b(?:\d+|[a-z_]\w*)\b", b.text[start:end])
        if m.group() not in KEYWORDS
    ]
    if not offsets:
        return hazard(rng, b)
    a, z = rng.choice(offsets)
    atom = b.text[a:z]
    n = rng.choice(SIZES)
    kind = rng.choice(("parens", "sum", "call"))
    if kind == "parens":
        new = "(" * n + atom + ")" * n
    elif kind == "sum":
        new = "(" + atom + " + 0" * n + ")"
    else:
        new = "first([" * n + atom + "])" * n
    b.text = b.text[:a] + new + b.text[z:]
    return f"deep_inside({kind} x{n} around {atom!r})"


KEYWORDS = {
    "if", "else", "for", "in", "with", "until", "repeat", "at", "most", "map", "and", "or",
    "not", "true", "false", "none", "flow", "fn", "model", "import", "extern", "enum",
    "record",
}  # fmt: skip


def long_line(rng: random.Random, b: Build) -> str:
    n = rng.choice((5_000, 200_000, 1_000_000))
    kind = rng.choice(("comment", "string", "name", "error_at_end", "template", "spaces"))
    if kind == "comment":
        piece = "# " + "c" * n + "\n"
    elif kind == "string":
        piece = '    s = "' + "s" * n + '"\n'
    elif kind == "name":
        piece = "    x = " + "n" * n + "\n"
    elif kind == "error_at_end":
        # Dense tokens parse at ~50,000 a second (then once more by lark for the error):
        # 50,000 tokens stay well inside the deadline on a loaded machine.
        n = min(n, 200_000)
        piece = "    x = " + " + ".join(["1"] * (n // 4)) + " $\n"
    elif kind == "template":
        piece = "t" * n + "\n"
        if _in_template(rng, b, piece) is not None:
            return f"long_line(template, {n})"
    else:
        piece = " " * n + "}\n"
    line = _insert_at_line(rng, b, piece)
    return f"long_line({kind}, {n} chars, line {line})"


def odd_import(rng: random.Random, b: Build) -> str:
    if rng.random() < 0.2:
        target = rng.choice(STD_IMPORTS)
        b.text = f"import {target}\n" + b.text
        return f"odd_import(std {target[:40]!r})"
    target = rng.choice(IMPORT_TARGETS)
    where = rng.choice(("top", "line"))
    if where == "top":
        b.text = f'import "{target}"\n' + b.text
    else:
        _insert_at_line(rng, b, f'import "{target}"\n')
    return f"odd_import({target[:60]!r}, {where})"


def odd_extern(rng: random.Random, b: Build) -> str:
    target = rng.choice(EXTERN_TARGETS)
    sig = rng.choice(("(text: str) -> int", "(text: str, limit: int) -> int", "() -> str"))
    b.text = f'extern fn fz{sig} = "{target}"\n\n' + b.text
    return f"odd_extern({target[:40]!r})"


def odd_base_url(rng: random.Random, b: Build) -> str:
    url = rng.choice(BASE_URLS + INVALID_URLS)
    backend = rng.choice(("openai", "local"))
    model = "gpt-4o-mini" if backend == "openai" else "smollm2-135m"
    b.text = (
        f'model fzm = {backend}("{model}", api_key_env="OPENAI_API_KEY", base_url="{url}")\n'
        f'@model(fzm)\nfn fzf(x: str) -> y: str\n"""\n{{{{x}}}} {{{{y}}}}\n"""\n\n' + b.text
    )
    b.must_fail = b.must_fail or url in INVALID_URLS
    return f"odd_base_url({url[:40]!r}, {backend})"


def secret(rng: random.Random, b: Build) -> str:
    key = key_like(rng)
    kind = rng.choice(
        ("api_key", "error_line", "bare", "comment", "long_prefix", "import", "template", "string",
         "base_url", "config")
    )  # fmt: skip
    if kind == "api_key":
        _insert_at_line(rng, b, f'model leak = openai("gpt-4o-mini", api_key="{key}")\n')
    elif kind == "error_line":
        _insert_at_line(rng, b, f'    x = "{key}" $\n')
    elif kind == "bare":
        _insert_at_line(rng, b, f"    x = {key}\n")
    elif kind == "comment":
        _insert_at_line(rng, b, f"    x = ) # {key}\n")
    elif kind == "long_prefix":
        _insert_at_line(rng, b, "    x = " + "y" * 490 + f' + "{key}" + $\n')
    elif kind == "import":
        b.text = f'import "{key}.llmflow"\n' + b.text
    elif kind == "base_url":
        b.text = (
            f'model leak = openai("gpt-4o-mini", api_key_env="OPENAI_API_KEY", '
            f'base_url="http://x:{key}@[::1")\n' + b.text
        )
    elif kind == "config":
        b.files["llmflow.toml"] = f'[models.fz]\napi_key = "{key}"\nbase_url = "{key}"\n'
    elif kind == "template" and _in_template(rng, b, key) is None:
        b.text += f'\nfn fzk(x: str) -> y: str\n"""\n{key} {{{{x}}}} {{{{y}}}}\n"""\n'
    elif kind == "string":
        _insert_at_line(rng, b, f'    s = "{key}"\n')
    b.secrets.append(key)
    return f"secret({kind})"


def bad_config(rng: random.Random, b: Build) -> str:
    junk = rng.choice(
        (
            "[models\n",
            "\xff",
            '[tool.llmflow]\ndefault_model = "' + "m" * 10_000 + '"\n',
            "[models.x]\nbackend = 1\nbase_url = 'not a url'\n",
            "a = " + "[" * 5_000 + "]" * 5_000 + "\n",
            "DIR",
        )
    )
    b.files["llmflow.toml"] = junk
    return f"bad_config({junk[:20]!r})"


def add_comment(rng: random.Random, b: Build) -> str:
    """Semantics-preserving: a comment line between declarations."""
    decls = declarations(b.text)
    at = rng.randrange(len(decls) + 1)
    b.text = "".join(decls[:at]) + '# fuzz: a comment { } {{ }} """\n' + "".join(decls[at:])
    return f"add_comment({at})"


def odd_char(rng: random.Random, b: Build) -> str:
    ch = rng.choice(ODD_CHARS)
    at = rng.randrange(len(b.text) + 1)
    b.text = b.text[:at] + ch * rng.choice((1, 3, 1_000)) + b.text[at:]
    return f"odd_char({ch!r} at {at})"


# Byte-level: applied last, they set `encoded`.


def crlf(rng: random.Random, b: Build) -> str:
    b.text = b.text.replace("\n", "\r\n")
    return "crlf"


def bom8(rng: random.Random, b: Build) -> str:
    b.encoded = b"\xef\xbb\xbf" + b.content()
    return "bom8"


def utf16(rng: random.Random, b: Build) -> str:
    codec = rng.choice(("utf-16", "utf-16-be", "utf-32"))
    b.encoded = b.text.encode(codec)
    return f"utf16({codec})"


def bad_bytes(rng: random.Random, b: Build) -> str:
    data = bytearray(b.content())
    count = rng.choice((1, 3, 100))
    first = None
    for _ in range(count):
        at = rng.randrange(len(data) + 1)
        first = at if first is None else min(first, at)
        data[at:at] = rng.choice(BAD_BYTES)
    b.encoded = bytes(data)
    return f"bad_bytes({count}, first at byte {first})"


def nul_bytes(rng: random.Random, b: Build) -> str:
    data = bytearray(b.content())
    at = rng.randrange(len(data) + 1)
    data[at:at] = b"\x00" * rng.choice((1, 50, 10_000))
    b.encoded = bytes(data)
    return f"nul_bytes(at byte {at})"


def flip_bytes(rng: random.Random, b: Build) -> str:
    data = bytearray(b.content())
    count = rng.choice((1, 5, 50))
    for _ in range(count):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    b.encoded = bytes(data)
    return f"flip_bytes({count})"


def cr_only(rng: random.Random, b: Build) -> str:
    b.text = b.text.replace("\n", "\r")
    return "cr_only"


MUTATIONS: dict[str, Callable[[random.Random, Build], str]] = {
    f.__name__: f
    for f in (
        delete_lines, duplicate_lines, swap_lines, delete_token, duplicate_token, swap_tokens,
        replace_token, insert_token, splice_decl, replace_decl, drop_decl, truncate,
        template_storm, huge_number, hazard, deep_inside, long_line, odd_import, odd_extern,
        odd_base_url, secret, bad_config, add_comment, odd_char,
    )
}  # fmt: skip
BYTE_MUTATIONS: dict[str, Callable[[random.Random, Build], str]] = {
    f.__name__: f for f in (crlf, bom8, utf16, bad_bytes, nul_bytes, flip_bytes, cr_only)
}
PRESERVING = {"add_comment", "crlf", "bom8"}
"""Mutations after which a program that passed must still pass."""


# ---- cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    seed: int
    index: int
    base: str
    """A corpus file, or `shape:size`."""
    mutations: tuple[str, ...]

    @property
    def id(self) -> str:
        base = self.base.rsplit("/", 1)[-1].removesuffix(".llmflow")
        return f"s{self.seed}-{self.index:04d}-{base}-{'+'.join(self.mutations) or 'as_is'}"

    def build(self) -> Build:
        rng = random.Random(f"llmflow-fuzz-build:{self.seed}:{self.index}")
        if ":" in self.base:
            shape, size = self.base.split(":")
            make, must_pass, _ = SHAPES[shape]
            b = Build(make(int(size)), [f"base {self.base}"], must_pass=must_pass)
        else:
            b = Build(corpus()[self.base], [f"base {self.base}"])
            b.must_pass = self.base in valid_examples()
        for name in self.mutations:
            op = MUTATIONS.get(name) or BYTE_MUTATIONS[name]
            b.description.append(op(rng, b))
            b.must_pass = b.must_pass and name in PRESERVING
        _fixtures(rng, b)
        return b


def case(seed: int, index: int) -> Case:
    """Every shape and every mutation comes up in turn (by `index`), so a few hundred
    cases cover them all; the rest (sizes, extra mutations, where) is drawn at random."""
    rng = random.Random(f"llmflow-fuzz:{seed}:{index}")
    turn = index + seed
    if turn % 3 == 0:
        shape = sorted(SHAPES)[(turn // 3) % len(SHAPES)]
        size = rng.choices((10, 200, 1_000, SHAPES[shape][2]), weights=(30, 30, 25, 15))[0]
        base = f"{shape}:{size}"
        names = [rng.choice(sorted(MUTATIONS)) for _ in range(rng.choice((0, 0, 1, 2)))]
    else:
        first = sorted(MUTATIONS)[(turn * 2 // 3) % len(MUTATIONS)]
        if first in PRESERVING or first == "odd_base_url":  # an example, so exit 0 or 1 tells
            base, names = rng.choice(sorted(valid_examples())), [first]
        else:
            base = rng.choice(sorted(corpus()))
            extra = rng.choice((0, 1, 2))
            names = [first] + [rng.choice(sorted(MUTATIONS)) for _ in range(extra)]
    if turn % 4 == 0:
        names.append(sorted(BYTE_MUTATIONS)[(turn // 4) % len(BYTE_MUTATIONS)])
    return Case(seed, index, base, tuple(names))


def _fixtures(rng: random.Random, b: Build) -> None:
    """The odd files that `import` and `extern` mutations point at."""
    junk = bytes(rng.randrange(256) for _ in range(2_000))
    sibling = rng.choice(sorted(corpus()))
    defaults: dict[str, bytes | str] = {
        "golden_helpers.py": HELPERS.read_text(encoding="utf-8"),
        "folder.llmflow": "DIR",
        "binary.llmflow": b"\x7fELF\x00\x00" + junk,
        "binary.bin": junk,
        "binary.py": b"\x00\xff" + junk,
        "latin1.llmflow": ("# caf\xe9\n" + corpus()[sibling]).encode("latin-1", "replace"),
        "utf16.llmflow": corpus()[sibling].encode("utf-16"),
        "empty.llmflow": b"",
        "sibling.llmflow": corpus()[sibling],
        "sibling.py": "def f(text: str) -> int:\n    return len(text)\n",
        "environ.llmflow": "->/proc/self/environ",
        "zero.llmflow": "->/dev/zero",
        "fifo.llmflow": "FIFO",
    }
    for name, content in defaults.items():
        b.files.setdefault(name, content)


def write(b: Build, folder: Path) -> Path:
    """The case's files in `folder`; the program's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in b.files.items():
        path = folder / name
        if content == "DIR":
            path.mkdir()
        elif content == "FIFO":
            os.mkfifo(path)
        elif isinstance(content, str) and content.startswith("->"):
            path.symlink_to(content[2:])
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
    program = folder / MAIN
    program.write_bytes(b.content())
    return program

"""The checker: valid programs pass with the right types; each mistake is one diagnostic
of the right kind at the right place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow.compiler import ast, check_file
from llmflow.compiler.check import Checked, ExternSym, FlowSym, FnSym
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.types import BOOL, FLOAT, INT, STR, EnumT, ListT, OptionalT, RecordT
from llmflow.errors import CompileError

Diags = Callable[..., list[Diagnostic]]
Check = Callable[..., Checked]
Write = Callable[[str, str], Path]


def summary(diags: list[Diagnostic]) -> list[tuple[str, str, int, int]]:
    return [(d.kind, d.message, d.span.line, d.span.col) for d in diags if d.span is not None]


def flow_types(checked: Checked, flow: str) -> dict[str, str]:
    """The type of every assignment target's value in a flow (top level only)."""
    sym = checked.flow(flow)
    assert sym is not None
    out: dict[str, str] = {}
    for stmt in sym.decl.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            out[stmt.targets[0].name] = str(checked.types[id(stmt.value)])
    return out


# ---- valid programs ---------------------------------------------------------------------


def test_hello_example_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    checked = check_file("examples/hello.llmflow")
    assert checked.flows() == ["main"]
    assert checked.default_model == "default"
    assert checked.models["default"].backend == "local"
    assert checked.models["default"].id == "smollm2-135m"


def test_statement_order_does_not_matter(checked: Check) -> None:
    result = checked(
        """
        flow main(text: str) -> out: str {
            out = c + "!"
            c = b + a
            b = upper(a)
            a = strip(text)
        }
        """
    )
    assert flow_types(result, "main") == {"out": "str", "c": "str", "b": "str", "a": "str"}


def test_declaration_order_does_not_matter(checked: Check) -> None:
    result = checked(
        """
        flow main(text: str) -> r: Review {
            r = rate(text)
        }

        fn rate(text: str) -> r: Review
        \"\"\"
        {{text}} {{r}}
        \"\"\"

        record Review { verdict: Verdict, why: str }
        enum Verdict { good, bad }
        """
    )
    fn = result.symbols[result.program.main]["rate"]
    assert isinstance(fn, FnSym)
    ((name, t),) = fn.sig.outputs
    assert name == "r"
    assert isinstance(t, RecordT) and t.name == "Review"
    assert t.field("verdict") == EnumT(name="Verdict", members=("good", "bad"))


def test_repeat_loop_with_carried_variables(checked: Check) -> None:
    checked(
        """
        fn improve(text: str) -> better: str
        \"\"\"
        {{text}} {{better}}
        \"\"\"

        flow main(start: str) -> draft: str, rounds: int {
            repeat at most 4 with draft = start, rounds = 0 {
                draft = improve(draft)
                rounds = rounds + 1
            } until len(draft) > 100 or rounds >= 3
        }
        """
    )


def test_for_loop_with_carried_variables_and_locals(checked: Check) -> None:
    checked(
        """
        flow main(xs: list[str], sep: str) -> joined: str, n: int {
            for x in xs with joined = "", n = 0 {
                piece = x + sep
                joined = joined + piece
                n = n + len(piece)
            } until n > 1000
        }
        """
    )


def test_carried_variable_need_not_change(checked: Check) -> None:
    checked(
        """
        flow main(xs: list[str]) -> kept: str {
            for x in xs with kept = "" {
                other = x
            }
        }
        """
    )


def test_branches_export_names_assigned_in_every_branch(checked: Check) -> None:
    result = checked(
        """
        flow main(n: int) -> size: str, weight: float {
            if n > 10 {
                size = "big"
                weight = 2.5
            } else if n > 5 {
                size = "medium"
                weight = 1
            } else {
                size = "small"
                weight = 0
            }
        }
        """
    )
    sym = result.flow("main")
    assert sym is not None
    assert sym.sig.outputs == [("size", STR), ("weight", FLOAT)]


def test_enum_compares_with_string_literals_that_are_members(checked: Check) -> None:
    checked(
        """
        enum Verdict { yes, no, unsure }

        fn judge(text: str) -> v: Verdict
        \"\"\"
        {{text}} {{v}}
        \"\"\"

        flow main(text: str) -> ok: bool, same: bool {
            v = judge(text)
            ok = v == "yes" or "unsure" == v and v != "no"
            same = v == Verdict.yes
        }
        """
    )


def test_int_is_accepted_where_float_is_expected(checked: Check) -> None:
    result = checked(
        """
        fn rate(text: str, weight: float) -> score: float
        \"\"\"
        {{text}} {{weight}} {{score}}
        \"\"\"

        flow main(text: str, w: float = 1, ws: list[float] = [1, 2.5])
            -> out: float, ratio: float, total: float, ys: list[float] {
            out = rate(text, 2)
            ratio = 3 / 2
            total = 1 + 2.5
            ys = [1, 2]
        }
        """
    )
    assert flow_types(result, "main") == {
        "out": "float",
        "ratio": "float",
        "total": "float",
        "ys": "list[int]",
    }


def test_records_constructors_fields_and_destructuring(checked: Check) -> None:
    result = checked(
        """
        record Review { summary: str, score: int }

        fn two(text: str) -> title: str, body: str
        \"\"\"
        {{text}} {{title}} {{body}}
        \"\"\"

        flow main(text: str) -> r: Review, s: str, both: str {
            r = Review(summary=text, score=3)
            s = r.summary
            t, b = two(text)
            both = t + b
            whole = two(text)
            title = whole.title
        }
        """
    )
    types = flow_types(result, "main")
    assert types["r"] == "Review"
    assert types["s"] == "str"
    assert types["whole"] == "two outputs"
    assert types["title"] == "str"


def test_maps_comprehensions_and_builtins(checked: Check) -> None:
    result = checked(
        """
        flow main(doc: str, n: int) -> parts: list[str], lens: list[int], nested: list[list[str]] {
            parts = map p in split(doc): upper(p)
            lens = [len(p) for p in parts if len(p) > n]
            nested = map p in parts: map q in split(p, sep=" "): q
            joined = join(parts, sep=", ")
            first_part = first(parts)
            count = len(parts)
            number = int("3")
            half = float(n) / 2
        }
        """
    )
    assert flow_types(result, "main") == {
        "parts": "list[str]",
        "lens": "list[int]",
        "nested": "list[list[str]]",
        "joined": "str",
        "first_part": "str",
        "count": "int",
        "number": "int",
        "half": "float",
    }


def test_template_reads_record_fields_and_earlier_outputs(checked: Check) -> None:
    checked(
        """
        record Review { summary: str, score: int }

        fn reply(r: Review) -> draft: Review, answer: str
        \"\"\"
        About {{r.summary}} ({{r.score}}):
        {{draft | max_tokens=60, stop=["\\n", "END"], temperature=0.5}}
        Given {{draft.summary}} and {{draft}}, answer: {{answer | stop="\\n"}}
        \"\"\"
        """
    )


def test_decorators_pin_models_and_record_needs(checked: Check) -> None:
    result = checked(
        """
        model small = local("smollm2-135m")
        model big = openai("gpt-4o-mini", api_key_env="OPENAI_API_KEY",
                           skills={reasoning: 0.9}, price_in=0.15, rpm=500)

        @model(big)
        fn hard(x: str) -> y: str
        \"\"\"
        {{x}} {{y}}
        \"\"\"

        @needs(reasoning >= 0.5, writing >= 1)
        fn soft(x: str) -> y: str
        \"\"\"
        {{x}} {{y}}
        \"\"\"
        """
    )
    syms = result.symbols[result.program.main]
    hard, soft = syms["hard"], syms["soft"]
    assert isinstance(hard, FnSym) and isinstance(soft, FnSym)
    assert (hard.pin, hard.needs) == ("big", {})
    assert (soft.pin, soft.needs) == (None, {"reasoning": 0.5, "writing": 1.0})
    assert result.default_model == "small"
    big = result.models["big"]
    assert (big.backend, big.id, big.skills) == ("openai", "gpt-4o-mini", {"reasoning": 0.9})
    assert big.settings == {"api_key_env": "OPENAI_API_KEY", "price_in": 0.15, "rpm": 500}
    small = result.models["small"]
    assert (small.backend, small.context, small.chat) == ("local", 4096, True)  # n_ctx
    assert "default" not in result.models


def test_documented_local_settings_are_accepted_and_typed(checked: Check) -> None:
    """`state_cache_mb` (docs/optimizer.md) was rejected as an unknown option; every
    setting of the kind's settings model is accepted, and read back typed."""
    from llmflow.runtime.backends import registry
    from llmflow.runtime.backends.kinds import LocalSettings

    result = checked('model m = local("smollm2-135m", state_cache_mb=64, n_ctx=2048)\n')
    spec = result.models["m"]
    assert spec.settings == {"state_cache_mb": 64, "n_ctx": 2048}
    settings = registry.settings_of(spec)
    assert isinstance(settings, LocalSettings)
    assert (settings.state_cache_mb, settings.n_ctx, spec.context) == (64.0, 2048, 2048)


def test_an_unknown_option_hints_the_kinds_settings(diagnostics: Diags) -> None:
    (d,) = diagnostics('model m = openai("gpt-4o-mini", timeuot=3)\n')
    assert (d.message, d.hint) == ("unknown model option 'timeuot'", "did you mean 'timeout'?")
    (d,) = diagnostics('model m = scripted("x", zzz=3)\n')
    assert d.hint.startswith("options: context, max_output, chat, skills, ")
    assert d.hint.endswith(", concurrency, reply, delay")


def test_local_model_from_a_gguf_path(write: Write, checked: Check) -> None:
    gguf = write("models/tiny.gguf", "")
    result = checked('model mine = local("models/tiny.gguf", context=2048, chat=false)\n')
    mine = result.models["mine"]
    assert (mine.backend, mine.id, mine.context, mine.chat) == (
        "local",
        str(gguf.resolve()),
        2048,
        False,
    )


def test_missing_gguf_file_is_reported_relative_to_the_program(diagnostics: Diags) -> None:
    (d,) = diagnostics('model mine = local("models/none.gguf")\n')
    assert d.message == "no model file 'models/none.gguf'"


def test_import_of_a_relative_file(write: Write, checked: Check) -> None:
    write(
        "lib/util.llmflow",
        """
        import "helpers.llmflow"

        flow shout(t: str) -> o: str {
            o = upper(exclaim(t))
        }
        """,
    )
    write(
        "lib/helpers.llmflow",
        """
        flow exclaim(t: str) -> o: str {
            o = t + "!"
        }
        """,
    )
    result = checked(
        """
        import "lib/util.llmflow"
        import summarize

        flow main(t: str) -> out: str, s: str {
            out = shout(t)
            s = summarize_text(t)
        }
        """
    )
    main = result.program.main
    assert set(result.program.modules) == {
        main,
        str(Path(main).parent / "lib/util.llmflow"),
        str(Path(main).parent / "lib/helpers.llmflow"),
        "<stdlib>/summarize.llmflow",
    }
    assert isinstance(result.symbols[main]["shout"], FlowSym)
    assert isinstance(result.symbols[main]["summarize_text"], FnSym)
    assert "exclaim" not in result.symbols[main]  # imports are not transitive


def test_imported_names_are_not_transitive(write: Write, diagnostics: Diags) -> None:
    write("a.llmflow", 'import "b.llmflow"\n')
    write("b.llmflow", "flow hidden(x: str) -> y: str {\n    y = x\n}\n")
    diags = diagnostics(
        """
        import "a.llmflow"

        flow main(x: str) -> y: str {
            y = hidden(x)
        }
        """
    )
    assert summary(diags) == [("unknown-name", "unknown function 'hidden'", 4, 9)]


def test_import_cycle_between_files_is_fine(write: Write, checked: Check) -> None:
    write("b.llmflow", 'import "prog.llmflow"\n\nflow fb(x: str) -> y: str {\n    y = fa(x)\n}\n')
    checked(
        """
        import "b.llmflow"

        flow main(x: str) -> y: str {
            y = fb(x)
        }

        flow fa(x: str) -> y: str {
            y = x
        }
        """
    )


def test_errors_in_an_imported_file_name_that_file(write: Write, diagnostics: Diags) -> None:
    write("lib/bad.llmflow", "flow broken(t: str) -> o: str {\n    o = nope\n}\n")
    diags = diagnostics('import "lib/bad.llmflow"\n')
    assert len(diags) == 1
    assert diags[0].span is not None
    assert diags[0].span.file.endswith("lib/bad.llmflow")
    assert (diags[0].span.line, diags[0].span.col) == (2, 9)


def test_extern_binds_a_python_function(write: Write, checked: Check) -> None:
    write("llmflow_test_tools_ok.py", "def count(text, limit=10):\n    return len(text)\n")
    result = checked(
        """
        extern fn count(text: str) -> int = "llmflow_test_tools_ok:count"
        extern fn both(text: str, limit: int) -> n: int, m: int = "llmflow_test_tools_ok:count"

        flow main(text: str) -> n: int {
            n = count(text) + both(text, 3).m
        }
        """
    )
    count = result.symbols[result.program.main]["count"]
    assert isinstance(count, ExternSym)
    assert count.func is not None and count.func("abc") == 3
    assert count.sig.outputs == [("result", INT)]


# ---- every kind of error, with its kind and position -----------------------------------

FN = '''
fn greet(name: str, style: str = "warm") -> greeting: str
"""
Greet {{name}} ({{style}}): {{greeting}}
"""
'''

CASES: dict[str, tuple[str, list[tuple[str, str, int, int]]]] = {
    "template unknown variable": (
        'fn f(text: str) -> y: str\n"""\n{{txet}} {{y}}\n"""\n',
        [("template", "unknown variable 'txet'", 3, 3)],
    ),
    "unknown option": (
        'fn f(text: str) -> y: str\n"""\n{{text}} {{y | max_token=3}}\n"""\n',
        [("unknown-name", "unknown option 'max_token'", 3, 16)],
    ),
    "output never generated": (
        'fn f(text: str) -> y: str, z: int\n"""\n{{text}} {{y}}\n"""\n',
        [("output", "output 'z' is never generated", 1, 28)],
    ),
    "flow output never assigned": (
        "flow f(a: str) -> b: str, c: str {\n    b = a\n}\n",
        [("output", "output 'c' of flow 'f' is never assigned", 1, 27)],
    ),
    "unknown function": (
        "flow f(a: str) -> b: str {\n    b = uper(a)\n}\n",
        [("unknown-name", "unknown function 'uper'", 2, 9)],
    ),
    "unknown variable": (
        "flow f(a: str) -> b: str {\n    b = aa\n}\n",
        [("unknown-name", "unknown variable 'aa'", 2, 9)],
    ),
    "unknown type": (
        'flow f(a: strng) -> b: str {\n    b = ""\n}\n',
        [("unknown-name", "unknown type 'strng'", 1, 11)],
    ),
    "unknown enum member": (
        "enum E { a, b }\nflow f() -> v: E {\n    v = E.c\n}\n",
        [("unknown-name", "'c' is not a member of E", 3, 11)],
    ),
    "unknown record field": (
        "record R { a: int }\nflow f(r: R) -> v: int {\n    v = r.b\n}\n",
        [("unknown-name", "R has no field 'b'", 3, 11)],
    ),
    "unknown model": (
        '@model(nope)\nfn f(x: str) -> y: str """{{x}} {{y}}"""\n',
        [("unknown-name", "unknown model 'nope'", 1, 8)],
    ),
    "unknown decorator": (
        '@cache\nfn f(x: str) -> y: str """{{x}} {{y}}"""\n',
        [("unknown-name", "unknown decorator '@cache'", 1, 2)],
    ),
    "unknown backend": (
        'model m = anthropic("claude")\n',
        [("unknown-name", "unknown model backend 'anthropic'", 1, 11)],
    ),
    "a setting of another kind": (
        'model m = openai("gpt-4o-mini", n_ctx=512)\n',
        [("unknown-name", "model option 'n_ctx' is not a setting of openai models", 1, 33)],
    ),
    "a setting of the wrong type": (
        'model m = local("smollm2-135m", state_cache_mb="big")\n',
        [("type", "model option 'state_cache_mb' expects number", 1, 48)],
    ),
    "too many arguments": (
        FN + "flow f(a: str) -> b: str {\n    b = greet(a, a, a)\n}\n",
        [("type", "greet() takes 2 arguments but 3 were given", 6, 21)],
    ),
    "missing argument": (
        FN + "flow f(a: str) -> b: str {\n    b = greet(style=a)\n}\n",
        [("type", "greet() is missing argument 'name' (str)", 6, 9)],
    ),
    "wrong argument type": (
        FN + "flow f(a: int) -> b: str {\n    b = greet(a)\n}\n",
        [("type", "argument 'name' of greet() expects str, got int", 6, 15)],
    ),
    "unknown keyword": (
        FN + "flow f(a: str) -> b: str {\n    b = greet(a, tone=a)\n}\n",
        [("unknown-name", "greet() has no parameter 'tone'", 6, 18)],
    ),
    "argument given twice": (
        FN + "flow f(a: str) -> b: str {\n    b = greet(a, name=a)\n}\n",
        [("type", "greet() got 'name' twice", 6, 18)],
    ),
    "condition not bool": (
        "flow f(a: str) -> b: str {\n    if a {\n        b = a\n"
        "    } else {\n        b = a\n    }\n}\n",
        [("type", "condition is str, not bool", 2, 8)],
    ),
    "assigned twice": (
        "flow f(a: str) -> b: str {\n    b = a\n    b = a\n}\n",
        [("assign", "variable 'b' is assigned twice", 3, 5)],
    ),
    "parameter assigned": (
        'flow f(a: str) -> b: str {\n    a = "x"\n    b = a\n}\n',
        [("assign", "variable 'a' is assigned twice", 2, 5)],
    ),
    "dependency cycle": (
        "flow f(a: str) -> b: str {\n    b = c\n    c = b\n}\n",
        [("cycle", "dependency cycle: b → c → b", 2, 5)],
    ),
    "self dependency": (
        "flow f(a: str) -> b: str {\n    b = b + a\n}\n",
        [("cycle", "dependency cycle: b → b", 2, 5)],
    ),
    "flow recursion": (
        "flow f(a: str) -> b: str {\n    b = f(a)\n}\n",
        [("cycle", "dependency cycle between flows: f → f", 2, 9)],
    ),
    "missing file import": (
        'import "nowhere.llmflow"\n',
        [("import", "cannot find 'nowhere.llmflow'", 1, 1)],
    ),
    "missing stdlib import": (
        "import nowhere\n",
        [("import", "no standard library module 'nowhere'", 1, 1)],
    ),
    "extern bad target": (
        'extern fn e(x: str) -> str = "no_colon"\n',
        [("extern", "'no_colon' does not name a Python function", 1, 30)],
    ),
    "extern import error": (
        'extern fn e(x: str) -> str = "llmflow_no_such_module:f"\n',
        [
            (
                "extern",
                "cannot import 'llmflow_no_such_module': No module named 'llmflow_no_such_module'",
                1,
                30,
            )
        ],
    ),
    "api key": (
        'model m = openai("gpt-4o-mini", api_key="sk-1")\n',
        [("declaration", "API keys do not belong in program text", 1, 33)],
    ),
    "declared twice": (
        "enum A { x }\nrecord A { y: int }\n",
        [("declaration", "'A' is declared twice", 2, 8)],
    ),
    "builtin name": (
        'fn upper(x: str) -> y: str """{{x}} {{y}}"""\n',
        [("declaration", "'upper' is the name of a builtin function", 1, 4)],
    ),
    "syntax": (
        "flow f(a: str) -> b: str {\n    b = a +\n}\n",
        [("syntax", "unexpected '}'", 3, 1)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_kind_message_and_position(case: str, diagnostics: Diags) -> None:
    source, expected = CASES[case]
    assert summary(diagnostics(source)) == expected


def test_did_you_mean_hints(diagnostics: Diags) -> None:
    diags = diagnostics(
        """
        record Review { summary: str }

        flow main(review: Review, question: str) -> out: str, other: Reveiw {
            answer = strip(question)
            out = answr + review.sumary
            other = review
        }
        """
    )
    hints = {d.message: d.hint for d in diags}
    assert hints == {
        "unknown type 'Reveiw'": "did you mean 'Review'?",
        "unknown variable 'answr'": "did you mean 'answer'?",
        "Review has no field 'sumary'": "did you mean 'summary'?",
    }


def test_template_unknown_variable_is_labelled(diagnostics: Diags) -> None:
    (diag,) = diagnostics('fn summarize(text: str) -> y: str\n"""\n{{txet}} {{y}}\n"""\n')
    assert diag.label == "not an input or output of `summarize`"
    assert diag.hint == "did you mean 'text'?"
    assert diag.span is not None and (diag.span.col, diag.span.end_col) == (3, 7)


def test_one_mistake_is_reported_once(diagnostics: Diags) -> None:
    """A name of unknown type does not make every use of it an error too."""
    diags = diagnostics(
        """
        record R { a: int }
        flow main(x: str) -> out: str, n: int {
            a = nope
            b = a.field[0]
            out = upper(b)
            n = R(a=len(a)).a
            m = [a, 1]
            k = map y in a: y.z
        }
        """
    )
    assert [d.message for d in diags] == ["unknown variable 'nope'"]


def test_arithmetic_on_an_unknown_value_does_not_cascade(diagnostics: Diags) -> None:
    diags = diagnostics(
        """
        flow main(x: str) -> out: str {
            a = nope
            b = a + 1
            out = upper(b)
        }
        """
    )
    assert [d.message for d in diags] == ["unknown variable 'nope'"]


def test_every_error_of_a_program_in_one_run(diagnostics: Diags) -> None:
    diags = diagnostics(
        """
        flow one(x: str) -> y: str {
            y = nope1
        }

        flow two(x: str) -> y: str {
            y = nope2
        }

        fn three(x: str) -> y: str
        \"\"\"
        {{nope3}} {{y}}
        \"\"\"
        """
    )
    assert [d.message for d in diags] == [
        "unknown variable 'nope1'",
        "unknown variable 'nope2'",
        "unknown variable 'nope3'",
    ]


def test_branch_only_name_gets_a_hint(diagnostics: Diags) -> None:
    (diag,) = diagnostics(
        """
        flow main(n: int) -> out: str {
            if n > 0 {
                only = "a"
            } else {
                other = "b"
            }
            out = only
        }
        """
    )
    assert diag.message == "unknown variable 'only'"
    assert diag.hint.startswith("'only' is assigned in only one branch of the if on line 2")


def test_compile_error_carries_sources_and_renders(write: Write) -> None:
    path = write("prog.llmflow", "flow f(a: str) -> b: str {\n    b = nope\n}\n")
    with pytest.raises(CompileError) as info:
        check_file(path)
    err = info.value
    assert str(err) == "1 error"
    assert err.sources == {str(path): "flow f(a: str) -> b: str {\n    b = nope\n}\n"}
    assert err.render() == (
        f"{path}:2:9: error: unknown variable 'nope'\n  |\n2 |     b = nope\n  |         ^^^^\n"
    )


def test_check_file_with_source_text_does_not_read_the_file(tmp_path: Path) -> None:
    source = "flow f(a: str) -> b: str {\n    b = a\n}\n"
    checked = check_file(tmp_path / "virtual.llmflow", source=source)
    assert checked.flows() == ["f"]


def test_types_of_expressions_are_recorded(checked: Check) -> None:
    result = checked(
        """
        enum V { a, b }
        flow main(n: int, xs: list[str], v: V) -> out: bool {
            out = n > 1 and contains(xs, "x") and v == V.a
        }
        """
    )
    sym = result.flow("main")
    assert sym is not None
    stmt = sym.decl.body[0]
    assert isinstance(stmt, ast.Assign)
    assert result.types[id(stmt.value)] == BOOL
    assert sym.sig.params[1][1] == ListT(item=STR)


# ---- known bugs -------------------------------------------------------------------------


def test_loop_local_hint_names_the_loop_line(diagnostics: Diags) -> None:
    (diag,) = diagnostics(
        """
        flow main(xs: list[str]) -> out: str, count: int {
            for x in xs with count = 0 {
                count = count + 1
                local = x
            }
            out = local
        }
        """
    )
    assert diag.message == "unknown variable 'local'"
    assert "the loop on line 2" in diag.hint


def test_cycle_through_a_branch_names_each_variable_once(diagnostics: Diags) -> None:
    (diag,) = diagnostics(
        """
        flow main(t: str) -> out: str {
            if t == "x" {
                d = e
            } else {
                d = "y"
            }
            e = d
            out = e
        }
        """
    )
    assert diag.kind == "cycle"
    assert diag.message in ("dependency cycle: d → e → d", "dependency cycle: e → d → e")


def test_errors_are_in_source_order(diagnostics: Diags) -> None:
    diags = diagnostics(
        """
        flow a(x: str) -> y: str {
            y = nope
        }

        flow b(x: str) -> y: str {
            y = x $
        }
        """
    )
    lines = [d.span.line for d in diags if d.span is not None]
    assert lines == [2, 6]


def test_misspelled_keyword_is_one_error(diagnostics: Diags) -> None:
    diags = diagnostics(FN + "flow f(a: str) -> b: str {\n    b = greet(nmae=a)\n}\n")
    assert [d.message for d in diags] == ["greet() has no parameter 'nmae'"]


def test_syntax_error_does_not_make_the_declaration_unknown(diagnostics: Diags) -> None:
    diags = diagnostics(
        """
        fn broken(text: str) -> summary: str,
        \"\"\"
        {{text}} {{summary}}
        \"\"\"

        flow main(text: str) -> out: str {
            out = broken(text)
        }
        """
    )
    assert [d.kind for d in diags] == ["syntax"]


def test_imported_model_does_not_replace_a_model_of_main(
    write: Write, diagnostics: Diags, tmp_path: Path
) -> None:
    write(
        "lib.llmflow",
        """
        model small = openai("gpt-4o-mini")

        @model(small)
        fn lib_greet(name: str) -> greeting: str
        \"\"\"
        Hi {{name}}: {{greeting}}
        \"\"\"
        """,
    )
    path = write(
        "prog.llmflow",
        """
        import "lib.llmflow"

        model small = local("smollm2-135m")

        @model(small)
        fn greet(name: str) -> greeting: str
        \"\"\"
        Hello {{name}}: {{greeting}}
        \"\"\"
        """,
    )
    try:
        checked = check_file(path)
    except CompileError as err:  # reporting the clash is a fine fix too
        assert "small" in err.diagnostics[0].message
        return
    assert checked.models["small"].backend == "local"


def test_main_file_is_loaded_once_whatever_its_path_spelling(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write("e.llmflow", 'import "f.llmflow"\n\nflow main(x: str) -> y: str {\n    y = nope\n}\n')
    write("f.llmflow", 'import "e.llmflow"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError) as info:
        check_file("./e.llmflow")
    assert len(info.value.diagnostics) == 1


def test_extern_module_is_found_beside_its_own_program(write: Write) -> None:
    write("p1/llmflow_test_tools_dup.py", "def alpha(x):\n    return x\n")
    write("p2/llmflow_test_tools_dup.py", "def beta(x):\n    return x\n")
    p1 = write("p1/prog.llmflow", 'extern fn a(x: str) -> str = "llmflow_test_tools_dup:alpha"\n')
    p2 = write("p2/prog.llmflow", 'extern fn b(x: str) -> str = "llmflow_test_tools_dup:beta"\n')
    check_file(p1)
    check_file(p2)


def test_base_urls_that_can_work_are_kept(checked: Check) -> None:
    urls = ["http://localhost:8080/v1", "https://api.example.com", "http://[::1]:8000/v1"]
    source = "".join(
        f'model m{i} = openai_compatible("x", base_url="{url}")\n' for i, url in enumerate(urls)
    )
    result = checked(source)
    assert [result.models[f"m{i}"].settings["base_url"] for i in range(3)] == urls


@pytest.mark.parametrize(
    ("value", "ok"),
    [("7", True), ("0", True), (str(2**63 - 1), True), ("-1", False), ("1.5", False),
     ("true", False), ('"7"', False), (str(2**63), False)],
)  # fmt: skip
def test_the_seed_option_is_an_integer_from_0_to_2_63(
    value: str, ok: bool, diagnostics: Diags
) -> None:
    template = f"{{{{text}}}} {{{{y | temperature=1, seed={value}}}}}"
    source = f'fn f(text: str) -> y: str\n"""\n{template}\n"""\n'
    expected = [] if ok else [("type", f"seed must be an integer from 0 to {2**63 - 1}", 3, 36)]
    assert summary(diagnostics(source)) == expected


def test_the_seed_option_reaches_the_output_spec(tmp_path: Path) -> None:
    import llmflow

    program = tmp_path / "seeded.llmflow"
    program.write_text(
        'fn f(x: str) -> y: str, z: str\n"""{{x}} {{y | temperature=0.5, seed=7}} {{z}}"""\n'
        "flow main(x: str) -> y: str {\n    y = f(x).y\n}\n"
    )
    (call,) = [node.call for node in llmflow.compile(program, optimize=False).calls()]
    assert call is not None and [o.seed for o in call.outputs] == [7, None]


DECLS = {
    "fn": 'fn b(x: str) -> y: str\n"""{{x}} {{y}}"""\n',
    "model": 'model b = openai_compatible("m", base_url="http://x")\n',
    "enum": "enum b { q }\n",
    "record": "record b { z: int }\n",
    "extern": 'extern fn b(x: str) -> str = "os:getcwd"\n',
    "flow": "flow b(x: str) -> y: str {\n    y = x\n}\n",
}


@pytest.mark.parametrize("first", list(DECLS))
@pytest.mark.parametrize("second", list(DECLS))
def test_a_name_declared_twice_is_one_error_whatever_the_kinds(
    first: str, second: str, diagnostics: Diags
) -> None:
    source = DECLS[first] + DECLS[second] + "flow main(x: str) -> y: str {\n    y = x\n}\n"
    found = summary(diagnostics(source))
    twice = [(kind, line) for kind, message, line, _ in found if "declared twice" in message]
    assert twice == [("declaration", DECLS[first].count("\n") + 1)]


def test_a_list_type_built_up_through_names_is_held_to_the_nesting_limit(
    diagnostics: Diags,
) -> None:
    """`a1 = [a0]`, `a2 = [a1]`, …: no written nesting, but a type 1,500 deep that later
    stages (messages, plan JSON) would recurse on."""
    body = "\n".join(f"    a{i} = [a{i - 1}]" for i in range(1, 1501))
    source = f"flow main() -> x: int {{\n    a0 = [1]\n{body}\n    x = len(a1500)\n}}\n"
    found = summary(diagnostics(source))
    assert found[0] == ("limit", "the type of this value nests lists more than 64 deep", 66, 11)
    assert {kind for kind, *_ in found} == {"limit"}


def test_integer_division_of_ints_is_an_int_and_of_a_float_a_float(tmp_path) -> None:
    import textwrap

    import llmflow

    path = tmp_path / "div.llmflow"
    path.write_text(
        textwrap.dedent("""
        flow main(n: int, x: float) -> a: int, b: float, c: int {
            a = n // 2
            b = x // 2
            c = n % 2
        }
        """)
    )
    assert llmflow.run(path, {"n": 7, "x": 7.5}) == {"a": 3, "b": 3.0, "c": 1}


def test_enumerate_and_zip_records_read_by_field_in_a_map(tmp_path) -> None:
    import textwrap

    import llmflow

    path = tmp_path / "en.llmflow"
    path.write_text(
        textwrap.dedent("""
        flow main(xs: list[str], ns: list[int]) -> a: list[str], b: list[int] {
            a = map e in enumerate(xs): str(e.index) + ". " + e.item
            b = map p in zip(ns, xs): p.first * len(p.second)
        }
        """)
    )
    outputs = llmflow.run(path, {"xs": ["a", "bb"], "ns": [3, 4]})
    assert outputs == {"a": ["0. a", "1. bb"], "b": [3, 8]}


def test_none_and_the_default_operator_have_the_types_of_optionals(checked: Check) -> None:
    result = checked(
        """
        fn nickname(text: str) -> nick: str?
        \"\"\"
        The nickname in {{text}}: {{nick}}
        \"\"\"

        flow main(text: str, n: int? = none, m: int? = none) -> a: str, b: int? {
            a = nickname(text) ?? "anon"
            b = n ?? m
            c = n ?? 2.5
            d = [n, none]
            e = none
            f = n == none
            g = (n ?? 0) + 1
            h = n ?? m ?? 0
        }
        """
    )
    assert flow_types(result, "main") == {
        "a": "str",
        "b": "int?",
        "c": "float",
        "d": "list[int?]",
        "e": "none",
        "f": "bool",
        "g": "int",
        "h": "int",
    }


def test_an_optional_compares_with_a_plain_value_and_an_enum_member(diagnostics: Diags) -> None:
    found = summary(
        diagnostics(
            """
            enum Verdict { yes, no }

            flow main(v: Verdict? = none, s: str? = none) -> a: bool, b: bool, c: bool {
                a = v == "yes"
                b = s == "x"
                c = v != "maybe"
            }
            """
        )
    )
    assert found == [("type", "'maybe' is not a member of Verdict", 6, 14)]


def test_the_default_operator_skips_its_right_side_when_the_left_has_a_value(tmp_path) -> None:
    import llmflow

    path = tmp_path / "default.llmflow"
    path.write_text(
        "flow main(xs: list[str], first_x: str? = none) -> out: str {\n"
        "    out = first_x ?? xs[0]\n"  # xs[0] fails on [] when it runs
        "}\n"
    )
    assert llmflow.run(path, {"xs": [], "first_x": "given"}) == {"out": "given"}
    assert llmflow.run(path, {"xs": ["a"]}) == {"out": "a"}
    assert llmflow.run(path, {"xs": ["a"], "first_x": None}) == {"out": "a"}


def test_an_if_that_tests_a_name_against_none_narrows_it_in_one_branch(checked: Check) -> None:
    result = checked(
        """
        record Person { name: str, age: int }

        fn greet(name: str) -> text: str
        \"\"\"
        Greet {{name}}: {{text}}
        \"\"\"

        flow main(p: Person? = none, nick: str? = none) -> a: str, b: str, c: int?, d: str {
            if p != none {
                a = greet(p.name)
            } else {
                a = "nobody"
            }
            if nick == none {
                b = "no nick"
            } else if len(nick) > 3 {
                b = upper(nick)
            } else {
                b = nick + "!"
            }
            if none != p {
                c = p.age + len(greet(p.name))
            }
            if p != none {
                d = [x + p.name for x in ["a", "b"]][0]
            } else {
                d = ""
            }
        }
        """
    )
    assert result.flow("main").sig.outputs == [("a", STR), ("b", STR), ("c", INT_OPT), ("d", STR)]


INT_OPT = OptionalT(item=INT)


@pytest.mark.parametrize(
    ("body", "message", "col"),
    [
        # the branch where it may be none
        ('if p == none { n = p.name } else { n = "" }', "Person? has no fields", 26),
        ('if p != none { n = "" } else { n = p.name }', "Person? has no fields", 42),
        # after the if
        ("if p != none { m = 1 } else { m = 2 }\n    n = p.name", "Person? has no fields", 11),
        # only where the test found a value
        ('if p != none or p.age > 3 { n = "" } else { n = "x" }', "Person? has no fields", 23),
        ('if p != none and p.age > 3 { n = "" } else { n = p.name }', "Person? has no fields", 56),
        ('if p == none or p.age > 3 { n = p.name } else { n = "" }', "Person? has no fields", 39),
        ('if not (p == none) { n = p.name } else { n = "" }', "Person? has no fields", 32),
        ("n = [p.name for q in [p] if q != none][0]", "Person? has no fields", 12),
    ],
)
def test_narrowing_holds_only_where_the_test_decides(
    diagnostics: Diags, body: str, message: str, col: int
) -> None:
    source = (
        "record Person { name: str, age: int }\n"
        "flow main(p: Person? = none) -> n: str {\n"
        f"    {body}\n"
        "}\n"
    )
    found = summary(diagnostics(source))
    assert [(m, c) for _, m, _, c in found] == [(message, col)], found


def test_a_narrowed_name_cannot_be_tested_again(diagnostics: Diags) -> None:
    found = summary(
        diagnostics(
            """
            flow main(s: str? = none) -> n: int {
                if s != none {
                    if s == none {
                        n = 0
                    } else {
                        n = len(s)
                    }
                } else {
                    n = -1
                }
            }
            """
        )
    )
    assert found == [("type", "cannot compare str with none: a str is never none", 3, 12)]


def test_narrowed_branches_run_with_the_value_or_without_it(tmp_path) -> None:
    import llmflow

    path = tmp_path / "narrow.llmflow"
    path.write_text(
        "record Person { name: str }\n"
        "flow main(p: Person? = none) -> hello: str {\n"
        "    if p == none {\n"
        '        hello = "hello, stranger"\n'
        "    } else {\n"
        '        hello = "hello, " + p.name\n'
        "    }\n"
        "}\n"
    )
    assert llmflow.run(path, {}) == {"hello": "hello, stranger"}
    assert llmflow.run(path, {"p": {"name": "Ann"}}) == {"hello": "hello, Ann"}


def test_narrowed_operands_and_filters_are_computed_only_for_values(tmp_path) -> None:
    import llmflow

    path = tmp_path / "narrow.llmflow"
    path.write_text(
        "record Person { name: str, age: int }\n"
        "flow main(p: Person? = none, ps: list[Person?]) -> adult: bool, names: list[str] {\n"
        "    adult = p != none and p.age > 17\n"
        "    names = [x.name for x in ps if x != none]\n"
        "}\n"
    )
    ann = {"name": "Ann", "age": 30}
    assert llmflow.run(path, {"ps": [None, ann, None]}) == {"adult": False, "names": ["Ann"]}
    assert llmflow.run(path, {"p": ann, "ps": []}) == {"adult": True, "names": []}


def test_and_or_and_filters_narrow_where_their_test_found_a_value(checked: Check) -> None:
    result = checked(
        """
        record Person { name: str, age: int }

        flow main(p: Person? = none, q: Person? = none, ps: list[Person?])
            -> a: bool, b: bool, c: str, d: str, names: list[str] {
            a = p != none and p.age > 17
            b = p == none or p.age > 17 and p.name != ""
            if p != none and q != none and p.age > q.age {
                c = p.name + q.name
            } else {
                c = ""
            }
            if p == none or q == none {
                d = ""
            } else {
                d = p.name + q.name
            }
            names = [x.name for x in ps if x != none and x.age > 3]
        }
        """
    )
    assert result.flow("main").sig.outputs[-1] == ("names", ListT(item=STR))

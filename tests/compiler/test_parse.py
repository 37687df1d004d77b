"""The grammar and the AST: every construct, its shape, and exact source positions."""

from __future__ import annotations

import textwrap
import time

import pytest

from llmflow.compiler import ast
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.parse import parse_module, parse_template

FILE = "prog.llmflow"


def parse(source: str) -> tuple[ast.Module, list[Diagnostic]]:
    return parse_module(textwrap.dedent(source).lstrip("\n"), FILE)


def parse_ok(source: str) -> list[ast.Decl]:
    module, diags = parse(source)
    assert diags == [], [f"{d.span}: {d.message}" for d in diags]
    return module.decls


def one(source: str) -> ast.Decl:
    decls = parse_ok(source)
    assert len(decls) == 1
    return decls[0]


def locate(source: str, needle: str, occurrence: int = 1) -> tuple[int, int, int, int]:
    """Where `needle` (on one line) occurs in `source`: an oracle independent of the parser."""
    text = textwrap.dedent(source).lstrip("\n")
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return (line, col, line, col + len(needle))


def expr_source(text: str) -> str:
    return f"flow f() -> r: str {{\n    r = {text}\n}}\n"


def pos(node: ast.Node | ast.Span) -> tuple[int, int, int, int]:
    span = node if isinstance(node, ast.Span) else node.span
    return (span.line, span.col, span.end_line, span.end_col)


def sexpr(e: ast.Expr) -> str:
    """A compact, fully parenthesized rendering of an expression, to test its shape."""
    match e:
        case ast.Name(id=name):
            return name
        case ast.Const(value=value):
            return repr(value)
        case ast.BinOp(op=op, left=left, right=right):
            return f"({sexpr(left)} {op} {sexpr(right)})"
        case ast.UnaryOp(op=op, operand=operand):
            return f"({op} {sexpr(operand)})"
        case ast.Attr(value=value, attr=attr):
            return f"{sexpr(value)}.{attr.name}"
        case ast.Index(value=value, index=index):
            return f"{sexpr(value)}[{sexpr(index)}]"
        case ast.Call(func=func, args=args, kwargs=kwargs):
            parts = [sexpr(a) for a in args] + [f"{k.name.name}={sexpr(k.value)}" for k in kwargs]
            return f"{func.name}({', '.join(parts)})"
        case ast.ListExpr(items=items):
            return "[" + ", ".join(sexpr(i) for i in items) + "]"
        case ast.DictExpr(keys=keys, values=values):
            pairs = [f"{k.name}: {sexpr(v)}" for k, v in zip(keys, values, strict=True)]
            return "{" + ", ".join(pairs) + "}"
        case ast.MapExpr(var=var, iterable=iterable, body=body, where=where):
            cond = f" if {sexpr(where)}" if where is not None else ""
            return f"(map {var.name} in {sexpr(iterable)}{cond}: {sexpr(body)})"
    raise AssertionError(e)


def expr(text: str) -> ast.Expr:
    """Parse `text` as the value of an assignment in a flow."""
    flow = one(expr_source(text))
    assert isinstance(flow, ast.FlowDecl)
    stmt = flow.body[0]
    assert isinstance(stmt, ast.Assign)
    return stmt.value


# ---- declarations ----------------------------------------------------------------------


def test_imports_of_a_file_and_of_the_standard_library() -> None:
    file_import, std, dotted = parse_ok(
        """
        import "lib/util.llmflow"
        import summarize
        import text.extra
        """
    )
    assert isinstance(file_import, ast.ImportDecl)
    assert (file_import.path, file_import.module) == ("lib/util.llmflow", None)
    assert pos(file_import) == (1, 1, 1, 26)
    assert isinstance(std, ast.ImportDecl)
    assert (std.path, std.module) == (None, "summarize")
    assert isinstance(dotted, ast.ImportDecl)
    assert dotted.module == "text.extra"
    assert pos(dotted) == (3, 1, 3, 18)


def test_model_declaration_with_kwargs_and_a_dict() -> None:
    decl = one(
        """
        model big = openai("gpt-4o-mini", api_key_env="KEY",
                           skills={reasoning: 0.9, code: 1}, rpm=60)
        """
    )
    assert isinstance(decl, ast.ModelDecl)
    assert decl.name.name == "big"
    assert pos(decl.name) == (1, 7, 1, 10)
    assert decl.backend.name == "openai"
    assert pos(decl.backend) == (1, 13, 1, 19)
    assert [sexpr(a) for a in decl.args] == ["'gpt-4o-mini'"]
    assert [k.name.name for k in decl.kwargs] == ["api_key_env", "skills", "rpm"]
    skills = decl.kwargs[1].value
    assert isinstance(skills, ast.DictExpr)
    assert sexpr(skills) == "{reasoning: 0.9, code: 1}"
    assert isinstance(decl.kwargs[2].value, ast.Const) and decl.kwargs[2].value.value == 60


def test_model_declaration_without_arguments() -> None:
    decl = one("model m = local()\n")
    assert isinstance(decl, ast.ModelDecl)
    assert decl.args == [] and decl.kwargs == []


def test_enum_with_trailing_comma() -> None:
    decl = one("enum Verdict { yes, no, unsure, }\n")
    assert isinstance(decl, ast.EnumDecl)
    assert decl.name.name == "Verdict"
    assert [m.name for m in decl.members] == ["yes", "no", "unsure"]
    assert pos(decl.members[2]) == (1, 25, 1, 31)


def test_record_with_fields_of_every_type_shape() -> None:
    decl = one(
        """
        record Review {
            summary: str,
            score: int,
            tags: list[str],
            nested: list[list[Verdict]],
        }
        """
    )
    assert isinstance(decl, ast.RecordDecl)
    assert [f.name.name for f in decl.fields] == ["summary", "score", "tags", "nested"]
    assert [str(f.type) for f in decl.fields] == ["str", "int", "list[str]", "list[list[Verdict]]"]
    nested = decl.fields[3].type
    assert nested.name == "list" and nested.args[0].name == "list"
    assert nested.args[0].args[0].name == "Verdict"
    assert pos(decl.fields[1]) == (3, 5, 3, 15)


def test_extern_returning_a_single_type() -> None:
    decl = one('extern fn count(text: str) -> int = "tools:count_words"\n')
    assert isinstance(decl, ast.ExternDecl)
    assert decl.single is True
    assert decl.target == "tools:count_words"
    assert pos(decl.target_span) == (1, 37, 1, 56)
    assert [(o.name.name, str(o.type)) for o in decl.outputs] == [("result", "int")]
    assert [(p.name.name, str(p.type)) for p in decl.params] == [("text", "str")]


def test_extern_with_named_outputs_and_a_decorator() -> None:
    decl = one(
        """
        @needs(math >= 0.5)
        extern fn stats(xs: list[int], scale: float = 1.0)
            -> total: int, mean: float = "pkg.mod:stats"
        """
    )
    assert isinstance(decl, ast.ExternDecl)
    assert decl.single is False
    outputs = [(o.name.name, str(o.type)) for o in decl.outputs]
    assert outputs == [("total", "int"), ("mean", "float")]
    assert decl.target == "pkg.mod:stats"
    assert isinstance(decl.params[1].default, ast.Const) and decl.params[1].default.value == 1.0
    assert [d.name.name for d in decl.decorators] == ["needs"]


def test_fn_with_decorators_and_a_multi_output_template_with_options() -> None:
    decl = one(
        '''
        @model(big)
        @needs(reasoning >= 0.7, code >= 0.2)
        fn judge(text: str, style: str = "plain") -> verdict: Verdict, reason: str
        """
        Judge {{text}} ({{style}}).
        Verdict: {{verdict | max_tokens=5, stop=["\\n", "."], temperature=0.0}}
        Reason: {{reason}}
        """
        '''
    )
    assert isinstance(decl, ast.FnDecl)
    assert decl.name.name == "judge"
    model, needs = decl.decorators
    assert model.name.name == "model" and [sexpr(a) for a in model.args] == ["big"]
    assert pos(model) == (1, 1, 1, 12)
    assert needs.name.name == "needs"
    assert [sexpr(a) for a in needs.args] == ["(reasoning >= 0.7)", "(code >= 0.2)"]
    assert [(p.name.name, str(p.type)) for p in decl.params] == [("text", "str"), ("style", "str")]
    assert decl.params[0].default is None
    assert isinstance(decl.params[1].default, ast.Const) and decl.params[1].default.value == "plain"
    outputs = [(o.name.name, str(o.type)) for o in decl.outputs]
    assert outputs == [("verdict", "Verdict"), ("reason", "str")]

    parts = decl.template.parts
    kinds = [type(p).__name__ for p in parts]
    assert kinds == [
        "TemplateText",
        "Placeholder",
        "TemplateText",
        "Placeholder",
        "TemplateText",
        "Placeholder",
        "TemplateText",
        "Placeholder",
        "TemplateText",
    ]
    texts = [p.text for p in parts if isinstance(p, ast.TemplateText)]
    # The newline right after the opening quotes is dropped.
    assert texts == ["Judge ", " (", ").\nVerdict: ", "\nReason: ", "\n"]
    holders = [p for p in parts if isinstance(p, ast.Placeholder)]
    paths = [[i.name for i in p.path] for p in holders]
    assert paths == [["text"], ["style"], ["verdict"], ["reason"]]
    verdict = holders[2]
    assert [o.name.name for o in verdict.options] == ["max_tokens", "stop", "temperature"]
    assert [sexpr(o.value) for o in verdict.options] == ["5", "['\\n', '.']", "0.0"]


def test_fn_without_params_and_a_one_line_template() -> None:
    decl = one('fn hi() -> y: str """Say hi: {{y}}"""\n')
    assert isinstance(decl, ast.FnDecl)
    assert decl.params == []
    first = decl.template.parts[0]
    assert isinstance(first, ast.TemplateText) and first.text == "Say hi: "


def test_flow_with_defaults_and_several_outputs() -> None:
    decl = one(
        """
        flow main(doc: str, n: int = 3, xs: list[str] = ["a", "b"], neg: int = -2,
                  v: Verdict = Verdict.yes) -> out: str, k: int {
            out = doc
            k = n
        }
        """
    )
    assert isinstance(decl, ast.FlowDecl)
    assert [p.name.name for p in decl.params] == ["doc", "n", "xs", "neg", "v"]
    assert [sexpr(p.default) if p.default else None for p in decl.params] == [
        None,
        "3",
        "['a', 'b']",
        "(- 2)",
        "Verdict.yes",
    ]
    assert [o.name.name for o in decl.outputs] == ["out", "k"]
    assert len(decl.body) == 2


def test_flow_with_empty_body_and_trailing_comma_in_params() -> None:
    decl = one("flow f(a: str,) -> b: str {}\n")
    assert isinstance(decl, ast.FlowDecl)
    assert [p.name.name for p in decl.params] == ["a"]
    assert decl.body == []


def test_decorator_without_parentheses() -> None:
    decl = one('@cache\nfn f(x: str) -> y: str """{{x}} {{y}}"""\n')
    assert isinstance(decl, ast.FnDecl)
    assert [(d.name.name, d.args, d.kwargs) for d in decl.decorators] == [("cache", [], [])]
    assert pos(decl.decorators[0].name) == (1, 2, 1, 7)


def test_decorated_declarations_stay_together_with_comments_between() -> None:
    decls = parse_ok(
        '''
        @model(big)

        # the pinned one
        @needs(x >= 0.1)
        fn f(x: str) -> y: str
        """{{x}} {{y}}"""
        '''
    )
    assert len(decls) == 1
    assert isinstance(decls[0], ast.FnDecl)
    assert [d.name.name for d in decls[0].decorators] == ["model", "needs"]


# ---- statements -------------------------------------------------------------------------


def body_of(source: str) -> list[ast.Stmt]:
    decl = one(source)
    assert isinstance(decl, ast.FlowDecl)
    return decl.body


def test_destructuring_assignment() -> None:
    (stmt,) = body_of(
        """
        flow f(x: str) -> a: str {
            a, b, c = three(x)
        }
        """
    )
    assert isinstance(stmt, ast.Assign)
    assert [t.name for t in stmt.targets] == ["a", "b", "c"]
    assert [pos(t) for t in stmt.targets] == [(2, 5, 2, 6), (2, 8, 2, 9), (2, 11, 2, 12)]
    assert sexpr(stmt.value) == "three(x)"
    assert pos(stmt) == (2, 5, 2, 23)


def test_if_else_if_else_chain() -> None:
    (stmt,) = body_of(
        """
        flow f(n: int) -> a: str {
            if n > 2 {
                a = "big"
            } else if n > 1 {
                a = "medium"
            } else {
                a = "small"
            }
        }
        """
    )
    assert isinstance(stmt, ast.If)
    assert sexpr(stmt.cond) == "(n > 2)"
    assert [sexpr(s.value) for s in stmt.then if isinstance(s, ast.Assign)] == ["'big'"]
    (nested,) = stmt.orelse
    assert isinstance(nested, ast.If)
    assert sexpr(nested.cond) == "(n > 1)"
    assert [sexpr(s.value) for s in nested.then if isinstance(s, ast.Assign)] == ["'medium'"]
    assert [sexpr(s.value) for s in nested.orelse if isinstance(s, ast.Assign)] == ["'small'"]
    assert pos(stmt) == (2, 5, 8, 6)
    assert pos(nested) == (4, 12, 8, 6)


def test_if_without_else() -> None:
    (stmt,) = body_of('flow f(c: bool) -> a: str {\n    if c {\n        a = "x"\n    }\n}\n')
    assert isinstance(stmt, ast.If)
    assert stmt.orelse == []


LOOP = """
flow f(start: str) -> draft: str {
    repeat at most 3 with draft = start, n = 0 {
        draft = improve(draft)
        n = n + 1
    } until n >= 2 and len(draft) > 10
}
"""


def test_repeat_with_carried_values_and_until() -> None:
    (stmt,) = body_of(LOOP)
    assert isinstance(stmt, ast.Loop)
    assert isinstance(stmt.max_iters, ast.Const) and stmt.max_iters.value == 3
    assert stmt.var is None and stmt.iterable is None
    assert [(b.name.name, sexpr(b.value)) for b in stmt.carried] == [("draft", "start"), ("n", "0")]
    assert len(stmt.body) == 2
    assert stmt.until is not None
    assert sexpr(stmt.until) == "((n >= 2) and (len(draft) > 10))"
    assert pos(stmt) == (2, 5, 5, locate(LOOP, "len(draft) > 10")[3])


def test_repeat_without_carry_or_until() -> None:
    (stmt,) = body_of('flow f() -> a: str {\n    repeat at most 1 {\n    }\n    a = ""\n}\n')[:1]
    assert isinstance(stmt, ast.Loop)
    assert isinstance(stmt.max_iters, ast.Const) and stmt.max_iters.value == 1
    assert (stmt.carried, stmt.body, stmt.until) == ([], [], None)


def test_repeat_at_most_a_name() -> None:
    source = 'flow f(n: int) -> a: str {\n    repeat at most n with a = "" {\n    }\n}\n'
    (stmt,) = body_of(source)
    assert isinstance(stmt, ast.Loop) and isinstance(stmt.max_iters, ast.Name)
    assert stmt.max_iters.id == "n" and pos(stmt.max_iters) == (2, 20, 2, 21)


def test_for_loop_with_carried_value() -> None:
    (stmt,) = body_of(
        """
        flow f(xs: list[str]) -> acc: str {
            for x in xs with acc = "" {
                acc = acc + x
            }
        }
        """
    )
    assert isinstance(stmt, ast.Loop)
    assert stmt.var is not None and stmt.var.name == "x"
    assert pos(stmt.var) == (2, 9, 2, 10)
    assert stmt.iterable is not None and sexpr(stmt.iterable) == "xs"
    assert stmt.max_iters is None
    assert [b.name.name for b in stmt.carried] == ["acc"]
    assert stmt.until is None


def test_statements_keep_source_order() -> None:
    body = body_of(
        """
        flow f(x: str) -> b: str {
            b = a
            a = x
        }
        """
    )
    assert [s.targets[0].name for s in body if isinstance(s, ast.Assign)] == ["b", "a"]


# ---- expressions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("a + b * c", "(a + (b * c))"),
        ("a * b + c", "((a * b) + c)"),
        ("a - b - c", "((a - b) - c)"),
        ("a / b % c", "((a / b) % c)"),
        ("-a * b", "((- a) * b)"),
        ("--a", "(- (- a))"),
        ("a + b > c * d", "((a + b) > (c * d))"),
        ("a == b and c != d", "((a == b) and (c != d))"),
        ("a or b and c", "(a or (b and c))"),
        ("a and b or c", "((a and b) or c)"),
        ("not a and b", "((not a) and b)"),
        ("not a == b", "(not (a == b))"),
        ("not not a", "(not (not a))"),
        ("(a or b) and c", "((a or b) and c)"),
        (
            "a + b * -c > 3 and not d or c == d",
            "((((a + (b * (- c))) > 3) and (not d)) or (c == d))",
        ),
        ("a <= b", "(a <= b)"),
        ("a >= b", "(a >= b)"),
        ("a < b", "(a < b)"),
        ("a ?? b", "(a ?? b)"),
        ("a ?? b ?? c", "((a ?? b) ?? c)"),
        ("a ?? b + c", "(a ?? (b + c))"),
        ("a + b ?? c", "((a + b) ?? c)"),
        ("a ?? b == c", "((a ?? b) == c)"),
        ("a != none and b", "((a != None) and b)"),
        ("not a ?? b", "(not (a ?? b))"),
    ],
)
def test_operator_precedence(text: str, shape: str) -> None:
    assert sexpr(expr(text)) == shape


def test_comparisons_do_not_chain() -> None:
    _, diags = parse("flow f() -> r: bool {\n    r = a < b < c\n}\n")
    assert [d.kind for d in diags] == ["syntax"]
    assert pos(diags[0].span) == (2, 15, 2, 16)  # the second '<'


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"hi"', "hi"),
        (r'"a\"b\n"', 'a"b\n'),
        ("42", 42),
        ("4.5", 4.5),
        ("true", True),
        ("false", False),
        ("none", None),
        ('"""multi\nline"""', "multi\nline"),
    ],
)
def test_constants(text: str, value: object) -> None:
    e = expr(text)
    assert isinstance(e, ast.Const)
    assert e.value == value
    assert type(e.value) is type(value)


def test_record_constructor_call_with_keywords() -> None:
    text = "Review(summary=s, score=3)"
    e = expr(text)
    assert isinstance(e, ast.Call)
    assert e.func.name == "Review"
    assert e.args == []
    assert [k.name.name for k in e.kwargs] == ["summary", "score"]
    assert sexpr(e) == "Review(summary=s, score=3)"
    assert pos(e.kwargs[1]) == locate(expr_source(text), "score=3")
    assert pos(e) == locate(expr_source(text), text)


def test_call_with_positional_and_keyword_arguments() -> None:
    assert sexpr(expr('join(xs, sep=", ",)')) == "join(xs, sep=', ')"
    assert sexpr(expr("f()")) == "f()"


def test_positional_argument_after_keyword_is_a_syntax_error() -> None:
    _, diags = parse("flow f() -> r: str {\n    r = g(a=1, b)\n}\n")
    assert len(diags) == 1
    assert diags[0].kind == "syntax"
    assert diags[0].message == "positional argument after a keyword argument"
    assert pos(diags[0].span) == (2, 16, 2, 17)


def test_field_access_and_indexing_chain() -> None:
    text = "reviews[0].summary[i + 1]"
    src = expr_source(text)
    e = expr(text)
    assert isinstance(e, ast.Index)
    assert sexpr(e) == "reviews[0].summary[(i + 1)]"
    inner = e.value
    assert isinstance(inner, ast.Attr)
    assert inner.attr.name == "summary"
    assert pos(inner.attr) == locate(src, "summary")
    assert isinstance(inner.value, ast.Index)
    assert pos(inner.value) == locate(src, "reviews[0]")
    assert pos(inner) == locate(src, "reviews[0].summary")
    assert pos(e) == locate(src, text)


def test_enum_member_is_an_attribute_of_a_name() -> None:
    e = expr("v == Verdict.yes")
    assert isinstance(e, ast.BinOp) and isinstance(e.right, ast.Attr)
    assert isinstance(e.right.value, ast.Name) and e.right.value.id == "Verdict"
    assert e.right.attr.name == "yes"


def test_map_expression() -> None:
    text = "map d in docs: summarize(d, n=2)"
    e = expr(text)
    assert isinstance(e, ast.MapExpr)
    assert e.var.name == "d"
    assert pos(e.var) == locate(expr_source(text), "d")
    assert pos(e) == locate(expr_source(text), text)
    assert sexpr(e.iterable) == "docs"
    assert sexpr(e.body) == "summarize(d, n=2)"
    assert e.where is None


def test_map_body_extends_as_far_as_possible() -> None:
    assert sexpr(expr("map x in xs: x + 1 > 2 or b")) == "(map x in xs: (((x + 1) > 2) or b))"


def test_comprehension_with_filter() -> None:
    e = expr("[upper(x) for x in split(doc) if len(x) > 3]")
    assert isinstance(e, ast.MapExpr)
    assert e.var.name == "x"
    assert sexpr(e.iterable) == "split(doc)"
    assert sexpr(e.body) == "upper(x)"
    assert e.where is not None and sexpr(e.where) == "(len(x) > 3)"


def test_comprehension_without_filter() -> None:
    e = expr("[x for x in xs]")
    assert isinstance(e, ast.MapExpr)
    assert e.where is None


def test_list_literals() -> None:
    assert sexpr(expr("[]")) == "[]"
    assert sexpr(expr("[1, 2,]")) == "[1, 2]"
    assert sexpr(expr("[[a], [b, c]]")) == "[[a], [b, c]]"


def test_dict_literal() -> None:
    e = expr("{a: 1, b: x,}")
    assert isinstance(e, ast.DictExpr)
    assert [k.name for k in e.keys] == ["a", "b"]
    assert sexpr(e) == "{a: 1, b: x}"


def test_expression_spans() -> None:
    e = expr("alpha + beta * 2")
    src = expr_source("alpha + beta * 2")
    assert isinstance(e, ast.BinOp) and isinstance(e.right, ast.BinOp)
    assert pos(e) == (2, 9, 2, 25) == locate(src, "alpha + beta * 2")
    assert pos(e.left) == locate(src, "alpha")
    assert pos(e.right) == locate(src, "beta * 2")
    assert pos(e.right.right) == locate(src, "2")


# ---- templates --------------------------------------------------------------------------


TEMPLATE_FN = '''\
fn ask(question: str, review: Review) -> answer: str, note: str
"""
Question: {{question}}
   Summary: {{ review.summary }} and {{review.score}}
Answer: {{answer | max_tokens=60, stop="\\n"}}
{{note}}"""
'''


def test_placeholder_spans_are_exact() -> None:
    decl = one(TEMPLATE_FN)
    assert isinstance(decl, ast.FnDecl)
    holders = [p for p in decl.template.parts if isinstance(p, ast.Placeholder)]
    assert [[i.name for i in p.path] for p in holders] == [
        ["question"],
        ["review", "summary"],
        ["review", "score"],
        ["answer"],
        ["note"],
    ]
    question, summary, score, answer, note = holders
    src = TEMPLATE_FN
    assert pos(question) == (3, 13, 3, 21) == locate(src, "question", 2)
    assert pos(question.path[0]) == (3, 13, 3, 21)
    # Whitespace inside the braces belongs to the placeholder, not to its names.
    assert pos(summary.path[0]) == (4, 16, 4, 22) == locate(src, "review", 2)
    assert pos(summary.path[1]) == locate(src, "summary")
    assert pos(summary) == locate(src, " review.summary ")
    assert pos(score.path[0]) == locate(src, "review", 3)
    assert pos(score.path[1]) == locate(src, "score")
    assert pos(answer.path[0]) == (5, 11, 5, 17) == locate(src, "answer", 2)
    opt_tokens, opt_stop = answer.options
    assert pos(opt_tokens) == locate(src, "max_tokens=60")
    assert pos(opt_tokens.name) == locate(src, "max_tokens")
    assert pos(opt_tokens.value) == locate(src, "60")
    assert pos(opt_stop.value) == locate(src, '"\\n"')
    assert isinstance(opt_stop.value, ast.Const) and opt_stop.value.value == "\n"
    assert pos(note.path[0]) == (6, 3, 6, 7) == locate(src, "note", 2)


def test_template_text_spans_cover_the_text() -> None:
    decl = one(TEMPLATE_FN)
    assert isinstance(decl, ast.FnDecl)
    first = decl.template.parts[0]
    assert isinstance(first, ast.TemplateText)
    assert first.text == "Question: "
    assert pos(first) == (3, 1, 3, 11)
    assert pos(decl.template) == (3, 1, 6, 9)


def test_placeholder_position_on_the_declaration_line() -> None:
    decl = one('fn g(x: str) -> y: str """{{x}} -> {{y | stop="\\n"}}"""\n')
    assert isinstance(decl, ast.FnDecl)
    x, _, y = decl.template.parts
    assert isinstance(x, ast.Placeholder) and isinstance(y, ast.Placeholder)
    assert pos(x.path[0]) == (1, 29, 1, 30)
    assert pos(y.path[0]) == (1, 38, 1, 39)
    assert pos(y.options[0].name) == (1, 42, 1, 46)


def test_placeholder_spanning_lines() -> None:
    decl = one('fn g(x: str) -> y: str\n"""\n{{x}} {{y |\n    max_tokens=3}}\n"""\n')
    assert isinstance(decl, ast.FnDecl)
    y = decl.template.parts[2]
    assert isinstance(y, ast.Placeholder)
    assert pos(y.path[0]) == (3, 9, 3, 10)
    assert pos(y.options[0].name) == (4, 5, 4, 15)


def test_parse_template_directly() -> None:
    template, diags = parse_template('"""a {{b}} c"""', line=10, col=5, file="t")
    assert diags == []
    text, holder, tail = template.parts
    assert isinstance(text, ast.TemplateText) and text.text == "a "
    assert isinstance(holder, ast.Placeholder)
    assert pos(holder.path[0]) == (10, 12, 10, 13)  # 5 + len('"""a {{')
    assert isinstance(tail, ast.TemplateText) and tail.text == " c"


def test_template_without_placeholders() -> None:
    template, diags = parse_template('"""\nplain text\n"""', line=1, col=1, file="t")
    assert diags == []
    assert [type(p).__name__ for p in template.parts] == ["TemplateText"]
    assert template.parts[0].text == "plain text\n"  # type: ignore[union-attr]


def test_malformed_placeholder_is_reported_and_keeps_its_name() -> None:
    module, diags = parse('fn g(x: str) -> y: str\n"""\nA: {{y | =3}} {{x!}}\n"""\n')
    assert [d.kind for d in diags] == ["syntax", "syntax"]
    assert [d.message for d in diags] == [
        "malformed placeholder: unexpected '='",
        "malformed placeholder: unexpected character '!'",
    ]
    assert [pos(d.span) for d in diags] == [(3, 10, 3, 11), (3, 18, 3, 19)]
    assert all(d.hint.startswith("write {{name}}") for d in diags)
    (decl,) = module.decls
    assert isinstance(decl, ast.FnDecl)
    holders = [p for p in decl.template.parts if isinstance(p, ast.Placeholder)]
    assert [[i.name for i in p.path] for p in holders] == [["y"], ["x"]]
    assert pos(holders[0].path[0]) == (3, 6, 3, 7)


def test_empty_placeholder_is_reported_where_it_is() -> None:
    _, diags = parse('fn g(x: str) -> y: str\n"""\nSome text.\nMore: {{}} {{x}} {{y}}\n"""\n')
    assert len(diags) == 1
    assert diags[0].message.startswith("malformed placeholder")
    assert pos(diags[0].span)[:2] == (4, 9)


def test_truncated_placeholder_does_not_talk_about_the_end_of_the_file() -> None:
    _, diags = parse('fn g(x: str) -> y: str\n"""\n{{x}} {{y | max_tokens=}}\n"""\n')
    assert len(diags) == 1
    assert pos(diags[0].span)[:2] == (3, 24)
    assert "end of file" not in diags[0].message


# ---- comments and splitting -------------------------------------------------------------


def test_hash_inside_strings_and_templates_is_not_a_comment() -> None:
    fn, flow = parse_ok(
        '''
        fn f(x: str) -> y: str
        """
        # not a comment {{x}}
        {{y}}
        """

        flow main(x: str) -> y: str {
            y = f("# not a comment either") # a real comment
            # a whole-line comment
        }
        '''
    )
    assert isinstance(fn, ast.FnDecl)
    first = fn.template.parts[0]
    assert isinstance(first, ast.TemplateText) and first.text == "# not a comment "
    holder = fn.template.parts[1]
    assert isinstance(holder, ast.Placeholder) and pos(holder.path[0]) == (3, 19, 3, 20)
    assert isinstance(flow, ast.FlowDecl)
    (stmt,) = flow.body
    assert isinstance(stmt, ast.Assign)
    assert sexpr(stmt.value) == "f('# not a comment either')"


def test_declaration_keywords_at_column_one_inside_a_template_do_not_split_the_file() -> None:
    fn, flow = parse_ok(
        '''
        fn f(x: str) -> y: str
        """
        flow inside(a: str) -> b: str {
        fn also
        import this
        model m = local("x")
        @decorator
        enum E { a }
        record R { a: int }
        extern fn e() -> int = "m:f"
        {{x}} {{y}}
        """

        flow main(x: str) -> y: str {
            y = f(x)
        }
        '''
    )
    assert isinstance(fn, ast.FnDecl)
    texts = "".join(p.text for p in fn.template.parts if isinstance(p, ast.TemplateText))
    assert "flow inside(a: str) -> b: str {\nfn also\nimport this\n" in texts
    assert "@decorator\nenum E { a }\nrecord R { a: int }\n" in texts
    assert isinstance(flow, ast.FlowDecl) and flow.name.name == "main"
    assert pos(flow) == (14, 1, 16, 2)


def test_triple_quote_inside_a_comment_does_not_open_a_template() -> None:
    first, second = parse_ok(
        '''
        flow a(x: str) -> y: str {  # says """ here
            y = x
        }

        flow b(x: str) -> y: str {
            y = x
        }
        '''
    )
    assert isinstance(first, ast.FlowDecl) and isinstance(second, ast.FlowDecl)
    assert second.name.name == "b"


def test_names_that_start_with_a_keyword_are_names() -> None:
    (flow,) = parse_ok(
        """
        flow f(model_name: str, flows: str) -> format_out: str {
            format_out = model_name
        }
        """
    )
    assert isinstance(flow, ast.FlowDecl)
    assert [p.name.name for p in flow.params] == ["model_name", "flows"]


# ---- syntax errors ----------------------------------------------------------------------


def test_every_broken_declaration_is_reported_and_the_rest_parsed() -> None:
    module, diags = parse(
        """
        flow first(x: str) -> y: str {
            y = upper(x
        }

        record Point { x: int, y: }

        flow second(x: str) -> y: str {
            y = x $ "!"
        }

        flow good(x: str) -> y: str {
            y = x
        }
        """
    )
    assert [d.kind for d in diags] == ["syntax", "syntax", "syntax"]
    assert [d.message for d in diags] == [
        "unexpected '}'",
        "unexpected '}'",
        "unexpected character '$'",
    ]
    assert [pos(d.span) for d in diags] == [(3, 1, 3, 2), (5, 27, 5, 28), (8, 11, 8, 12)]
    assert diags[1].hint == "expected a name"
    assert [d.name.name for d in module.decls] == ["good"]  # type: ignore[union-attr]


def test_unexpected_token_caret_covers_the_token() -> None:
    _, diags = parse('flow f(x: str) -> y: str {\n    y = x "more"\n}\n')
    assert len(diags) == 1
    assert diags[0].span is not None
    assert pos(diags[0].span) == (2, 11, 2, 17)


def test_missing_closing_brace_at_end_of_file() -> None:
    _, diags = parse("flow f(x: str) -> y: str {\n    y = x\n")
    assert [d.message for d in diags] == ["unexpected end of file"]
    assert pos(diags[0].span) == (2, 10, 2, 11)


def test_unexpected_name_message_is_grammatical() -> None:
    _, diags = parse("enum Color { red green }\n")
    assert len(diags) == 1
    assert pos(diags[0].span) == (1, 18, 1, 23)
    assert "green" in diags[0].message
    assert not diags[0].message.startswith("unexpected a ")


def test_expected_tokens_fit_the_context() -> None:
    _, diags = parse("record R { a: int b: int }\n")
    assert len(diags) == 1
    # Inside a record, after a field's type, only ',', '}' or '[' can follow.
    for wrong in ("')'", "'='", 'a """template"""'):
        assert wrong not in diags[0].hint


def test_unterminated_template_is_named_as_such() -> None:
    _, diags = parse('fn d(x: str) -> y: str\n"""\n{{x}} {{y}}\n')
    assert len(diags) == 1
    assert pos(diags[0].span)[:2] == (2, 1)
    assert "template" in diags[0].message
    assert "string" not in diags[0].message


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("9" * 4301, "this integer has 4,301 digits; at most 4,300"),
        ("0" * 5000, "this integer has 5,000 digits; at most 4,300"),
        ("1" + "0" * 400 + ".5", "this number is too large: it overflows a float"),
    ],
)
def test_literals_too_large_to_compute_with_are_positioned_errors(
    literal: str, message: str
) -> None:
    source = f"flow main() -> y: int {{\n    y = {literal}\n}}\n"
    _, diags = parse_module(source, FILE)
    assert [(d.kind, d.message) for d in diags] == [("limit", message)]
    assert diags[0].span == ast.Span(file=FILE, line=2, col=9, end_line=2, end_col=9 + len(literal))


def test_the_largest_literals_still_parse() -> None:
    [flow] = parse_ok(f"flow main() -> y: int {{\n    y = {'9' * 4300} + 1{'0' * 300}.5\n}}\n")
    value = flow.body[0].value
    assert value.left.value == 10**4300 - 1 and value.right.value == 1e300


def test_a_repeat_count_too_long_is_an_error_not_a_crash() -> None:
    _, diags = parse(f"flow main() -> y: int {{\n    repeat at most {'9' * 5000} {{\n    }}\n}}\n")
    assert [d.message for d in diags] == ["this integer has 5,000 digits; at most 4,300"]


@pytest.mark.parametrize("odd", ["\v", "\f", "\x1c", "\x85", "\u2028", "\u2029", "\r"])
def test_only_newlines_end_lines(odd: str) -> None:
    """Python's str.splitlines breaks at \\v, \\f, U+2028 and more; lark and editors count
    "\\n" only, so a stray one in a comment must not shift the positions after it."""
    source = f"# a comment {odd * 50}\nenum A {{ x }}\n\nenum B {{ y z }}\n"
    _, diags = parse_module(source, "prog.llmflow")
    assert [(d.span.line, d.span.col) for d in diags if d.span] == [(4, 12)]


def test_a_run_of_unclosed_braces_is_split_in_linear_time() -> None:
    """`{{` that no `}}` closes is text; 50,000 of them once took a minute."""
    body = "{{x}} " + "{{" * 50_000 + " tail"
    start = time.process_time()
    template, diags = parse_template(f'"""{body}"""', 1, 1, "prog.llmflow")
    assert time.process_time() - start < 5
    assert diags == [] and len(template.parts) == 2
    assert template.parts[1].text == body[5:]

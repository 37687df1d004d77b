"""Deep and big programs: chains of any length compile, optimize, draw and run; nesting
beyond the limit is a positioned error; compile time stays linear.

Each deep shape goes through every stage that walks the syntax tree or the IR: parse,
check, lower, optimize, the drawing's DOT source, `plan --json` and `plan` text, and
(for the long chains) a run on the scripted backend.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.cli import main
from llmflow.compiler import check_file, compile_file
from llmflow.compiler.draw import draw
from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer import optimize
from llmflow.compiler.parse import MAX_NESTING
from llmflow.errors import CompileError
from llmflow.runtime.backends.scripted import ScriptedBackend

N = 10_000
ECHO = 'fn echo(x: str) -> y: str\n"""Echo {{x}}: {{y}}"""\n\n'


def assignment_chain(n: int) -> str:
    body = "\n".join(f"    v{i + 1} = v{i} + 1" for i in range(n))
    return f"flow main(v0: int) -> out: int {{\n{body}\n    out = v{n}\n}}\n"


def call_chain(n: int) -> str:
    body = "\n".join(f"    v{i + 1} = echo(v{i})" for i in range(n))
    return ECHO + f"flow main(v0: str) -> out: str {{\n{body}\n    out = v{n}\n}}\n"


def long_sum(n: int) -> str:
    return f"flow main(x: int) -> out: int {{\n    out = {' + '.join(['x'] * n)}\n}}\n"


def long_default(n: int) -> str:
    chain = " ?? ".join(f"x{i % 3}" for i in range(n))
    return f"flow main(x0: int?, x1: int?, x2: int?) -> out: int {{\n    out = {chain} ?? 7\n}}\n"


def else_if_chain(n: int) -> str:
    arms = " else ".join(f"if x == {i} {{\n        out = {i}\n    }}" for i in range(n))
    return f"flow main(x: int) -> out: int {{\n    {arms} else {{\n        out = -1\n    }}\n}}\n"


def nested_ifs(n: int) -> str:
    opens = "".join(f"if x > {i} {{\n" for i in range(n))
    return f"flow main(x: int) -> out: int {{\n{opens}out = 1\n{'} else { out = 0 }' * n}\n}}\n"


def nested_calls(n: int) -> str:
    return ECHO + f"flow main(x: str) -> out: str {{\n    out = {'echo(' * n}x{')' * n}\n}}\n"


def nested_maps(n: int) -> str:
    inner = "[x]"
    for i in range(n):
        inner = f"map v{i} in ({inner}): echo(v{i})"
    return ECHO + f"flow main(x: str) -> out: list[str] {{\n    out = {inner}\n}}\n"


def nested_loops(n: int) -> str:
    body = f"s{n - 1} = echo(s{n - 1})"
    for i in range(n - 2, -1, -1):
        body = f"repeat at most 1 with s{i + 1} = s{i} {{\n{body}\n}}\ns{i} = s{i + 1}"
    return (
        ECHO + "flow main(x: str) -> out: str {\n"
        f"repeat at most 1 with s0 = x {{\n{body}\n}}\nout = s0\n}}\n"
    )


def flow_chain(n: int) -> str:
    flows = ["flow f0(x: str) -> y: str {\n    y = strip(x)\n}"]
    flows += [f"flow f{i}(x: str) -> y: str {{\n    y = f{i - 1}(x)\n}}" for i in range(1, n)]
    flows.append(f"flow main(x: str) -> out: str {{\n    out = f{n - 1}(x)\n}}")
    return "\n".join(flows) + "\n"


@pytest.fixture
def program(tmp_path: Path) -> Callable[[str], Path]:
    def write(source: str) -> Path:
        path = tmp_path / "deep.llmflow"
        path.write_text(source, encoding="utf-8")
        return path

    return write


DRAWN: dict[int, str] = {}
"""id(plan) → the DOT source `every_stage` drew for it."""


def every_stage(path: Path, inputs: dict | None = None) -> Plan:
    """Check, lower, optimize, draw (DOT source) and write the plan as JSON."""
    plan = optimize(compile_file(path), inputs=inputs)
    DRAWN[id(plan)] = draw(plan).source
    assert "digraph" in DRAWN[id(plan)]
    data = json.loads(json.dumps(plan.to_json()))  # nests a few levels, however deep the plan
    assert data["graph"]["nodes"]
    return plan


def run(plan: Plan, inputs: dict) -> llmflow.api.RunResult:  # type: ignore[name-defined]
    backend = ScriptedBackend(lambda request: "ok")
    return asyncio.run(llmflow.run_async(plan, inputs, backend=backend))


def output_value(plan: Plan) -> object:
    """The value the optimizer computed at plan time for the flow's output."""
    out = plan.graph.node(plan.graph.outputs["out"])
    return plan.known[out.args[0]]


def branch_depth(plan: Plan) -> int:
    depth, graph = 0, plan.graph
    while branches := [n for n in graph.nodes if n.kind == "branch"]:
        depth, graph = depth + 1, branches[0].bodies["else"]
    return depth


# ---- chains of any length --------------------------------------------------------------


def test_a_chain_of_10000_assignments_compiles_and_runs(program: Callable[[str], Path]) -> None:
    plan = every_stage(program(assignment_chain(N)), inputs={"v0": 1})
    assert output_value(plan) == N + 1
    result = run(compile_file(program(assignment_chain(N))), {"v0": 1})
    assert result.outputs == {"out": N + 1}


def test_a_chain_of_10000_calls_runs_end_to_end(program: Callable[[str], Path]) -> None:
    plan = every_stage(program(call_chain(N)))
    assert len(plan.calls()) == N
    result = run(plan, {"v0": "start"})
    assert result.ok and result.outputs == {"out": "ok"}
    assert len(result.calls) == N


def test_a_sum_of_10000_terms(program: Callable[[str], Path]) -> None:
    plan = every_stage(program(long_sum(N)), inputs={"x": 3})
    assert output_value(plan) == 3 * N


def test_a_default_chain_of_10000_terms(program: Callable[[str], Path]) -> None:
    plan = every_stage(program(long_default(N)), inputs={"x0": None, "x1": None, "x2": 5})
    assert output_value(plan) == 5
    assert run(plan, {"x0": None, "x1": None, "x2": None}).outputs == {"out": 7}


def test_an_else_if_chain_of_10000_branches(
    program: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = program(else_if_chain(N))
    plan = every_stage(path)
    assert branch_depth(plan) == N
    assert "nested deeper, not drawn" in DRAWN[id(plan)]
    assert run(plan, {"x": N - 1}).outputs == {"out": N - 1}
    assert main(["plan", "-O0", str(path)]) == 0  # the plan as text
    out, err = capsys.readouterr()
    assert f"(level {N})" in out and "internal error" not in err


# ---- nesting: up to the limit it works, beyond it is a positioned error ----------------

NESTED = {
    "ifs": (nested_ifs, {"x": 1}),
    "calls": (nested_calls, {"x": "a"}),
    "maps": (nested_maps, {"x": "a"}),
    "loops": (nested_loops, {"x": "a"}),
}


def deepest_accepted(shape: Callable[[int], str], path: Callable[[str], Path]) -> int:
    """The most levels of `shape` the checker accepts."""
    n = 1
    while True:
        try:
            check_file(path(shape(n + 1)))
        except CompileError:
            return n
        n += 1


def with_frames_used(frames: int, fn: Callable[[], object]) -> object:
    """Call fn with `frames` Python frames already on the stack, as a caller would."""
    return fn() if frames == 0 else with_frames_used(frames - 1, fn)


@pytest.mark.parametrize("name", list(NESTED))
def test_nesting_up_to_the_limit_works_in_every_stage(
    name: str, program: Callable[[str], Path]
) -> None:
    shape, inputs = NESTED[name]
    n = deepest_accepted(shape, program)
    assert n >= MAX_NESTING - 4  # each level of these shapes is about one level of nesting

    def all_of_it() -> object:
        plan = every_stage(program(shape(n)))
        return run(plan, inputs)

    # 300 frames of a caller (pytest has ~100): the limit leaves room for them.
    result = with_frames_used(300, all_of_it)
    assert result.ok  # type: ignore[attr-defined]


@pytest.mark.parametrize("shape", [nested_ifs, nested_calls])
def test_nesting_beyond_the_limit_is_a_positioned_error(
    shape: Callable[[int], str],
    program: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = program(shape(N))
    with pytest.raises(CompileError) as err:
        check_file(path)
    (diag,) = err.value.diagnostics
    assert diag.message == f"nested too deeply: more than {MAX_NESTING} levels"
    assert diag.span is not None and diag.span.file == str(path)
    if shape is nested_ifs:  # one if a line from line 2: in the 63rd if's condition
        assert (diag.span.line, diag.span.col) == (MAX_NESTING, 8)
    assert main(["check", str(path)]) == 1
    err_text = capsys.readouterr().err
    assert f"{path}:{diag.span.line}:{diag.span.col}: error: nested too deeply" in err_text
    assert "internal error" not in err_text


def test_inlined_flows_add_their_nesting_up(program: Callable[[str], Path]) -> None:
    plan = every_stage(program(flow_chain(20)))
    assert run(plan, {"x": " a "}).outputs == {"out": "a"}
    with pytest.raises(CompileError) as err:
        check_file(program(flow_chain(N)))
    (diag,) = err.value.diagnostics
    assert "is inlined here" in diag.message and f"more than {MAX_NESTING}" in diag.message


# ---- cycles through a condition or a list ----------------------------------------------


def test_a_condition_reading_what_its_if_assigns_is_a_cycle(
    program: Callable[[str], Path],
) -> None:
    source = """
flow main(x: int) -> out: int {
    if out == 1 {
        out = 1
    } else {
        out = 2
    }
}
"""
    with pytest.raises(CompileError) as err:
        check_file(program(source))
    assert [d.message for d in err.value.diagnostics] == ["dependency cycle: out → out"]


def test_a_list_reading_what_its_loop_carries_is_a_cycle(program: Callable[[str], Path]) -> None:
    source = """
flow main(x: str) -> out: str {
    for w in split(out, " ") with out = "" {
        out = out + w
    }
}
"""
    with pytest.raises(CompileError) as err:
        check_file(program(source))
    assert [d.message for d in err.value.diagnostics] == ["dependency cycle: out → out"]


# ---- linear time ------------------------------------------------------------------------


def test_65536_placeholders_are_checked_in_linear_time(program: Callable[[str], Path]) -> None:
    holes = "\n".join(f"{{{{x}}}} {i}" for i in range(65536))
    source = (
        f'fn wide(x: str) -> out: str\n"""\n{holes}\n{{{{out}}}}\n"""\n\n'
        "flow main(x: str) -> out: str {\n    out = wide(x)\n}\n"
    )
    start = time.process_time()
    checked = check_file(program(source))
    seconds = time.process_time() - start
    # ~2 s here; the quadratic version took 42 s on an idle machine.
    assert seconds < 20, f"checking 65,536 placeholders took {seconds:.1f} s"
    template = checked.program.modules[checked.program.main].decls[0].template  # type: ignore[union-attr]
    last = [p for p in template.parts if hasattr(p, "path")][-2]
    assert (last.span.line, last.span.col) == (65538, 3)

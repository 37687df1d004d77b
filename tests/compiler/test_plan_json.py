"""Plan JSON round-trips: `Plan.from_json(plan.to_json())` is the same plan and runs the
same, for every example and construct; bad plan JSON is a PlanError naming its path."""

from __future__ import annotations

import asyncio
import copy
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.compiler.ir import Graph, Plan, PlanError
from llmflow.compiler.types import EnumT, ListT, Prim, RecordT, Type
from llmflow.runtime.backends.base import GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.llmflow"))

FNS = '''
enum Mood { calm, loud }

record Note { title: str, score: int }

fn summarize(text: str, prefix: str) -> summary: str
"""
{{prefix}} {{text}}
{{summary | max_tokens=20, stop="\\n"}}
"""

fn judge(text: str) -> mood: Mood, why: str, note: Note
"""
Judge {{text}}: {{mood}} because {{why}}. Again {{mood}}. {{note}}
"""

fn count(text: str) -> n: int, tags: list[str]
"""Count {{text}}: {{n}} {{tags}}"""
'''

PROGRAMS = {
    "map_where": """
        flow main(docs: list[str], prefix: str) -> sums: list[str], picked: list[str] {
            sums = map d in docs: summarize(d, prefix)
            picked = [upper(x) for x in docs if len(x) > 5]
        }
    """,
    "branch_chain": """
        flow main(text: str, n: int) -> out: str, size: int {
            if n > 3 {
                out = summarize(text, "long")
                size = 1
            } else if n > 1 {
                out = upper(text)
                size = 2
            } else {
                out = text
                size = len(text)
            }
        }
    """,
    "loops": """
        flow main(draft: str, parts: list[str], hint: str) -> best: str, joined: str, n: int {
            repeat at most 3 with best = draft {
                best = summarize(best, hint)
            } until len(best) > 5
            for p in parts with joined = "", n = 0 {
                joined = joined + p + hint
                n = n + 1
            }
        }
    """,
    "records_and_flows": """
        flow inner(text: str) -> mood: Mood, why: str {
            mood, why, note = judge(text)
        }

        flow main(text: str, k: float = 1.5) -> mood: Mood, loud: bool, score: float, n: int {
            mood, why = inner(text)
            loud = mood == Mood.loud or len(why) > 100
            n, tags = count(why + text)
            score = k * 2.0 - n
        }
    """,
    "common_calls": """
        flow main(text: str) -> a: str, b: str, c: list[str] {
            a = summarize(text, "x")
            b = summarize(text, "x") + summarize(upper(text), "x")
            c = [a, b, join(split(text, " "), "-")]
        }
    """,
}


def sample(t: Type, seed: int = 0) -> Any:
    """A value of a type, for inputs."""
    match t:
        case Prim(name="str"):
            return ["alpha beta", "gamma", "delta epsilon zeta"][seed % 3]
        case Prim(name="int"):
            return 2 + seed
        case Prim(name="float"):
            return 1.5 + seed
        case Prim(name="bool"):
            return seed % 2 == 0
        case ListT(item=item):
            return [sample(item, seed + i) for i in range(3)]
        case EnumT(members=members):
            return members[seed % len(members)]
        case RecordT(fields=fields):
            return {name: sample(ft, seed) for name, ft in fields}
    return "any"


def from_schema(schema: dict[str, Any], defs: dict[str, Any], prompt: str) -> Any:
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].split("/")[-1]], defs, prompt)
    if "enum" in schema:
        return schema["enum"][0]
    match schema.get("type"):
        case "object":
            return {k: from_schema(v, defs, prompt) for k, v in schema["properties"].items()}
        case "array":
            return [from_schema(schema["items"], defs, prompt) for _ in range(2)]
        case "integer":
            return len(prompt) % 7
        case "number":
            return 0.5
        case "boolean":
            return True
    return f"s{len(prompt) % 13}"


def answer(request: GenerationRequest) -> str:
    """A valid, deterministic reply that depends on the prompt."""
    prompt = "".join(t.text for t in request.turns)
    c = request.constraint
    if c is not None and c.choices:
        return c.choices[len(prompt) % len(c.choices)]
    if c is not None and c.pattern:
        return {"int": str(len(prompt) % 9), "float": "2.5", "bool": "true"}[c.pattern]
    if c is not None and c.json_schema:
        schema = c.json_schema
        return json.dumps(from_schema(schema, schema.get("$defs", {}), prompt))
    return f"reply {len(prompt) % 101} {prompt[-12:].strip()}"


def programs() -> list[tuple[str, str]]:
    out = [(p.stem, str(p)) for p in EXAMPLES]
    out += [(name, name) for name in PROGRAMS]
    return out


@pytest.fixture
def source_path(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    name, where = request.param
    if name in PROGRAMS:
        path = tmp_path / f"{name}.llmflow"
        path.write_text(FNS + textwrap.dedent(PROGRAMS[name]), encoding="utf-8")
        return path
    return Path(where)


def inputs_for(plan: Plan) -> dict[str, Any]:
    return {spec.name: sample(spec.type, i) for i, spec in enumerate(plan.inputs)}


GRAPHS = {"body", "then", "orelse"}
"""Node fields that hold subgraphs (compared graph by graph)."""


def assert_same_graph(a: Graph, b: Graph) -> None:
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        assert list(x.g.nodes) == list(y.g.nodes)
        assert list(x.g.edges(data=True)) == list(y.g.edges(data=True))
        assert (x.inputs, x.outputs) == (y.inputs, y.outputs)
        for m, n in zip(x.nodes, y.nodes, strict=True):
            assert type(m) is type(n)
            assert m.model_dump(exclude=GRAPHS) == n.model_dump(exclude=GRAPHS)
            assert list(m.bodies) == list(n.bodies)
            stack.extend((m.bodies[k], n.bodies[k]) for k in m.bodies)


def run(plan: Plan, inputs: dict[str, Any]) -> dict[str, Any]:
    result = asyncio.run(llmflow.run_async(plan, inputs, backend=ScriptedBackend(answer), seed=1))
    return result.outputs


@pytest.mark.parametrize("source_path", programs(), indirect=True, ids=[n for n, _ in programs()])
@pytest.mark.parametrize("optimize", [True, False], ids=["O1", "O0"])
@pytest.mark.parametrize("known", [False, True], ids=["unknown", "known"])
def test_plan_round_trips_and_runs_the_same(
    source_path: Path, optimize: bool, known: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    values = inputs_for(llmflow.compile(source_path, optimize=False))
    given = values if known and optimize else None
    plan = llmflow.compile(source_path, optimize=optimize, inputs=given)
    data = plan.to_json()
    text = json.dumps(data)
    back = Plan.from_json(text)
    assert back.to_json() == data
    assert Plan.from_json(data).to_json() == data  # parsed data too
    assert_same_graph(plan.graph, back.graph)
    assert back.known == plan.known and (not given or back.known)
    assert run(back, values) == run(plan, values)


@pytest.fixture(scope="module")
def good() -> dict[str, Any]:
    path = ROOT / "examples" / "research_report.llmflow"
    return llmflow.compile(path).to_json()


def error(data: Any) -> str:
    with pytest.raises(PlanError) as info:
        Plan.from_json(data)
    message = str(info.value)
    assert message.startswith("plan JSON")
    return message


def test_truncated_plan_text(good: dict[str, Any]) -> None:
    text = json.dumps(good)
    for cut in (0, 1, len(text) // 3, len(text) - 1):
        assert "not JSON" in error(text[:cut])
    assert "not JSON" in error(b"\xff\xfe{")
    assert "not an object" in error("[1, 2]")


def test_wrong_types_name_their_path(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["graph"]["nodes"][1]["type"] = {"kind": "prim", "name": "complex"}
    assert error(bad).startswith("plan JSON: graph.nodes[1].type")
    bad = copy.deepcopy(good)
    model = bad["default_model"]
    bad["models"][model]["context"] = "big"
    assert error(bad).startswith(f"plan JSON: models.{model}.context")
    bad = copy.deepcopy(good)
    name = next(iter(bad["graph"]["subgraphs"]))
    bad["graph"]["subgraphs"][name]["nodes"][0]["args"] = 7
    assert error(bad).startswith(f'plan JSON: graph.subgraphs["{name}"].nodes[0].args')
    bad = copy.deepcopy(good)
    del bad["flow"]
    assert error(bad) == "plan JSON: flow: Field required"
    bad = copy.deepcopy(good)
    bad["graph"] = []
    assert error(bad) == "plan JSON: graph: a list, not an object"
    bad = copy.deepcopy(good)
    bad["known"] = [1]
    assert error(bad) == "plan JSON: known: a list, not an object"


def test_dangling_ids(good: dict[str, Any]) -> None:
    nodes = good["graph"]["nodes"]
    reader = next(i for i, n in enumerate(nodes) if n.get("args"))
    bad = copy.deepcopy(good)
    bad["graph"]["nodes"][reader]["args"][0] = "n999999"
    assert error(bad) == (
        f"plan JSON: graph.nodes[{reader}].args[0]: 'n999999' is not an earlier node of this graph"
    )
    bad = copy.deepcopy(good)
    bad["graph"]["edges"][0]["source"] = "n999999"
    assert "graph.edges[0]: n999999 → " in error(bad)
    bad = copy.deepcopy(good)
    del bad["graph"]["edges"][0]
    assert error(bad).startswith("plan JSON: graph.edges: no edge ")
    bad = copy.deepcopy(good)
    bad["graph"]["outputs"]["title"] = "n0"
    assert error(bad) == "plan JSON: graph.outputs.title: 'n0' is not a node of this graph"
    bad = copy.deepcopy(good)
    bad["groups"][0]["calls"].append("n0")
    assert error(bad) == "plan JSON: groups[0].calls[1]: 'n0' is not a node of the plan" or (
        "'n0' is not a node of the plan" in error(bad)
    )
    bad = copy.deepcopy(good)
    bad["known"]["n999"] = 1
    assert error(bad) == "plan JSON: known.n999: 'n999' is not a node of the plan"
    bad = copy.deepcopy(good)
    bad["default_model"] = "nobody"
    assert "'nobody' is not one of the plan's models" in error(bad)
    bad = copy.deepcopy(good)
    holder = next(n for n in bad["graph"]["nodes"] if "bodies" in n)
    key = next(iter(holder["bodies"]))
    holder["bodies"][key] = "n0/nowhere"
    assert "'n0/nowhere' is not in graph.subgraphs" in error(bad)


def test_cycles_are_refused(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    nodes = bad["graph"]["nodes"]
    reader = next(i for i, n in enumerate(nodes) if n.get("args"))
    nodes[reader]["args"][0] = nodes[reader]["id"]  # reads itself
    assert "is not an earlier node of this graph" in error(bad)
    bad = copy.deepcopy(good)
    nodes = bad["graph"]["nodes"]
    nodes[reader]["args"][0] = nodes[-1]["id"]  # reads a later node: a cycle through it
    assert "is not an earlier node of this graph" in error(bad)
    bad = copy.deepcopy(good)
    # A subgraph holding the node whose body it is: bodies would nest forever.
    holder = next(n for n in bad["graph"]["nodes"] if "bodies" in n)
    name = next(iter(holder["bodies"].values()))
    inner = copy.deepcopy(holder)
    inner["id"], inner["args"] = "n777777", []
    bad["graph"]["subgraphs"][name]["nodes"].append(inner)
    assert "is the body of two nodes" in error(bad)


def test_huge_and_deep_plans(good: dict[str, Any]) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert error('{"flow": ' + deep + "}").startswith("plan JSON")
    assert error({**good, "known": {"n1": json.loads("[" * 150 + "]" * 150)}}).startswith(
        "plan JSON: known.n1: 0.0.0.0.0.…: nested deeper than 100 levels"
    )
    assert "not JSON" in error('{"budget": ' + "9" * 100_000 + "}")
    assert "not a finite number" in error({**good, "budget": float("inf")})
    assert "plan JSON" in error('{"graph": {"nodes": [' + ", ".join(["{}"] * 100_000) + "]}}")


def test_a_long_chain_round_trips(tmp_path: Path) -> None:
    lines = "\n".join(f'    x{i + 1} = x{i} + "a"' for i in range(3000))
    path = tmp_path / "chain.llmflow"
    path.write_text(f"flow main(x0: str) -> x3000: str {{\n{lines}\n}}\n", encoding="utf-8")
    plan = llmflow.compile(path)
    back = Plan.from_json(json.dumps(plan.to_json()))
    assert back.to_json() == plan.to_json()
    assert run(back, {"x0": ""}) == {"x3000": "a" * 3000}


def test_nodes_carry_only_their_own_fields(good: dict[str, Any]) -> None:
    nodes = good["graph"]["nodes"]
    llm = next(i for i, n in enumerate(nodes) if n["kind"] == "llm")
    bad = copy.deepcopy(good)
    del bad["graph"]["nodes"][llm]["call"]
    assert error(bad) == f"plan JSON: graph.nodes[{llm}].call: Field required"
    const = next(i for i, n in enumerate(nodes) if n["kind"] == "const")
    bad = copy.deepcopy(good)
    bad["graph"]["nodes"][const]["op"] = "+"
    assert error(bad) == f"plan JSON: graph.nodes[{const}].op: Extra inputs are not permitted"
    bad = copy.deepcopy(good)
    bad["graph"]["nodes"][0]["binding"] = {"kind": "port", "index": "one"}
    assert error(bad).startswith("plan JSON: graph.nodes[0].binding.port.index: ")
    bad = copy.deepcopy(good)
    bad["graph"]["nodes"][llm]["call"]["segments"][0] = {"kind": "text", "input": "x"}
    assert error(bad).startswith(f"plan JSON: graph.nodes[{llm}].call.segments[0].text.")
    bad = copy.deepcopy(good)
    bad["graph"]["nodes"][llm]["kind"] = "lmm"
    assert "does not match any of the expected tags" in error(bad)


def test_bindings_and_segments_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "p.llmflow"
    path.write_text(FNS + textwrap.dedent(PROGRAMS["loops"]), encoding="utf-8")
    data = llmflow.compile(path, optimize=False).to_json()
    bindings = [n["binding"] for n in data["graph"]["nodes"] if n["kind"] == "input"]
    assert bindings[0] == {"kind": "param", "name": "draft"}
    inner = [
        n["binding"]
        for g in data["graph"]["subgraphs"].values()
        for n in g["nodes"]
        if n["kind"] == "input"
    ]
    assert {"kind": "carried", "name": "best"} in inner
    assert {"kind": "item"} in inner and {"kind": "port", "index": 1} in inner
    loops = [n for n in data["graph"]["nodes"] if n["kind"] == "loop"]
    assert {"kind": "carried", "name": "joined"} in inner and len(loops) == 2
    body = data["graph"]["subgraphs"][loops[0]["bodies"]["body"]]
    assert set(body["outputs"]) == {"best", "until"}
    call = next(
        n for g in data["graph"]["subgraphs"].values() for n in g["nodes"] if n["kind"] == "llm"
    )
    assert [s["kind"] for s in call["call"]["segments"]] == [
        "read",
        "text",
        "read",
        "text",
        "generate",
        "text",
    ]


def test_a_known_value_as_deep_as_an_input_may_be_round_trips(good: dict[str, Any]) -> None:
    deep = json.loads("[" * 99 + "]" * 99)  # check_json's deepest: what an input may be
    data = {**good, "known": {**good["known"], "n1": deep}}
    assert Plan.from_json(json.dumps(data)).known["n1"] == deep

"""The IR: a dataflow graph whose edges are semantic variables, and the Plan around it.

A `Graph` is a `networkx.DiGraph` of typed nodes (`IRNode`: a union on `kind`, one class
per kind with only its own fields). A node's `args` list the producers of its inputs in
order (the edges say the same, for analysis and drawing). `map`, `branch` and `loop`
nodes hold subgraphs that the runtime expands once their list or condition is known; a
subgraph reads its parent node's arguments through input nodes bound to a `Port`.
A Plan writes itself as JSON (`to_json`) and reads back from it (`Plan.from_json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import networkx as nx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

from llmflow.compiler import evalspec
from llmflow.compiler.ast import Span
from llmflow.compiler.evalspec import EvalSpec
from llmflow.compiler.heap import gc_paused
from llmflow.compiler.models import ModelSpec
from llmflow.compiler.types import Type
from llmflow.errors import LLMFlowError

NodeKind = Literal["input", "const", "llm", "builtin", "extern", "map", "branch", "loop", "output"]

_STRICT = ConfigDict(frozen=True, extra="forbid")


# -- template segments: how a call's prompt is made, in order


class Text(BaseModel):
    """Constant template text."""

    model_config = _STRICT
    kind: Literal["text"] = "text"
    text: str


class Read(BaseModel):
    """The value of a parameter (`{{review}}`), or fields of it (`{{review.summary}}`)."""

    model_config = _STRICT
    kind: Literal["read"] = "read"
    input: str
    path: list[str] = Field(default_factory=list)


class Generate(BaseModel):
    """Where the model generates an output (its first placeholder)."""

    model_config = _STRICT
    kind: Literal["generate"] = "generate"
    output: str


class Ref(BaseModel):
    """An output generated earlier in the same template, read again (or fields of it)."""

    model_config = _STRICT
    kind: Literal["ref"] = "ref"
    output: str
    path: list[str] = Field(default_factory=list)


class System(BaseModel):
    """The end of the template's system section: the segments before it are the system
    message (a chat model's system turn, a completion model's leading text)."""

    model_config = _STRICT
    kind: Literal["system"] = "system"


Segment = Annotated[Text | Read | Generate | Ref | System, Field(discriminator="kind")]


# -- input bindings: what an input node's value is in its graph


class Param(BaseModel):
    """The flow's parameter of this name (top graph only)."""

    model_config = _STRICT
    kind: Literal["param"] = "param"
    name: str


class Item(BaseModel):
    """The list element this instance of a map or `for` loop body runs on."""

    model_config = _STRICT
    kind: Literal["item"] = "item"


class Carried(BaseModel):
    """A loop-carried variable's value at the start of this iteration."""

    model_config = _STRICT
    kind: Literal["carried"] = "carried"
    name: str


class Port(BaseModel):
    """The parent node's argument at this index (a value captured from outside)."""

    model_config = _STRICT
    kind: Literal["port"] = "port"
    index: int


Binding = Annotated[Param | Item | Carried | Port, Field(discriminator="kind")]


class OutputSpec(BaseModel):
    name: str
    type: Type
    max_tokens: int | None = None
    stop: list[str] | None = None
    temperature: float | None = None
    seed: int | None = None
    from_inputs: dict[str, str] = Field(default_factory=dict)
    """Numeric options given by one of the function's inputs (`max_tokens=n`): option →
    input name, read when the call runs."""
    choices: str | list[str] | None = None
    """`choices=options`: the input whose strings (known at run time) the output is one
    of; or the strings themselves, from a constant (`choices=COLORS`)."""

    @model_serializer(mode="wrap")
    def _without_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`from_inputs` and `choices` left out when unused, so cache keys and template
        hashes (profiles) stay what they were."""
        data: dict[str, Any] = handler(self)
        if not self.from_inputs:
            data.pop("from_inputs", None)
        if self.choices is None:
            data.pop("choices", None)
        return data


class LLMCall(BaseModel):
    function: str
    params: list[str]
    outputs: list[OutputSpec]
    segments: list[Segment]
    model: str
    """The model that serves this call: the pin, else the program's default."""
    pinned: bool = False
    needs: dict[str, float] = Field(default_factory=dict)


# -- nodes: one class per kind, each with only its own fields


class _Node(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    id: str
    label: str
    type: Type
    args: list[str] = Field(default_factory=list)
    """Producer node ids in argument order (a producer may appear more than once)."""
    span: Span | None = None
    var: str | None = None
    """The flow variable this node's value is bound to, if any."""

    @property
    def bodies(self) -> dict[str, Graph]:
        """The subgraphs this node holds, by role ("body"; "then", "else")."""
        return {}


class InputNode(_Node):
    kind: Literal["input"] = "input"
    binding: Binding


class ConstNode(_Node):
    kind: Literal["const"] = "const"
    value: Any
    """JSON data."""


class LLMNode(_Node):
    kind: Literal["llm"] = "llm"
    call: LLMCall


class BuiltinNode(_Node):
    """An operator, a field access, a list or record, or a named builtin."""

    kind: Literal["builtin"] = "builtin"
    op: str
    """The operator ("+", "and"), "field", "index", "list", "record", "neg", "not", or
    the builtin's name."""
    field: str | None = None
    """op "field": the field read."""
    names: list[str] | None = None
    """op "record": its field names, in argument order. A named builtin: the keyword
    names of its last arguments."""
    bound: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments the optimizer fixed: a token builtin's tokenizer, where the
    program named none (`choose_tokenizers`)."""

    @property
    def static(self) -> Any:
        """What `stdlib.builtins.evaluate` takes beside the arguments."""
        return self.field if self.op == "field" else self.names


class ExternNode(_Node):
    kind: Literal["extern"] = "extern"
    extern: str
    """The Python function: `module:function`."""
    extern_single: bool = True
    """Returns its one output itself (not a dict of outputs)."""
    outputs: list[str]
    """Its declared output names."""


class MapNode(_Node):
    """args: the list, then what the body captures (its `Port` inputs)."""

    kind: Literal["map"] = "map"
    body: Graph
    """Outputs "value" (each kept item's result) and, with a filter, "where"."""

    @property
    def bodies(self) -> dict[str, Graph]:
        return {"body": self.body}


class BranchNode(_Node):
    """args: the condition, then what the branches capture."""

    kind: Literal["branch"] = "branch"
    then: Graph
    orelse: Graph
    """Both output every name the if exports."""

    @property
    def bodies(self) -> dict[str, Graph]:
        return {"then": self.then, "else": self.orelse}


class LoopNode(_Node):
    """args: the list (`for`), the carried variables' first values, then captures."""

    kind: Literal["loop"] = "loop"
    body: Graph
    """Outputs each carried variable's value after an iteration, by its name, and
    "until" (a keyword, so never a variable) if the loop has a stop condition."""
    loop_max: int | None = None
    """The iteration bound the program fixes (None: once per item of the list it runs
    over, or a bound read at run time)."""
    count_arg: bool = False
    """`repeat at most n` over an int value: args[0] is n, read as the loop starts."""
    carried: list[str] = Field(default_factory=list)
    """The names of its loop-carried variables, in argument order after the list or
    the count."""

    @property
    def over_list(self) -> bool:
        """A `for` loop: args[0] is the list it runs over, once per item."""
        return self.loop_max is None and not self.count_arg

    @property
    def first_carried(self) -> int:
        """The argument index of the first carried value (after the list or the count)."""
        return 1 if self.loop_max is None else 0

    @property
    def bodies(self) -> dict[str, Graph]:
        return {"body": self.body}


class OutputNode(_Node):
    kind: Literal["output"] = "output"
    name: str


IRNode = Annotated[
    InputNode
    | ConstNode
    | LLMNode
    | BuiltinNode
    | ExternNode
    | MapNode
    | BranchNode
    | LoopNode
    | OutputNode,
    Field(discriminator="kind"),
]
_BODY_FIELDS = {"body": "body", "then": "then", "else": "orelse"}
"""A subgraph's role in JSON and `bodies` → the node field holding it."""
_NODE = TypeAdapter(IRNode)


class Graph:
    """A dataflow graph. Node order in `nodes` is creation order, a topological order."""

    def __init__(self) -> None:
        self.g = nx.DiGraph()
        self.inputs: list[str] = []
        self.outputs: dict[str, str] = {}

    def add(self, node: IRNode) -> IRNode:
        self.g.add_node(node.id, node=node)
        self._link(node)
        if node.kind == "input":
            self.inputs.append(node.id)
        return node

    def rewire(self, old: str, new: str) -> None:
        """Make every reader of `old` read `new` instead (common-call elimination)."""
        for reader in list(self.g.successors(old)):
            node = self.node(reader)
            node.args = [new if a == old else a for a in node.args]
            self.g.remove_edge(old, reader)
            self._link(node)
        self.outputs = {k: new if v == old else v for k, v in self.outputs.items()}

    def remove(self, node_id: str) -> None:
        if node_id in self.inputs:
            self.inputs.remove(node_id)
        self.g.remove_node(node_id)

    def _link(self, node: IRNode) -> None:
        for port, src in enumerate(node.args):
            if not self.g.has_edge(src, node.id):
                producer = self.node(src)
                self.g.add_edge(src, node.id, var=producer.var or producer.label, ports=[])
            ports = self.g.edges[src, node.id]["ports"]
            if port not in ports:
                ports.append(port)

    def node(self, node_id: str) -> IRNode:
        return self.g.nodes[node_id]["node"]

    @property
    def nodes(self) -> list[IRNode]:
        return [data["node"] for _, data in self.g.nodes(data=True)]

    def walk(self) -> list[IRNode]:
        """Every node, including those of subgraphs (each node, then its subgraphs').
        With its own stack: subgraphs nest as deep as an else-if chain is long."""
        out: list[IRNode] = []
        stack = [iter(self.nodes)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            out.append(node)
            stack.extend(iter(body.nodes) for body in reversed(node.bodies.values()))
        return out

    def graphs(self) -> list[Graph]:
        """This graph and every subgraph in it, each before the subgraphs inside it."""
        out: list[Graph] = []
        stack: list[Graph] = [self]
        while stack:
            graph = stack.pop()
            out.append(graph)
            stack.extend(
                body for node in reversed(graph.nodes) for body in reversed(node.bodies.values())
            )
        return out

    @gc_paused()
    def copy(self) -> Graph:
        """A copy of the graph and its subgraphs whose nodes and edges can be changed
        without touching this one's (an optimizer pass rewires, removes nodes and sets
        call models). What no pass changes in place (types, spans, template segments)
        is shared, which keeps a 10,000-call plan's copy cheap. With a stack of
        subgraphs, not recursion: an else-if chain nests as deep as it is long."""
        top = Graph()
        pending: list[tuple[Graph, Graph]] = [(self, top)]
        while pending:
            source, target = pending.pop()
            target.inputs = list(source.inputs)
            target.outputs = dict(source.outputs)
            for node in source.nodes:
                update: dict[str, Any] = {"args": list(node.args)}
                if isinstance(node, LoopNode):
                    update["carried"] = list(node.carried)
                if isinstance(node, LLMNode):
                    update["call"] = node.call.model_copy()
                for key, body in node.bodies.items():
                    copied = update[_BODY_FIELDS[key]] = Graph()
                    pending.append((body, copied))
                target.g.add_node(node.id, node=node.model_copy(update=update))
            target.g.add_edges_from(
                (u, v, {**data, "ports": list(data["ports"])})
                for u, v, data in source.g.edges(data=True)
            )
        return top

    def to_json(self) -> dict[str, Any]:
        """The graph as JSON data. A node's bodies are named by id (`"n7/then"`) and listed
        flat in `subgraphs`, so the JSON nests a few levels deep however deeply the
        program's branches and loops do (a 10,000-long else-if chain included)."""
        top: dict[str, Any] = {}
        subgraphs: dict[str, Any] = {}
        pending: list[tuple[Graph, dict[str, Any]]] = [(self, top)]
        while pending:
            graph, data = pending.pop()
            nodes = []
            for node in graph.nodes:
                item = _node_json(node)
                if node.bodies:
                    item["bodies"] = {}
                    for key, body in node.bodies.items():
                        name = item["bodies"][key] = f"{node.id}/{key}"
                        subgraphs[name] = {}
                        pending.append((body, subgraphs[name]))
                nodes.append(item)
            data.update(
                nodes=nodes,
                edges=[
                    {"source": u, "target": v, "var": d["var"], "ports": d["ports"]}
                    for u, v, d in graph.g.edges(data=True)
                ],
                inputs=graph.inputs,
                outputs=graph.outputs,
            )
        if subgraphs:
            top["subgraphs"] = subgraphs
        return top


def _node_json(node: IRNode) -> dict[str, Any]:
    exclude = {"body", "then", "orelse"}
    data = node.model_dump(mode="json", exclude=exclude, exclude_none=True)
    data["id"], data["kind"], data["label"] = node.id, node.kind, node.label
    data["type"] = node.type.model_dump(mode="json")
    if isinstance(node, ConstNode):
        data["value"] = node.value  # None (an if's missing else) is a value here
    return data


class InputSpec(BaseModel):
    name: str
    type: Type
    default: Any = None
    required: bool = True


class PrefixGroup(BaseModel):
    """Calls on one model whose prompts start with the same text: the runtime runs them
    together and evaluates the shared prefix once."""

    id: str
    model: str
    calls: list[str]
    """Node ids; a call inside a map stands for all of its instances."""
    instances: int
    prefix_tokens: int
    """Estimated tokens every member's prompt starts with."""
    preview: str
    """The start of the shared prefix, for people."""


class Route(BaseModel):
    """A call whose model depends on the value of one of its inputs (Composition of
    Experts' category → model map), chosen from per-category measurements: a value the
    map does not name runs on the call's own model."""

    input: str
    """The call's parameter whose value picks the model."""
    models: dict[str, str]
    """Value (as text) → model name."""
    shares: dict[str, float] = Field(default_factory=dict)
    """Value → the share of the measured rows that had it, for estimates."""

    def model_for(self, value: Any, default: str) -> str:
        key = value if isinstance(value, str) else json.dumps(value)
        return self.models.get(key, default)


class Estimate(BaseModel):
    instances: float = 1.0
    input_tokens: float = 0.0
    cached_tokens: float = 0.0
    """Input tokens expected to come from a reused prefix."""
    output_tokens: float = 0.0
    dollars: float = 0.0
    seconds: float = 0.0
    """Model time, summed over instances."""

    def add(self, other: Estimate) -> None:
        for name in ("input_tokens", "cached_tokens", "output_tokens", "dollars", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Decision(BaseModel):
    """One thing an optimizer pass decided, and why (`llmflow plan --explain`)."""

    rule: str
    message: str
    node: str | None = None


class Plan(BaseModel):
    """What runs: the graph of one flow with every call's model decided."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    flow: str
    file: str
    base_dir: str
    """The main file's folder, where `extern` modules are looked up first."""
    inputs: list[InputSpec]
    outputs: dict[str, Type]
    graph: Graph
    models: dict[str, ModelSpec]
    default_model: str
    perf: dict[str, Literal["latency", "throughput"]] = Field(default_factory=dict)
    """Flow outputs marked @latency or @throughput."""

    # What the optimizer decided (empty at -O0).
    known: dict[str, Any] = Field(default_factory=dict)
    """Plan-time values of nodes (inputs given to `plan`, constants, what follows)."""
    objective: Literal["cost", "quality", "latency"] = "cost"
    budget: float | None = None
    groups: list[PrefixGroup] = Field(default_factory=list)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    """Call node id → the models that take it over, in order, if its own keeps failing."""
    routes: dict[str, Route] = Field(default_factory=dict)
    """Call node id → its model per value of one input, where measurements say so."""
    priorities: dict[str, float] = Field(default_factory=dict)
    """Node id → priority: higher runs first when calls wait for one model."""
    estimates: dict[str, Estimate] = Field(default_factory=dict)
    """Per call node (all its instances), before running."""
    total: Estimate | None = None
    makespan: float | None = None
    """Estimated seconds from start to the last output (the critical path)."""
    critical_path: list[str] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)

    evals: dict[str, EvalSpec] = Field(default_factory=dict)
    """The program's `eval` blocks of this flow (docs/evals.md): what `llmflow eval`
    runs. Not what a run does: a dataset run's plan digest leaves them out."""

    def known_length(self, node_id: str, graph: Graph | None = None) -> int | None:
        """How many items a list of `graph` (the plan's own by default) has before
        running: its known value's, or, for a map's results (a sample's), the length of
        the list it maps over."""
        graph = graph or self.graph
        while True:
            value = self.known.get(node_id)
            if isinstance(value, list):
                return len(value)
            if node_id not in graph.g:
                return None
            node = graph.node(node_id)
            if not isinstance(node, MapNode) or not node.args or "where" in node.body.outputs:
                return None  # a filtered map's results are fewer
            node_id = node.args[0]

    def copy(self) -> Plan:
        """A plan an optimizer pass may change without changing this one: the graph is
        copied (`Graph.copy`), the optimizer's tables are new containers of the same
        values (passes replace entries, never change them in place)."""
        return self.model_copy(
            update={
                "graph": self.graph.copy(),
                "models": dict(self.models),
                "known": dict(self.known),
                "groups": list(self.groups),
                "fallbacks": {k: list(v) for k, v in self.fallbacks.items()},
                "routes": dict(self.routes),
                "priorities": dict(self.priorities),
                "estimates": dict(self.estimates),
                "total": self.total.model_copy() if self.total is not None else None,
                "critical_path": list(self.critical_path),
                "decisions": list(self.decisions),
            }
        )

    def explain(self, rule: str, message: str, node: str | None = None) -> None:
        self.decisions.append(Decision(rule=rule, message=message, node=node))

    def group_of(self, node_id: str) -> PrefixGroup | None:
        return next((g for g in self.groups if node_id in g.calls), None)

    def calls(self) -> list[LLMNode]:
        return [n for n in self.graph.walk() if isinstance(n, LLMNode)]

    def models_used(self, fallbacks: bool = False) -> set[str]:
        """The models a run calls: each call's and its routes'; with `fallbacks`, also
        those that may take a failing call over."""
        names = {node.call.model for node in self.calls()}
        names.update(name for route in self.routes.values() for name in route.models.values())
        if fallbacks:
            names.update(name for taking_over in self.fallbacks.values() for name in taking_over)
        return names

    def to_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "file": self.file,
            "base_dir": self.base_dir,
            "inputs": [i.model_dump(mode="json") for i in self.inputs],
            "outputs": {k: t.model_dump(mode="json") for k, t in self.outputs.items()},
            "models": {k: m.model_dump(mode="json") for k, m in self.models.items()},
            "default_model": self.default_model,
            "perf": self.perf,
            "graph": self.graph.to_json(),
            "objective": self.objective,
            "budget": self.budget,
            "known_nodes": sorted(self.known),
            "known": {k: self.known[k] for k in sorted(self.known)},
            "groups": [g.model_dump() for g in self.groups],
            "fallbacks": self.fallbacks,
            "routes": {k: r.model_dump() for k, r in self.routes.items()},
            "priorities": self.priorities,
            "estimates": {k: e.model_dump() for k, e in self.estimates.items()},
            "total": self.total.model_dump() if self.total else None,
            "makespan": self.makespan,
            "critical_path": self.critical_path,
            "decisions": [d.model_dump(exclude_none=True) for d in self.decisions],
            "evals": {k: e.model_dump(mode="json") for k, e in self.evals.items()},
        }

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> Plan:
        """The plan `to_json` wrote (text or parsed data), ready to run without the
        source. Anything else, cut or hostile, raises PlanError naming the JSON path."""
        return _read_plan(data)


for _model in (MapNode, BranchNode, LoopNode):
    _model.model_rebuild()
for _model in (evalspec.JudgeMetric, evalspec.FieldsMetric, evalspec.EvalSpec, Plan):
    _model.model_rebuild(_types_namespace={"LLMCall": LLMCall, **vars(evalspec)})


_M = TypeVar("_M", bound=BaseModel)


class PlanError(LLMFlowError):
    """Plan JSON that is not a plan `Plan.to_json` could have written."""


_MAX_PLAN_CHARS = 1 << 30
"""Plan text longer than this (1 GiB) is refused before parsing."""


def _where(*loc: Any) -> str:
    """A JSON path for people: `graph.subgraphs["n7/then"].nodes[3].type`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "the plan"


def _fail(message: str, *loc: Any) -> PlanError:
    return PlanError(f"plan JSON: {_where(*loc)}: {message}")


def _validated(model: type[_M], data: Any, *loc: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise _fail(first["msg"] + more, *loc, *first["loc"]) from None


def _validated_node(data: Any, *loc: Any) -> IRNode:
    try:
        return _NODE.validate_python(data)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        inner = first["loc"]
        if inner[:1] == (data.get("kind"),):  # the union's tag
            inner = inner[1:]
        raise _fail(first["msg"] + more, *loc, *inner) from None


class _EdgeJSON(BaseModel):
    source: str
    target: str
    var: str
    ports: list[int]


class _GraphJSON(BaseModel):
    nodes: list[dict[str, Any]]
    edges: list[_EdgeJSON]
    inputs: list[str]
    outputs: dict[str, str]


def _read_plan(data: str | bytes | Mapping[str, Any]) -> Plan:
    from llmflow.runtime.values import InvalidValue, check_json

    if isinstance(data, str | bytes):
        if len(data) > _MAX_PLAN_CHARS:
            raise PlanError(f"plan JSON: longer than {_MAX_PLAN_CHARS} characters")
        try:
            data = json.loads(data)
        except RecursionError:
            raise PlanError("plan JSON: nested too deeply to read") from None
        except ValueError as err:  # JSONDecodeError, undecodable bytes, a huge int
            raise PlanError(f"plan JSON: not JSON: {err}") from None
    if not isinstance(data, Mapping):
        raise _fail(f"a {type(data).__name__}, not an object")
    known = data.get("known", {})
    try:  # each known value on its own: a value may nest as deep as any input may
        check_json({k: v for k, v in data.items() if k != "known"})
    except InvalidValue as err:
        raise PlanError(f"plan JSON: {err}") from None
    if not isinstance(known, Mapping):
        raise _fail(f"a {type(known).__name__}, not an object", "known")
    for key, value in known.items():
        try:
            check_json(value)
        except InvalidValue as err:
            raise _fail(str(err), "known", key) from None
    fields = {k: v for k, v in data.items() if k not in ("graph", "known", "known_nodes")}
    plan = _validated(Plan, {**fields, "graph": Graph()})
    if "graph" not in data:
        raise _fail("missing", "graph")
    plan.graph = _read_graphs(data["graph"])
    plan.known = dict(known)
    _check_references(plan)
    return plan


def _read_graphs(data: Any) -> Graph:
    """The top graph and its subgraphs (listed flat, named by `NODE/KEY`): each subgraph
    is the body of exactly one node, so bodies form a tree, never a cycle."""
    if not isinstance(data, Mapping):
        raise _fail(f"a {type(data).__name__}, not an object", "graph")
    subgraphs = data.get("subgraphs", {})
    if not isinstance(subgraphs, Mapping):
        raise _fail(f"a {type(subgraphs).__name__}, not an object", "graph", "subgraphs")
    used: set[str] = set()
    ids: set[str] = set()
    top = Graph()
    pending: list[tuple[Graph, Any, tuple[Any, ...]]] = [(top, data, ("graph",))]
    while pending:
        graph, gdata, loc = pending.pop()
        shape = _validated(_GraphJSON, gdata, *loc)
        for i, item in enumerate(shape.nodes):
            where = (*loc, "nodes", i)
            bodies = item.get("bodies", {})
            if not isinstance(bodies, Mapping):
                raise _fail(f"a {type(bodies).__name__}, not an object", *where, "bodies")
            fields = {k: v for k, v in item.items() if k != "bodies"}
            for key in bodies:
                if key not in _BODY_FIELDS:
                    raise _fail("not a subgraph role (body, then, else)", *where, "bodies", key)
                fields[_BODY_FIELDS[key]] = Graph()
            node = _validated_node(fields, *where)
            if node.id in ids:
                raise _fail(f"node id {node.id!r} is used twice", *where, "id")
            ids.add(node.id)
            for port, arg in enumerate(node.args):
                if arg not in graph.g:
                    raise _fail(
                        f"{arg!r} is not an earlier node of this graph", *where, "args", port
                    )
            graph.g.add_node(node.id, node=node)
            for key, name in bodies.items():
                if not isinstance(name, str) or name not in subgraphs:
                    raise _fail(f"{name!r} is not in graph.subgraphs", *where, "bodies", key)
                if name in used:
                    raise _fail(
                        f"subgraph {name!r} is the body of two nodes", *where, "bodies", key
                    )
                used.add(name)
                pending.append((node.bodies[key], subgraphs[name], ("graph", "subgraphs", name)))
        _read_edges(graph, shape, loc)
        for i, node_id in enumerate(shape.inputs):
            if node_id not in graph.g or graph.node(node_id).kind != "input":
                raise _fail(f"{node_id!r} is not an input node of this graph", *loc, "inputs", i)
        expected = [n.id for n in graph.nodes if n.kind == "input"]
        if shape.inputs != expected:
            raise _fail(f"lists {shape.inputs}, but the input nodes are {expected}", *loc, "inputs")
        graph.inputs = shape.inputs
        for name, node_id in shape.outputs.items():
            if node_id not in graph.g:
                raise _fail(f"{node_id!r} is not a node of this graph", *loc, "outputs", name)
        graph.outputs = dict(shape.outputs)
    if unused := sorted(set(subgraphs) - used):
        raise _fail("the body of no node", "graph", "subgraphs", unused[0])
    return top


def _read_edges(graph: Graph, shape: _GraphJSON, loc: tuple[Any, ...]) -> None:
    """The edges as written (their order and variable names), once they say what the
    nodes' args say: one edge per producer and reader, with the ports it feeds."""
    expected: dict[tuple[str, str], list[int]] = {}
    for node in graph.nodes:
        for port, src in enumerate(node.args):
            expected.setdefault((src, node.id), []).append(port)
    for i, edge in enumerate(shape.edges):
        pair = (edge.source, edge.target)
        if pair not in expected or graph.g.has_edge(*pair):
            raise _fail(
                f"{edge.source} → {edge.target} is not an argument of {edge.target!r}"
                if pair not in expected
                else "listed twice",
                *loc,
                "edges",
                i,
            )
        if sorted(edge.ports) != expected[pair]:
            raise _fail(
                f"{edge.target} reads {edge.source} at ports {expected[pair]}",
                *loc,
                "edges",
                i,
                "ports",
            )
        graph.g.add_edge(*pair, var=edge.var, ports=list(edge.ports))
    if missing := [p for p in expected if not graph.g.has_edge(*p)]:
        raise _fail(f"no edge {missing[0][0]} → {missing[0][1]}", *loc, "edges")


def _check_references(plan: Plan) -> None:
    """Node ids and model names the plan's decisions name exist."""
    ids = {n.id for n in plan.graph.walk()}

    def node(node_id: str, *loc: Any) -> None:
        if node_id not in ids:
            raise _fail(f"{node_id!r} is not a node of the plan", *loc)

    def model(name: str, *loc: Any) -> None:
        if name not in plan.models:
            raise _fail(f"{name!r} is not one of the plan's models", *loc)

    model(plan.default_model, "default_model")
    for n in plan.calls():
        if n.call.model not in plan.models:
            raise _fail(
                f"node {n.id} runs on {n.call.model!r}, not one of the plan's models", "graph"
            )
    for key in plan.known:  # a body's constants are known too
        node(key, "known", key)
    for i, group in enumerate(plan.groups):
        model(group.model, "groups", i, "model")
        for j, call in enumerate(group.calls):
            node(call, "groups", i, "calls", j)
    for key, fallbacks in plan.fallbacks.items():
        node(key, "fallbacks", key)
        for j, name in enumerate(fallbacks):
            model(name, "fallbacks", key, j)
    calls = {n.id: n for n in plan.calls()}
    for key, route in plan.routes.items():
        if key not in calls:
            raise _fail(f"{key!r} is not a call of the plan", "routes", key)
        if route.input not in calls[key].call.params:
            raise _fail(f"{route.input!r} is not an input of {key}", "routes", key, "input")
        for value, name in route.models.items():
            model(name, "routes", key, "models", value)
    for table in ("priorities", "estimates"):
        for key in getattr(plan, table):
            node(key, table, key)
    for i, key in enumerate(plan.critical_path):
        node(key, "critical_path", i)
    for name, spec in plan.evals.items():
        if spec.flow != plan.flow:
            raise _fail(f"scores flow {spec.flow!r}, not this plan's", "evals", name, "flow")
        for output, metric in spec.metrics.items():
            if output not in plan.outputs:
                raise _fail("not an output of the plan's flow", "evals", name, "metrics", output)
            for judge in evalspec.judges_of(metric):
                if judge.call is None:
                    raise _fail("a judge without its call", "evals", name, "metrics", output)
                model(judge.call.model, "evals", name, "metrics", output)

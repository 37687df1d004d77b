"""The IR: a dataflow graph whose edges are semantic variables, and the Plan around it.

A `Graph` is a `networkx.DiGraph` of `IRNode`s. A node's `args` list the producers of its
inputs in order (the edges say the same, for analysis and drawing). `map`, `branch` and
`loop` nodes hold subgraphs that the runtime expands once their list or condition is
known; a subgraph reads its parent node's arguments through `input` nodes.
"""

from __future__ import annotations

from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from llmflow.compiler.ast import Span
from llmflow.compiler.heap import gc_paused
from llmflow.compiler.models import ModelSpec
from llmflow.compiler.types import Type

NodeKind = Literal["input", "const", "llm", "builtin", "extern", "map", "branch", "loop", "output"]


class Segment(BaseModel):
    """One piece of a template: constant text, an input read, or an output."""

    text: str | None = None
    input: str | None = None
    """Reads this parameter."""
    output: str | None = None
    """Generates this output here (its first placeholder)."""
    ref: str | None = None
    """Reads an output generated earlier in the same template."""
    path: list[str] = Field(default_factory=list)
    """Fields selected from the input or output (`{{review.summary}}`)."""


class OutputSpec(BaseModel):
    name: str
    type: Type
    max_tokens: int | None = None
    stop: list[str] | None = None
    temperature: float | None = None
    seed: int | None = None


class LLMCall(BaseModel):
    function: str
    params: list[str]
    outputs: list[OutputSpec]
    segments: list[Segment]
    model: str
    """The model that serves this call: the pin, else the program's default."""
    pinned: bool = False
    needs: dict[str, float] = Field(default_factory=dict)


class IRNode(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str
    kind: NodeKind
    label: str
    type: Type
    args: list[str] = Field(default_factory=list)
    """Producer node ids in argument order (a producer may appear more than once)."""
    span: Span | None = None
    var: str | None = None
    """The flow variable this node's value is bound to, if any."""
    op: str | None = None
    """builtin: the operator or builtin name; input: how it is bound (see `value`)."""
    value: Any = None
    """const: the value. input: a flow parameter name, "item", "carried:NAME" or
    "port:K" (the K-th argument of the parent node). output: the output's name.
    builtin field/record: the field name(s). builtin with keywords: their names."""
    call: LLMCall | None = None
    extern: str | None = None
    extern_single: bool = True
    bodies: dict[str, Graph] = Field(default_factory=dict)
    """map: "body". branch: "then", "else". loop: "body"."""
    loop_max: int | None = None
    """loop: the iteration bound (None: once per item of the list it runs over)."""
    carried: list[str] = Field(default_factory=list)
    """loop: the names of its loop-carried variables, in argument order after the list."""


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
                update: dict[str, Any] = {"args": list(node.args), "carried": list(node.carried)}
                if node.call is not None:
                    update["call"] = node.call.model_copy()
                if node.bodies:
                    update["bodies"] = {key: Graph() for key in node.bodies}
                    pending.extend(
                        (body, update["bodies"][key]) for key, body in node.bodies.items()
                    )
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
    data = node.model_dump(mode="json", exclude={"bodies"}, exclude_none=True)
    data["id"], data["kind"], data["label"] = node.id, node.kind, node.label
    data["type"] = node.type.model_dump(mode="json")
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
    priorities: dict[str, float] = Field(default_factory=dict)
    """Node id → priority: higher runs first when calls wait for one model."""
    estimates: dict[str, Estimate] = Field(default_factory=dict)
    """Per call node (all its instances), before running."""
    total: Estimate | None = None
    makespan: float | None = None
    """Estimated seconds from start to the last output (the critical path)."""
    critical_path: list[str] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)

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

    def calls(self) -> list[IRNode]:
        return [n for n in self.graph.walk() if n.kind == "llm"]

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
            "groups": [g.model_dump() for g in self.groups],
            "fallbacks": self.fallbacks,
            "priorities": self.priorities,
            "estimates": {k: e.model_dump() for k, e in self.estimates.items()},
            "total": self.total.model_dump() if self.total else None,
            "makespan": self.makespan,
            "critical_path": self.critical_path,
            "decisions": [d.model_dump(exclude_none=True) for d in self.decisions],
        }


IRNode.model_rebuild()

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
        for port, src in enumerate(node.args):
            if self.g.has_edge(src, node.id):
                self.g.edges[src, node.id]["ports"].append(port)
            else:
                producer = self.node(src)
                self.g.add_edge(src, node.id, var=producer.var or producer.label, ports=[port])
        if node.kind == "input":
            self.inputs.append(node.id)
        return node

    def node(self, node_id: str) -> IRNode:
        return self.g.nodes[node_id]["node"]

    @property
    def nodes(self) -> list[IRNode]:
        return [data["node"] for _, data in self.g.nodes(data=True)]

    def walk(self) -> list[IRNode]:
        """Every node, including those of subgraphs."""
        out: list[IRNode] = []
        for node in self.nodes:
            out.append(node)
            for body in node.bodies.values():
                out.extend(body.walk())
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [_node_json(n) for n in self.nodes],
            "edges": [
                {"source": u, "target": v, "var": d["var"], "ports": d["ports"]}
                for u, v, d in self.g.edges(data=True)
            ],
            "inputs": self.inputs,
            "outputs": self.outputs,
        }


def _node_json(node: IRNode) -> dict[str, Any]:
    data = node.model_dump(mode="json", exclude={"bodies"}, exclude_none=True)
    data["id"], data["kind"], data["label"] = node.id, node.kind, node.label
    data["type"] = node.type.model_dump(mode="json")
    if node.bodies:
        data["bodies"] = {k: g.to_json() for k, g in node.bodies.items()}
    return data


class InputSpec(BaseModel):
    name: str
    type: Type
    default: Any = None
    required: bool = True


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
            "graph": self.graph.to_json(),
        }


IRNode.model_rebuild()

"""What the optimizer knows about a call's prompt before it runs: how it starts (the
shared-prefix question), how long it is, and how many instances of the call will run.

A prompt is a list of parts: constant text (template text, and inputs whose values are
known at plan time) and references to values produced at run time, each with an
estimated size. Two calls share a prefix as far as their parts agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from llmflow.compiler import ir
from llmflow.compiler import tokens as estimate_tokens
from llmflow.compiler.ir import Graph, IRNode, LLMNode, LoopNode, MapNode, OutputSpec, Plan
from llmflow.compiler.types import EnumT, ListT, OptionalT, Prim, RecordT, Type, UnionT
from llmflow.stdlib.builtins import select, to_text

DEFAULT_MAP_ITEMS = 4
"""Items assumed for a map over a list not known at plan time."""
DEFAULT_REPEATS = 4
"""Iterations assumed for `repeat at most n` when n is not known at plan time (a loop
with a fixed bound is counted at its bound: `until` may stop it sooner)."""


def tokens(text: str) -> float:
    """About how many tokens a text is (`llmflow.compiler.tokens.typical`)."""
    return estimate_tokens.typical(text)


def typical_tokens(t: Type) -> float:
    """Size of a value of this type not known at plan time."""
    match t:
        case Prim(name="str", max_len=int() as most):
            return min(200.0, most / 3)
        case Prim(name="str"):
            return 200.0
        case ListT(item=item, max_items=int() as most):
            return min(DEFAULT_MAP_ITEMS, most) * (typical_tokens(item) + 2)
        case ListT(item=item):
            return DEFAULT_MAP_ITEMS * (typical_tokens(item) + 2)
        case RecordT(fields=fields):
            return sum(typical_tokens(ft) + 4 for _, ft in fields)
        case OptionalT(item=item):
            return typical_tokens(item)
        case UnionT(options=options):
            return max(typical_tokens(o) for o in options)
    return 2.0


DEFAULT_INPUT_MAX_TOKENS = 256
"""The output length assumed for `max_tokens=n` when `n` is not known at plan time."""


def expected_output_tokens(spec: OutputSpec, known: dict[str, Any] | None = None) -> float:
    """Output length used in estimates: its max_tokens if set (`known`, for one an input
    gives: its value by input name when known at plan time, else a stated default), else
    a typical length."""
    if spec.max_tokens is not None:
        return float(spec.max_tokens)
    if "max_tokens" in spec.from_inputs:
        value = (known or {}).get(spec.from_inputs["max_tokens"])
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return float(value) if ok else float(DEFAULT_INPUT_MAX_TOKENS)
    match spec.type:
        case Prim(name="str"):
            return 256.0
        case EnumT() | Prim():
            return 3.0
    return typical_tokens(spec.type) * 1.5


@dataclass(frozen=True)
class Ref:
    """A value known only at run time. `varies`: it differs between instances of the
    call (a map item, a loop iteration), so sharing stops there."""

    key: str
    tokens: float
    varies: bool


Part = str | Ref

SYSTEM_START = Ref("<system>", 0.0, False)
SYSTEM_END = Ref("</system>", 0.0, False)
"""Where a prompt's system section starts and ends: a prompt shares a prefix with another
across them only if both have a system section there (a chat template wraps the system
turn in tokens of its own; a completion model's system text ends in a blank line)."""


@dataclass
class Shape:
    node: LLMNode
    prefix: list[Part]
    """The prompt up to its first generated output."""
    input_tokens: float
    """The whole prompt an instance reads (outputs generated before later ones included)."""
    output_tokens: float
    instances: float

    @cached_property
    def shared_prefix(self) -> list[Part]:
        """The part of the prefix every instance of this call starts with."""
        out: list[Part] = []
        for part in self.prefix:
            if isinstance(part, Ref) and part.varies:
                break
            out.append(part)
        return out

    @cached_property
    def shared_tokens(self) -> float:
        return sum(tokens(p) if isinstance(p, str) else p.tokens for p in self.shared_prefix)


def common_tokens(a: list[Part], b: list[Part]) -> float:
    """Estimated tokens two prompt prefixes have in common."""
    total = 0.0
    for pa, pb in zip(a, b, strict=False):
        if isinstance(pa, str) and isinstance(pb, str):
            n = _common_length(pa, pb)
            total += tokens(pa[:n])
            if n < len(pa) or n < len(pb):
                break
        elif isinstance(pa, Ref) and pa == pb and not pa.varies:
            total += pa.tokens
        else:
            break
    return total


def _common_length(a: str, b: str) -> int:
    """How many characters two strings start with in common: a binary search over slice
    comparisons (done in C), not a Python loop over characters."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid - 1
    return low


class Shapes:
    """The shape of every call in a plan, computed once per optimizer run."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.shapes: dict[str, Shape] = {}
        self.item_tokens: dict[str, float] = {}
        """Average size of the items of a list known at plan time, by `item` input node."""
        self.item_values: dict[str, list[Any]] = {}
        """Every value an `item` input node takes over all instances of its body, when the
        list is known: a nested map over a known list of lists then runs exactly as often."""
        self.owner: dict[str, Graph] = {}
        """The graph each node is in."""
        self.assumed: dict[str, list[str]] = {}
        """By call node: `max_tokens=NAME` options whose input is not known at plan time
        (estimated at DEFAULT_INPUT_MAX_TOKENS)."""
        self._walk(plan.graph)

    def __getitem__(self, node_id: str) -> Shape:
        return self.shapes[node_id]

    def _walk(self, top: Graph) -> None:
        """Every graph with a stack, not recursion (subgraphs nest as deep as an else-if
        chain is long). Node ids are unique in a plan, so one map and one set serve all
        graphs: `outer`, input node id → the producer it stands for in the enclosing
        graphs; `varies`, nodes whose value differs between instances of their graph."""
        outer: dict[str, str] = {}
        varies: set[str] = set()
        stack: list[tuple[Graph, float]] = [(top, 1.0)]
        while stack:
            graph, instances = stack.pop()
            for node in graph.nodes:
                self.owner[node.id] = graph
                if any(a in varies for a in node.args):
                    varies.add(node.id)
                if isinstance(node, ir.InputNode) and isinstance(
                    node.binding, ir.Item | ir.Carried
                ):
                    varies.add(node.id)
            inner: list[tuple[Graph, float]] = []
            for node in graph.nodes:
                if isinstance(node, LLMNode):
                    self.shapes[node.id] = self._shape(graph, node, outer, varies, instances)
                for key, body in node.bodies.items():
                    items = self._known_list(node.args[0], outer) if node.args else None
                    for inp in body.inputs:
                        binding = body.node(inp).binding  # type: ignore[union-attr]
                        if isinstance(binding, ir.Item) and isinstance(items, list) and items:
                            self.item_values[inp] = items
                            self.item_tokens[inp] = sum(tokens(to_text(i)) for i in items) / len(
                                items
                            )
                        if isinstance(binding, ir.Port):
                            source = node.args[binding.index]
                            outer[inp] = outer.get(source, source)
                            if source in varies:
                                varies.add(inp)
                    per = (
                        self.known_count(node, outer)
                        if isinstance(node, LoopNode) and node.count_arg
                        else self._per_instance(node, outer, items)
                    )
                    inner.append((body, instances * self._repeats(node, key, per)))
            stack.extend(reversed(inner))

    def _known_list(self, source: str, outer: dict[str, str]) -> Any:
        """The list a map runs over if known: a value known at plan time, or (inside an
        outer map over a known list) the items of that list taken all together."""
        key = outer.get(source, source)
        if key in self.plan.known:
            return self.plan.known[key]
        values = self.item_values.get(key)
        if values and all(isinstance(v, list) for v in values):
            return [item for v in values for item in v]
        return None

    def _per_instance(self, node: IRNode, outer: dict[str, str], items: Any) -> float | None:
        """How many items the list has in one instance of the node's graph: the average
        over the outer map's items when it is one of them, which times the outer count
        is the exact total."""
        if not node.args:
            return None
        key = outer.get(node.args[0], node.args[0])
        if not isinstance(items, list):  # a map over a sample's results
            length = self.plan.known_length(key, self.owner.get(key))
            return None if length is None else float(length)
        if key in self.plan.known:
            return float(len(items))
        return len(items) / len(self.item_values[key])

    def known_count(self, node: LoopNode, outer: dict[str, str]) -> float | None:
        """The count a `repeat at most n` reads, if known at plan time: its value, or
        (inside an outer map over known ints) their average."""
        key = outer.get(node.args[0], node.args[0])
        values = [self.plan.known[key]] if key in self.plan.known else self.item_values.get(key)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None
        return max(0.0, sum(values) / len(values))

    def _repeats(self, node: IRNode, key: str, per_instance: float | None) -> float:
        if isinstance(node, MapNode) or (isinstance(node, LoopNode) and node.over_list):
            return float(DEFAULT_MAP_ITEMS) if per_instance is None else per_instance
        if isinstance(node, LoopNode) and node.count_arg:
            return float(DEFAULT_REPEATS) if per_instance is None else per_instance
        if isinstance(node, LoopNode):
            return float(node.loop_max or 1)
        return 0.5 if key in ("then", "else") else 1.0

    def _shape(
        self, graph: Graph, node: LLMNode, outer: dict[str, str], varies: set[str], instances: float
    ) -> Shape:
        call = node.call
        sources = dict(zip(call.params, node.args, strict=True))
        specs = {o.name: o for o in call.outputs}
        known = {
            name: self.plan.known[outer.get(source, source)]
            for name, source in sources.items()
            if outer.get(source, source) in self.plan.known
        }
        for name, source in sources.items():
            values = self.item_values.get(outer.get(source, source))
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                known[name] = sum(values) / len(values)  # an item: its average over the list
        prefix: list[Part] = []
        in_prefix = True
        input_tokens = output_tokens = 0.0
        generated = 0
        if any(isinstance(segment, ir.System) for segment in call.segments):
            prefix.append(SYSTEM_START)
        for segment in call.segments:
            part: Part | None = None
            if isinstance(segment, ir.Text):
                part = segment.text
            elif isinstance(segment, ir.Read):
                part = self._part(graph, sources[segment.input], segment.path, outer, varies)
            elif isinstance(segment, ir.Ref):
                part = Ref(
                    f"{node.id}.{segment.output}",
                    expected_output_tokens(specs[segment.output], known),
                    True,
                )
            elif isinstance(segment, ir.System):
                part = SYSTEM_END
            else:
                in_prefix = False
                spec = specs[segment.output]
                out = expected_output_tokens(spec, known)
                name = spec.from_inputs.get("max_tokens")
                if name is not None and name not in known:
                    self.assumed.setdefault(node.id, []).append(f"{spec.name} | max_tokens={name}")
                output_tokens += out
                generated += 1
                if generated == len(specs):
                    break
                input_tokens += out  # a later output reads the earlier ones
                continue
            size = tokens(part) if isinstance(part, str) else part.tokens
            input_tokens += size
            if in_prefix:
                if isinstance(part, str) and prefix and isinstance(prefix[-1], str):
                    prefix[-1] += part
                else:
                    prefix.append(part)
        return Shape(node, prefix, input_tokens, output_tokens, instances)

    def _part(
        self, graph: Graph, source: str, path: list[str], outer: dict[str, str], varies: set[str]
    ) -> Part:
        key = outer.get(source, source)
        if key in self.plan.known:
            return to_text(select(self.plan.known[key], path))
        producer = graph.node(source)
        t = producer.type
        for name in path:
            t = t.field(name) if isinstance(t, RecordT) and t.field(name) else t
        size = self.item_tokens.get(source, typical_tokens(t))
        if isinstance(producer, LLMNode) and len(producer.call.outputs) == 1:
            size = expected_output_tokens(producer.call.outputs[0])
        return Ref(".".join([key, *path]), size, source in varies)

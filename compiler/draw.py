"""Draw a Plan with Graphviz: the calls, coloured by the model the optimizer gave them.

What the picture shows:

- a call (`llm` node) is a box filled with its model's colour (a colour-blind-safe
  palette), labelled with its function, model, estimated tokens, dollars and seconds;
- the title block names the flow, its totals and the objective, with a legend of models;
- a prefix group is a dashed cluster around its calls, when they sit in one subgraph (or
  its calls fill whole `map`/`if`/loop subgraphs of one); otherwise its calls carry a tag;
- a `map` is one header node with its item count (`map q in questions ×8`) and its body
  drawn once in a cluster; a loop likewise, with dashed edges carrying the values of the
  next iteration back; an `if` is a hexagon holding its condition, with a cluster for
  each branch; a map without calls (`[r.answer for r in results]`) is one small node;
- edges carry the semantic variable; the critical path is drawn thick and red (the
  top-level path the optimizer found, continued inside the subgraphs on it);
- inputs are arrow shapes, outputs double boxes, builtins small and grey. Field reads,
  the values a subgraph receives from outside (drawn as edges from their producers),
  constants and the expressions of conditions are folded into edges and labels, so the
  picture stays about the calls.

The layout runs top to bottom; `render_plan` picks the format from the file's suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import graphviz

from llmflow.compiler import prices
from llmflow.compiler.ir import (
    Estimate,
    Graph,
    InputNode,
    IRNode,
    Item,
    LLMNode,
    LoopNode,
    Plan,
    Port,
    PrefixGroup,
)
from llmflow.compiler.models import ModelSpec
from llmflow.compiler.optimizer.prioritize import critical_path
from llmflow.compiler.optimizer.prompts import DEFAULT_MAP_ITEMS, DEFAULT_REPEATS
from llmflow.compiler.picture import (
    CRITICAL,
    FONT,
    MUTED,
    darker,
    escape,
    fmt_dollars,
    fmt_seconds,
    fmt_tokens,
    font,
    model_colors,
    shorten,
    write_graph,
)
from llmflow.compiler.types import EnumT

UNASSIGNED = "#DDDDDD"
EDGE = "#666666"
INPUT_EDGE = "#9AA8B8"
EXIT = "<exit>"
"""Stands for "leaves its subgraph" in the edge chains used to find critical edges."""

_BINARY = {"+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "??"}
DRAW_DEPTH = 12
"""Subgraphs nested deeper than this (a long else-if chain) are not drawn: the compound
node there is one box that says so. This also bounds the drawer's recursion."""


def render_plan(plan: Plan, path: Path) -> Path:
    """Draw the plan into `path`; the suffix picks the format (.svg .png .pdf .dot)."""
    return write_graph(draw(plan), path, "a plan")


def draw(plan: Plan) -> graphviz.Digraph:
    """The plan as a Graphviz graph (`.source` is its DOT text)."""
    return _Drawer(plan).draw()


# ---- formatting --------------------------------------------------------------------------


def _per_million(price: float) -> str:
    return f"${price:.2f}" if round(price, 2) == price else f"${price:g}"


def _count(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def _price_unknown(model: ModelSpec) -> bool:
    """A model whose price is not known: the optimizer counts the unknown part as free
    (and a budget refuses the model), so the picture says so rather than calling it free."""
    return not model.capabilities.free and not prices.priced(model)


def _price_text(model: ModelSpec) -> str:
    """The legend's price per million tokens, as the optimizer counts it."""
    if _is_free(model):
        return "free"
    if not _price_unknown(model):
        return (
            f"{_per_million(prices.price_in(model))} in · "
            f"{_per_million(prices.price_out(model))} out"
        )
    if model.price_in is None and model.price_out is None:
        return "unknown (counted as free)"
    sides = [
        f"{side} unknown" if price is None else f"{_per_million(price)} {side}"
        for side, price in (("in", model.price_in), ("out", model.price_out))
    ]
    return " · ".join(sides) + " (counted as free)"


def _is_free(model: ModelSpec) -> bool:
    """Calls on the model cost nothing: its backend says so, or both prices are 0."""
    return model.capabilities.free or (
        prices.priced(model) and prices.price_in(model) == 0 and prices.price_out(model) == 0
    )


def _rows(*rows: str) -> str:
    """An HTML-like label of centred rows (already escaped)."""
    body = "".join(f"<TR><TD>{r}</TD></TR>" for r in rows if r)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{body}</TABLE>>'


# ---- the drawing -------------------------------------------------------------------------


@dataclass
class _Box:
    """A DOT subgraph being assembled: its nodes and nested clusters."""

    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    nodes: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    children: list[_Box] = field(default_factory=list)


@dataclass
class _Edge:
    attrs: dict[str, str]
    labels: list[str] = field(default_factory=list)
    critical: bool = False


Chain = tuple[tuple[int, str, str], ...]
"""The IR edges (graph id, source, target) one drawn edge stands for."""
Leaf = tuple[str, Chain, str]
"""A node an expression folded into a label reads: its id, the IR edges up to the
expression's reader, and the name the expression gives it."""


class _Drawer:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        assigned = {n.call.model for n in plan.calls()}
        # By declaration order, so a model keeps its colour in every plan of the program.
        declared = model_colors([*plan.models, *sorted(assigned - set(plan.models))])
        self.colors = {name: color for name, color in declared.items() if name in assigned}
        # Where every node lives: its graph, the graphs above it, the compound owning each.
        self.graph_of: dict[str, Graph] = {}
        self.path_of: dict[str, list[Graph]] = {}
        self.owner: dict[int, IRNode] = {}
        self.parent: dict[int, Graph] = {}
        self.compact: dict[str, str] = {}
        """Maps without calls, and compound nodes nested too deep, drawn as one small
        node: their text."""
        self._fold_deep(plan.graph)
        self._index(plan.graph, [plan.graph])
        self.names = {n.id: n.var or n.label for n in plan.graph.walk()}
        # Nodes folded into an edge or a label, and the text of folded conditions.
        self.absorbed: set[str] = set()
        self.conditions: dict[str, tuple[str, list[Leaf]]] = {}
        self._fold_conditions(plan.graph)
        self.group_home: dict[str, int] = {}
        self.group_box_of: dict[str, str] = {}
        self.tagged: dict[str, str] = {}
        self._place_groups()
        self.critical_pairs: set[tuple[int, str, str]] = set()
        self.critical_nodes: set[str] = set()
        self._mark_critical(plan.graph, plan.critical_path)
        self.drawn: set[str] = set()
        self.edges: dict[tuple[str, str, str], _Edge] = {}
        self.pairs: set[tuple[str, str]] = set()
        """The (source, target) pairs of `edges`."""

    # -- structure

    def _fold_deep(self, top: Graph) -> None:
        stack = [(top, 0)]
        while stack:
            graph, depth = stack.pop()
            for node in graph.nodes:
                if not node.bodies:
                    continue
                if depth < DRAW_DEPTH:
                    stack.extend((body, depth + 1) for body in node.bodies.values())
                    continue
                calls = len(self._calls_in(node))
                more = f"{calls} call{'s' if calls != 1 else ''}" if calls else "no calls"
                self.compact[node.id] = f"{node.label} … ({more} nested deeper, not drawn)"

    def _index(self, graph: Graph, path: list[Graph]) -> None:
        for node in graph.nodes:
            self.graph_of[node.id] = graph
            self.path_of[node.id] = path
            if node.id in self.compact:
                continue
            for body in node.bodies.values():
                self.owner[id(body)] = node
                self.parent[id(body)] = graph
                self._index(body, [*path, body])

    def _calls_in(self, node: IRNode) -> set[str]:
        return {n.id for b in node.bodies.values() for n in b.walk() if n.kind == "llm"}

    # -- folding conditions into labels

    def _fold_conditions(self, graph: Graph) -> None:
        for node in graph.nodes:
            if node.kind == "branch":
                self.conditions[node.id] = self._fold(graph, node.args[0], node.id)
            if node.id in self.compact or (node.kind == "map" and self._fold_map(node)):
                continue
            for body in node.bodies.values():
                for output in ("until", "where"):
                    if output in body.outputs:  # read by the runtime only
                        self.conditions[f"{node.id}:{output}"] = self._fold(
                            body, body.outputs[output], None, root=True
                        )
                self._fold_conditions(body)

    def _fold_map(self, node: IRNode) -> bool:
        """A map without calls whose body is a small expression of its item and outer
        values (`[r.answer for r in results]`) is drawn as one small node."""
        body = node.bodies["body"]
        if any(n.kind in ("llm", "extern") or n.bodies for n in body.nodes):
            return False
        before = set(self.absorbed)
        value, leaves = self._fold(body, body.outputs["value"], None, root=True)
        where = None
        if "where" in body.outputs:
            where, more = self._fold(body, body.outputs["where"], None, root=True)
            leaves = leaves + more
        if any(body.node(leaf).kind != "input" for leaf, _, _ in leaves):
            self.absorbed = before
            return False
        item = next((body.node(i).label for i in body.inputs if _is_item(body.node(i))), "_")
        source = self.names.get(self._outer_any(node.args[0]), "…")
        text = f"[{value} for {item} in {source}" + (f" if {where}" if where else "") + "]"
        self.compact[node.id] = shorten(text, 60)
        return True

    def _fold(
        self, graph: Graph, node_id: str, reader: str | None, root: bool = False, depth: int = 0
    ) -> tuple[str, list[Leaf]]:
        """An expression's text and its leaves (node, IR edges up to the reader, label).
        Builtins and constants read by this expression alone are folded into the text."""
        node = graph.node(node_id)
        hop: Chain = ((id(graph), node_id, reader),) if reader is not None else ()
        exported = list(graph.outputs.values()).count(node_id)
        foldable = (root or graph.g.out_degree(node_id) == 1) and exported <= int(root)
        if node.kind == "const" and foldable:
            self.absorbed.add(node_id)
            value = node.value
            text = str(value) if isinstance(node.type, EnumT) else repr(value)
            return shorten(text, 24), []
        if node.kind == "builtin" and foldable and depth < 4:
            op = node.op or ""
            source = graph.node(node.args[0]) if node.args else None
            if op == "field" and source is not None and not source.bodies:
                if node.var:
                    text = node.var
                    leaves = [(node.args[0], ((id(graph), node.args[0], node_id),), text)]
                else:
                    inner, leaves = self._fold(graph, node.args[0], node_id, depth=depth + 1)
                    text = f"{inner}.{node.field}"
                self.absorbed.add(node_id)
                return text, [(leaf, chain + hop, label) for leaf, chain, label in leaves]
            if op != "field" and (op in _BINARY or op in ("not", "neg") or not node.names):
                parts = [self._fold(graph, a, node_id, depth=depth + 1) for a in node.args]
                texts = [p[0] for p in parts]
                if op in _BINARY and len(texts) == 2:
                    text = f"{texts[0]} {op} {texts[1]}"
                elif op == "not":
                    text = f"not {texts[0]}"
                elif op == "neg":
                    text = f"-{texts[0]}"
                elif op == "list":
                    text = f"[{', '.join(texts)}]"
                elif op == "index" and len(texts) == 2:
                    text = f"{texts[0]}[{texts[1]}]"
                else:
                    text = f"{op}({', '.join(texts)})"
                self.absorbed.add(node_id)
                leaves = [(leaf, chain + hop, label) for p in parts for leaf, chain, label in p[1]]
                return text, leaves
        name = self.names.get(node_id, node.label)
        return name, [(node_id, hop, name)]

    # -- prefix groups

    def _place_groups(self) -> None:
        """A group becomes a cluster in the deepest subgraph holding all its calls, if each
        call there is either directly in it or inside a compound node holding only calls of
        the group; otherwise each of its calls is tagged with the group's id."""
        for group in self.plan.groups:
            members = [c for c in group.calls if c in self.path_of]
            if not members:
                continue
            paths = [self.path_of[c] for c in members]
            common = 0
            while all(len(p) > common for p in paths) and len({id(p[common]) for p in paths}) == 1:
                common += 1
            home = paths[0][common - 1]
            inside: set[str] = set()
            ok = True
            for call, path in zip(members, paths, strict=True):
                if len(path) == common:
                    inside.add(call)
                    continue
                compound = self.owner[id(path[common])]
                if not self._calls_in(compound) <= set(group.calls):
                    ok = False
                    break
                inside.add(compound.id)
            if ok:
                self.group_home[group.id] = id(home)
                for node_id in inside:
                    self.group_box_of[node_id] = group.id
            else:
                for call in members:
                    self.tagged[call] = group.id

    # -- the critical path

    def _mark_critical(self, graph: Graph, path: list[str]) -> None:
        self.critical_nodes.update(path)
        for u, v in zip(path, path[1:], strict=False):
            self.critical_pairs.add((id(graph), u, v))
        for node_id in path:
            node = graph.node(node_id)
            if node_id in self.compact:
                continue
            paths = [(body, self._inner_path(body)) for body in node.bodies.values()]
            if node.kind == "branch" and paths:  # the slower branch
                paths = [max(paths, key=lambda bp: self._priority(bp[1][0]) if bp[1] else -1.0)]
            for body, body_path in paths:
                for n in body_path:
                    self.critical_pairs.add((id(body), n, EXIT))
                # Whatever the subgraph receives, its first node on the path waits for all of it.
                first = next((n for n in body_path if body.node(n).kind != "input"), None)
                if first is not None:
                    for arg in body.node(first).args:
                        if body.node(arg).kind == "input":
                            self.critical_pairs.add((id(body), arg, first))
                self._mark_critical(body, body_path)

    def _priority(self, node_id: str) -> float:
        return self.plan.priorities.get(node_id, 0.0)

    def _inner_path(self, body: Graph) -> list[str]:
        """The critical path inside a subgraph, followed as the optimizer follows the
        top-level one, by the priorities it gave (none at -O0: no path)."""
        prio = self.plan.priorities
        if not prio:
            return []
        return critical_path(body, {n: prio.get(n, 0.0) for n in body.g.nodes})

    # -- assembling

    def draw(self) -> graphviz.Digraph:
        root = _Box("root")
        self._layout(self.plan.graph, root)
        self._connect(self.plan.graph)
        dot = graphviz.Digraph(
            name=self.plan.flow,
            graph_attr={
                "rankdir": "TB",
                "newrank": "true",
                "fontname": FONT,
                "nodesep": "0.25",
                "ranksep": "0.45",
                "labelloc": "t",
                "labeljust": "l",
                "label": self._title(),
                "pad": "0.3",
            },
            node_attr={"fontname": FONT, "fontsize": "11", "margin": "0.08,0.04"},
            edge_attr={
                "fontname": FONT,
                "fontsize": "8",
                "fontcolor": "#444444",
                "color": EDGE,
                "arrowsize": "0.6",
            },
        )
        self._emit(root, dot)
        for (src, dst, _), edge in self.edges.items():
            dot.edge(src, dst, **self._edge_attrs(src, edge))
        return dot

    def _emit(self, box: _Box, dot: graphviz.Digraph) -> None:
        for node_id, attrs in box.nodes:
            dot.node(node_id, **attrs)
        for child in box.children:
            sub = graphviz.Digraph(name=child.name, graph_attr=child.attrs)
            self._emit(child, sub)
            dot.subgraph(sub)

    def _layout(self, graph: Graph, box: _Box) -> None:
        group_boxes: dict[str, _Box] = {}
        for group in self.plan.groups:
            if self.group_home.get(group.id) == id(graph):
                group_boxes[group.id] = _Box(f"cluster_{group.id}", self._group_attrs(group))
                box.children.append(group_boxes[group.id])
        for node in graph.nodes:
            target = group_boxes.get(self.group_box_of.get(node.id, ""), box)
            if node.bodies and node.id not in self.compact:
                self._layout_compound(node, target)
                continue
            attrs = self._node_attrs(graph, node)
            if attrs is not None:
                target.nodes.append((node.id, attrs))
                self.drawn.add(node.id)

    def _layout_compound(self, node: IRNode, box: _Box) -> None:
        critical = node.id in self.critical_nodes
        cluster = _Box(
            f"cluster_{node.id}",
            {
                "label": "",
                "style": "rounded,filled",
                "fillcolor": "#F6F6F6" if node.kind != "branch" else "#FBFBFB",
                "color": CRITICAL if critical else "#AAAAAA",
                "penwidth": "1.5" if critical else "1",
            },
        )
        box.children.append(cluster)
        cluster.nodes.append((node.id, self._header_attrs(node)))
        self.drawn.add(node.id)
        if node.kind == "branch":
            for key, body in node.bodies.items():
                inner = _Box(
                    f"cluster_{node.id}_{key}",
                    {
                        "label": key,
                        "fontsize": "10",
                        "fontcolor": MUTED,
                        "style": "rounded,filled",
                        "fillcolor": "white",
                        "color": "#BBBBBB",
                    },
                )
                cluster.children.append(inner)
                self._layout(body, inner)
                self._pass_through(node, key, body, inner)
        else:
            self._layout(node.bodies["body"], cluster)

    def _pass_through(self, node: IRNode, key: str, body: Graph, box: _Box) -> None:
        """Values a branch passes on unchanged (`x = y`) meet in a small note, so the
        picture shows them coming out of the branch."""
        lines = []
        for name, src in body.outputs.items():
            inner = body.node(src)
            if inner.kind == "input":
                lines.append(f"{name} = {self.names.get(self._outer(body, src), '…')}")
            elif inner.kind == "const":
                lines.append(f"{name} = {inner.label}")
        if not lines:
            return
        note = self._note_id(node, key)
        box.nodes.append(
            (
                note,
                {
                    "label": _rows(*(font(escape(line), 9, "#555555") for line in lines)),
                    "shape": "box",
                    "style": "rounded,filled",
                    "fillcolor": "#F4F4F4",
                    "color": "#CCCCCC",
                    "margin": "0.08,0.03",
                    "tooltip": f"{key} branch: passes values on unchanged",
                },
            )
        )
        self.drawn.add(note)

    @staticmethod
    def _note_id(node: IRNode, key: str) -> str:
        return f"{node.id}_{key}_pass"

    def _outer(self, graph: Graph, node_id: str) -> str:
        """The node a subgraph's `Port` input stands for, in the enclosing graphs."""
        port = _port(graph.node(node_id))
        if port is not None:
            owner = self.owner[id(graph)]
            return self._outer(self.parent[id(graph)], owner.args[port])
        return node_id

    # -- nodes

    def _node_attrs(self, graph: Graph, node: IRNode) -> dict[str, str] | None:
        if node.id in self.absorbed:
            return None
        critical = node.id in self.critical_nodes
        border = {"color": CRITICAL, "penwidth": "3"} if critical else {}
        if node.kind == "llm":
            return self._call_attrs(node, critical)
        if node.kind == "input":
            if graph is not self.plan.graph:
                return None  # a subgraph's inputs are drawn as edges from their producers
            return {
                "label": _rows(
                    f"<B>{escape(node.label)}</B>",
                    font(escape(self._known_text(node)), 9, MUTED),
                ),
                "shape": "cds",
                "margin": "0.2,0.1",
                "style": "filled",
                "fillcolor": "#E4E9F0",
                "color": "#8899AA",
                **border,
            }
        if node.kind == "output":
            return {
                "label": _rows(
                    f"<B>{escape(node.label)}</B>", font(escape(str(node.type)), 9, MUTED)
                ),
                "shape": "box",
                "style": "rounded,filled",
                "peripheries": "2",
                "fillcolor": "#E4E9F0",
                "color": "#8899AA",
                **border,
            }
        if node.kind == "extern":
            return {
                "label": _rows(
                    f"<B>{escape(node.label)}</B>", font(escape(node.extern or ""), 8, MUTED)
                ),
                "shape": "component",
                "style": "filled",
                "fillcolor": "#EEEEEE",
                "color": "#888888",
                **border,
            }
        if node.kind == "builtin" and node.op == "field":
            return None  # folded into the edges of its readers
        if node.kind == "const" and not any(
            graph.node(s).kind == "output" for s in graph.g.successors(node.id)
        ):
            return None
        if node.id in self.compact:
            label = self.compact[node.id]
        else:
            label = node.label if node.kind == "builtin" else f"= {node.label}"
        return {
            "label": escape(label) if label else " ",
            "shape": "box",
            "style": "rounded,filled",
            "fillcolor": "#EEEEEE",
            "color": CRITICAL if critical else "#BBBBBB",
            "penwidth": "2" if critical else "1",
            "fontsize": "9",
            "fontcolor": "#555555",
            "height": "0.2",
            "width": "0.3",
            "margin": "0.05,0.02",
            "tooltip": graphviz.escape(f"{node.kind} {node.label}: {node.type}"),
        }

    def _known_text(self, node: IRNode) -> str:
        if node.id not in self.plan.known:
            return str(node.type)
        value = self.plan.known[node.id]
        if isinstance(value, list):
            return f"{len(value)} item{'s' if len(value) != 1 else ''}"
        if isinstance(value, str):
            return f"{len(value):,} chars" if len(value) > 24 else repr(value)
        if value is None:
            return "none"
        return shorten(repr(value), 24)

    def _call_attrs(self, node: LLMNode, critical: bool) -> dict[str, str]:
        call = node.call
        est: Estimate | None = self.plan.estimates.get(node.id)
        model = self.plan.models.get(call.model)
        what = escape(call.model)
        if call.pinned:
            what += " (pinned)"
        if est is not None and est.instances > 1:
            what += f" · ×{_count(est.instances)}"
        rows = [f"<B>{escape(call.function)}</B>", font(what, 9)]
        if call.needs:
            needs = ", ".join(f"{s} ≥ {q:g}" for s, q in call.needs.items())
            rows.append(font(f"<I>needs {escape(needs)}</I>", 8))
        if est is not None:
            tokens = f"in {fmt_tokens(est.input_tokens)}"
            if est.cached_tokens >= 1:
                tokens += f" ({fmt_tokens(est.cached_tokens)} cached)"
            tokens += f" · out {fmt_tokens(est.output_tokens)}"
            if model is not None and _price_unknown(model):
                cost = "$ unknown"
            elif model is not None and _is_free(model):
                cost = "free"
            else:
                cost = fmt_dollars(est.dollars)
            rows += [font(tokens, 9), font(f"{cost} · {fmt_seconds(est.seconds)}", 9)]
        if node.id in self.tagged:
            rows.append(font(f"prefix group {escape(self.tagged[node.id])}", 8))
        tooltip = [f"{call.function}({', '.join(call.params)}) on {call.model}"]
        if est is not None:
            tooltip.append(
                f"{_count(est.instances)} call(s): {est.input_tokens:.0f} prompt tokens "
                f"({est.cached_tokens:.0f} cached), {est.output_tokens:.0f} output tokens, "
                f"${est.dollars:.6f}, {est.seconds:.1f} s"
            )
        if node.id in self.plan.priorities:
            tooltip.append(f"priority {self.plan.priorities[node.id]:g}")
        return {
            "label": _rows(*rows),
            "shape": "box",
            "style": "rounded,filled",
            "fillcolor": self.colors.get(call.model, UNASSIGNED),
            "color": CRITICAL if critical else "#444444",
            "penwidth": "3" if critical else "1",
            "tooltip": graphviz.escape("\n".join(tooltip)),
        }

    def _header_attrs(self, node: IRNode) -> dict[str, str]:
        critical = node.id in self.critical_nodes
        common = {
            "style": "filled",
            "fillcolor": "white",
            "color": CRITICAL if critical else "#666666",
            "penwidth": "3" if critical else "1",
        }
        if node.kind == "branch":
            text, _ = self.conditions[node.id]
            return {
                **common,
                "label": _rows(f"<B>if</B> {escape(shorten(text, 40))}"),
                "shape": "hexagon",
            }
        count = self._count_text(node)
        if node.kind == "map":
            rows = [f"<B>{escape(node.label)}</B>", font(f"<B>{escape(count)}</B>", 13)]
            where = self.conditions.get(f"{node.id}:where")
            if where:
                rows.append(font(f"if {escape(shorten(where[0], 40))}", 9))
            return {**common, "label": _rows(*rows), "shape": "box3d", "margin": "0.12,0.1"}
        title = node.label
        if isinstance(node, LoopNode) and node.over_list and node.args:
            title += f" in {self.names.get(self._outer_any(node.args[0]), '…')}"
        elif title.startswith("repeat"):
            title = "repeat"
        rows = [f"<B>↻ {escape(title)}</B>", font(f"<B>{escape(count)}</B>", 13)]
        if node.carried:
            rows.append(font(f"with {escape(', '.join(node.carried))}", 9))
        until = self.conditions.get(f"{node.id}:until")
        if until:
            rows.append(font(f"until {escape(shorten(until[0], 40))}", 9))
        rows.append(font("one iteration after another", 8, MUTED))
        return {**common, "label": _rows(*rows), "shape": "box", "style": "rounded,filled"}

    def _count_text(self, node: IRNode) -> str:
        if isinstance(node, LoopNode) and node.loop_max is not None:
            return f"≤ {node.loop_max} times"
        if isinstance(node, LoopNode) and node.count_arg:
            source = self._outer_any(node.args[0])
            name = self.names.get(source, "n")
            count = self.plan.known.get(source)
            if isinstance(count, int) and not isinstance(count, bool):
                return f"≤ {count} times ({name})"
            if self.plan.estimates:  # what the optimizer assumed for a count it did not know
                return f"≤ {name} times ({DEFAULT_REPEATS} assumed)"
            return f"≤ {name} times"
        graph = self.graph_of.get(node.id)
        length = self.plan.known_length(node.args[0], graph) if node.args else None
        if length is not None:
            return f"×{length}"
        if self.plan.estimates:  # what the optimizer assumed for a list it did not know
            return f"×{DEFAULT_MAP_ITEMS} (assumed)"
        return "× ? (not known)"

    def _group_attrs(self, group: PrefixGroup) -> dict[str, str]:
        color = self.colors.get(group.model, "#888888")
        preview = shorten(self._readable(group.preview), 44)
        label = _rows(
            font(
                f"<B>prefix group {escape(group.id)}</B> · {group.instances} calls share "
                f"~{fmt_tokens(group.prefix_tokens)} tokens",
                9,
            ),
            font(f"<I>“{escape(preview)}”</I>", 8, MUTED),
        )
        return {
            "label": label,
            "style": "dashed,rounded",
            "color": darker(color),
            "penwidth": "1.5",
        }

    def _readable(self, preview: str) -> str:
        """Prefix previews name run-time values by node id: use their variable names."""
        return re.sub(
            r"\{(n\d+)((?:\.\w+)*)\}",
            lambda m: (
                "{" + self.names.get(self._outer_any(m.group(1)), m.group(1)) + m.group(2) + "}"
            ),
            preview,
        )

    def _outer_any(self, node_id: str) -> str:
        graph = self.graph_of.get(node_id)
        return self._outer(graph, node_id) if graph is not None else node_id

    # -- edges

    def _connect(self, graph: Graph) -> None:
        for node in graph.nodes:
            if node.id not in self.drawn:
                continue
            for arg in dict.fromkeys(self._drawn_args(graph, node)):
                label = self._edge_label(graph, arg, node.id)
                for src, chain in self._sources(graph, arg):
                    self._edge(src, node.id, label, chain + ((id(graph), arg, node.id),))
            if node.kind == "branch":
                _, leaves = self.conditions[node.id]
                for leaf, chain, label in leaves:
                    for src, more in self._sources(graph, leaf):
                        self._edge(src, node.id, label, more + chain)
            if node.bodies and node.id not in self.compact:
                self._connect_compound(graph, node)

    def _drawn_args(self, graph: Graph, node: IRNode) -> list[str]:
        if node.id in self.compact:
            return node.args
        if node.kind == "map":
            return node.args[:1]
        if isinstance(node, LoopNode):
            body = node.bodies["body"]
            has_item = any(_is_item(body.node(i)) for i in body.inputs)
            return node.args[: int(has_item or node.count_arg) + len(node.carried)]
        if node.kind == "branch":
            return [] if node.args[0] in self.absorbed else node.args[:1]
        return node.args

    def _connect_compound(self, graph: Graph, node: IRNode) -> None:
        first_port = len(self._drawn_args(graph, node)) if node.kind != "branch" else 1
        for port in range(first_port, len(node.args)):  # place the header after its inputs
            for src, _ in self._sources(graph, node.args[port]):
                self._edge(src, node.id, "", (), style="invis")
        for key, body in node.bodies.items():
            self._connect(body)
            note = self._note_id(node, key)
            if note in self.drawn:
                self._edge(node.id, note, "", (), style="invis")
                for src in body.outputs.values():
                    if body.node(src).kind == "input":
                        label = self._edge_label(body, src, src)
                        for drawn, chain in self._sources(body, src):
                            self._edge(drawn, note, label, chain + ((id(body), src, EXIT),))
            for entry in self._entries(body):
                self._edge(node.id, entry, "", (), style="invis")
            for output in ("until", "where"):
                _, leaves = self.conditions.get(f"{node.id}:{output}", ("", []))
                for leaf, _, label in leaves:
                    if _port(body.node(leaf)) is not None:
                        for drawn, _ in self._sources(body, leaf):
                            self._edge(drawn, node.id, label, ())
            if node.kind == "loop":
                for name in node.carried:
                    src = body.outputs.get(name)
                    if src is None:
                        continue
                    for drawn, _ in self._sources(body, src):
                        if drawn != node.id:
                            self._edge(
                                drawn,
                                node.id,
                                f"{name} (next)",
                                (),
                                style="dashed",
                                constraint="false",
                                color=MUTED,
                            )

    def _entries(self, body: Graph) -> list[str]:
        """Drawn nodes of a subgraph that read nothing drawn in it."""
        out = []
        for node in body.nodes:
            if node.id not in self.drawn or node.kind == "input":
                continue
            inner = [a for a in node.args if body.node(a).kind not in ("input", "const")]
            if not inner:
                out.append(node.id)
        return out

    def _edge_label(self, graph: Graph, src: str, dst: str) -> str:
        node = graph.node(src)
        if node.kind == "builtin" and node.op == "field" and not node.var:
            source = graph.node(node.args[0])
            if not source.bodies:
                return f"{self._edge_label(graph, node.args[0], src)}.{node.field}"
        if node.kind in ("builtin", "const") and not node.var:
            return ""  # an intermediate value: `+`, `join()` say nothing an edge needs
        data = graph.g.get_edge_data(src, dst) or {}
        return str(data.get("var") or node.var or node.label)

    def _sources(self, graph: Graph, node_id: str) -> list[tuple[str, Chain]]:
        """Where the value of a node appears in the drawing: the drawn nodes an edge
        reading it starts from, each with the IR edges it stands for."""
        node = graph.node(node_id)
        if node.kind == "map" and node.id not in self.compact:
            body = node.bodies["body"]
            value = body.outputs.get("value")
            found = self._sources(body, value) if value is not None else []
            exit_: Chain = ((id(body), value, EXIT),) if value is not None else ()
            return [(s, c + exit_) for s, c in found if s != node.id] or [(node.id, ())]
        if node_id in self.drawn:
            return [(node_id, ())]
        if node.kind == "input" and graph is not self.plan.graph:
            owner = self.owner[id(graph)]
            port = _port(node)
            if port is not None:
                outer = self.parent[id(graph)]
                src = owner.args[port]
                return [
                    (s, c + ((id(outer), src, owner.id),)) for s, c in self._sources(outer, src)
                ]
            return [(owner.id, ())]  # the item or a carried value: from the header
        if node.kind == "builtin" and node.op == "field":
            source = graph.node(node.args[0])
            hop: Chain = ((id(graph), node.args[0], node_id),)
            if source.kind in ("branch", "loop") and source.id not in self.compact:
                key = node.field
                out = []
                for branch, body in source.bodies.items():
                    if key not in body.outputs:
                        continue
                    inner = body.outputs[key]
                    leave: Chain = ((id(body), inner, EXIT), *hop)
                    note = self._note_id(source, branch)
                    if body.node(inner).kind in ("input", "const") and note in self.drawn:
                        out.append((note, leave))
                        continue
                    for s, c in self._sources(body, inner):
                        out.append((s, c + leave))
                return out or [(source.id, hop)]
            return [(s, c + hop) for s, c in self._sources(graph, node.args[0])]
        if node.bodies:
            return [(node_id, ())]
        return []

    def _edge(self, src: str, dst: str, label: str, chain: Chain, **attrs: str) -> None:
        """Record an edge; edges between the same two nodes in the same style merge, their
        labels joined. `chain` (the IR edges it stands for) decides if it is critical."""
        if src == dst:
            return
        kind = attrs.get("style", "")
        if kind == "invis" and (src, dst) in self.pairs:
            return
        self.edges.pop((src, dst, "invis"), None)
        self.pairs.add((src, dst))
        edge = self.edges.setdefault((src, dst, kind), _Edge(attrs=dict(attrs)))
        if label and label not in edge.labels:
            edge.labels.append(label)
        edge.critical = edge.critical or (
            bool(chain) and all(step in self.critical_pairs for step in chain)
        )

    def _edge_attrs(self, src: str, edge: _Edge) -> dict[str, str]:
        style = dict(edge.attrs)
        if edge.labels:
            style["label"] = graphviz.escape("  " + ", ".join(edge.labels))
        if edge.critical:
            style.update(color=CRITICAL, penwidth="2.5", fontcolor=CRITICAL)
        elif src in self.plan.graph.inputs:
            style.setdefault("color", INPUT_EDGE)
        return style

    # -- the title block and legend

    def _title(self) -> str:
        plan = self.plan
        calls = plan.calls()
        rows = [
            f'<FONT POINT-SIZE="18"><B>{escape(plan.flow)}</B></FONT>'
            f"  {font(escape(Path(plan.file).name), 11, MUTED)}"
        ]
        goal = f"objective: <B>{escape(plan.objective)}</B>"
        if plan.budget is not None:
            goal += f", budget {fmt_dollars(plan.budget)}"
        if plan.total is not None:
            t = plan.total
            head = f"<B>{_count(t.instances)} calls</B> · <B>{fmt_dollars(t.dollars)}</B>"
            if plan.makespan is not None:
                head += f" · <B>~{fmt_seconds(plan.makespan)}</B> estimated makespan"
            rows.append(f"{head} · {goal}")
            rows.append(
                f"{fmt_tokens(t.input_tokens)} prompt tokens ({fmt_tokens(t.cached_tokens)} from "
                f"reused prefixes) · {fmt_tokens(t.output_tokens)} output tokens · "
                f"{len(calls)} call{'s' if len(calls) != 1 else ''} in the program"
            )
        else:
            rows.append(f"{len(calls)} calls · not optimized (-O0): no estimates · {goal}")
        if plan.perf:
            rows.append(
                ", ".join(f"output {escape(o)} is @{escape(g)}" for o, g in plan.perf.items())
            )
        rows.append(self._key())
        legend = self._legend()
        n = max(len(rows), len(legend))
        out = []
        for r in range(n):
            cells = ""
            if r < len(rows):
                span = f' ROWSPAN="{n - r}"' if r == len(rows) - 1 and n > len(rows) else ""
                cells += f'<TD ALIGN="LEFT" VALIGN="TOP"{span}>{rows[r]}</TD>'
            if r == 0:
                cells += f'<TD ROWSPAN="{n}" WIDTH="32"></TD>'
            cells += legend[r] if r < len(legend) else '<TD COLSPAN="5"></TD>'
            out.append(f"<TR>{cells}</TR>")
        return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="2">{"".join(out)}</TABLE>>'

    def _legend(self) -> list[str]:
        """Table cells, one row per model: colour, name, backend, price, and the use the
        optimizer estimated (at -O0 there is no estimate: the calls the program makes)."""
        estimated = self.plan.total is not None
        per_model: dict[str, float] = {}
        dollars: dict[str, float] = {}
        for node in self.plan.calls():
            est = self.plan.estimates.get(node.id)
            per_model[node.call.model] = per_model.get(node.call.model, 0.0) + (
                est.instances if est else 1.0
            )
            dollars[node.call.model] = dollars.get(node.call.model, 0.0) + (
                est.dollars if est else 0.0
            )
        use = "estimated use" if estimated else "use (-O0: not estimated)"
        header = ("model", "runs on", "price per 1M tokens", use)
        rows = [
            "<TD></TD>"
            + "".join(f'<TD ALIGN="LEFT">{font(f"<I>{h}</I>", 9, MUTED)}</TD>' for h in header)
        ]
        names = [*self.plan.models, *[m for m in self.colors if m not in self.plan.models]]
        for name in names:
            spec = self.plan.models.get(name)
            used = name in self.colors
            backend = f"{spec.backend} {spec.id}" if spec else "?"
            price = _price_text(spec) if spec is not None else "free"
            if used:
                usage = f"{_count(per_model[name])} call{'' if per_model[name] == 1 else 's'}"
                if not estimated:
                    usage += " in the program"
                if dollars.get(name):
                    usage += f" · {fmt_dollars(dollars[name])}"
            else:
                usage = "not assigned"
            color = None if used else MUTED
            swatch = (
                f'<TD BGCOLOR="{self.colors[name]}" BORDER="1" COLOR="#666666" WIDTH="22" '
                'HEIGHT="14" FIXEDSIZE="TRUE"></TD>'
                if used
                else '<TD BORDER="1" COLOR="#BBBBBB" WIDTH="22" HEIGHT="14" FIXEDSIZE="TRUE"></TD>'
            )
            rows.append(
                swatch
                + f'<TD ALIGN="LEFT">{font(f"<B>{escape(name)}</B>", 11, color)}</TD>'
                + f'<TD ALIGN="LEFT">{font(escape(backend), 11, color)}</TD>'
                + f'<TD ALIGN="LEFT">{font(escape(price), 11, color)}</TD>'
                + f'<TD ALIGN="LEFT">{font(escape(usage), 11, color)}</TD>'
            )
        return rows

    def _key(self) -> str:
        """What the line styles mean, for those the picture uses."""
        parts = []
        if self.plan.critical_path:
            parts.append(font("━━ critical path", 9, CRITICAL))
        if self.plan.groups:
            parts.append(font("dashed box: prefix group (shared prompt start)", 9, "#555555"))
        if any(n.kind == "loop" for n in self.plan.graph.walk()):
            parts.append(font("dashed arrow: next iteration", 9, MUTED))
        parts.append(font("── read from an input", 9, INPUT_EDGE))
        return "    ".join(parts)


def _port(node: IRNode) -> int | None:
    """The parent's argument index a subgraph input stands for (None: not such an input)."""
    if isinstance(node, InputNode) and isinstance(node.binding, Port):
        return node.binding.index
    return None


def _is_item(node: IRNode) -> bool:
    return isinstance(node, InputNode) and isinstance(node.binding, Item)

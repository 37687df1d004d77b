"""Token builtins count in the tokens of the model that reads what they make.

`chunk_tokens(text, 400)` is a budget for the call its pieces go to, so its tokenizer is
that call's model's, which only model assignment knows. This pass follows each token
builtin that names no model to the calls that read its result (through maps, branches,
loops and other builtins) and binds the tokenizer of the model they run on (their routes
included). Readers on several embedded models: the one that makes the most tokens of
a text is not known before counting, so the default model's tokenizer counts, and the
plan says so; a hosted model has no tokenizer here, so the default's counts for it too.

Values `evaluate known values` computed with the default tokenizer are computed again
with the chosen one, so plan-time chunk counts and map sizes match the run.
"""

from __future__ import annotations

from typing import Any

from llmflow.compiler.ir import (
    BuiltinNode,
    Carried,
    ConstNode,
    Graph,
    InputNode,
    Item,
    LLMNode,
    LoopNode,
    Plan,
    Port,
)
from llmflow.compiler.models import DEFAULT_MODEL_ID, LOCAL_MODELS
from llmflow.compiler.optimizer.evaluate_known import evaluate_known
from llmflow.compiler.optimizer.working import own
from llmflow.stdlib.builtins import BUILTINS
from llmflow.stdlib.tokenizers import ASSIGNED

RULE = "tokenizers"
TOKEN_BUILTINS = ("count_tokens", "chunk_tokens", "truncate_tokens")


def choose_tokenizers(plan: Plan, inputs: dict[str, Any] | None = None) -> Plan:
    plan = own(plan, RULE)
    default = _tokenizer(plan, plan.default_model) or DEFAULT_MODEL_ID
    changed_known = False
    for graph, parents in _graphs_with_parents(plan.graph):
        for node in graph.nodes:
            if not isinstance(node, BuiltinNode) or node.op not in TOKEN_BUILTINS:
                continue
            if not _unnamed(graph, node):
                node.bound = {}
                continue
            readers = sorted(_reader_models(plan, node.id, graph, parents))
            chosen, why = _choose(plan, readers, default)
            before = node.bound.get("model", DEFAULT_MODEL_ID)
            node.bound = {"model": chosen}
            changed_known |= node.id in plan.known and before != chosen
            plan.explain(RULE, f"{node.label} counts in {why}", node.id)
    return evaluate_known(plan, inputs) if changed_known else plan


def _choose(plan: Plan, readers: list[str], default: str) -> tuple[str, str]:
    """The tokenizer for a result these models read, and why, for the plan to say."""
    of = {name: _tokenizer(plan, name) for name in readers}
    hosted = [name for name, tokenizer in of.items() if tokenizer is None]
    goes = f"its result goes to calls on {_names(readers)}"
    if len(set(of.values())) == 1 and not hosted:
        chosen = of[readers[0]]
        assert chosen is not None
        return chosen, f"{chosen}'s tokens: {goes}"
    if hosted:
        why = f"{_names(hosted)} {'has' if len(hosted) == 1 else 'have'} no tokenizer here"
    else:
        why = goes if readers else "no call reads its result"
    return default, f"{default}'s tokens, the default model's: {why}"


def _unnamed(graph: Graph, node: BuiltinNode) -> bool:
    """Whether the builtin's `model` is left to the plan: the default, `"assigned"`."""
    index = [p.name for p in BUILTINS[node.op].params].index("model")
    arg = graph.node(node.args[index])
    return isinstance(arg, ConstNode) and arg.value == ASSIGNED


def _tokenizer(plan: Plan, model: str) -> str | None:
    """The embedded tokenizer of a model of the plan (None: it has none here)."""
    spec = plan.models.get(model)
    if spec is not None and spec.backend == "local" and spec.id in LOCAL_MODELS:
        return spec.id
    return None


def _names(models: list[str]) -> str:
    return " and ".join(", ".join(models).rsplit(", ", 1))


def _graphs_with_parents(top: Graph) -> list[tuple[Graph, list[tuple[Graph, str]]]]:
    """Every graph, with the chain of (graph, node id) that holds it, innermost last."""
    out: list[tuple[Graph, list[tuple[Graph, str]]]] = []
    stack: list[tuple[Graph, list[tuple[Graph, str]]]] = [(top, [])]
    while stack:
        graph, parents = stack.pop()
        out.append((graph, parents))
        for node in graph.nodes:
            for body in node.bodies.values():
                stack.append((body, [*parents, (graph, node.id)]))
    return out


def _reader_models(
    plan: Plan, start: str, graph: Graph, parents: list[tuple[Graph, str]]
) -> set[str]:
    """The models of every call that reads a value made from `start`'s."""
    models: set[str] = set()
    seen: set[tuple[int, str]] = set()
    pending: list[tuple[Graph, list[tuple[Graph, str]], str]] = [(graph, parents, start)]
    while pending:
        graph, parents, node_id = pending.pop()
        if (id(graph), node_id) in seen:
            continue
        seen.add((id(graph), node_id))
        if node_id in graph.outputs.values() and parents:
            outer, holder = parents[-1]
            pending.append((outer, parents[:-1], holder))
        for reader_id in graph.g.successors(node_id):
            reader = graph.node(reader_id)
            if isinstance(reader, LLMNode):
                models.add(reader.call.model)
                route = plan.routes.get(reader_id)
                if route is not None:
                    models.update(route.models.values())
                continue
            ports = graph.g.edges[node_id, reader_id]["ports"]
            for body in reader.bodies.values():
                for inner in body.nodes:
                    if isinstance(inner, InputNode) and _binds(inner, reader, ports):
                        pending.append((body, [*parents, (graph, reader_id)], inner.id))
            if not reader.bodies:
                pending.append((graph, parents, reader_id))
    return models


def _binds(node: InputNode, holder: Any, ports: list[int]) -> bool:
    """Whether a body's input takes one of the holder's arguments at `ports`."""
    binding = node.binding
    if isinstance(binding, Port):
        return binding.index in ports
    if isinstance(binding, Item):
        return 0 in ports and (holder.kind == "map" or (holder.kind == "loop" and holder.over_list))
    if isinstance(binding, Carried) and isinstance(holder, LoopNode):
        return holder.first_carried + holder.carried.index(binding.name) in ports
    return False

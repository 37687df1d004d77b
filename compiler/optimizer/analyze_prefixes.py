"""Prefix groups: calls on one model whose prompts start with the same text.

A call's known prefix is its prompt up to the first value that is only known at run time
and differs between its instances (template text, inputs known at plan time, and values
shared by every instance). Instances of a call inside a map always form one group; calls
on the same model whose prefixes share at least `min_tokens` (`prefix_reuse.
GROUP_MIN_TOKENS`) join it, whatever function they come from (a shared system prompt, a
shared document). How much of a group's prefix its backend will reuse is the estimates'
question (`prefix_reuse.cached_tokens_expected`), not this pass's. Sorting the prefixes puts
calls with long common prefixes next to each other, so grouping compares neighbours only.
"""

from __future__ import annotations

from llmflow.compiler.ir import Plan, PrefixGroup
from llmflow.compiler.optimizer.prompts import SYSTEM_END, SYSTEM_START, Part, Shapes, common_tokens
from llmflow.compiler.optimizer.working import own
from llmflow.compiler.prefix_reuse import GROUP_MIN_TOKENS

RULE = "prefix analysis"


def _sort_key(prefix: list[Part]) -> list[tuple[int, str]]:
    return [(0, p) if isinstance(p, str) else (1, p.key) for p in prefix]


def analyze_prefixes(plan: Plan, min_tokens: float = GROUP_MIN_TOKENS) -> Plan:
    plan = own(plan, RULE)
    shapes = Shapes(plan)
    by_model: dict[str, list[str]] = {}
    for node in plan.calls():
        by_model.setdefault(node.call.model, []).append(node.id)
    groups: list[PrefixGroup] = []
    labels = {n.id: n.label for n in plan.calls()}
    var_names = {n.id: n.var or n.label for n in plan.graph.walk()}
    for model, ids in by_model.items():
        ordered = sorted(ids, key=lambda i: _sort_key(shapes[i].shared_prefix))
        runs: list[list[str]] = []
        for node_id in ordered:
            if (
                runs
                and common_tokens(shapes[runs[-1][-1]].shared_prefix, shapes[node_id].shared_prefix)
                >= min_tokens
            ):
                runs[-1].append(node_id)
            else:
                runs.append([node_id])
        for run in runs:
            instances = sum(shapes[i].instances for i in run)
            # A map's instances group even below the threshold, but not over a few
            # tokens of template text: that is not worth keeping a KV state for.
            if instances < 2 or (len(run) == 1 and shapes[run[0]].shared_tokens < min_tokens / 4):
                continue
            prefixes = [shapes[i].shared_prefix for i in run]
            shared = min(
                (common_tokens(a, b) for a, b in zip(prefixes, prefixes[1:], strict=False)),
                default=shapes[run[0]].shared_tokens,
            )
            group = PrefixGroup(
                id=f"g{len(groups) + 1}",
                model=model,
                calls=run,
                instances=round(instances),
                prefix_tokens=round(shared),
                preview=_preview(prefixes[0], var_names),
            )
            groups.append(group)
            names = ", ".join(labels[i] for i in run)
            plan.explain(
                RULE,
                f"{group.id} on {model}: {names} ({group.instances} calls) share "
                f"~{group.prefix_tokens} prompt tokens: {group.preview!r}",
            )
    plan.groups = groups
    return plan


def _preview(prefix: list[Part], names: dict[str, str], limit: int = 48) -> str:
    text = ""
    for part in prefix:
        if isinstance(part, str):
            text += part
        elif part in (SYSTEM_START, SYSTEM_END):
            text += " | " if part == SYSTEM_END else ""
        else:
            node, *path = part.key.split(".")
            text += "{" + ".".join([names.get(node, node), *path]) + "}"
        if len(text) >= limit:
            break
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

"""`llmflow run --prompts`: every prompt a run sends, turn by turn, and its answer."""

from __future__ import annotations

from typing import TextIO

from llmflow.compiler.ir import Plan
from llmflow.runtime.backends.base import Generation, GenerationRequest
from llmflow.runtime.gateway import Exchange
from llmflow.runtime.secrets import redact


def show_exchange(plan: Plan, out: TextIO) -> Exchange:
    """A session's `show`: each request as its turns, then the answer and where it came
    from (model, cache, journal, cassette), redacted like everything the CLI prints."""
    labels = {node.id: node.label for node in plan.graph.walk()}

    def show(request: GenerationRequest, answer: Generation) -> None:
        call = labels.get(request.node or "", "call")
        lines = [f"── {call} on {request.model} ({answer.source}) ──"]
        for turn in request.turns:
            lines += [f"[{turn.role}]", turn.text]
        lines += ["[answer]", answer.text]
        out.write(redact("\n".join(lines)) + "\n\n")

    return show

"""Which waiting call a free model serves next."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from llama_cpp import LlamaGrammar

from llmflow.runtime.backends.base import BackendError, Generation, GenerationRequest


@dataclass(eq=False)
class _Call:
    """A request waiting for its model's worker, and where to send its result."""

    request: GenerationRequest
    grammar: LlamaGrammar | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Generation]
    order: int
    """Arrival number: first come, first served among equals."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: np.ndarray | None = None
    """The prompt's tokens, set by the worker (tokenizing needs the loaded model)."""
    error: BackendError | None = None

    @property
    def fifo(self) -> bool:
        """Unoptimized (-O0): served in arrival order, never through the state cache."""
        return self.request.group is None and self.request.priority == 0


def _next_call(
    waiting: Sequence[_Call],
    last_group: str | None,
    reusable: Callable[[_Call], int],
    least: float,
) -> _Call:
    """The call a free model serves next.

    (a) The call whose prompt has the longest prefix already in the context or a saved
    state (`reusable`), if at least `least` tokens (the model's reuse minimum, `_Model.
    reuse_min_tokens`: fewer do not justify reordering calls), so shared text is evaluated
    once; else (b) one of the group just served, so a group runs back to back; else
    (c) the highest priority. Ties, and queues of -O0 calls only, go first come first
    served. A long group can delay other calls: the optimizer made it a group to finish
    it sooner, and its calls are known in advance, so this does not starve anyone forever.
    """
    if all(call.fifo for call in waiting):
        return waiting[0]

    def urgency(call: _Call) -> tuple[float, int]:
        return call.request.priority, -call.order

    lengths = {call: reusable(call) for call in waiting}
    best = max(waiting, key=lambda call: (lengths[call], *urgency(call)))
    if lengths[best] >= least:
        return best
    same = [c for c in waiting if last_group is not None and c.request.group == last_group]
    if same:
        return max(same, key=urgency)
    return max(waiting, key=urgency)

"""What the workers of a Ray job share: each model's limits and the budget.

Each is held by one small actor (`LimitsActor`, `BudgetActor`: async, no CPU of its own)
wrapping the very object a local run uses (`runtime.limits.Limiter`,
`runtime.budget.Budget`), so the cluster as a whole obeys what one process would. A
worker's Session is given stand-ins with the same interface (`SharedLimiter`,
`SharedBudget`) whose every step is a call to the actor.

A worker that dies cannot give back what it holds (a concurrency slot, a reservation),
so everything held is filed under its holder name, and the driver, which sees the death,
calls `drop(holder)`: its slots are freed at their estimate, its reservations charged in
full (the requests may have been sent and billed), and anything the dead worker still
asks for afterwards is refused. Holder names are never reused: a worker that replaces a
dead one has a new name.

These classes import no Ray: the executor makes actors of them (`ray.remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from llmflow.compiler.models import Limits
from llmflow.runtime.backends.base import BackendError
from llmflow.runtime.budget import Budget, BudgetExceeded
from llmflow.runtime.limits import PERIOD, Limiter, Permit

GONE = "this worker was given up for dead"
"""Why a dropped holder's request is refused (only a worker that was dropped sees it)."""


class LimitsActor:
    """One model's declared limits for the whole cluster: a slot is a ticket."""

    def __init__(self, limits: dict[str, Any], period: float = PERIOD) -> None:
        self.limiter = Limiter(Limits.model_validate(limits), period)
        self._held: dict[int, tuple[str, AbstractAsyncContextManager[Permit], Permit]] = {}
        self._ids = itertools.count(1)
        self._dead: set[str] = set()
        self.most_held = 0

    async def acquire(self, holder: str, tokens: int) -> int | str:
        """A ticket for one request of about `tokens` tokens, once the limits allow it;
        or why it can never be (a message)."""
        if holder in self._dead:
            return GONE
        slot = self.limiter.slot(tokens)
        try:
            permit = await slot.__aenter__()
        except BackendError as err:
            return err.message
        if holder in self._dead:  # died while it waited
            await slot.__aexit__(None, None, None)
            return GONE
        ticket = next(self._ids)
        self._held[ticket] = (holder, slot, permit)
        self.most_held = max(self.most_held, len(self._held))
        return ticket

    async def release(self, ticket: int, tokens: int | None) -> None:
        """The request is over; `tokens`: what it really used (None: as estimated)."""
        held = self._held.pop(ticket, None)
        if held is None:
            return
        _, slot, permit = held
        if tokens is not None:
            permit.settle(tokens)
        await slot.__aexit__(None, None, None)

    async def drop(self, holder: str) -> int:
        """Free every slot a dead worker held; returns how many."""
        self._dead.add(holder)
        tickets = [t for t, (who, _, _) in self._held.items() if who == holder]
        for ticket in tickets:
            await self.release(ticket, None)
        return len(tickets)

    def usage(self) -> dict[str, int]:
        return {"held": len(self._held), "most_held": self.most_held}


class BudgetActor:
    """The job's spending limit for the whole cluster."""

    def __init__(self, limit: float, spent: float = 0.0, unanswered: float = 0.0) -> None:
        self.budget = Budget(limit, spent)
        self.budget.unanswered = unanswered
        self._held: dict[str, list[float]] = defaultdict(list)
        self._dead: set[str] = set()

    async def reserve(self, holder: str, dollars: float) -> str | None:
        """None once `dollars` are held for the holder; else why not (BudgetExceeded's
        message)."""
        if holder in self._dead:
            return GONE
        try:
            await self.budget.reserve(dollars)
        except BudgetExceeded as err:
            return err.message
        if holder in self._dead:  # died while it waited: nothing was sent
            await self.budget.settle(dollars, 0.0)
            return GONE
        self._held[holder].append(dollars)
        return None

    async def settle(self, holder: str, reserved: float, dollars: float, answered: bool) -> None:
        if holder in self._dead:
            return  # `drop` charged its reservations in full already
        if reserved > 0:
            self._held[holder].remove(reserved)
        await self.budget.settle(reserved, dollars, answered=answered)

    async def drop(self, holder: str) -> int:
        """Charge a dead worker's reservations in full; returns how many it held."""
        self._dead.add(holder)
        held = self._held.pop(holder, [])
        for dollars in held:
            await self.budget.settle(dollars, dollars, answered=False)
        return len(held)

    def spending(self) -> dict[str, float]:
        b = self.budget
        return {"limit": b.limit, "spent": b.spent, "unanswered": b.unanswered}


class SharedLimiter(Limiter):
    """A worker's stand-in for a model's limiter: each slot is a ticket of the actor's.

    Not `Limiter.__init__`: it holds no window of its own."""

    def __init__(self, actor: Any, holder: str, limits: Limits) -> None:
        self.actor = actor
        self.holder = holder
        self.limits = limits

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[Permit]:
        ref = self.actor.acquire.remote(self.holder, tokens)
        ticket = await _undone_if_cancelled(ref, self._release_ticket)
        if isinstance(ticket, str):
            raise BackendError(ticket)
        permit = Permit([0.0, float(tokens)])
        try:
            yield permit
        finally:
            # Not awaited: the answer is in hand, nothing waits on the release.
            self.actor.release.remote(ticket, int(permit.entry[1]))

    def _release_ticket(self, ticket: int | str) -> None:
        if isinstance(ticket, int):
            self.actor.release.remote(ticket, None)


class SharedBudget(Budget):
    """A worker's stand-in for the job's budget: reserve and settle go to the actor
    (`spent` here stays 0: the driver reads the actor's)."""

    def __init__(self, actor: Any, holder: str, limit: float) -> None:
        super().__init__(limit)
        self.actor = actor
        self.holder = holder

    async def reserve(self, dollars: float) -> None:
        if dollars <= 0:
            return
        ref = self.actor.reserve.remote(self.holder, dollars)

        def give_back(problem: str | None) -> None:
            if problem is None:
                self.actor.settle.remote(self.holder, dollars, 0.0, True)

        problem = await _undone_if_cancelled(ref, give_back)
        if problem is not None:
            raise BudgetExceeded(problem)

    async def settle(self, reserved: float, dollars: float, *, answered: bool = True) -> None:
        if reserved <= 0 and dollars <= 0:
            return
        await self.actor.settle.remote(self.holder, reserved, dollars, answered)


async def _undone_if_cancelled(ref: Any, undo: Callable[[Any], None]) -> Any:
    """The actor's answer; if the caller is cancelled first (its row was stopped), the
    answer is still coming, and `undo` gives back what it granted once it comes."""
    future = asyncio.ensure_future(_value(ref))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda f: f.cancelled() or f.exception() or undo(f.result()))
        raise


async def _value(ref: Any) -> Any:
    return await ref

"""A run's spending limit, enforced before each request is sent.

A request reserves what it could cost at most (its prompt, and every output token it may
generate) and settles to what it did cost when its answer is in. Spending plus what is
reserved never passes the limit, so as long as servers bill no more than a request can
use, spending never does either.

Reservations are far above what answers usually cost, so a request that does not fit
*now* waits while others are in flight: each one that settles gives most of its
reservation back. It gives up only when it could not fit even if everything in flight
cost nothing, or when nothing is left in flight: then it fails with `BudgetExceeded`,
which is final (no retry, no fallback), and the run stops starting new calls. Waiting
holds nothing but the budget's own lock (the gateway reserves before it takes any rate
limit slot), so in-flight requests always get to finish and wake it.
"""

from __future__ import annotations

import asyncio
import math

from llmflow.errors import LLMFlowError
from llmflow.runtime.backends.base import BackendError

EPSILON = 1e-12
"""Dollars of rounding tolerated at the limit."""
NOT_RUN = "not run: "
"""How a refusal's message starts (a call's `error` in its stats and trace)."""


class InvalidBudget(LLMFlowError, ValueError):
    """A budget that is not a finite amount of $0 or more."""


class BudgetExceeded(BackendError):
    """Not sent: it could take spending past the budget."""


class Budget:
    """`spent`: what the run has cost so far (a resumed run starts with what it spent
    before); `unanswered`: the part of it charged for tries that got no answer (a
    timeout, a dropped connection: the server may have billed them in full), which no
    journal records."""

    def __init__(self, limit: float, spent: float = 0.0) -> None:
        for amount in (limit, spent):  # NaN would let every spend through
            if not math.isfinite(amount) or amount < 0:
                raise InvalidBudget(f"a budget is a finite amount of $0 or more, not {amount}")
        self.limit = limit
        self.spent = spent
        self.reserved = 0.0
        self.unanswered = 0.0
        self.in_flight = 0
        """Reservations not settled yet (counted, not inferred from float dollars)."""
        self._settled = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop `_settled` belongs to (one budget may serve several runs)."""

    async def reserve(self, dollars: float) -> None:
        """Hold `dollars` for a request about to be sent, waiting for requests in flight
        to settle if that is what it takes; raise BudgetExceeded if it can never fit."""
        if dollars <= 0:
            return
        settled = self._condition()
        async with settled:
            while self.spent + self.reserved + dollars > self.limit + EPSILON:
                if not self.in_flight or self.spent + dollars > self.limit + EPSILON:
                    raise BudgetExceeded(
                        f"{NOT_RUN}it could cost up to ${dollars:.4f} and the budget of "
                        f"${self.limit:.4f} has ${max(self.limit - self.spent, 0):.4f} left "
                        f"(${self.spent:.4f} spent)"
                    )
                await settled.wait()
            self.reserved += dollars
            self.in_flight += 1

    async def settle(self, reserved: float, dollars: float, *, answered: bool = True) -> None:
        """A request is over: free its reservation and count what it cost (`answered`
        False: it got no answer, and `dollars` is what it may have been billed)."""
        if reserved <= 0 and dollars <= 0:
            return
        if reserved > 0:
            self.in_flight -= 1
            self.reserved = self.reserved - reserved if self.in_flight else 0.0
        self.spent += dollars
        if not answered:
            self.unanswered += dollars
        # Never waits: no holder of the lock suspends while holding it.
        settled = self._condition()
        async with settled:
            settled.notify_all()

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._settled, self._loop = asyncio.Condition(), loop
        return self._settled


class Reservation:
    """One request's hold on the budget, across its tries: a try that got no answer may
    have been billed in full, so it is settled at the reservation and the next try
    reserves again."""

    def __init__(self, budget: Budget | None, dollars: float) -> None:
        self.budget = budget
        self.dollars = dollars
        self.held = False

    async def take(self) -> None:
        if self.budget is not None and not self.held and self.dollars > 0:
            await self.budget.reserve(self.dollars)
            self.held = True

    async def settle(self, dollars: float) -> None:
        """The try answered and cost `dollars`."""
        if self.budget is not None:
            held, self.held = self.held, False
            await self.budget.settle(self.dollars if held else 0.0, dollars)

    async def lose(self) -> None:
        """The try got no answer (a timeout, a dropped connection, an unreadable body):
        the server may have billed it anyway, so count it at what it could have cost."""
        if self.held:
            assert self.budget is not None
            self.held = False
            await self.budget.settle(self.dollars, self.dollars, answered=False)

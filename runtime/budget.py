"""A run's spending limit, enforced before each request is sent.

A request reserves what it could cost at most (its prompt, and every output token it may
generate) and settles to what it did cost when its answer is in. A request whose
reservation would take spending past the limit is not sent: it fails with
`BudgetExceeded`, which is final (no retry, no fallback), so the run stops starting new
calls while the ones in flight finish.
"""

from __future__ import annotations

from llmflow.runtime.backends.base import BackendError


class BudgetExceeded(BackendError):
    """Not sent: it could take spending past the budget."""


class Budget:
    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, dollars: float) -> None:
        if dollars > 0 and self.spent + self.reserved + dollars > self.limit + 1e-12:
            raise BudgetExceeded(
                f"not run: it could cost up to ${dollars:.4f} and the budget of "
                f"${self.limit:.4f} has ${max(self.limit - self.spent - self.reserved, 0):.4f} "
                f"left (${self.spent:.4f} spent, ${self.reserved:.4f} in flight)"
            )
        self.reserved += dollars

    def settle(self, reserved: float, dollars: float) -> None:
        self.reserved -= reserved
        self.spent += dollars

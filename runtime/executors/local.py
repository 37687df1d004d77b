"""The local executor: the rows run in this process, in one Session (`run_rows`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Self

from llmflow.compiler.ir import Plan
from llmflow.runtime.batch import DEFAULT_IN_FLIGHT, RowResult, run_rows
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.rows import Row
from llmflow.runtime.scheduler import Event
from llmflow.runtime.session import Session


class LocalExecutor:
    """Runs rows in the given session, which it closes on exit."""

    def __init__(
        self,
        session: Session,
        plan: Plan,
        *,
        in_flight: int = DEFAULT_IN_FLIGHT,
        seed: RunSeed | None = None,
        on_event: Event | None = None,
    ) -> None:
        self.session = session
        self.plan = plan
        self.in_flight = in_flight
        self.seed = seed
        self.on_event = on_event

    async def __aenter__(self) -> Self:
        await self.session.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.session.aclose()

    def results(self, rows: Iterable[Row]) -> AsyncIterator[RowResult]:
        return run_rows(
            self.session,
            self.plan,
            rows,
            in_flight=self.in_flight,
            seed=self.seed,
            on_event=self.on_event,
        )

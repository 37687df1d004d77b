"""Running a plan once per dataset row, a bounded number of rows at a time, in one Session.

The rows share everything the Session keeps (loaded models, limiters, budget, cache,
journal), so the model assignment, the rate limits and the spending limit hold for the
dataset as a whole, and the calls of rows in flight meet at their models: a prefix group
of the plan is a group across rows (the embedded backend evaluates its shared prefix once
and decodes the rows' calls side by side). Rows are pulled from the source only as slots
free up, and each row's call records are summed into its `RowStats` and dropped, so
memory stays flat however many rows there are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmflow.compiler.ir import Plan
from llmflow.runtime.calls import CallStats, RowId, RunSeed
from llmflow.runtime.rows import Row
from llmflow.runtime.scheduler import Event, NodeFailed
from llmflow.runtime.secrets import redact
from llmflow.runtime.stats import ModelStats, call_count, model_stats

if TYPE_CHECKING:
    from llmflow.runtime.journal import Journal
    from llmflow.runtime.session import Session

DEFAULT_IN_FLIGHT = 16
"""Rows running at once: enough to keep a rate-limited endpoint or a batching embedded
model busy, few enough that a stop loses little work (the journal keeps even that)."""


@dataclass
class RowStats:
    calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    seconds: float = 0.0
    """Wall-clock seconds from the row's start to its end."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "dollars": round(self.dollars, 10),
            "seconds": round(self.seconds, 4),
        }


@dataclass
class RowResult:
    id: RowId
    line: int
    digest: str
    outputs: dict[str, Any]
    error: str | None = None
    """What failed, one failure per line (`file:line:col: function failed: why`), or why
    the row could not be read."""
    stats: RowStats = field(default_factory=RowStats)
    models: dict[str, ModelStats] = field(default_factory=dict)
    """The row's calls per model (the run's summary adds these up)."""
    not_run: bool = False
    """A call of the row was never sent because the budget could not pay for it: the
    row is not done (a resume with a larger budget runs it), not failed."""
    calls: list[CallStats] = field(default_factory=list)
    """Every call's record, kept only when asked for (`keep_calls`)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.not_run

    def to_json(self) -> dict[str, Any]:
        """The row's line in the results file."""
        return {
            "id": self.id,
            "outputs": self.outputs,
            "error": self.error,
            "stats": self.stats.as_dict(),
            "digest": self.digest,
        }


async def run_rows(
    session: Session,
    plan: Plan,
    rows: Iterable[Row] | AsyncIterable[Row],
    *,
    in_flight: int = DEFAULT_IN_FLIGHT,
    seed: RunSeed | None = None,
    keep_calls: bool = False,
    on_event: Event | None = None,
) -> AsyncIterator[RowResult]:
    """Run the plan on each row, at most `in_flight` rows at a time, and yield each row's
    result as it finishes (completion order; the row's id says which). A row that fails
    is a result with its error; the others go on. Once a row could not be paid for
    (`not_run`), no new row starts: the rest would not be paid for either. Each row
    samples with its own seed, derived from `seed` and its id (`RunSeed.for_row`).
    Closing the iterator early cancels the rows in flight (their answers are in the
    journal, if the session has one)."""
    if in_flight < 1:
        raise ValueError(f"rows in flight must be 1 or more, not {in_flight}")
    session.check(plan)  # once for the dataset, not once per row
    seed = seed or RunSeed.draw()
    source = _aiter(rows)
    running: set[asyncio.Task[RowResult]] = set()
    exhausted = stopped = False
    try:
        while True:
            while not exhausted and not stopped and len(running) < in_flight:
                row = await anext(source, None)
                if row is None:
                    exhausted = True
                else:
                    task = asyncio.ensure_future(
                        run_row(session, plan, row, seed, keep_calls=keep_calls, on_event=on_event)
                    )
                    running.add(task)
            if not running:
                return
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                result = task.result()
                stopped |= result.not_run
                yield result
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()


async def run_row(
    session: Session,
    plan: Plan,
    row: Row,
    seed: RunSeed,
    *,
    keep_calls: bool = False,
    on_event: Event | None = None,
    journal: Journal | None = None,
) -> RowResult:
    """One row's run (the plan checked already); `journal`: answer from and record into
    this one instead of the session's (an executor in another process replays the row's
    own answers)."""
    if row.problem is not None:
        return RowResult(row.id, row.line, row.digest, {}, error=row.problem)
    started = time.perf_counter()
    result = await session.run(
        plan,
        row.inputs,
        row=row.id,
        seed=seed.for_row(row.id),
        on_event=on_event,
        journal=journal,
        checked=True,
    )
    stats = RowStats(calls=call_count(result.calls), seconds=time.perf_counter() - started)
    for call in result.calls:
        stats.input_tokens += call.input_tokens
        stats.cached_tokens += call.cached_tokens
        stats.output_tokens += call.output_tokens
        stats.dollars += call.dollars
    failed = [f for f in result.failures if not f.not_run]
    return RowResult(
        row.id,
        row.line,
        row.digest,
        result.outputs,
        error="\n".join(_message(f) for f in failed) or None,
        stats=stats,
        models=model_stats(result.calls),
        not_run=any(f.not_run for f in result.failures) and not failed,
        calls=result.calls if keep_calls else [],
    )


def _message(failure: NodeFailed) -> str:
    return redact(f"{failure.where()}{failure.node.label} failed: {failure.message}")


async def _aiter(rows: Iterable[Row] | AsyncIterable[Row]) -> AsyncIterator[Row]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row

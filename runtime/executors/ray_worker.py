"""A Ray worker of a dataset run: one Session, many rows, each row's answers streamed back.

The worker is built from plain data (the plan's JSON, `JobSettings`, the seed) and the
handles of the shared actors (`ray_state`), never from pickled llmflow objects, so any
machine with the same llmflow installed can host one. Its Session loads each model once
and keeps its prefix caches warm for every row it is given; its limits and budget are the
cluster's. It writes no file: `run` yields each answer the row receives as it arrives
(the driver journals it at once) and then the row's result with its call records (the
driver writes the trace), so a worker that dies loses nothing the driver was told.

This module imports no Ray: the executor makes an actor of `RowWorker` (`ray.remote`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from llmflow.compiler.ir import Plan
from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import Generation
from llmflow.runtime.batch import RowResult, RowStats, run_row
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import CallStats, RowId, RunSeed
from llmflow.runtime.executors.ray_state import SharedBudget, SharedLimiter
from llmflow.runtime.journal import Journal
from llmflow.runtime.limits import PERIOD, Limiter
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.rows import Row
from llmflow.runtime.secrets import redact
from llmflow.runtime.session import Session
from llmflow.runtime.stats import ModelStats


@dataclass(frozen=True)
class JobSettings:
    """What a worker needs to build its Session, as JSON-able data (`to_json`)."""

    budget: float | None = None
    """USD the whole job may spend (None: no budget)."""
    spent: float = 0.0
    """What the run spent before (a resumed run), the journal's answers aside."""
    unanswered: float = 0.0
    cache: str | None = None
    """The response cache's folder on each machine (None: no cache)."""
    retry: dict[str, Any] = field(default_factory=dict)
    """`RetryPolicy` fields (empty: the defaults)."""
    limit_period: float = PERIOD
    """Seconds of a limit's window: a minute, as limits are declared (tests shorten it)."""
    spending: Budget | None = field(default=None, compare=False, repr=False)
    """The driver's budget, told what the cluster spent when the job ends (never sent)."""

    @classmethod
    def for_run(
        cls,
        *,
        budget: Budget | None = None,
        cache: ResponseCache | None = None,
        retry: RetryPolicy | None = None,
        limit_period: float = PERIOD,
    ) -> Self:
        """The settings of a run the driver set up (the CLI's budget, cache, policy)."""
        return cls(
            budget=budget.limit if budget is not None else None,
            spent=budget.spent if budget is not None else 0.0,
            unanswered=budget.unanswered if budget is not None else 0.0,
            cache=str(cache.path.parent) if cache is not None else None,
            retry=dataclasses.asdict(retry) if retry is not None else {},
            limit_period=limit_period,
            spending=budget,
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["spending"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**data)


class RowJournal(Journal):
    """A row's journal on a worker: the answers the driver's journal holds for it, and a
    `sink` that sends each new answer to the driver. Not `Journal.__init__`: no file."""

    def __init__(
        self,
        answers: list[tuple[str, Generation]],
        sink: Callable[[str, Generation, RowId | None], None],
    ) -> None:
        self.unreadable = 0
        self._replay: dict[str, deque[Generation]] = defaultdict(deque)
        for key, generation in answers:
            self._replay[key].append(generation)
        self._rows = {}
        self._sink = sink

    def record(self, key: str, generation: Generation, row: RowId | None = None) -> None:
        self._sink(key, generation, row)

    def close(self) -> None:
        return None


class RowWorker:
    """Runs rows of one plan in one Session (a Ray actor: many rows at once)."""

    def __init__(
        self,
        plan: str,
        settings: dict[str, Any],
        seed: dict[str, Any],
        holder: str,
        limits: dict[str, Any],
        budget: Any | None,
    ) -> None:
        """`plan`: `Plan.to_json()` as text; `holder`: this worker's name at the shared
        actors; `limits`: model name → its limits actor (models with no declared limit
        are absent); `budget`: the budget actor, if the job has a budget."""
        self.holder = holder
        self.problem: str | None = None
        try:
            self.plan = Plan.from_json(plan)
            job = JobSettings.from_json(settings)
            self.seed = RunSeed(**seed)
            self.cache = ResponseCache(Path(job.cache)) if job.cache else None
            shared: dict[str, Limiter] = {}

            def limiter_for(name: str, spec: ModelSpec) -> Limiter:
                if name not in shared:
                    actor = limits.get(name)
                    shared[name] = (
                        SharedLimiter(actor, holder, spec.limits)
                        if actor is not None
                        else Limiter(spec.limits, job.limit_period)
                    )
                return shared[name]

            self.session = Session(
                budget=SharedBudget(budget, holder, job.budget)
                if budget is not None and job.budget is not None
                else None,
                cache=self.cache,
                retry=RetryPolicy(**job.retry),
                limiter_for=limiter_for,
            )
            self.session.check(self.plan)  # once for all its rows (keys, prices)
        except Exception as err:  # reported by `ready`, so the driver says why
            self.problem = redact(str(err)) or type(err).__name__

    def ready(self) -> dict[str, Any]:
        """Where the worker runs, or why it cannot run rows."""
        return {"pid": os.getpid(), "problem": self.problem}

    async def run(self, row: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield `{"answers": [[key, generation], ...]}` as the row receives answers,
        the last with `"result"` (`result_json`). Answers that arrive together, or just
        before the row ends, go in one item: an item costs a Ray message. `row`:
        `row_json`, with the answers the driver's journal holds for it."""
        assert self.problem is None
        arrived: asyncio.Queue[tuple[str, Generation] | None] = asyncio.Queue()
        answers = [(key, Generation.model_validate(g)) for key, g in row["answers"]]
        journal = RowJournal(answers, lambda key, gen, _: arrived.put_nowait((key, gen)))
        task = asyncio.ensure_future(
            run_row(
                self.session, self.plan, row_of(row), self.seed, keep_calls=True, journal=journal
            )
        )
        task.add_done_callback(lambda _: arrived.put_nowait(None))
        try:
            ended = False
            while not ended:
                batch = [await arrived.get()]
                await asyncio.sleep(0)  # a row whose last answer this was ends now
                while not arrived.empty():
                    batch.append(arrived.get_nowait())
                ended = batch[-1] is None
                item: dict[str, Any] = {
                    "answers": [[k, g.model_dump(mode="json")] for k, g in filter(None, batch)]
                }
                if ended:
                    item["result"] = result_json(task.result())
                yield item
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        await self.session.aclose()
        if self.cache is not None:
            self.cache.close()


def row_json(row: Row, answers: list[tuple[str, Generation]]) -> dict[str, Any]:
    return {
        "id": row.id,
        "line": row.line,
        "inputs": row.inputs,
        "digest": row.digest,
        "problem": row.problem,
        "answers": [[key, g.model_dump(mode="json")] for key, g in answers],
    }


def row_of(data: dict[str, Any]) -> Row:
    return Row(data["id"], data["line"], data["inputs"], data["digest"], data["problem"])


def result_json(result: RowResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "line": result.line,
        "digest": result.digest,
        "outputs": result.outputs,
        "error": result.error,
        "stats": dataclasses.asdict(result.stats),
        "models": {name: s.model_dump() for name, s in result.models.items()},
        "not_run": result.not_run,
        "calls": [c.model_dump(mode="json") for c in result.calls],
    }


def result_of(data: dict[str, Any]) -> RowResult:
    return RowResult(
        data["id"],
        data["line"],
        data["digest"],
        data["outputs"],
        error=data["error"],
        stats=RowStats(**data["stats"]),
        models={name: ModelStats.model_validate(s) for name, s in data["models"].items()},
        not_run=data["not_run"],
        calls=[CallStats.model_validate(c) for c in data["calls"]],
    )

"""The Ray executor: a dataset's rows run by Ray actors, each holding a Session.

The driver (this object, in the process that runs `llmflow run`) starts or joins a
cluster, starts the shared actors (each model's limits and the budget: `ray_state`) and
`workers` row workers (`ray_worker.RowWorker`), and hands each worker rows, at most
`in_flight` at a time per worker. A worker streams each row's answers back as they
arrive and then the row's result; the driver alone writes: the answers to the run's
journal, the call records to its trace, and (through the caller, like the local
executor) each result to the results file. So the run folder stays on the driver's
machine, the workers need no shared disk, and a resumed or a local run reads the same
journal.

Faults: Ray runs an actor call at most once, and a worker that dies takes the rows it
was running with it. The driver sees the death, frees what the worker held at the
shared actors, starts a replacement and gives the rows to a worker again, each with
every answer recorded for it so far (none of its journaled calls is sent again). A row
is yielded once, when its result arrives; a row that saw two deaths runs alone (`_Todo`),
and one whose worker died under it `ROW_ATTEMPTS` times is yielded failed, saying so.
See docs/scaling.md.

Ray is imported only when a RayExecutor is made: without it, a clear error says how to
install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Self

from llmflow.compiler.ir import Plan
from llmflow.errors import LLMFlowError
from llmflow.runtime.backends.base import Generation
from llmflow.runtime.batch import DEFAULT_IN_FLIGHT, RowResult
from llmflow.runtime.calls import RowId, RunSeed
from llmflow.runtime.executors.ray_state import BudgetActor, LimitsActor
from llmflow.runtime.executors.ray_worker import (
    JobSettings,
    RowWorker,
    result_of,
    row_json,
)
from llmflow.runtime.journal import Journal
from llmflow.runtime.rows import Row
from llmflow.runtime.runs import RunDir
from llmflow.runtime.secrets import redact
from llmflow.runtime.trace import TraceWriter

__all__ = ["JobSettings", "RayExecutor", "ROW_ATTEMPTS"]

ROW_ATTEMPTS = 3
"""Workers a row may see die under it before it is given up as failed (Ray's own
default for a task whose worker died)."""
START_TIMEOUT = 120.0
"""Seconds a worker may take to start (the cluster may have to free or add a CPU)."""
STARTS = 3
"""Workers in a row that may die before they start, before the run gives up."""
CLOSE_TIMEOUT = 10.0


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise LLMFlowError(
            "--executor ray needs Ray, which is not installed: pip install 'llmflow[ray]'"
        ) from None
    return ray


@dataclass(eq=False)
class _Worker:
    name: str
    """Its holder name at the shared actors (never reused)."""
    handle: Any
    started: asyncio.Task[dict[str, Any]]
    running: int = 0
    done: int = 0
    """Rows it finished."""
    pid: int | None = None
    ready: bool = False
    alive: bool = True
    alone: bool = False
    """Running a suspect row, and nothing else."""


class RayExecutor:
    """Runs rows on Ray actors; an async context manager (the cluster is joined, and the
    actors and run files opened, at the first row; all of it closed on exit).

    `address`: the cluster to join (`ray.init(address=...)`: "auto", "HOST:6379"); None
    starts a local one, unless this process is connected to a cluster already.
    `workers`: row workers (default: one per CPU of the cluster). `in_flight`: rows
    running at once *on each worker*. `run_dir`: the run folder whose journal is
    replayed and appended and whose trace is written."""

    def __init__(
        self,
        plan: Plan,
        settings: JobSettings,
        *,
        address: str | None = None,
        workers: int | None = None,
        in_flight: int = DEFAULT_IN_FLIGHT,
        seed: RunSeed | None = None,
        run_dir: RunDir | None = None,
    ) -> None:
        self.ray = import_ray()
        if in_flight < 1:
            raise ValueError(f"rows in flight must be 1 or more, not {in_flight}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be 1 or more, not {workers}")
        self.plan = plan
        self.settings = settings
        self.address = address
        self.workers = workers
        self.in_flight = in_flight
        self.seed = seed or RunSeed.draw()
        self.run_dir = run_dir
        self.limiters: dict[str, Any] = {}
        """Model name → its limits actor (models with a declared limit)."""
        self.budget: Any | None = None
        self._pool: list[_Worker] = []
        self._names = (f"w{n}" for n in itertools.count(1))
        self._failed_starts = 0
        self._started_ray = False
        self._journal: Journal | None = None
        self._trace: TraceWriter | None = None
        self._worker_options: dict[str, Any] = {}
        self._plan_json = ""
        self._restore_output: Callable[[], None] = lambda: None
        self._opened = False

    async def __aenter__(self) -> Self:
        return self  # the cluster is joined at the first row: a resume with none left skips it

    async def _start(self) -> None:
        """Join (or start) the cluster, open the run files, start the shared actors and
        the workers; `__aexit__` undoes whatever part of it was done."""
        if self._opened:
            return
        self._opened = True
        ray = self.ray
        self._restore_output = _ray_output_to_stderr()
        if not ray.is_initialized():
            where = f" at {self.address}" if self.address else ""
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise LLMFlowError(f"cannot start or reach a Ray cluster{where}: {err}") from None
            self._started_ray = True
        self._open()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    def _open(self) -> None:
        ray = self.ray
        replayed = 0.0
        if self.run_dir is not None:
            self._journal = Journal(self.run_dir.journal)
            replayed = self._journal.dollars  # the answers it has were paid for
            self._trace = TraceWriter(self.run_dir.trace, dict(self.plan.models))
        shared = {"num_cpus": 0, "max_concurrency": 10_000, "max_restarts": 0}
        tag = secrets.token_hex(3)  # names to find them by (`ray list actors`), never shared
        settings = self.settings
        if settings.budget is not None:
            actor = ray.remote(BudgetActor).options(name=f"llmflow-budget-{tag}", **shared)
            self.budget = actor.remote(
                settings.budget, settings.spent + replayed, settings.unanswered
            )
        plan = self.plan
        for name in sorted(plan.models_used(fallbacks=True)):
            limits = plan.models[name].limits
            if limits.rpm or limits.tpm or limits.concurrency:
                named = ray.remote(LimitsActor).options(
                    name=f"llmflow-limits-{name}-{tag}", **shared
                )
                self.limiters[name] = named.remote(limits.model_dump(), settings.limit_period)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        count = self.workers or max(1, int(cpus))
        self._worker_options = {
            # A worker's rows wait on models, mostly: it asks for at most one CPU, less
            # when more workers are asked for than the cluster has CPUs.
            "num_cpus": math.floor(min(1.0, cpus / count) * 10_000) / 10_000,
            "max_concurrency": self.in_flight + 4,
            "max_restarts": 0,  # the driver replaces a dead worker (a new holder name)
            "max_task_retries": 0,  # and re-runs its rows itself, replaying their answers
        }
        self._plan_json = json.dumps(self.plan.to_json())
        for _ in range(count):
            self._start_worker()

    def _start_worker(self) -> None:
        name = next(self._names)
        actor = self.ray.remote(RowWorker).options(**self._worker_options)
        handle = actor.remote(
            self._plan_json,
            self.settings.to_json(),
            {"value": self.seed.value, "chosen": self.seed.chosen},
            name,
            self.limiters,
            self.budget,
        )

        async def started() -> dict[str, Any]:
            return await asyncio.wait_for(_value(handle.ready.remote()), START_TIMEOUT)

        self._pool.append(_Worker(name, handle, asyncio.ensure_future(started())))

    def workers_info(self) -> list[dict[str, Any]]:
        """Each worker started so far: its name, process id (once started), rows running
        and done, and whether it is alive."""
        return [
            {"name": w.name, "pid": w.pid, "running": w.running, "done": w.done, "alive": w.alive}
            for w in self._pool
        ]

    def results(self, rows: Iterable[Row]) -> AsyncIterator[RowResult]:
        """Each row's result as it finishes (completion order), its call records
        already written to the trace (and dropped)."""
        return self._results(rows)

    async def _results(self, rows: Iterable[Row]) -> AsyncIterator[RowResult]:
        source = iter(rows)
        first = next(source, None)
        if first is None:
            return
        await self._start()
        todo = _Todo(itertools.chain([first], source))
        deaths: dict[RowId, int] = {}
        answers: dict[RowId, list[tuple[str, Generation]]] = {}
        running: dict[asyncio.Future[Any], tuple[_Worker, Row]] = {}
        try:
            while True:
                for worker in self._pool:
                    while (row := todo.next_for(worker, self.in_flight)) is not None:
                        if row.problem is not None:
                            yield RowResult(row.id, row.line, row.digest, {}, error=row.problem)
                            continue
                        if row.id not in answers:
                            taken = self._journal.take_row(row.id) if self._journal else []
                            answers[row.id] = taken
                        task = asyncio.ensure_future(self._run_on(worker, row, answers[row.id]))
                        running[task] = (worker, row)
                        worker.running += 1
                if not running and todo.empty:
                    return
                starting = {w.started: w for w in self._pool if w.alive and not w.ready}
                done, _ = await asyncio.wait(
                    set(running) | set(starting), return_when=asyncio.FIRST_COMPLETED
                )
                for future in done:
                    if future in starting:
                        await self._started(starting[future])
                        continue
                    worker, row = running.pop(future)
                    worker.running -= 1
                    worker.alone = False
                    try:
                        result = future.result()
                    except _Died:
                        await self._bury(worker)
                        deaths[row.id] = deaths.get(row.id, 0) + 1
                        if deaths[row.id] < ROW_ATTEMPTS:
                            todo.died(row, deaths[row.id])
                            continue
                        answers.pop(row.id, None)
                        yield RowResult(
                            row.id,
                            row.line,
                            row.digest,
                            {},
                            error=f"its Ray worker died {ROW_ATTEMPTS} times while running it",
                        )
                        continue
                    answers.pop(row.id, None)
                    worker.done += 1
                    if self._trace is not None:
                        for call in result.calls:
                            self._trace.write(call)
                    result.calls = []
                    todo.stopped |= result.not_run
                    yield result
        finally:
            for future in running:
                future.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _run_on(
        self, worker: _Worker, row: Row, answers: list[tuple[str, Generation]]
    ) -> RowResult:
        """One row on one worker: its answers journaled as they arrive (and kept in
        `answers`, for a re-run), then its result. Raises _Died if the worker died."""
        exceptions = self.ray.exceptions
        died = (
            exceptions.RayActorError,
            exceptions.ActorUnavailableError,
            exceptions.WorkerCrashedError,
            exceptions.ObjectLostError,
        )
        result: RowResult | None = None
        try:
            stream = worker.handle.run.options(num_returns="streaming").remote(
                row_json(row, answers)
            )
            async for ref in stream:
                item = await ref
                for key, data in item["answers"]:
                    answer = Generation.model_validate(data)
                    answers.append((key, answer))
                    if self._journal is not None:
                        self._journal.record(key, answer, row.id)
                if "result" in item:
                    result = result_of(item["result"])
        except died as err:
            raise _Died(str(err)) from None
        except exceptions.RayTaskError as err:
            raise _worker_error(err) from None
        if result is None:  # a stream that ends without its result: the worker went
            raise _Died("the worker's stream ended early")
        return result

    async def _started(self, worker: _Worker) -> None:
        """A worker's start is over: ready, or dead (replaced), or unable to run rows."""
        try:
            info = worker.started.result()
        except TimeoutError:
            needs = self._worker_options["num_cpus"]
            raise LLMFlowError(
                f"a Ray worker did not start within {START_TIMEOUT:.0f}s: each asks for "
                f"{needs} CPU and the cluster has {self.ray.cluster_resources().get('CPU', 0)}"
                "; use fewer --ray-workers or a larger cluster"
            ) from None
        except Exception as err:  # died while starting
            self._failed_starts += 1
            if self._failed_starts >= STARTS:
                raise LLMFlowError(
                    f"Ray workers keep dying before they start ({self._failed_starts} in a "
                    f"row): {redact(str(err)).splitlines()[0] if str(err) else type(err)}"
                ) from None
            await self._bury(worker)
            return
        if info["problem"] is not None:
            raise LLMFlowError(f"a Ray worker cannot run this plan: {info['problem']}")
        self._failed_starts = 0
        worker.pid = info["pid"]
        worker.ready = True

    async def _bury(self, worker: _Worker) -> None:
        """A worker died: free what it held at the shared actors and start another."""
        if not worker.alive:
            return
        worker.alive = False
        self.ray.kill(worker.handle, no_restart=True)
        holders = [*self.limiters.values(), *([self.budget] if self.budget else [])]
        try:
            await asyncio.gather(*(_value(actor.drop.remote(worker.name)) for actor in holders))
        except self.ray.exceptions.RayActorError as err:
            raise LLMFlowError(
                "the run's shared limits or budget went with a Ray process that died "
                f"({redact(str(err)).splitlines()[0]}); run again to resume"
            ) from None
        self._start_worker()

    async def _close(self) -> None:
        """Close the workers' sessions, stop every actor, tell the driver's budget what
        was spent, close the run files; each step even if another failed."""
        ray = self.ray
        alive = [w for w in self._pool if w.alive]
        for worker in self._pool:
            worker.started.cancel()
        closing = [_value(w.handle.close.remote()) for w in alive if w.ready]
        if closing:  # their HTTP clients, their cache connections
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*closing, return_exceptions=True), CLOSE_TIMEOUT
                )
        try:
            if self.budget is not None and self.settings.spending is not None:
                try:
                    spending = await _value(self.budget.spending.remote())
                except ray.exceptions.RayActorError:
                    raise LLMFlowError(
                        "what the run spent is lost with the budget's Ray process; the "
                        "journal still has every answer: run again to resume"
                    ) from None
                self.settings.spending.spent = spending["spent"]
                self.settings.spending.unanswered = spending["unanswered"]
        finally:
            for worker in alive:
                ray.kill(worker.handle, no_restart=True)
                worker.alive = False
            for actor in [*self.limiters.values(), *([self.budget] if self.budget else [])]:
                ray.kill(actor, no_restart=True)
            for part in (self._journal, self._trace):
                if part is not None:
                    part.close()
            if self._started_ray:
                ray.shutdown()
            self._restore_output()


class _Todo:
    """The rows still to hand out: fresh ones from the source, and rows whose worker died
    under them. After one death a row goes back in line (most deaths are the machine's,
    not the row's); after two it is a suspect, run alone on a worker (the others drain
    first), so a row that kills every worker it meets takes no other row down with it."""

    def __init__(self, source: Iterator[Row]) -> None:
        self.source = source
        self.again: deque[Row] = deque()
        self.suspects: deque[Row] = deque()
        self.exhausted = False
        self.stopped = False
        """A row could not be paid for: no new row starts (a resume runs the rest)."""

    def died(self, row: Row, deaths: int) -> None:
        (self.suspects if deaths >= 2 else self.again).append(row)

    def next_for(self, worker: _Worker, in_flight: int) -> Row | None:
        """The row this worker runs next, if it should start one now."""
        if self.stopped or not (worker.alive and worker.ready) or worker.alone:
            return None
        if self.suspects:
            if worker.running:
                return None
            worker.alone = True
            return self.suspects.popleft()
        if worker.running >= in_flight:
            return None
        if self.again:
            return self.again.popleft()
        if self.exhausted:
            return None
        row = next(self.source, None)
        self.exhausted = row is None
        return row

    @property
    def empty(self) -> bool:
        return self.stopped or (self.exhausted and not self.again and not self.suspects)


class _Died(Exception):
    """The worker running a row died (or became unreachable) before its result came."""


def _worker_error(err: Any) -> BaseException:
    """A worker's run raised: the llmflow error itself (the CLI reports it as a local
    run would), else one saying what it was."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, LLMFlowError):
        return cause
    what = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
    return LLMFlowError(f"a Ray worker failed: {redact(what).strip().splitlines()[-1]}")


async def _value(ref: Any) -> Any:
    return await ref


def _ray_output_to_stderr() -> Callable[[], None]:
    """Ray prints what its processes say (and "a worker died" notices) on the driver's
    stdout, where the results may be going: send it to stderr, with the progress and
    the logs, until the returned function puts it back. Ray's own function, wrapped; a
    Ray without it is left alone."""
    import ray._private.worker as worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None:
        return lambda: None

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    worker.print_to_stdstream = to_stderr

    def restore() -> None:
        worker.print_to_stdstream = printer

    return restore

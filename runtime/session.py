"""A Session: the machinery a run needs, kept warm across runs.

One object owns the router and its backends (a loaded embedded model, an HTTP client's
connections), the per-model limits, the response cache, the budget and retry policy, and
the writers of each run folder (journal, trace) and of OpenTelemetry spans. Many runs,
of one plan or several, go through it one after another or at the same time; they share
all of that, so a model loads once and a rate limit holds across runs. It is an async
context manager, and closes what it opened even when a run fails or is cancelled:

    async with Session(budget=1.0) as session:
        first = await session.run(plan, {"q": "why?"})
        second = await session.run(plan, {"q": "how?"})

Like httpx's `Client`, the object is small and each concern stays in its own module;
`llmflow.run` and `llmflow run` go through a Session too. A dataset executor is a loop of
`run` calls (a bounded number in flight) over one Session with one run folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from llmflow.compiler.ir import IRNode, Plan
from llmflow.compiler.models import ModelSpec
from llmflow.compiler.prices import check_priced
from llmflow.errors import LLMFlowError
from llmflow.runtime.backends import Router, registry
from llmflow.runtime.backends.base import Backend
from llmflow.runtime.batch import DEFAULT_IN_FLIGHT, RowResult, run_rows
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import CallStats, RowId, RunSeed
from llmflow.runtime.cassette import Cassette, OfflineBackend
from llmflow.runtime.gateway import Exchange, Gateway
from llmflow.runtime.inputs import bind_inputs
from llmflow.runtime.journal import Journal
from llmflow.runtime.limits import Limiter
from llmflow.runtime.otel import SpanWriter
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.rows import Row
from llmflow.runtime.runs import RunDir
from llmflow.runtime.scheduler import Event, NodeFailed, RunResult, Scheduler
from llmflow.runtime.trace import TraceWriter
from llmflow.runtime.values import InvalidValue, check_json

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


@dataclass
class _Pool:
    """Backends serving one set of model declarations. Plans that declare their model
    names alike share a pool; a plan that declares one of them differently gets a pool
    of its own (its backend options are its own)."""

    backend: Backend
    models: dict[str, ModelSpec]
    opened: set[str] = field(default_factory=set)
    """Models whose hosted clients the router has created (`Router.open`)."""

    def serves(self, models: Mapping[str, ModelSpec]) -> bool:
        """Whether the pool knows each of these models, declared alike (a backend is
        made for the models it was created with)."""
        return all(self.models.get(name) == spec for name, spec in models.items())


@dataclass
class _Writers:
    """What one run folder is written through; shared by the runs that use the folder."""

    journal: Journal
    trace: TraceWriter

    def close(self) -> None:
        for part in (self.journal, self.trace):
            part.close()


class Session:
    """Runs plans with their backends, limits, cache and writers kept across runs.

    `backend`: serve every model with this backend (tests, replay) instead of the
    router's; the session does not close it. `budget`: USD that all the session's runs
    together may spend (calls that could exceed it are not sent), or a `Budget` to read
    `spent` from afterwards. `cache`: answer deterministic requests from (and into)
    this response cache (the caller closes it). `run_dir`: the run folder runs write
    their journal and trace to unless `run` names another; a journal already there is
    replayed (resume), and its answers count as spent. `retry`: the retry policy.
    `otel`: also export each call as an OpenTelemetry span through this provider (shut
    down when the session closes). `limiter_for`: the limiter of a model name (given
    its declaration), instead of one per name and limits in this process: an executor
    spanning processes passes limiters that hold its limits across all of them.
    `cassette`: answer from (or record into) these recorded answers, a test's
    (`runtime/cassette.py`): replaying, no backend is created and no model's key or
    address is needed; recording, the response cache is not read. Runs given no seed
    (or one drawn at random) use the cassette's, so sampled calls replay. The session
    saves what it recorded when it closes (pruning the unused entries only when it
    closes without an error). `show`: told each request sent and its answer, wherever
    the answer came from (`llmflow run --prompts`)."""

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        budget: float | Budget | None = None,
        cache: ResponseCache | None = None,
        run_dir: RunDir | None = None,
        retry: RetryPolicy | None = None,
        otel: TracerProvider | None = None,
        limiter_for: Callable[[str, ModelSpec], Limiter] | None = None,
        cassette: Cassette | None = None,
        show: Exchange | None = None,
    ) -> None:
        self.backend = backend
        self.cassette = cassette
        self.show = show
        self.budget = Budget(budget) if isinstance(budget, int | float) else budget
        self.cache = cache
        self.run_dir = run_dir
        self.retry = retry or RetryPolicy()
        self.otel = otel
        self._limiter_for = limiter_for
        self._pools: list[_Pool] = []
        self._routers: list[Router] = []
        self._writers: dict[Path, _Writers] = {}
        self._limiters: dict[tuple[str, str], Limiter] = {}
        self._models: dict[str, ModelSpec] = {}
        """Every model a run of this session declared: what the writers describe."""
        self._spans: SpanWriter | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise LLMFlowError("this session is closed: open a new one")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(complete=error is None)

    def check(self, plan: Plan) -> None:
        """Fail if the plan cannot run in this session (`check_plan`)."""
        sends = self.cassette is None or self.cassette.sends
        check_plan(plan, priced=self.budget is not None, reached=self.backend is None and sends)

    async def run(
        self,
        plan: Plan,
        inputs: Mapping[str, Any],
        *,
        on_event: Event | None = None,
        seed: int | RunSeed | None = None,
        run_dir: RunDir | None = None,
        row: RowId | None = None,
        journal: Journal | None = None,
        checked: bool = False,
    ) -> RunResult:
        """Run a plan; failed nodes are in the result, next to every output that
        succeeded. The inputs are checked first (InputError names every problem), and
        then the plan (`check`): nothing is sent or written for a run that cannot start.
        `seed`: the run's seed, from which each sampled call's seed derives (default:
        drawn at random, in the result's `seed`): the same seed samples the same answers.
        `run_dir`: this run's folder, instead of the session's. `row`: the dataset row
        this run is (`run_many`): its calls' trace records and journal lines say so.
        `journal`: answer from and record into this journal instead of the folder's.
        `checked`: the plan passed `check` in this session already (a dataset's rows)."""
        if self._closed:
            raise LLMFlowError("this session is closed: open a new one")
        bound = bind_inputs(plan, inputs)
        if not checked:
            self.check(plan)
        pool = self._pool(plan)
        folder = run_dir or self.run_dir
        writers = self._writers_for(folder) if folder else None
        if journal is None and writers is not None:
            journal = writers.journal
        self._models.update(plan.models)
        if self.otel is not None and self._spans is None:
            self._spans = SpanWriter(self.otel, self._models)
        gateway = Gateway(
            pool.backend,
            plan.models,
            cache=self.cache if self.cassette is None else None,
            cassette=self.cassette,
            journal=journal,
            row=row,
            budget=self.budget,
            policy=self.retry,
            limiters={name: self._limiter(name, spec) for name, spec in plan.models.items()},
            show=self.show,
        )
        spans = self._spans

        def event(kind: str, node: IRNode, info: dict[str, Any]) -> None:
            stats: CallStats | None = info.get("stats")
            if stats is not None:
                stats.row = row
                if writers:
                    writers.trace.write(stats)
                if spans:
                    spans.write(stats)
            if on_event:
                on_event(kind, node, info)

        run_seed = RunSeed(seed) if isinstance(seed, int) else seed
        if self.cassette is not None and (run_seed is None or not run_seed.chosen):
            run_seed = self.cassette.seed
        return _printable(plan, await Scheduler(plan, gateway, event, run_seed).run(bound))

    def run_many(
        self,
        plan: Plan,
        rows: Iterable[Row] | AsyncIterable[Row],
        *,
        in_flight: int = DEFAULT_IN_FLIGHT,
        seed: RunSeed | None = None,
        keep_calls: bool = False,
        on_event: Event | None = None,
    ) -> AsyncIterator[RowResult]:
        """Run the plan once per row, `in_flight` rows at a time, yielding each row's
        result as it finishes (`runtime.batch.run_rows`)."""
        if self.cassette is not None and (seed is None or not seed.chosen):
            seed = self.cassette.seed  # each row's seed derives from it and the row's id
        return run_rows(
            self,
            plan,
            rows,
            in_flight=in_flight,
            seed=seed,
            keep_calls=keep_calls,
            on_event=on_event,
        )

    async def aclose(self) -> None:
        """Close every backend the session created and every writer it opened, each even
        if closing another failed, and save what its cassette recorded. A session closes
        once; closing again does nothing."""
        await self._close(complete=True)

    async def _close(self, complete: bool) -> None:
        if self._closed:
            return
        self._closed = True
        closers: list[Any] = [w.close for w in self._writers.values()]
        if self.cassette is not None and self.cassette.sends:
            cassette = self.cassette
            closers.append(lambda: cassette.save(final=complete))
        if self._spans is not None:
            closers.append(self._spans.close)
        elif self.otel is not None:
            closers.append(self.otel.shutdown)
        self._writers.clear()
        errors: list[BaseException] = []
        for close in closers:
            try:
                close()
            except Exception as err:  # the others are closed all the same
                errors.append(err)
        for router in self._routers:
            try:
                await router.aclose()
            except Exception as err:
                errors.append(err)
        if errors:
            raise errors[0]

    def _pool(self, plan: Plan) -> _Pool:
        """The pool that serves the plan's models, created (and its hosted clients
        opened) if none does yet."""
        used = plan.models_used()
        if self.cassette is not None and not self.cassette.sends:
            if not self._pools:  # replaying: no backend, no model loaded, nothing sent
                self._pools.append(_Pool(OfflineBackend(), {}))
            return self._pools[0]
        if self.backend is not None:
            if not self._pools:
                self._pools.append(_Pool(self.backend, {}))
            return self._pools[0]  # the given backend serves any model
        models = registry.anchored(plan.models, Path(plan.base_dir))
        pool = next((p for p in self._pools if p.serves(models)), None)
        if pool is None:
            router = Router(models)
            self._routers.append(router)
            pool = _Pool(router, models)
            self._pools.append(pool)
        if not used <= pool.opened:
            assert isinstance(pool.backend, Router)
            pool.backend.open(used - pool.opened)
            pool.opened |= used
        return pool

    def _limiter(self, name: str, spec: ModelSpec) -> Limiter:
        """The one limiter of a model name with these limits, whichever run asks: two
        runs of one plan, or of two plans declaring the model's limits alike, share its
        concurrency and its per-minute windows (a run declaring other limits for the name
        starts a limiter of its own)."""
        if self._limiter_for is not None:
            return self._limiter_for(name, spec)
        key = (name, spec.limits.model_dump_json())
        known = self._limiters.get(key)
        if known is None:
            known = self._limiters[key] = Limiter(spec.limits)
        return known

    def _writers_for(self, folder: RunDir) -> _Writers:
        writers = self._writers.get(folder.path)
        if writers is None:
            journal = Journal(folder.journal)
            try:
                trace = TraceWriter(folder.trace, self._models)
            except BaseException:
                journal.close()
                raise
            writers = self._writers[folder.path] = _Writers(journal, trace)
            if self.budget is not None:  # what the run spent on the answers it has
                self.budget.spent += journal.dollars
        return writers


def check_plan(plan: Plan, *, priced: bool = False, reached: bool = True) -> None:
    """What must hold before a run sends or writes anything, so that a run that cannot
    start leaves nothing behind: with a budget (`priced`), the price of every model the
    run may pay, each call's model and its fallbacks (UnknownPrice names the ones
    without); with the router's backends (`reached`), the key and address of every
    hosted model it calls (BackendError). Uses no resource."""
    if priced:
        check_priced(plan.models[name] for name in sorted(plan.models_used(fallbacks=True)))
    if reached:
        Router(registry.anchored(plan.models, Path(plan.base_dir))).check(plan.models_used())


def _printable(plan: Plan, result: RunResult) -> RunResult:
    """Outputs that JSON cannot hold (an operator overflowing to inf, an integer too long
    to print) become failures of their output, so every output can be recorded and
    printed as JSON."""
    for name, value in list(result.outputs.items()):
        try:
            check_json(value)
        except InvalidValue as err:
            del result.outputs[name]
            node = plan.graph.node(plan.graph.outputs[name])
            result.failures.append(NodeFailed(node, f"its value cannot be written as JSON: {err}"))
    return result

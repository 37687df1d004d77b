"""The dataflow scheduler: every node is a task that starts the moment its inputs exist.

Nodes run on demand: the run asks for the flow's outputs, each node asks for its
arguments, so independent work is in flight together (no lock-step rounds) and a node
nothing needs never runs. `map`, `branch` and `loop` expand their subgraphs when the
list or condition they depend on is known. A failed node fails only what depends on it:
every other output is still computed and returned.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.externs import ExternError, load_extern
from llmflow.compiler.ir import (
    Binding,
    BranchNode,
    BuiltinNode,
    Carried,
    ConstNode,
    ExternNode,
    Graph,
    InputNode,
    IRNode,
    Item,
    LLMNode,
    LoopNode,
    MapNode,
    OutputNode,
    Param,
    Plan,
    Port,
)
from llmflow.compiler.models import MAX_OPTION_NUMBER
from llmflow.compiler.types import FLOAT, ListT, Type
from llmflow.errors import LLMFlowError
from llmflow.runtime.backends.base import Backend, BackendError
from llmflow.runtime.budget import BudgetExceeded
from llmflow.runtime.calls import CallFailed, CallStats, Place, RunSeed, run_call
from llmflow.runtime.retry import RetriesExhausted
from llmflow.runtime.values import InvalidValue, validate
from llmflow.stdlib.builtins import (
    SHORT_CIRCUIT,
    BuiltinError,
    LimitError,
    check_size,
    decides,
    evaluate,
)

Event = Callable[[str, IRNode, dict[str, Any]], None]
"""Progress callback: ("start" | "done" | "failed" | "fallback" | "expand", node, details).
"done", "failed" and "fallback" (a model gave up; the next takes over) carry the call's
`CallStats` under "stats"."""


class NodeFailed(LLMFlowError):
    """A node could not compute its value. Raised again, unchanged, by every node that
    depends on it, so each failure is reported once, at its source. `not_run`: the
    call was never sent (the budget stopped it)."""

    def __init__(self, node: IRNode, message: str, not_run: bool = False) -> None:
        super().__init__(message)
        self.node = node
        self.message = message
        self.not_run = not_run

    def where(self) -> str:
        span = self.node.span
        return f"{span}: " if span else ""

    def diagnostic(self) -> Diagnostic:
        """The failure as a runtime error at the node's place in the program, rendered
        like a compile error (`diagnostics.render_run`)."""
        return Diagnostic(
            kind="run", message=f"{self.node.label} failed: {self.message}", span=self.node.span
        )


@dataclass(repr=False)
class RunResult:
    outputs: dict[str, Any]
    failures: list[NodeFailed]
    calls: list[CallStats] = field(default_factory=list)
    seed: int | None = None
    """The run's seed: run again with it to sample the same answers."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def __repr__(self) -> str:
        # Kept short: asyncio.run (3.11) formats its main task, result included, when it
        # restores the SIGINT handler; a full repr of 10,000 calls took ~0.2 s there.
        outputs, failures, calls = list(self.outputs), len(self.failures), len(self.calls)
        return f"RunResult(outputs={outputs}, failures={failures}, calls={calls})"


class _Frame:
    """One execution of one graph: the top-level flow, or one map item, branch or
    loop iteration; `place` says which (the map and loop nodes and indices around it)."""

    def __init__(self, graph: Graph, bindings: dict[Binding, Any], place: Place = ()) -> None:
        self.graph = graph
        self.bindings = bindings
        self.place = place
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.unread: dict[str, int] | None = None
        """Per node, how many of its readers have not had its value yet (outputs of the
        graph are not counted: whoever runs the frame reads them)."""


class Scheduler:
    def __init__(
        self,
        plan: Plan,
        backend: Backend,
        on_event: Event | None = None,
        seed: RunSeed | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.seed = seed or RunSeed.draw()
        """Every sampled call's seed derives from it and the call's place."""
        self.on_event = on_event or (lambda _kind, _node, _info: None)
        self.calls: list[CallStats] = []
        self._unfinished: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        """Tasks that may still run, so the run can let them finish. Held weakly: a
        node's value lives as long as its frame (a loop iteration, a map item) or a
        reader needs it, not for the whole run (a done callback per task to drop it
        would cost an event-loop callback per node)."""
        self._externs: dict[str, Callable[..., Any]] = {}
        self._groups = {call: group for group in plan.groups for call in group.calls}
        self._readers: dict[int, dict[str, int]] = {}
        """Per graph (by id: the plan holds every graph for the run), how many times its
        nodes read each node."""

    async def run(self, inputs: dict[str, Any]) -> RunResult:
        frame = _Frame(self.plan.graph, {Param(name=k): v for k, v in inputs.items()})
        names = list(self.plan.graph.outputs)
        results = await asyncio.gather(
            *(self._get(frame, self.plan.graph.outputs[n]) for n in names), return_exceptions=True
        )
        # Let everything still in flight finish, so no computed value is lost.
        while pending := [task for task in self._unfinished if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        outputs: dict[str, Any] = {}
        failures: dict[int, NodeFailed] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, NodeFailed):
                failures.setdefault(id(result), result)
            elif isinstance(result, BaseException):
                raise result
            else:
                outputs[name] = result
        return RunResult(
            outputs=outputs,
            failures=list(failures.values()),
            calls=self.calls,
            seed=self.seed.value,
        )

    # -- demand-driven evaluation

    def _get(self, frame: _Frame, node_id: str) -> asyncio.Task[Any]:
        task = frame.tasks.get(node_id)
        if task is None:
            node = frame.graph.node(node_id)
            task = asyncio.ensure_future(self._node(frame, node))
            frame.tasks[node_id] = task
            self._unfinished.add(task)
        return task

    async def _node(self, frame: _Frame, node: IRNode) -> Any:
        if isinstance(node, BuiltinNode) and node.op in SHORT_CIRCUIT:
            # Short-circuit: `len(xs) > 0 and xs[0] == "a"` must not index an empty list,
            # and `email ?? extract(text)` asks the model only when there is no email.
            left = await self._get(frame, node.args[0])
            self._read(frame, node.args[:1])
            if decides(node.op, left):
                return left
            right = await self._get(frame, node.args[1])
            self._read(frame, node.args[1:])
            return right
        if len(node.args) <= 1:  # most nodes: gather's own future and callbacks cost ~10 µs
            args = [await self._get(frame, a) for a in node.args]
        else:
            args = list(await asyncio.gather(*(self._get(frame, a) for a in node.args)))
        self._read(frame, node.args)
        try:
            return await self._compute(frame, node, args)
        except (NodeFailed, asyncio.CancelledError):
            raise
        except (CallFailed, BackendError, InvalidValue) as err:
            raise NodeFailed(node, str(err), isinstance(err, BudgetExceeded)) from err
        except Exception as err:  # extern and builtin code: report, don't crash the run
            raise NodeFailed(node, f"{type(err).__name__}: {err}") from err

    def _read(self, frame: _Frame, ids: list[str]) -> None:
        """A node has the values of `ids`: a value every reader has had is dropped from
        its frame, so a long flow does not hold every value it ever computed."""
        unread = frame.unread
        if unread is None:
            counts = self._readers.get(id(frame.graph))
            if counts is None:
                outputs = set(frame.graph.outputs.values())
                counts = self._readers[id(frame.graph)] = {}
                for reader in frame.graph.nodes:
                    for arg in reader.args:
                        if arg not in outputs:
                            counts[arg] = counts.get(arg, 0) + 1
            unread = frame.unread = dict(counts)
        for node_id in ids:
            left = unread.get(node_id)
            if left is None:  # an output of the graph
                continue
            if left > 1:
                unread[node_id] = left - 1
            else:
                del unread[node_id]
                frame.tasks.pop(node_id, None)

    async def _compute(self, frame: _Frame, node: IRNode, args: list[Any]) -> Any:
        match node:
            case InputNode(binding=binding):
                return frame.bindings[binding]
            case ConstNode(value=value):
                return value
            case OutputNode():
                return args[0]
            case BuiltinNode():
                return _as_declared(node.type, _builtin(node, args))
            case LLMNode():
                return await self._llm(node, args, (*frame.place, node.id))
            case ExternNode():
                return await self._extern(node, args)
            case MapNode():
                return await self._map(frame, node, args)
            case BranchNode():
                chosen = node.then if args[0] else node.orelse
                sub = _Frame(chosen, _ports(args), frame.place)
                return {name: await self._get(sub, out) for name, out in chosen.outputs.items()}
            case LoopNode():
                return await self._loop(frame, node, args)
        raise AssertionError(f"unknown node kind {node.kind}")

    async def _llm(self, node: LLMNode, args: list[Any], place: Place) -> Any:
        """Run a call on its model (its route's, for the value it has); if that model
        keeps failing, on the next one that qualifies (the optimizer's fallbacks), and say
        so in the call's stats."""
        priority = self.plan.priorities.get(node.id, 0.0)
        models = [node.call.model, *self.plan.fallbacks.get(node.id, [])]
        route = self.plan.routes.get(node.id)
        if route is not None:  # this value's model first; the call's own next
            chosen = route.model_for(args[node.call.params.index(route.input)], models[0])
            models = list(dict.fromkeys([chosen, *models]))
        group = self._groups.get(node.id)
        previous: CallStats | None = None
        for i, name in enumerate(models):
            stats = CallStats(
                function=node.call.function,
                model=name,
                node=node.id,
                group=group.id if group and group.model == name else None,
            )
            if previous is not None:
                stats.fallback_from = previous.model
                stats.events.append(
                    {"name": "fallback", "time": time.time(), "from": previous.model, "to": name}
                )
            self.on_event("start", node, {"model": name})
            stats.start = time.time()
            try:
                shared = group.prefix_tokens if stats.group and group else 0
                model = self.plan.models[name]
                value = await run_call(
                    node.call, args, model, self.backend, stats, priority, shared, self.seed, place
                )
            except (CallFailed, BackendError) as err:
                stats.end, stats.error = time.time(), str(err)
                if isinstance(err, RetriesExhausted):
                    stats.retries += err.attempts - 1
                    stats.events += err.events
                self.calls.append(stats)
                last = i + 1 == len(models)
                if last or not isinstance(err, RetriesExhausted):
                    self.on_event("failed", node, {"stats": stats})
                    raise
                self.on_event("fallback", node, {"stats": stats})
                previous = stats
                continue
            stats.end = time.time()
            self.calls.append(stats)
            self.on_event("done", node, {"stats": stats})
            return value
        raise AssertionError("unreachable")

    async def _extern(self, node: ExternNode, args: list[Any]) -> Any:
        func = self._externs.get(node.extern)
        if func is None:
            try:
                func = load_extern(node.extern, Path(self.plan.base_dir))
            except ExternError as err:
                raise NodeFailed(node, err.message) from None
            self._externs[node.extern] = func
        self.on_event("start", node, {})
        if inspect.iscoroutinefunction(func):
            result = await func(*args)
        else:
            result = await asyncio.to_thread(func, *args)
        if not node.extern_single and len(node.outputs) == 1:
            # `-> name: T` returns {"name": value}, like any extern with named outputs.
            if not isinstance(result, dict) or node.outputs[0] not in result:
                raise NodeFailed(
                    node, f"{node.extern} must return a dict with key '{node.outputs[0]}'"
                )
            result = result[node.outputs[0]]
        try:
            value = validate(node.type, result, strict=False)
        except InvalidValue as err:
            raise NodeFailed(
                node, f"{node.extern} returned a value that is not {node.type}: {err}"
            ) from err
        self.on_event("done", node, {})
        return value

    async def _map(self, frame: _Frame, node: MapNode, args: list[Any]) -> list[Any]:
        items, body = args[0], node.body
        self.on_event("expand", node, {"items": len(items)})
        ports = _ports(args)

        async def one(index: int, item: Any) -> tuple[bool, Any]:
            sub = _Frame(body, {**ports, _ITEM: item}, (*frame.place, node.id, index))
            if "where" in body.outputs and not await self._get(sub, body.outputs["where"]):
                return False, None
            return True, await self._get(sub, body.outputs["value"])

        results = await asyncio.gather(
            *(one(i, item) for i, item in enumerate(items)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        values = [value for keep, value in results if keep]  # type: ignore[misc]
        try:  # a million copies of one long text are small in memory, not as text or JSON
            check_size("the list this map makes", values)
        except LimitError as err:
            raise NodeFailed(node, str(err)) from None
        return values

    async def _loop(self, frame: _Frame, node: LoopNode, args: list[Any]) -> dict[str, Any]:
        body = node.body
        ports = _ports(args)
        has_list = node.over_list
        items = args[0] if has_list else range(_count(node, args))
        first = node.first_carried
        carried = dict(zip(node.carried, args[first : first + len(node.carried)], strict=True))
        for iteration, item in enumerate(items):
            bindings = {**ports, **{Carried(name=k): v for k, v in carried.items()}}
            if has_list:
                bindings[_ITEM] = item
            sub = _Frame(body, bindings, (*frame.place, node.id, iteration))
            names = list(body.outputs)
            values = await asyncio.gather(*(self._get(sub, body.outputs[n]) for n in names))
            done = dict(zip(names, values, strict=True))
            carried = {k: done[k] for k in node.carried}
            if done.get("until"):
                break
        return carried


def _count(node: LoopNode, args: list[Any]) -> int:
    """How many times a `repeat` loop may run: its fixed bound, or the int value it reads
    (0 runs it not at all: the carried values keep their first ones)."""
    if not node.count_arg:
        return node.loop_max or 0
    count = args[0]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise NodeFailed(node, f"the count must be an int of 0 or more, but it is {count!r}")
    if count > MAX_OPTION_NUMBER:
        raise NodeFailed(node, f"the count {count:,} is too large: at most {MAX_OPTION_NUMBER:,}")
    return count


def _as_declared(t: Type, value: Any) -> Any:
    """An int where the checker says float (`max(3, 2.5)`, `[1, 2.5]`) becomes a float."""
    if t == FLOAT and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(t, ListT) and t.item == FLOAT and isinstance(value, list):
        return [_as_declared(FLOAT, v) for v in value]
    return value


_ITEM = Item()


def _ports(args: list[Any]) -> dict[Binding, Any]:
    return {Port(index=i): v for i, v in enumerate(args)}


def _builtin(node: BuiltinNode, args: list[Any]) -> Any:
    try:
        return evaluate(node.op, node.static, args, node.bound)
    except BuiltinError as err:
        raise NodeFailed(node, str(err)) from None

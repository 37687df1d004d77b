"""Scheduler overhead: a 10,000-call program on an instant backend, llmflow beside
LangGraph on the same graph.

    python bench/overhead/run.py [--reps 5] [--items 5000] [--json out.json]
    python bench/overhead/run.py --profile [llmflow+run_dir]  # cProfile one llmflow run

The program (`program.llmflow`) maps over N items with two chained calls per item,
`polish(x, draft(x))`: 2 N calls. The "model" answers at once (`instant_llm`, the same
coroutine for both systems), so the run time is the runtime's own time. llmflow runs
through `llmflow.api.run_async` inside `asyncio.run`, exactly as `llmflow run` does:
the Gateway (journal, cache, budget, limits, retries) is in the path, the response cache
is off; `llmflow+run_dir` also writes the trace and the journal to a run folder.
LangGraph runs the same graph as a `StateGraph`: `Send` to `draft` per item, `draft`
hands over to `polish` with `Command(goto=Send(...))`, results gathered by an
`operator.add` reducer; `langgraph+checkpoint` adds its in-memory checkpointer (its
persistence, though not on disk).

Each measurement is a fresh process (`--worker`), systems interleaved per repetition:
compile time, a small warm-up run, the timed run, then a second run under tracemalloc
for the peak of Python allocations. The table gives medians.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import hashlib
import json
import operator
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

if TYPE_CHECKING:  # imported at run time by llmflow's workers only
    from llmflow.runtime.backends.base import Generation, GenerationRequest

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "program.llmflow"
SYSTEMS = ("llmflow", "llmflow+run_dir", "langgraph", "langgraph+checkpoint")
WARMUP_ITEMS = 20

# The prompts both systems send: llmflow renders them from program.llmflow's templates,
# LangGraph's nodes with these format strings (the outputs are compared).
DRAFT = "Write a one-line note about {item}."
POLISH = "Item: {item}\nDraft: {draft}\nPolish the draft into one line."


async def instant_llm(prompt: str) -> str:
    """The "model" of both systems: answers at once, from the prompt's length."""
    return f"note {len(prompt)}"


def items(n: int) -> list[str]:
    return [f"item {i}" for i in range(n)]


def rss_kib() -> int:
    """The process's resident set size now, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load}"
    )


# -- llmflow


class InstantBackend:
    """A backend whose generate returns at once: `instant_llm` on the prompt text."""

    def __init__(self) -> None:
        from llmflow.runtime.backends.base import Generation

        self._generation = Generation

    async def generate(self, request: GenerationRequest) -> Generation:
        prompt = "".join(turn.text for turn in request.turns)
        text = await instant_llm(prompt)
        return self._generation(text=text, input_tokens=len(prompt) // 4, output_tokens=2)

    async def aclose(self) -> None:
        return None


def llmflow_runner(n: int, run_dir: bool) -> tuple[dict[str, float], Callable[..., Any]]:
    """Compile the program (timed: parse+check+lower, then optimize) and return a
    function that runs it on `k` items, returning (outputs, node executions)."""
    import llmflow
    import llmflow.api
    from llmflow.api import bind_inputs
    from llmflow.compiler.optimizer import optimize
    from llmflow.runtime import session
    from llmflow.runtime.runs import RunDir
    from llmflow.runtime.scheduler import Scheduler

    class CountingScheduler(Scheduler):
        """Keeps the last instance and counts the tasks it starts (one per node
        execution; the scheduler itself drops finished ones)."""

        last: CountingScheduler | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.executions = 0
            CountingScheduler.last = self

        def _get(self, frame: Any, node_id: str) -> Any:
            if node_id not in frame.tasks:
                self.executions += 1
            return super()._get(frame, node_id)

    session.Scheduler = CountingScheduler  # type: ignore[misc]
    start = time.perf_counter()
    plan = llmflow.compile(PROGRAM, optimize=False)
    lowered = time.perf_counter()
    plan = optimize(plan, inputs=bind_inputs(plan, {"items": items(n)}, partial=True))
    optimized = time.perf_counter()
    timings = {"compile_s": lowered - start, "optimize_s": optimized - lowered}
    root = Path(tempfile.mkdtemp(prefix="llmflow-overhead-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)

    def run(k: int) -> tuple[list[str], int]:
        folder = RunDir.create(root) if run_dir else None
        result = asyncio.run(
            llmflow.api.run_async(plan, {"items": items(k)}, InstantBackend(), run_dir=folder)
        )
        assert result.ok, [f.message for f in result.failures]
        assert CountingScheduler.last is not None
        return result.outputs["notes"], CountingScheduler.last.executions

    return timings, run


# -- LangGraph


def import_langgraph() -> None:
    """Only LangGraph's workers import it (llmflow's memory must not carry it), into
    this module's globals, where LangGraph resolves the nodes' type hints."""
    global START, StateGraph, Command, Send
    try:
        from langgraph.graph import START, StateGraph
        from langgraph.types import Command, Send
    except ImportError:
        raise SystemExit("LangGraph is missing: pip install -r bench/requirements.txt") from None


class State(TypedDict):
    items: list[str]
    notes: Annotated[list[tuple[int, str]], operator.add]


class Item(TypedDict):
    index: int
    item: str


class Drafted(Item):
    draft: str


def langgraph_runner(checkpoint: bool) -> tuple[dict[str, float], Callable[..., Any]]:
    """Build the same graph in LangGraph (timed) and return a function that runs it."""
    import_langgraph()
    executed = [0]

    def fan_out(state: State) -> list[Send]:
        return [Send("draft", Item(index=i, item=x)) for i, x in enumerate(state["items"])]

    async def draft(state: Item) -> Command[Any]:
        executed[0] += 1
        text = await instant_llm(DRAFT.format(item=state["item"]))
        return Command(goto=Send("polish", Drafted(**state, draft=text)))

    async def polish(state: Drafted) -> dict[str, Any]:
        executed[0] += 1
        text = await instant_llm(POLISH.format(item=state["item"], draft=state["draft"]))
        return {"notes": [(state["index"], text)]}

    start = time.perf_counter()
    builder = StateGraph(State)
    builder.add_node("draft", draft)
    builder.add_node("polish", polish)
    builder.add_conditional_edges(START, fan_out, ["draft"])
    if checkpoint:
        from langgraph.checkpoint.memory import InMemorySaver

        graph = builder.compile(checkpointer=InMemorySaver())
    else:
        graph = builder.compile()
    timings = {"compile_s": time.perf_counter() - start, "optimize_s": 0.0}
    runs = [0]

    def run(k: int) -> tuple[list[str], int]:
        runs[0] += 1
        config = {"configurable": {"thread_id": f"run-{runs[0]}"}}
        executed[0] = 0
        out = asyncio.run(graph.ainvoke({"items": items(k), "notes": []}, config))
        return [text for _, text in sorted(out["notes"])], executed[0]

    return timings, run


# -- one measurement, in its own process


def worker(system: str, n: int) -> dict[str, Any]:
    rss_start = rss_kib()
    if system.startswith("llmflow"):
        timings, run = llmflow_runner(n, run_dir=system == "llmflow+run_dir")
    else:
        timings, run = langgraph_runner(checkpoint=system == "langgraph+checkpoint")
    run(WARMUP_ITEMS)
    gc.collect()
    rss_before = rss_kib()
    start, cpu = time.perf_counter(), time.process_time()
    notes, nodes = run(n)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    digest = hashlib.sha256(json.dumps(notes).encode()).hexdigest()[:16]
    assert len(notes) == n
    del notes
    gc.collect()
    tracemalloc.start()
    run(n)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "system": system,
        "items": n,
        "calls": 2 * n,
        "nodes": nodes,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        **timings,
        "rss_start_kib": rss_start,
        "rss_before_run_kib": rss_before,
        "peak_rss_kib": peak_rss,
        "traced_peak_bytes": traced_peak,
        "outputs_sha256": digest,
    }


def measure(system: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", system, "--items", str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{system} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


# -- profile


def profile(system: str, n: int, top: int) -> None:
    """cProfile one llmflow run (after a warm-up), sorted by own time and by cumulative."""
    import cProfile
    import pstats

    _, run = llmflow_runner(n, run_dir=system == "llmflow+run_dir")
    run(WARMUP_ITEMS)
    profiler = cProfile.Profile()
    profiler.enable()
    run(n)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumtime").print_stats(top)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| system | calls | node executions | run, median (min–max) | per call | per node "
        "| CPU per call | compile + optimize | peak traced (run) | RSS before run → peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in SYSTEMS:
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        runs = [r["seconds"] for r in mine]
        med, calls, nodes = statistics.median(runs), mine[0]["calls"], mine[0]["nodes"]
        cpu = statistics.median(r["cpu_seconds"] for r in mine)
        compile_s = statistics.median(r["compile_s"] for r in mine)
        optimize_s = statistics.median(r["optimize_s"] for r in mine)
        traced = statistics.median(r["traced_peak_bytes"] for r in mine) / 2**20
        rss = statistics.median(r["peak_rss_kib"] for r in mine) / 1024
        rss_before = statistics.median(r["rss_before_run_kib"] for r in mine) / 1024
        lines.append(
            f"| {system} | {calls:,} | {nodes:,} "
            f"| {med:.2f} s ({min(runs):.2f}–{max(runs):.2f}) "
            f"| {med / calls * 1e6:.0f} µs | {med / nodes * 1e6:.0f} µs "
            f"| {cpu / calls * 1e6:.0f} µs | {compile_s * 1e3:.0f} + {optimize_s * 1e3:.0f} ms "
            f"| {traced:.0f} MiB | {rss_before:.0f} → {rss:.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--items", type=int, default=5000, help="map items (2 calls each)")
    parser.add_argument("--only", help="comma-separated systems: " + ",".join(SYSTEMS))
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="llmflow",
        choices=SYSTEMS[:2],
        help="cProfile one run of llmflow (or llmflow+run_dir) instead",
    )
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.items)))
        return
    if args.profile:
        profile(args.profile, args.items, top=40)
        return
    systems = [s for s in SYSTEMS if not args.only or s in args.only.split(",")]
    print(machine_line() + " (at the start)", flush=True)
    rows: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for system in systems:
            row = measure(system, args.items)
            rows.append(row | {"rep": rep})
            print(json.dumps(row), file=sys.stderr)
    digests = {r["outputs_sha256"] for r in rows}
    print(machine_line() + " (at the end)\n")
    print(table(rows))
    print(f"\noutputs identical across systems: {'yes' if len(digests) == 1 else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""The Ray executor on this machine: start-up, per-row overhead against the local
executor, and 2 workers against 1 on an I/O-bound workload.

    python bench/batch/ray_bench.py [--reps 3] [--rows 2000] [--io-rows 160] [--json out.json]

- **Start-up**: `import ray` (a fresh process), `ray.init()` of a local cluster
  (`num_cpus=2`), and from entering `RayExecutor` to its first row's result (workers
  and shared actors started, the plan compiled into each worker's Session), with 1 and
  2 workers.
- **Per-row overhead**: `--rows` rows of a one-call program on a free instant model
  (`scripted`, no delay), so the time is the executors' own: the local executor in this
  process against the Ray executor with 1 and 2 workers (16 rows in flight per worker),
  timed from the first row's result to the last (start-up excluded). Beside it, what Ray
  itself costs per row here: one actor call per row, and a streaming call yielding one
  item or three (a row's answers and result in one message, or each in its own), and
  shards (a streaming call of 16 rows, one item per row); and
  how many slots per second one limits actor grants (every call of the cluster to a
  model with declared limits takes one: a ceiling on calls/s however many workers).
- **I/O-bound**: `--io-rows` rows of one call to the loopback test server (`latency`
  0.2 s per request, no limit declared), 8 rows in flight per worker: at most 40 rows/s
  per worker, so 2 workers can double what 1 does.

Each figure is measured `--reps` times in one run (the machine is shared: timings are
noisy); the table gives the median and the range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

import llmflow
from llmflow.compiler.models import Limits
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.executors.local import LocalExecutor
from llmflow.runtime.executors.ray import JobSettings, RayExecutor
from llmflow.runtime.executors.ray_state import LimitsActor, SharedLimiter
from llmflow.runtime.rows import Row, bind_rows
from llmflow.runtime.testing.server import start_server

INSTANT = """
model m = scripted("m", reply="ok")

fn ask(q: str) -> a: str
\"\"\"Answer {{q}}: {{a}}\"\"\"

flow main(q: str) -> a: str {
    a = ask(q)
}
"""

REMOTE = """
model remote = openai_compatible("bench", base_url="{url}")

fn ask(q: str) -> a: str
\"\"\"Answer {{{{q}}}}: {{{{a | max_tokens=8}}}}\"\"\"

flow main(q: str) -> a: str {{
    a = ask(q)
}}
"""
LATENCY = 0.2
IO_IN_FLIGHT = 8


def compiled(folder: Path, text: str) -> llmflow.Plan:
    path = folder / "prog.llmflow"
    path.write_text(text)
    return llmflow.compile(path)


def rows_of(plan: llmflow.Plan, count: int) -> list[Row]:
    return list(bind_rows(plan, ((i, {"q": f"q{i}"}, None) for i in range(1, count + 1))))


async def timed(executor: Any, rows: list[Row]) -> tuple[float, float, int]:
    """(seconds to the first result, seconds from it to the last, results)."""
    started = time.perf_counter()
    first = last = started
    count = 0
    async with executor:
        async for _ in executor.results(rows):
            count += 1
            last = time.perf_counter()
            if count == 1:
                first = last
    return first - started, last - first, count


def import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import ray; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(done.stdout.strip())


@ray.remote(num_cpus=0)
class _Echo:
    async def call(self, x: int) -> int:
        return x

    async def stream(self, x: int, items: int) -> Any:
        for _ in range(items):
            yield x


async def raw_ray(rows: int) -> dict[str, float]:
    """Milliseconds per row of Ray alone: an actor call, and a 3-item streaming call
    (16 in flight, as the executor keeps them)."""
    actor = _Echo.remote()
    await actor.call.remote(0)
    out: dict[str, float] = {}

    async def call(i: int) -> None:
        await actor.call.remote(i)

    async def stream(i: int, items: int) -> None:
        async for ref in actor.stream.options(num_returns="streaming").remote(i, items):
            await ref

    async def stream_1(i: int) -> None:
        await stream(i, 1)

    async def stream_3(i: int) -> None:
        await stream(i, 3)

    for name, one in (
        ("actor call", call),
        ("streaming call, 1 item", stream_1),
        ("streaming call, 3 items", stream_3),
    ):
        started = time.perf_counter()
        for start in range(0, rows, 16):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 16, rows))))
        out[name] = (time.perf_counter() - started) / rows * 1000
    # A shard: one streaming call of 16 rows, one item each (4 shards at once).
    started = time.perf_counter()
    for start in range(0, rows, 64):
        await asyncio.gather(*(stream(i, 16) for i in range(start, min(start + 64, rows), 16)))
    out["shards of 16 rows, an item per row"] = (time.perf_counter() - started) / rows * 1000
    ray.kill(actor)
    return out


async def limiter_grants(requests: int) -> float:
    """Slots per second one limits actor grants and takes back (`SharedLimiter.slot`,
    as a worker's calls use it), 64 requests at once from this process, under a
    concurrency limit of 64 (enforced, never reached)."""
    actor = ray.remote(LimitsActor).options(num_cpus=0, max_concurrency=10_000)
    limits = Limits(concurrency=64)
    shared = SharedLimiter(actor.remote(limits.model_dump()), "bench", limits)

    async def one() -> None:
        async with shared.slot(10):
            pass

    await one()
    started = time.perf_counter()
    for start in range(0, requests, 64):
        await asyncio.gather(*(one() for _ in range(start, min(start + 64, requests))))
    rate = requests / (time.perf_counter() - started)
    ray.kill(shared.actor)
    return rate


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--io-rows", type=int, default=160)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # the loopback server checks none
    figures: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    for _ in range(args.reps):
        add("import ray (s)", import_seconds())
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    add("ray.init(), local cluster of 2 CPUs (s)", time.perf_counter() - started)
    folder = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    instant = compiled(folder, INSTANT)
    rows = rows_of(instant, args.rows)
    seed = RunSeed(1)
    try:
        for _ in range(args.reps):
            for workers in (1, 2):
                ex = RayExecutor(instant, JobSettings(), workers=workers, in_flight=16, seed=seed)
                start, rest, count = asyncio.run(timed(ex, rows))
                assert count == args.rows
                add(f"start-up to the first row, {workers} worker(s) (s)", start)
                add(f"ray, {workers} worker(s): rows/s", (count - 1) / rest)
                add(f"ray, {workers} worker(s): ms per row", rest / (count - 1) * 1000)
            local = LocalExecutor(llmflow.Session(), instant, in_flight=16, seed=seed)
            _, rest, count = asyncio.run(timed(local, rows))
            add("local: rows/s", (count - 1) / rest)
            add("local: ms per row", rest / (count - 1) * 1000)
            for name, ms in asyncio.run(raw_ray(args.rows)).items():
                add(f"Ray alone, {name} (ms per row)", ms)
            add("one limits actor: slots granted per second", asyncio.run(limiter_grants(4000)))
        with start_server(latency=LATENCY) as server:
            remote = compiled(folder, REMOTE.format(url=server.url))
            io_rows = rows_of(remote, args.io_rows)
            for _ in range(args.reps):
                rates = {}
                for workers in (1, 2):
                    ex = RayExecutor(
                        remote, JobSettings(), workers=workers, in_flight=IO_IN_FLIGHT, seed=seed
                    )
                    _, rest, count = asyncio.run(timed(ex, io_rows))
                    rates[workers] = (count - 1) / rest
                    add(f"I/O-bound, {workers} worker(s): rows/s", rates[workers])
                add("I/O-bound, 2 workers / 1 worker", rates[2] / rates[1])
    finally:
        ray.shutdown()
    bound = IO_IN_FLIGHT / LATENCY
    print(f"{args.rows} instant rows, {args.io_rows} I/O rows ({LATENCY} s per call, "
          f"{IO_IN_FLIGHT} in flight per worker: at most {bound:.0f} rows/s per worker); "
          f"{args.reps} reps, median (min–max)\n")  # fmt: skip
    print("| measure | value |\n|---|---|")
    for name, values in figures.items():
        print(f"| {name} | {spread(values)} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

"""What prefix groups and the KV state cache save on the embedded backend.

    python bench/local_prefix_cache.py              # SmolLM2-135M, one run per cell
    python bench/local_prefix_cache.py --repeat 3   # median of three runs

Workload: 4 documents of ~500 tokens, each with 1 summary call and 3 question calls
(16 calls, max_tokens 8, greedy). Each run gets a fresh backend whose model is loaded
before the clock starts. Modes: "fifo" is -O0 (no group, priority 0: first come, first
served, reusing only llama.cpp's common prefix with the previous call); "grouped" gives
each document's calls their group (queue order + saved KV states). Arrival orders, all
16 calls submitted at once with asyncio.gather unless noted:

- interleaved: every summary, then every first question, ...: what a parallel map issues;
- by document: a document's 4 calls one after another;
- two waves: the 4 summaries (gathered), then the 12 questions (gathered, interleaved),
  so grouped calls must get their document back from a saved state.

"same text" checks that both modes generated exactly the same outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass

from llmflow.compiler.catalog import resolve
from llmflow.runtime.backends.base import Generation, GenerationRequest, Turn
from llmflow.runtime.backends.local import LocalBackend

DOCUMENTS = 4
TASKS = (
    "Summarize the log in one sentence.",
    "What did the north gauge read on day 3?",
    "What did the south gauge read on day 7?",
    "On which day did the north gauge read the most?",
)
MAX_TOKENS = 8

Key = tuple[int, int]  # (document, task)


def document(n: int) -> str:
    """A made-up ~500-token log, different from the others from its first word on."""
    name = ("Alder", "Birch", "Cedar", "Damson")[n]
    return " ".join(
        f"{name} station log {day}: the north gauge read {(day * 7 + n) % 31} units "
        f"and the south gauge {(day * 11 + 3 * n) % 29}."
        for day in range(22)
    )


def request(key: Key, grouped: bool) -> GenerationRequest:
    doc, task = key
    return GenerationRequest(
        model="m",
        turns=[Turn(role="user", text=f"{document(doc)}\n\n{TASKS[task]}")],
        max_tokens=MAX_TOKENS,
        group=f"doc{doc}" if grouped else None,
    )


INTERLEAVED = [(doc, task) for task in range(len(TASKS)) for doc in range(DOCUMENTS)]
BY_DOCUMENT = [(doc, task) for doc in range(DOCUMENTS) for task in range(len(TASKS))]
SCENARIOS: dict[str, list[list[Key]]] = {
    "interleaved": [INTERLEAVED],
    "by document": [BY_DOCUMENT],
    "two waves": [INTERLEAVED[:DOCUMENTS], INTERLEAVED[DOCUMENTS:]],
}


@dataclass
class Run:
    seconds: float
    results: dict[Key, Generation]


async def run(waves: list[list[Key]], grouped: bool) -> Run:
    backend = LocalBackend({"m": resolve("m", "local", "smollm2-135m")})
    try:
        warm = GenerationRequest(model="m", turns=[Turn(role="user", text="Hi")], max_tokens=1)
        await backend.generate(warm)  # load the model before the clock starts
        results: dict[Key, Generation] = {}
        started = time.perf_counter()
        for wave in waves:
            outputs = await asyncio.gather(*(backend.generate(request(k, grouped)) for k in wave))
            results.update(zip(wave, outputs, strict=True))
        return Run(time.perf_counter() - started, results)
    finally:
        await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    args = parser.parse_args()
    header = (
        f"{'arrival':<12} {'mode':<8} {'seconds':>8} {'prompt tok':>10} "
        f"{'reused':>7} {'evaluated':>9} {'speedup':>7}  same text"
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load} (other processes skew the times)")
    print(header)
    print("-" * len(header))
    for scenario, waves in SCENARIOS.items():
        runs: dict[str, list[Run]] = {"fifo": [], "grouped": []}
        for _ in range(args.repeat):  # alternating, so a busy moment hits both modes
            for mode, mode_runs in runs.items():
                mode_runs.append(asyncio.run(run(waves, mode == "grouped")))
        seconds = {mode: statistics.median(r.seconds for r in rs) for mode, rs in runs.items()}
        texts = {mode: {k: g.text for k, g in rs[0].results.items()} for mode, rs in runs.items()}
        same = "yes" if texts["fifo"] == texts["grouped"] else "NO"
        for mode, rs in runs.items():
            calls = rs[0].results.values()
            prompt = sum(g.input_tokens for g in calls)
            reused = sum(g.cached_tokens for g in calls)
            speedup = seconds["fifo"] / seconds[mode]
            print(
                f"{scenario:<12} {mode:<8} {seconds[mode]:>8.2f} {prompt:>10} {reused:>7} "
                f"{prompt - reused:>9} {speedup:>6.2f}x  {same if mode == 'grouped' else ''}"
            )


if __name__ == "__main__":
    main()

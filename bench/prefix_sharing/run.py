"""Prefix sharing on the embedded SmolLM2: each workload optimized vs `-O0`, beside its
lower bound, all measured in one run.

    python bench/prefix_sharing/run.py [--reps 3] [--only interleaved,debate,...]

`-O0` keeps llama.cpp's own reuse of the previous call's prefix: the baseline is the
engine without llmflow's plan (no prefix groups, no priorities, requests in arrival
order, no saved KV states). The lower bound is the run's unique prompt tokens (the size
of the token trie of every prompt sent) at the measured prefill rate, plus its output
tokens at the measured decode rate. Each row records the 1-minute load average before and
after its runs: llama.cpp uses both cores, so anything else running slows it down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.compiler.optimizer import optimize
from llmflow.runtime.backends.base import Generation, GenerationRequest
from llmflow.runtime.backends.local import LocalBackend

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402


def workloads() -> dict[str, tuple[str, dict[str, Any]]]:
    docs = [data.document(seed, 1000) for seed in range(4)]
    return {
        "interleaved": ("interleaved.llmflow", {"docs": docs, "questions": data.QUESTIONS[:3]}),
        "debate": (
            "debate.llmflow",
            {
                "persona_a": data.PERSONA_A,
                "persona_b": data.PERSONA_B,
                "topic": "Should the lighthouse be automated?",
                "turns": 6,
            },
        ),
        "many_questions": (
            "many_questions.llmflow",
            {"doc": data.document(11, 1500), "questions": data.QUESTIONS},
        ),
        "few_shot": (
            "few_shot.llmflow",
            {"examples": data.few_shot_examples(20), "texts": data.texts_to_classify(16)},
        ),
    }


@dataclass
class Recorder:
    """Wraps the embedded backend to keep every request and its usage."""

    inner: LocalBackend
    requests: list[GenerationRequest] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)

    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        result = await self.inner.generate(request)
        self.generations.append(result)
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run_once(plan: Plan, inputs: dict[str, Any]) -> tuple[float, Recorder]:
    backend = Recorder(LocalBackend({n: m for n, m in plan.models.items() if m.backend == "local"}))
    warm = GenerationRequest(
        model=plan.default_model, turns=[{"role": "user", "text": "Hi"}], max_tokens=1
    )
    await backend.inner.generate(warm)  # load the model outside the timing
    start = time.perf_counter()
    result = await llmflow.run_async(plan, inputs, backend=backend)
    elapsed = time.perf_counter() - start
    assert result.ok, [f.message for f in result.failures]
    await backend.aclose()
    return elapsed, backend


def unique_tokens(backend: LocalBackend, requests: list[GenerationRequest]) -> int:
    """Size of the trie of all prompts' tokens: what must be evaluated at least once."""
    trie: dict[int, dict] = {}
    size = 0
    for request in requests:
        node = trie
        for token in backend.prompt_tokens(request):
            if token not in node:
                node[token] = {}
                size += 1
            node = node[token]
    return size


def rates(backend: LocalBackend, model: str) -> tuple[float, float]:
    """Prefill and decode tokens/second of this model, measured now: the best of three,
    so the bound is what the engine can do at its fastest."""
    runs = [backend.measure_speed(model, prompt=1024, output=64) for _ in range(3)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    chosen = workloads()
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    rows = []
    for name, (file, inputs) in chosen.items():
        base = llmflow.compile(HERE / file, optimize=False)
        optimized = optimize(llmflow.compile(HERE / file, optimize=False), inputs=inputs)
        load_before = os.getloadavg()[0]
        times: dict[str, list[float]] = {"O0": [], "O1": []}
        last: dict[str, Recorder] = {}
        for _ in range(args.reps):
            for mode, plan in (("O0", base), ("O1", optimized)):
                seconds, recorder = asyncio.run(run_once(plan, inputs))
                times[mode].append(seconds)
                last[mode] = recorder
        probe = LocalBackend({n: m for n, m in base.models.items() if m.backend == "local"})
        prefill, decode = rates(probe, base.default_model)
        unique = unique_tokens(probe, last["O1"].requests)
        asyncio.run(probe.aclose())
        output = sum(g.output_tokens for g in last["O1"].generations)
        bound = unique / prefill + output / decode
        o0, o1 = statistics.median(times["O0"]), statistics.median(times["O1"])
        row = {
            "workload": name,
            "calls": len(last["O1"].requests),
            "prompt_tokens": sum(g.input_tokens for g in last["O1"].generations),
            "unique_prompt_tokens": unique,
            "output_tokens": output,
            "reused_O0": sum(g.cached_tokens for g in last["O0"].generations),
            "reused_O1": sum(g.cached_tokens for g in last["O1"].generations),
            "O0_s": o0,
            "O1_s": o1,
            "speedup": o0 / o1,
            "bound_s": bound,
            "O1_over_bound": o1 / bound,
            "prefill_tps": prefill,
            "decode_tps": decode,
            "runs_O0": times["O0"],
            "runs_O1": times["O1"],
            "load_1min": [load_before, os.getloadavg()[0]],
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(
        "| workload | calls | prompt tokens (unique) | -O0 | optimized | speedup "
        "| lower bound | optimized / bound |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['calls']} "
            f"| {r['prompt_tokens']} ({r['unique_prompt_tokens']}) "
            f"| {r['O0_s']:.1f} s | {r['O1_s']:.1f} s | {r['speedup']:.2f}x | {r['bound_s']:.1f} s "
            f"| {r['O1_over_bound']:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

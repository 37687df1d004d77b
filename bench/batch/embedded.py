"""200 rows of a 20-shot classification program on the embedded SmolLM2: rows/s
optimized against `-O0`, and against a strict lower bound, measured in one run.

    python bench/batch/embedded.py [--rows 200] [--reps 3] [--in-flight 16] [--json out.json]

Both modes run the rows through the dataset executor (`Session.run_many`, what `llmflow
run --inputs` uses), each with a fresh Session and backend whose model is loaded before
the clock starts, and with no response cache, so every row reaches the model. `-O0` is
the engine without llmflow's plan: no prefix groups, no priorities, first come first
served, one call at a time (llama.cpp still keeps the previous call's prefix).

The lower bound is what llama-cpp-python itself needs for the same tokens: the unique
prompt tokens (the 20-shot prefix once, plus each row's own suffix) at its prefill rate
(`Llama.eval` of a 1,024-token prompt from an empty cache), plus the rows' output tokens
at its fastest decode rate (`Llama.generate`, greedy, one sequence). Each rate is the
best of six: three measured right before the repetition it bounds, three right after.
The 1-minute load average is recorded as each mode starts, since llama.cpp uses both
cores and anything else running slows it down (the modes alternate which goes first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from llama_cpp import Llama

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.runtime.backends.base import Generation, GenerationRequest
from llmflow.runtime.backends.local import LocalBackend, find_model_file
from llmflow.runtime.batch import RowResult
from llmflow.runtime.rows import Row, bind_rows
from llmflow.runtime.session import Session

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "classify.llmflow"
sys.path.insert(0, str(HERE))
import classify_rows  # noqa: E402


@dataclass
class Recorder:
    """The embedded backend, keeping every request and its usage."""

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


def bound_rows(plan: Plan, records: list[dict[str, Any]]) -> Iterator[Row]:
    return bind_rows(plan, ((i, r, None) for i, r in enumerate(records, 1)), id_column="id")


async def run_mode(
    plan: Plan, records: list[dict[str, Any]], in_flight: int
) -> tuple[float, Recorder, list[RowResult]]:
    local = {name: spec for name, spec in plan.models.items() if spec.backend == "local"}
    backend = Recorder(LocalBackend(local))
    warm = GenerationRequest(model=plan.default_model, turns=[{"role": "user", "text": "Hi"}])
    await backend.inner.generate(warm.model_copy(update={"max_tokens": 1}))
    results = []
    async with Session(backend=backend) as session:
        started = time.perf_counter()
        async for result in session.run_many(plan, bound_rows(plan, records), in_flight=in_flight):
            results.append(result)
        elapsed = time.perf_counter() - started
    await backend.aclose()
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} rows failed, e.g. {failed[0]}")
    return elapsed, backend, results


def unique_prompt_tokens(prompts: list[list[int]]) -> tuple[int, int]:
    """The prompts' common prefix once plus each prompt's own rest; and that prefix."""
    first = np.array(prompts[0])
    shared = len(first)
    for prompt in prompts[1:]:
        n = min(shared, len(prompt))
        mismatch = np.flatnonzero(first[:n] != np.array(prompt[:n]))
        shared = int(mismatch[0]) if mismatch.size else n
    return shared + sum(len(p) - shared for p in prompts), shared


def engine_rates(model_id: str, n_ctx: int, prompt: int = 1024, output: int = 128) -> dict:
    """llama-cpp-python's own prefill and decode rates, best of three."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        llm = Llama(
            model_path=str(find_model_file(model_id)),
            n_ctx=n_ctx,
            n_threads=os.cpu_count(),
            verbose=False,
        )
    text = (HERE / "classify.llmflow").read_text(encoding="utf-8")
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    while len(tokens) < prompt:
        tokens += tokens[1:]
    tokens = tokens[:prompt]
    llm.eval(tokens[:8])  # warm up: weights paged in, threads started
    prefill, decode = [], []
    for _ in range(3):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        prefill.append(len(tokens) / (time.perf_counter() - started))
        llm.reset()
        stream = llm.generate(tokens[:16], temp=0.0)
        next(stream)  # the prompt's evaluation and the first token: not decode
        started = time.perf_counter()
        for _ in range(output):
            next(stream)
        decode.append(output / (time.perf_counter() - started))
    llm.close()
    return {"prefill_tps": max(prefill), "decode_tps": max(decode)}


@dataclass
class Batches:
    """How many calls each llama.cpp batch served (the backend's `batch.run`, counted)."""

    sizes: list[int] = field(default_factory=list)

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        from llmflow.runtime.backends.local import batch

        original = batch.run

        def run(llm: Llama, jobs: Any, done: Any) -> None:
            self.sizes.append(len(jobs))
            original(llm, jobs, done)

        batch.run = run  # type: ignore[assignment]
        try:
            yield
        finally:
            batch.run = original  # type: ignore[assignment]


def measure(records: list[dict[str, Any]], reps: int, in_flight: int) -> list[dict[str, Any]]:
    base = llmflow.compile(PROGRAM, optimize=False)
    optimized = llmflow.compile(PROGRAM)
    spec = base.models[base.default_model]
    out = []
    for rep in range(reps):
        load_before = os.getloadavg()[0]
        seconds: dict[str, float] = {}
        runs: dict[str, Recorder] = {}
        answers: dict[str, dict[Any, Any]] = {}
        batches = Batches()
        load: dict[str, float] = {}
        before = engine_rates(spec.id, 2048)
        modes = [("O0", base), ("O1", optimized)]
        for mode, plan in modes if rep % 2 == 0 else modes[::-1]:  # neither always first
            load[mode] = os.getloadavg()[0]
            with batches.counting() if mode == "O1" else contextlib.nullcontext():
                elapsed, recorder, results = asyncio.run(run_mode(plan, records, in_flight))
            seconds[mode], runs[mode] = elapsed, recorder
            answers[mode] = {r.id: r.outputs.get("category") for r in results}
        probe = LocalBackend({base.default_model: spec})
        prompts = [probe.prompt_tokens(request) for request in runs["O1"].requests]
        asyncio.run(probe.aclose())
        unique, shared = unique_prompt_tokens(prompts)
        after = engine_rates(spec.id, 2048)
        rates = {key: max(before[key], after[key]) for key in before}
        output = sum(g.output_tokens for g in runs["O1"].generations)
        bound = unique / rates["prefill_tps"] + output / rates["decode_tps"]
        labels = {r["id"]: r["label"] for r in records}
        row = {
            "rep": rep + 1,
            "rows": len(records),
            "in_flight": in_flight,
            "prompt_tokens": sum(len(p) for p in prompts),
            "shared_prefix_tokens": shared,
            "unique_prompt_tokens": unique,
            "output_tokens": output,
            "evaluated_O0": sum(g.input_tokens - g.cached_tokens for g in runs["O0"].generations),
            "evaluated_O1": sum(g.input_tokens - g.cached_tokens for g in runs["O1"].generations),
            "batch_sizes": batches.sizes,
            "O0_s": seconds["O0"],
            "O1_s": seconds["O1"],
            "bound_s": bound,
            "O0_rows_per_s": len(records) / seconds["O0"],
            "O1_rows_per_s": len(records) / seconds["O1"],
            "bound_rows_per_s": len(records) / bound,
            "speedup": seconds["O0"] / seconds["O1"],
            "O1_over_bound": seconds["O1"] / bound,
            "same_answers": sum(answers["O0"][k] == answers["O1"][k] for k in answers["O1"]),
            "correct_O1": sum(answers["O1"][k] == labels[k] for k in answers["O1"]),
            **rates,
            "load_1min": [load_before, os.getloadavg()[0]],
            "load_1min_O0": load["O0"],
            "load_1min_O1": load["O1"],
        }
        out.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "batch_sizes"}), file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    records = list(classify_rows.rows(args.rows))
    runs = measure(records, args.reps, args.in_flight)
    print(
        "| rep | -O0 rows/s | optimized rows/s | bound rows/s | speedup | optimized / bound "
        "| rows per batch | load at -O0, optimized |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        sizes = r["batch_sizes"]
        print(
            f"| {r['rep']} | {r['O0_rows_per_s']:.2f} | {r['O1_rows_per_s']:.2f} "
            f"| {r['bound_rows_per_s']:.2f} | {r['speedup']:.2f}x | {r['O1_over_bound']:.2f}x "
            f"| {statistics.mean(sizes) if sizes else 0:.1f} "
            f"| {r['load_1min_O0']:.1f}, {r['load_1min_O1']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()

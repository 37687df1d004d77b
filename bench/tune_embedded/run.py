"""Tune the support-desk program's model per function on the embedded models, and check
the choice on held-out rows.

    python bench/tune_embedded/run.py [--seeds 0,1,2] [--cache DIR] [--json out.json]

1. Each single-model assignment (every function on SmolLM2, every function on Gemma) runs
   on every labeled row: each function's own accuracy on each model, with its 95% Wilson
   interval, beside the accuracy of always answering the most common expected value.
2. `llmflow.runtime.tune.tune` searches the per-function assignments on a seeded tuning
   half (row score: the fraction of the row's outputs that match), and the chosen one is
   scored on the held-out half, beside every single-model assignment on the same rows.

All through the real runtime (`llmflow.run_batch`, llama.cpp). A response cache (a fresh
temporary one unless `--cache`) answers a (model, prompt) pair already asked, so a mixed
assignment costs nothing beyond the single-model runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from measure import load_rows, run_rows

import llmflow
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.tune import Measurements, Outcome, interval, tune

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "examples" / "support_desk.llmflow"
DATA = ROOT / "examples" / "data" / "support_desk_dev.jsonl"
MODELS = ("small", "base")
"""Candidates, preferred first: `small` (SmolLM2) is the program's default."""
OUTPUT_OF = {"categorize": "category", "order_number": "order_id", "refund": "refund"}
"""Each semantic function → the flow output (and `expected` key) it produces."""


def shown(score: Any) -> str:
    return f"{score.mean:.3f} [{score.low:.3f}, {score.high:.3f}] n={score.n}"


def label(assignment: dict[str, str]) -> str:
    return ", ".join(f"{fn}={assignment[fn]}" for fn in OUTPUT_OF)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="held-out splits to tune on")
    parser.add_argument("--cache", type=Path, help="keep answers here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    rows = load_rows(DATA)
    plan = llmflow.compile(PROGRAM, optimize=False)
    cache_dir = args.cache or Path(tempfile.mkdtemp(prefix="llmflow-tune-embedded-"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = ResponseCache(cache_dir)
    correct: dict[tuple[str, str, int], bool] = {}  # (function, model, row) → matched
    expected = {output: output for output in OUTPUT_OF.values()}

    async def measure(assignment: dict[str, str], ids: Sequence[int]) -> list[Outcome]:
        scored = await run_rows(plan, assignment, [rows[i] for i in ids], expected, cache)
        for i, row in zip(ids, scored, strict=True):
            for fn, output in OUTPUT_OF.items():
                correct[fn, assignment[fn], i] = row.correct[output]
            if row.error:
                print(f"row {i + 1}: {row.error}", file=sys.stderr)
        return [
            Outcome(sum(row.correct.values()) / len(row.correct), 0.0, row.seconds)
            for row in scored
        ]

    memo = Measurements(measure, parallel=1)
    every = list(range(len(rows)))
    report: dict[str, Any] = {"rows": len(rows), "single": {}, "seeds": []}
    print(f"{len(rows)} rows, program {PROGRAM.relative_to(ROOT)}")
    print("\nPer function x model, own accuracy on all rows (95% Wilson):")
    for model in MODELS:
        started = time.perf_counter()
        await memo.get({fn: model for fn in OUTPUT_OF}, every)
        took = time.perf_counter() - started
        report["single"][model] = {"seconds": round(took, 1)}
        for fn in OUTPUT_OF:
            s = interval([float(correct[fn, model, i]) for i in every])
            report["single"][model][fn] = s.model_dump()
            print(f"  {fn:13} on {model:5}: {shown(s)}")
        print(f"  ({model}: {len(rows) * len(OUTPUT_OF)} calls in {took:.0f}s)")
    for fn, output in OUTPUT_OF.items():
        values = Counter(json.dumps(row["expected"][output]) for row in rows)
        value, count = values.most_common(1)[0]
        report.setdefault("majority", {})[fn] = count / len(rows)
        print(f"  {fn:13} always {value}: {count / len(rows):.3f}")

    candidates = {fn: list(MODELS) for fn in OUTPUT_OF}
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        result = await tune(candidates, memo, len(rows), held_out=0.5, seed=seed)
        took = time.perf_counter() - started
        held = result.split.held_out
        assert result.held_out is not None
        chosen = result.chosen.assignment
        print(
            f"\nseed {seed}: {result.how}; tuning {len(result.split.tuning)} rows, "
            f"held out {len(held)}; {took:.0f}s"
        )
        print(
            f"  chosen {label(chosen)}: tuning {result.chosen.score:.3f}, "
            f"held out {shown(result.held_out.score)}"
        )
        entry: dict[str, Any] = {
            "seed": seed,
            "chosen": chosen,
            "held_out": result.held_out.score.model_dump(),
            "seconds": round(took, 1),
            "others": {},
        }
        for point in result.points:
            if point.assignment == chosen:
                continue
            theirs = await memo.get(point.assignment, held)
            ours = await memo.get(chosen, held)
            s = memo.score(point.assignment, held)
            gain = interval([a.score - b.score for a, b in zip(ours, theirs, strict=True)])
            entry["others"][label(point.assignment)] = {**s.model_dump(), "gain": gain.model_dump()}
            print(
                f"  vs     {label(point.assignment)}: held out {shown(s)}; chosen minus it "
                f"(paired) {gain.mean:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}]"
            )
        report["seeds"].append(entry)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    cache.close()


asyncio.run(main())

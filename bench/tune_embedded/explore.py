"""Template variants of each function on each model: which form suits which model.

    python bench/tune_embedded/explore.py PROGRAM [--rows N] [--data ROWS.jsonl]

PROGRAM's flow outputs are named after variants; each output is compared with the row's
`expected` value of its own name, else the one named by the output's first letter
(c → category, o → order_id, r → refund).
Prints each output's accuracy on each model with a 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from measure import load_rows, run_rows

import llmflow
from llmflow.runtime.tune import interval

KEYS = {"c": "category", "o": "order_id", "r": "refund"}
DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support_desk_dev.jsonl"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("program")
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--models", default="small,base")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    rows = load_rows(args.data)
    if args.rows:
        rows = rows[:: max(1, len(rows) // args.rows)][: args.rows]
    plan = llmflow.compile(args.program, optimize=False)
    functions = sorted({node.call.function for node in plan.calls()})
    outputs = list(plan.outputs)
    labels = rows[0]["expected"]
    expected = {name: name if name in labels else KEYS[name[0]] for name in outputs}
    for model in args.models.split(","):
        t = time.perf_counter()
        scored = await run_rows(plan, {fn: model for fn in functions}, rows, expected)
        took = time.perf_counter() - t
        errors = sum(1 for s in scored if s.error)
        print(f"== {model}: {len(rows)} rows, {took:.0f}s, {errors} row errors")
        for name in outputs:
            s = interval([float(x.correct[name]) for x in scored])
            print(f"  {name:4} {s.mean:.3f}  [{s.low:.3f}, {s.high:.3f}]")
        for x in scored[:3]:
            print("   ", x.outputs, x.error)


asyncio.run(main())

"""MMLU through the commands a user runs: tune on half of each subject, plan routes from
the profile, eval the routed plan on the other half (issue 11's path, end to end).

    python bench/routing/prepare.py && python bench/routing/mmlu_cli.py [--seeds 0,1,2]

For each seed: the rows are split per subject (seeded, half each side), then
`llmflow tune --by subject --target T --held-out 0` on the tuning half, where T is 95% of
all-GPT-4's accuracy on that half (one `llmflow eval --models gpt4` finds it); the
profile it writes makes `llmflow eval --min-quality T` on the held-out half run the plan
with its calls routed by subject. Reported beside `llmflow eval --models gpt4` and
`--models mixtral` on the same held-out rows: accuracy, dollars, saving against
all-GPT-4, and whether the routed accuracy is at least 95% of all-GPT-4's there.
Tune reuses cached answers (priced as their models' answers); the held-out evals ask
again (`--no-cache`), so their dollars are what the plan pays.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "mmlu.llmflow"
DATA = HERE / "data" / "mmlu.jsonl"


def llmflow(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("llmflow")),
            *args,
            "--json",
            *(["-q"] if args[0] != "plan" else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise SystemExit(f"llmflow {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def split(
    rows: list[dict[str, Any]], seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    rng = random.Random(seed)
    tuning, held = [], []
    for subject in sorted(by_subject):
        members = by_subject[subject][:]
        rng.shuffle(members)
        half = len(members) // 2
        tuning += members[:half]
        held += members[half:]
    return tuning, held


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    with path.open("w") as out:
        for row in rows:
            labeled = {k: row[k] for k in ("id", "subject", "question")}
            out.write(json.dumps({**labeled, "expected": {"letter": row["expected"]}}) + "\n")
    return str(path)


def accuracy(report: dict[str, Any]) -> float:
    return float(report["scores"]["letter"]["score"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with DATA.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        program = work / "mmlu.llmflow"
        program.write_text(PROGRAM.read_text().replace('"data/', f'"{HERE}/data/'))
        for seed in (int(s) for s in args.seeds.split(",")):
            tuning, held = split(rows, seed)
            tune_file = write(work / "tune.jsonl", tuning)
            held_file = write(work / "held.jsonl", held)
            common = ["--metric", "letter=exact", "--id", "id", "--rows-in-flight", "64"]
            strong_tuning = accuracy(
                llmflow("eval", str(program), "--data", tune_file, "--models", "gpt4", *common)
            )
            target = round(0.95 * strong_tuning, 6)
            (program.with_suffix(".profile.json")).unlink(missing_ok=True)
            tuned = llmflow(
                "tune", str(program), "--data", tune_file, "--by", "subject",
                "--target", str(target), "--held-out", "0", *common,
            )  # fmt: skip
            plan = llmflow("plan", str(program), "--min-quality", str(target))
            routes = next(iter(plan["routes"].values()), {"models": {}})["models"]
            routed = llmflow(
                "eval", str(program), "--data", held_file, "--min-quality", str(target), *common
            )
            strong = llmflow("eval", str(program), "--data", held_file, "--models", "gpt4", *common)
            weak = llmflow(
                "eval", str(program), "--data", held_file, "--models", "mixtral", *common
            )
            got, s, w = accuracy(routed), accuracy(strong), accuracy(weak)
            dollars = {
                k: r["total"]["dollars"]
                for k, r in (("routed", routed), ("gpt4", strong), ("mixtral", weak))
            }
            result = {
                "seed": seed,
                "target": target,
                "tuning_rows": len(tuning),
                "held_out_rows": len(held),
                "tune_how": tuned["how"],
                "subjects_on_gpt4": sorted(v for v, m in routes.items() if m == "gpt4"),
                "default": next(
                    n["call"]["model"] for n in plan["graph"]["nodes"] if n["kind"] == "llm"
                ),
                "accuracy": {"routed": got, "gpt4": s, "mixtral": w},
                "dollars": dollars,
                "saving": 1 - dollars["routed"] / dollars["gpt4"],
                "share_of_gpt4": got / s,
                "meets_95": got >= 0.95 * s,
            }  # fmt: skip
            results.append(result)
            print(
                f"seed {seed}: routed {got:.4f} (gpt4 {s:.4f}, mixtral {w:.4f}) = "
                f"{got / s:.1%} of gpt4, ${dollars['routed']:.4f} vs ${dollars['gpt4']:.4f}: "
                f"{result['saving']:.1%} cheaper; {len(result['subjects_on_gpt4'])} subjects "
                f"routed to gpt4 (default {result['default']})",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

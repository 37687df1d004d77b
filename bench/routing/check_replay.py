"""Check the replay backend against RouteLLM's tables, through the real runtime.

    python bench/routing/check_replay.py [--rows N] [--in-flight 64] [--out DIR]

Runs bench/routing/gsm8k.llmflow and mmlu.llmflow over every row (the contaminated ones
too, kept in `*.contaminated.jsonl`) once per model, each time with every call on that
model, through `llmflow.run_batch` (one Session, the dataset executor). Then, per model:

- MMLU: the share of rows whose letter equals `expected`, which must equal the table's
  correctness column row for row (the stand-in letters, see prepare.py, make it so);
- GSM8K: the final number of the answer text against the reference's, and how often that
  agrees with the table's correctness column, with the rows where it does not written to
  `OUT/gsm8k_disagreements.jsonl` to read; and RouteLLM's own grading rule
  (`routellm_value`) over the replayed texts, which must reproduce the column exactly;
- dollars and tokens over the whole set at the price table's prices, and seconds per call
  (the run's wall time over its calls) next to the lookup alone (`ReplayTable.find` over
  every prompt).

Prints a JSON report (also `OUT/check_replay.json`; OUT defaults to bench/routing/data).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.runtime.backends.replay import read_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = {"gpt4": prepare.GPT4, "mixtral": prepare.MIXTRAL}

# ---- GSM8K's final number ---------------------------------------------------------------
# TODO(evals): switch to the eval helper's `numeric` metric once it lands; this is the same
# rule, kept here until then: the number after `####` if there is one, else the last
# number in the text, commas removed, compared as numbers.
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> float | None:
    """The answer's final number: after `####` first, else the last number."""
    marked = text.rsplit("####", 1)[1] if "####" in text else None
    found = _NUMBER.findall(marked) if marked is not None else []
    if not found:
        found = _NUMBER.findall(text)
        if not found:
            return None
        value = found[-1]
    else:
        value = found[0]
    try:
        return float(value.replace(",", ""))
    except ValueError:
        return None


def numeric_match(text: str, expected: str) -> bool:
    got = final_number(text)
    return got is not None and abs(got - float(expected.replace(",", ""))) < 1e-6


def routellm_value(text: str) -> int | None:
    """RouteLLM's own grading of GSM8K (routellm/evals/gsm8k/generate_responses.py,
    after SGLang's benchmark), restated to explain its correctness column: commas
    removed, the last run of digits in the whole text read as a Python literal, so signs
    and decimal points are dropped ("$20.00" reads as "00", which is not a valid literal,
    so the answer counts as wrong; "-15" reads as 15)."""
    runs = re.findall(r"\d+", text.replace(",", ""))
    if not runs or (len(runs[-1]) > 1 and runs[-1].startswith("0")):
        return None
    return int(runs[-1])


def routellm_match(text: str, reference_solution_number: str) -> bool:
    got = routellm_value(text)
    return got is not None and got == routellm_value(reference_solution_number)


# ---- running ----------------------------------------------------------------------------


def read_rows(path: Path, limit: int | None) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return rows[:limit] if limit else rows


def pinned(plan: Plan, model: str) -> Plan:
    """The plan with every call on `model` and no fallbacks."""
    copy = Plan.from_json(plan.to_json())
    for node in copy.calls():
        node.call.model = model
    copy.fallbacks = {}
    return copy


async def run_all(plan: Plan, rows: list[dict[str, Any]], in_flight: int) -> dict[str, Any]:
    start = time.perf_counter()
    results = {}
    calls = dollars = tokens_in = tokens_out = 0.0
    errors = []
    async for result in llmflow.run_batch(plan, rows, id_column="id", in_flight=in_flight):
        results[result.id] = result.outputs
        calls += result.stats.calls
        dollars += result.stats.dollars
        tokens_in += result.stats.input_tokens
        tokens_out += result.stats.output_tokens
        if result.error:
            errors.append((result.id, result.error))
    seconds = time.perf_counter() - start
    return {
        "outputs": results,
        "errors": errors,
        "calls": int(calls),
        "dollars": dollars,
        "input_tokens": int(tokens_in),
        "output_tokens": int(tokens_out),
        "seconds": seconds,
        "ms_per_call": 1000 * seconds / max(calls, 1),
    }


def lookup_timing(table_path: Path, plan: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds `ReplayTable.find` takes per rendered prompt (no runtime around it)."""
    start = time.perf_counter()
    table = read_table(table_path)  # not the process's cached copy: time the read
    loaded = time.perf_counter() - start
    (node,) = plan.calls()
    texts = []
    for row in rows:
        parts = []
        for segment in node.call.segments:  # the template up to its output, filled in
            if segment.kind == "text":
                parts.append(segment.text)
            elif segment.kind == "read":
                parts.append(str(row[segment.input]))
            else:
                break
        texts.append("".join(parts))
    times = []
    for text in texts:
        t0 = time.perf_counter()
        found = table.find(text)
        times.append(time.perf_counter() - t0)
        assert found is not None, text[:80]
    times.sort()
    return {
        "keys": len(table.keys),
        "load_seconds": round(loaded, 3),
        "median_us": round(1e6 * statistics.median(times), 1),
        "p99_us": round(1e6 * times[int(0.99 * (len(times) - 1))], 1),
        "max_us": round(1e6 * times[-1], 1),
    }


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    return {
        k: round(v, 6) if isinstance(v, float) else v
        for k, v in run.items()
        if k not in ("outputs", "errors")
    } | {"errors": len(run["errors"]), "first_errors": run["errors"][:3]}


def share(hits: int, total: int) -> float:
    return round(100 * hits / total, 2) if total else 0.0


def check_mmlu(data: Path, limit: int | None, in_flight: int) -> dict[str, Any]:
    clean = read_rows(data / "mmlu.jsonl", limit)
    dirty = read_rows(data / "mmlu.contaminated.jsonl", limit)
    rows = clean + dirty
    plan = llmflow.compile(HERE / "mmlu.llmflow")
    report: dict[str, Any] = {"rows": len(rows), "clean_rows": len(clean)}
    for name, column in MODELS.items():
        run = asyncio.run(run_all(pinned(plan, name), rows, in_flight))
        right = {
            r["id"]: run["outputs"].get(r["id"], {}).get("letter") == r["expected"] for r in rows
        }
        mismatched = [r["id"] for r in rows if right[r["id"]] != r["recorded"][column]]
        report[name] = {
            "accuracy_all": share(sum(right.values()), len(rows)),
            "table_all": share(sum(r["recorded"][column] for r in rows), len(rows)),
            "accuracy_clean": share(sum(right[r["id"]] for r in clean), len(clean)),
            "rows_differing_from_table": len(mismatched),
            "run": summarize(run),
        }
    report["lookup"] = lookup_timing(data / "mmlu.table.jsonl", plan, rows)
    return report


def check_gsm8k(data: Path, limit: int | None, in_flight: int, out: Path) -> dict[str, Any]:
    clean = read_rows(data / "gsm8k.jsonl", limit)
    dirty = read_rows(data / "gsm8k.contaminated.jsonl", limit)
    rows = clean + dirty
    plan = llmflow.compile(HERE / "gsm8k.llmflow")
    report: dict[str, Any] = {"rows": len(rows), "clean_rows": len(clean)}
    disagreements = []
    for name, column in MODELS.items():
        run = asyncio.run(run_all(pinned(plan, name), rows, in_flight))
        right = {}
        for r in rows:
            text = run["outputs"].get(r["id"], {}).get("answer", "")
            right[r["id"]] = numeric_match(text, r["expected"])
            if right[r["id"]] != r["recorded"][column]:
                disagreements.append(
                    {
                        "id": r["id"],
                        "model": column,
                        "expected": r["expected"],
                        "extracted": final_number(text),
                        "table_says_correct": r["recorded"][column],
                        "routellm_rule_reads": routellm_value(text),
                        "answer_tail": text[-300:],
                    }
                )
        agree = sum(right[r["id"]] == r["recorded"][column] for r in rows)
        their = {
            r["id"]: routellm_match(
                run["outputs"].get(r["id"], {}).get("answer", ""), r["expected"]
            )
            for r in rows
        }
        report[name] = {
            "accuracy_all": share(sum(right.values()), len(rows)),
            "table_all": share(sum(r["recorded"][column] for r in rows), len(rows)),
            "accuracy_clean": share(sum(right[r["id"]] for r in clean), len(clean)),
            "table_clean": share(sum(r["recorded"][column] for r in clean), len(clean)),
            "agreement_with_table": share(agree, len(rows)),
            "routellm_rule_accuracy_all": share(sum(their.values()), len(rows)),
            "routellm_rule_agreement_with_table": share(
                sum(their[r["id"]] == r["recorded"][column] for r in rows), len(rows)
            ),
            "metric_right_table_wrong": sum(
                right[r["id"]] and not r["recorded"][column] for r in rows
            ),
            "metric_wrong_table_right": sum(
                not right[r["id"]] and r["recorded"][column] for r in rows
            ),
            "run": summarize(run),
        }
    with (out / "gsm8k_disagreements.jsonl").open("w", encoding="utf-8") as handle:
        for item in disagreements:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    report["lookup"] = lookup_timing(data / "gsm8k.table.jsonl", plan, rows)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="only the first N of each file")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--out", type=Path, default=prepare.OUT)
    args = parser.parse_args()
    manifest = prepare.ensure()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "data": {k: manifest[k] for k in ("gsm8k", "mmlu")},
        "gsm8k": check_gsm8k(prepare.OUT, args.rows, args.in_flight, args.out),
        "mmlu": check_mmlu(prepare.OUT, args.rows, args.in_flight),
    }
    text = json.dumps(report, indent=2)
    (args.out / "check_replay.json").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

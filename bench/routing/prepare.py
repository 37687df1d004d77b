"""Turn RouteLLM's published outcomes into replay tables and labeled datasets.

    python bench/routing/prepare.py [--source DIR] [--out DIR]

Reads `/work/shared/data/routellm` (README.md there: MMLU correctness of Mixtral-8x7B and
GPT-4-1106 per question, GSM8K with both models' full answers) and writes, into
`bench/routing/data/` (not committed: about 25 MB, made again whenever the sources or
this script change, see `ensure`):

- `gsm8k.table.jsonl`: key = the question, answers = each model's full recorded response;
  `gsm8k.jsonl`: `id`, `question`, `expected` (the number after `####` in test.jsonl's
  reference solution, commas removed), `recorded` (each model's correctness column).
- `mmlu.table.jsonl`, `mmlu.jsonl`: see below; rows carry `id`, `subject`, `question`,
  `expected` (a letter) and `recorded`.
- `*.contaminated.jsonl`: the rows RouteLLM drops (`contaminated_prompts.jsonl`), kept
  apart so the full tables can still be reproduced.
- `manifest.json`: counts, and the digest of the sources and of this script.

MMLU's tables record only whether each model was right, not the letter it chose. So each
question gets a stand-in gold letter (`gold_letter`: from a hash of the prompt), and a
model's recorded answer is that letter when its recorded outcome is correct and another
letter (`wrong_letter`: from a hash of the model and the prompt) when it is not. Scoring a
model's letter against `expected` then gives exactly the recorded per-question
correctness; the letters themselves are not MMLU's.

An MMLU prompt recorded twice (105 prompts: the same question under clinical_knowledge
and college_medicine, or twice in one subject) is keyed by its subject and the prompt,
`[subject, prompt]`, for every row, so a program must show the subject in its prompt: 4 of
those questions have different outcomes under their two subjects. Same-subject repeats
have the same outcomes and share one recording.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = Path("/work/shared/data/routellm")
OUT = HERE / "data"
GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
MODELS = (MIXTRAL, GPT4)
LETTERS = "ABCD"
_REFERENCE = re.compile(r"####\s*(.+?)\s*$", re.S)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gold_letter(prompt: str) -> str:
    """The stand-in right answer of an MMLU question: fixed by its text."""
    return LETTERS[int(digest(prompt.encode("utf-8"))[:8], 16) % 4]


def wrong_letter(model: str, prompt: str) -> str:
    """A wrong letter for a model recorded as wrong: one of the other three, fixed by
    the model and the question."""
    others = [letter for letter in LETTERS if letter != gold_letter(prompt)]
    return others[int(digest(f"{model}\0{prompt}".encode())[:8], 16) % 3]


def outcome(value: str, where: str) -> bool:
    if value not in ("True", "False"):
        raise SystemExit(f"{where}: correctness column is {value!r}, not True or False")
    return value == "True"


def read_csv(path: Path) -> list[dict[str, str]]:
    """A RouteLLM CSV: fields hold newlines and quotes, so csv, not lines."""
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def contaminated(path: Path) -> set[str]:
    with path.open(encoding="utf-8") as handle:
        return {json.loads(line)["eval_prompt"] for line in handle if line.strip()}


def reference_number(solution: str, where: str) -> str:
    """The final answer of a GSM8K reference solution: the text after `####`."""
    match = _REFERENCE.search(solution)
    if match is None:
        raise SystemExit(f"{where}: reference solution has no '#### N'")
    return match.group(1).replace(",", "")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def gsm8k(source: Path, out: Path) -> dict[str, Any]:
    responses = read_csv(source / "gsm8k" / "gsm8k_responses.csv")
    with (source / "gsm8k" / "test.jsonl").open(encoding="utf-8") as handle:
        tests = [json.loads(line) for line in handle if line.strip()]
    reference = {t["question"]: t["answer"] for t in tests}
    squeezed = {" ".join(q.split()): q for q in reference}
    dropped = contaminated(source / "gsm8k" / "contaminated_prompts.jsonl")
    table, rows, bad, how = [], [], [], {"exact": 0, "whitespace": 0, "none": 0}
    for number, record in enumerate(responses, 1):
        prompt = record["prompt"]
        question = prompt if prompt in reference else squeezed.get(" ".join(prompt.split()))
        how["exact" if prompt in reference else "whitespace" if question else "none"] += 1
        if question is None:
            continue
        where = f"gsm8k_responses.csv row {number}"
        table.append({"key": prompt, "answers": {m: record[f"{m}_response"] for m in MODELS}})
        row = {
            "id": f"gsm8k-{number}",
            "question": prompt,
            "expected": reference_number(reference[question], where),
            "recorded": {m: outcome(record[m], where) for m in MODELS},
        }
        (bad if prompt in dropped else rows).append(row)
    write_jsonl(out / "gsm8k.table.jsonl", table)
    write_jsonl(out / "gsm8k.jsonl", rows)
    write_jsonl(out / "gsm8k.contaminated.jsonl", bad)
    return {
        "responses": len(responses),
        "reference_questions": len(tests),
        "matched": how,
        "rows": len(rows),
        "contaminated": len(bad),
        "contaminated_listed": len(dropped),
    }


def mmlu(source: Path, out: Path) -> dict[str, Any]:
    dropped = contaminated(source / "mmlu" / "contaminated_prompts.jsonl")
    recordings: dict[tuple[str, str], dict[str, str]] = {}
    rows, bad, subjects = [], [], []
    for path in sorted((source / "mmlu" / "responses").glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        subjects.append(subject)
        for number, record in enumerate(read_csv(path), 1):
            prompt, where = record["prompt"], f"{path.name} row {number}"
            recorded = {m: outcome(record[m], where) for m in MODELS}
            gold = gold_letter(prompt)
            answers = {m: gold if recorded[m] else wrong_letter(m, prompt) for m in MODELS}
            seen = recordings.setdefault((subject, prompt), answers)
            if seen != answers:
                raise SystemExit(f"{where}: repeats a question with other outcomes")
            row = {
                "id": f"mmlu-{subject}-{number}",
                "subject": subject,
                "question": prompt,
                "expected": gold,
                "recorded": recorded,
            }
            (bad if prompt in dropped else rows).append(row)
    table = ({"key": [s, p], "answers": a} for (s, p), a in recordings.items())
    write_jsonl(out / "mmlu.table.jsonl", table)
    write_jsonl(out / "mmlu.jsonl", rows)
    write_jsonl(out / "mmlu.contaminated.jsonl", bad)
    return {
        "subjects": len(subjects),
        "rows": len(rows),
        "contaminated": len(bad),
        "contaminated_listed": len(dropped),
        "recordings": len(recordings),
    }


def fingerprint(source: Path) -> str:
    """What the data folder was made from: every source file and this script."""
    hashed = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        hashed.update(str(path.relative_to(source)).encode())
        hashed.update(path.read_bytes())
    return hashed.hexdigest()


def prepare(source: Path = SOURCE, out: Path = OUT) -> dict[str, Any]:
    """Write every table and dataset into `out`; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "source": str(source),
        "fingerprint": fingerprint(source),
        "gsm8k": gsm8k(source, out),
        "mmlu": mmlu(source, out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def ensure(source: Path = SOURCE, out: Path = OUT) -> dict[str, Any]:
    """The data folder, made again unless its manifest says it is of these sources."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("fingerprint") == fingerprint(source):
        return manifest
    return prepare(source, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    print(json.dumps(prepare(args.source, args.out), indent=2))


if __name__ == "__main__":
    main()

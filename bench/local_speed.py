"""Prefill and decode speed of the embedded models on this machine.

    python bench/local_speed.py            # both embedded models, human-readable
    python bench/local_speed.py --json     # the same numbers as JSON

For each model: a ~800-token prompt is evaluated from an empty KV cache (prefill), then
128 tokens are generated one at a time, greedily, ignoring end-of-text (decode). Three
repetitions; the median of each is reported in tokens/second. llama.cpp runs with
n_threads = os.cpu_count(), as the runtime's local backend does. The numbers feed
`LOCAL_MODELS` in compiler/models.py (prefill_tps, decode_tps), which the optimizer uses
to estimate the time of an embedded call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from llama_cpp import Llama

from llmflow.compiler.models import LOCAL_MODELS
from llmflow.runtime.backends.local import find_model_file

ROOT = Path(__file__).resolve().parent.parent
PROMPT_TOKENS = 800
DECODE_TOKENS = 128
REPETITIONS = 3


def prompt_tokens(llm: Llama) -> list[int]:
    """The lighthouse example document repeated until it is PROMPT_TOKENS tokens long."""
    text = (ROOT / "examples" / "data" / "lighthouse.txt").read_text(encoding="utf-8")
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    body = llm.tokenize(("\n\n" + text).encode("utf-8"), add_bos=False)
    while len(tokens) < PROMPT_TOKENS:
        tokens += body
    return tokens[:PROMPT_TOKENS]


def measure(model_id: str, threads: int) -> dict[str, float | int | str]:
    path = find_model_file(model_id)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        llm = Llama(
            model_path=str(path),
            n_ctx=PROMPT_TOKENS + DECODE_TOKENS + 64,
            n_batch=512,
            n_threads=threads,
            verbose=False,
        )
    tokens = prompt_tokens(llm)
    llm.eval(tokens[:8])  # warm up: first-touch of the weights, thread pool start
    prefill: list[float] = []
    decode: list[float] = []
    for _ in range(REPETITIONS):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        prefill.append(len(tokens) / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        decode.append(DECODE_TOKENS / (time.perf_counter() - started))
    llm.close()
    return {
        "model": model_id,
        "prompt_tokens": len(tokens),
        "decode_tokens": DECODE_TOKENS,
        "repetitions": REPETITIONS,
        "n_threads": threads,
        "prefill_tps": round(statistics.median(prefill), 1),
        "decode_tps": round(statistics.median(decode), 1),
        "prefill_runs": [round(x, 1) for x in prefill],
        "decode_runs": [round(x, 1) for x in decode],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("models", nargs="*", default=list(LOCAL_MODELS))
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    before = os.getloadavg()[0]
    results = [measure(m, threads) for m in args.models]
    load = {"load_before": round(before, 2), "load_after": round(os.getloadavg()[0], 2)}
    for r in results:
        r.update(load)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(
        f"{platform.processor() or platform.machine()}, {threads} threads, 1-min load average "
        f"{load['load_before']} before, {load['load_after']} after (other work skews the runs)"
    )
    for r in results:
        print(
            f"{r['model']:<14} prefill {r['prefill_tps']:>8.1f} tok/s "
            f"({r['prompt_tokens']} tokens)   decode {r['decode_tps']:>7.1f} tok/s "
            f"({r['decode_tokens']} tokens)   median of {r['repetitions']}: "
            f"prefill {r['prefill_runs']}, decode {r['decode_runs']}"
        )


if __name__ == "__main__":
    main()

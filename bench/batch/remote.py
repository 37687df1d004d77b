"""Dataset runs against a rate-limited server: 1,000 rows of a two-call program
(`remote.llmflow`) on the OpenAI-compatible test server with 200 ms per call and a
declared requests-per-minute limit that binds, llmflow beside LangChain's `abatch`.

    python bench/batch/remote.py [--rows 1000] [--rpm 700] [--window 60] [--latency 0.2]
                                 [--in-flight 16] [--reps 1] [--systems llmflow,langchain]
                                 [--json out.json] [--keep DIR]

Each run gets a fresh server (`python -m llmflow.runtime.testing.server --rpm R`, its own
process), which refuses a request over the limit with a 429 and Retry-After and logs it as
fault "over_limit"; every count below is read from that log. Prompts are distinct per run.

- `llmflow`: `llmflow run remote.llmflow --inputs rows.jsonl --output out.jsonl
  --rows-in-flight N --no-cache` in a subprocess, the program declaring `rpm=R`.
- `langchain`: a two-step LCEL chain per row (prompt | ChatOpenAI | parser, twice) run with
  `chain.abatch(rows, {"max_concurrency": N}, return_exceptions=True)`; ChatOpenAI as its
  users write it, retries left at the SDK's default (2, honouring Retry-After). It has no
  limiter of its own.
- `langchain+limiter`: the same with LangChain's `InMemoryRateLimiter` at R/W requests per
  second (a token bucket: the closest it comes to a declared RPM).

What a sliding window allows: a request may go once the one `rpm` places before it is a
window old, so `n` requests span at least `floor((n - 1) / rpm) * window + latency`
seconds (the first `rpm` at once, then `rpm` per window). Throughput is the requests the
server answered (200) over its span (first arrival to last reply); efficiency is the
bound's span over the measured one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmflow.runtime.testing.server import OVER_LIMIT, default_answer

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "remote.llmflow"
MODEL = "bench-model"
SYSTEMS = ("llmflow", "langchain", "langchain+limiter")
DECLARED_RPM = "rpm=700"

# The prompts as llmflow renders remote.llmflow (a chat model gets the text before the
# output as one user turn, stripped); LangChain's chain sends the same ones.
SUMMARIZE = "Summarize this support ticket in one line.\n\n{ticket}"
ROUTE = "Which team should handle this ticket? Answer with the team's name.\n\n{summary}"


def tickets(run: str, count: int) -> list[dict[str, str]]:
    return [
        {"ticket": f"Ticket {i} ({run}): the export button does nothing on page {i % 7}."}
        for i in range(count)
    ]


def expected(row: dict[str, str]) -> dict[str, str]:
    """A row's outputs: the server answers each prompt with its `default_answer`."""
    summary = default_answer(SUMMARIZE.format(**row))
    return {"summary": summary, "team": default_answer(ROUTE.format(summary=summary))}


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    log: Path

    @classmethod
    def start(cls, rpm: int, window: float, latency: float, log: Path) -> Server:
        cmd = [sys.executable, "-m", "llmflow.runtime.testing.server", "--latency", str(latency)]
        cmd += ["--rpm", str(rpm), "--window", str(window), "--cache-blocks", "0"]
        process = subprocess.Popen([*cmd, "--log", str(log)], stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            process.kill()
            raise SystemExit(f"the test server did not start: {url!r}")
        return cls(process, url, log)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def run_llmflow(
    url: str, rows: list[dict[str, str]], rpm: int, in_flight: int, tmp: Path
) -> list[dict[str, str] | None]:
    """`llmflow run` as a user types it; each row's outputs in row order (None: failed)."""
    program = tmp / "remote.llmflow"
    source = PROGRAM.read_text()
    assert DECLARED_RPM in source, f"{PROGRAM} must declare {DECLARED_RPM}"
    program.write_text(source.replace(DECLARED_RPM, f"rpm={rpm}"))
    inputs, output = tmp / "rows.jsonl", tmp / "out.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cmd = ["llmflow", "run", str(program), "--inputs", str(inputs), "--output", str(output)]
    cmd += ["--rows-in-flight", str(in_flight), "--no-cache", "-q"]
    env = os.environ | {"OPENAI_BASE_URL": url, "LLMFLOW_HOME": str(tmp / "home")}
    done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"llmflow run failed ({done.returncode}): {done.stderr[-2000:]}")
    outputs: list[dict[str, str] | None] = [None] * len(rows)
    for line in output.read_text().splitlines():
        result = json.loads(line)
        if result["error"] is None:
            outputs[int(result["id"]) - 1] = result["outputs"]
    return outputs


def run_langchain(
    url: str, rows: list[dict[str, str]], rpm: int, window: float, in_flight: int, limiter: bool
) -> list[dict[str, str] | None]:
    """The same two calls per row as a LangChain user writes them, through `abatch`."""
    try:  # pip install -r bench/requirements.txt
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.prompts import ChatPromptTemplate
        from langchain_core.rate_limiters import InMemoryRateLimiter
        from langchain_core.runnables import RunnablePassthrough
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise SystemExit(
            "langchain-openai is missing: pip install -r bench/requirements.txt"
        ) from None

    rate = InMemoryRateLimiter(requests_per_second=rpm / window) if limiter else None

    def llm(max_tokens: int) -> Any:
        return ChatOpenAI(
            model=MODEL,
            base_url=url,
            api_key="no-key",  # type: ignore[arg-type]
            max_tokens=max_tokens,  # type: ignore[call-arg]
            temperature=0.0,
            rate_limiter=rate,
        )

    summarize = ChatPromptTemplate.from_messages([("user", SUMMARIZE)]) | llm(16)
    route = ChatPromptTemplate.from_messages([("user", ROUTE)]) | llm(8)
    chain = RunnablePassthrough.assign(summary=summarize | StrOutputParser()) | (
        RunnablePassthrough.assign(team=route | StrOutputParser())
    )

    async def go() -> list[Any]:
        config = {"max_concurrency": in_flight}
        return await chain.abatch(rows, config=config, return_exceptions=True)  # type: ignore[arg-type]

    results = asyncio.run(go())
    return [
        None if isinstance(r, BaseException) else {"summary": r["summary"], "team": r["team"]}
        for r in results
    ]


def measure(system: str, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    run = f"{system}-{rep}-{secrets.token_hex(3)}"
    rows = tickets(run, args.rows)
    with tempfile.TemporaryDirectory(prefix="llmflow-batch-remote-") as name:
        tmp = Path(name)
        server = Server.start(args.rpm, args.window, args.latency, tmp / "log.jsonl")
        try:
            start = time.perf_counter()
            if system == "llmflow":
                outputs = run_llmflow(server.url, rows, args.rpm, args.in_flight, tmp)
            else:
                outputs = run_langchain(
                    server.url, rows, args.rpm, args.window, args.in_flight, system != "langchain"
                )
            wall = time.perf_counter() - start
        finally:
            server.stop()
        records = server.records()
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"{run}.server.jsonl").write_text(server.log.read_text())
    statuses = Counter((r["status"], r["fault"]) for r in records)
    ok = [r for r in records if r["status"] == 200]
    span = max(r["finish"] for r in records) - min(r["arrival"] for r in records)
    bound = math.floor((len(ok) - 1) / args.rpm) * args.window + args.latency
    finished = [out for out in outputs if out is not None]
    right = sum(out == expected(row) for row, out in zip(rows, outputs, strict=True))
    if right != len(finished):
        raise SystemExit(f"{system}: {len(finished) - right} rows have wrong outputs")
    # The most requests the server admitted in any window (each admitted one's window).
    arrivals = sorted(r["arrival"] for r in ok)
    peak, lo = 0, 0
    for hi, stamp in enumerate(arrivals):
        while arrivals[lo] <= stamp - args.window:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return {
        "system": system,
        "rep": rep,
        "rows": args.rows,
        "rows_finished": len(finished),
        "requests": len(records),
        "requests_ok": len(ok),
        "over_limit": statuses[(429, OVER_LIMIT)],
        "other_errors": len(records) - len(ok) - statuses[(429, OVER_LIMIT)],
        "wall_seconds": wall,
        "server_span": span,
        "bound_span": bound,
        "throughput": len(ok) / span,
        "allowed_throughput": len(ok) / bound,
        "efficiency": bound / span,
        "peak_in_window": peak,
    }


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load}"
    )


def table(results: list[dict[str, Any]], systems: list[str]) -> str:
    lines = [
        "| system | rows finished | requests answered | 429 over the limit | server span "
        "| bound | requests/s | allowed requests/s | efficiency | most in one window |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in systems:
        mine = [r for r in results if r["system"] == system]

        def spread(key: str, fmt: str, rs: list[dict[str, Any]] = mine) -> str:
            values = [r[key] for r in rs]
            mid = format(statistics.median(values), fmt)
            if len(values) == 1:
                return mid
            return f"{mid} ({format(min(values), fmt)}–{format(max(values), fmt)})"

        lines.append(
            f"| {system} | {spread('rows_finished', '.0f')} of {mine[0]['rows']} "
            f"| {spread('requests_ok', '.0f')} | {spread('over_limit', '.0f')} "
            f"| {spread('server_span', '.1f')} s | {spread('bound_span', '.1f')} s "
            f"| {spread('throughput', '.2f')} | {spread('allowed_throughput', '.2f')} "
            f"| {spread('efficiency', '.1%')} | {spread('peak_in_window', '.0f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rpm", type=int, default=700, help="declared and enforced limit")
    parser.add_argument("--window", type=float, default=60.0, help="the server's window, s")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per call")
    parser.add_argument("--in-flight", type=int, default=16, help="rows at once, both sides")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--keep", type=Path, help="keep each run's server log in this folder")
    args = parser.parse_args()
    systems = args.systems.split(",")
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    print(machine_line() + " (at the start)", flush=True)
    results = []
    for rep in range(args.reps):
        for system in systems[rep % len(systems) :] + systems[: rep % len(systems)]:
            result = measure(system, args, rep)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    print(machine_line() + " (at the end)\n")
    print(table(results, systems))
    print(
        f"\n{args.rows} rows x 2 calls, {args.reps} run(s) each; server: "
        f"{args.latency * 1e3:.0f} ms per call, {args.rpm} requests per {args.window:g} s "
        f"(sliding window, per model); {args.in_flight} rows in flight"
    )


if __name__ == "__main__":
    main()

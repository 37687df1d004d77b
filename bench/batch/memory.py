"""Memory of a dataset run: peak RSS of `llmflow run memory.llmflow --inputs rows.jsonl
--output out.jsonl` at 1,000, 10,000 and 100,000 rows on an instant backend, and the cost
per row.

    python bench/batch/memory.py [--sizes 1000,10000,100000] [--reps 1] [--single 200]
                                 [--no-cache] [--trace N] [--json out.json]

Each run is its own process (the command as a user types it, with a fresh $LLMFLOW_HOME);
its peak RSS is the child's `ru_maxrss` (`os.wait4`). Linux starts a child's maxrss at
its parent's peak when it execs, so this process keeps itself small (it streams the
results; `parent_peak_rss_mib` says how small) and reads nothing of llmflow until the
sizes are done. The program (`memory.llmflow`) is two chained calls per row on a `scripted` model
with no delay, each row's prompts distinct, so what grows with the rows is llmflow's. Cost
per row is the wall-clock slope between the smallest and the largest size (start-up
cancels out); `--no-cache` runs without the response cache. `--single N` times the same
program's one-row `llmflow.run` in-process, N times, for the cost of a call outside a
dataset run. `--trace N` runs N rows in-process under tracemalloc and prints what grew
between a fifth and four fifths of the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "memory.llmflow"


def write_rows(path: Path, count: int) -> None:
    with path.open("w") as f:
        for i in range(count):
            row = {"ticket": f"Ticket {i}: the export button does nothing on page {i % 7}."}
            f.write(json.dumps(row) + "\n")


def command(rows: Path, output: Path) -> list[str]:
    return ["llmflow", "run", str(PROGRAM), "--inputs", str(rows), "--output", str(output)]


def measure(count: int, rep: int, flags: list[str]) -> dict[str, Any]:
    """One `llmflow run` over `count` rows: its peak RSS, wall clock and rows written."""
    with tempfile.TemporaryDirectory(prefix="llmflow-batch-memory-") as name:
        tmp = Path(name)
        rows, output = tmp / "rows.jsonl", tmp / "out.jsonl"
        write_rows(rows, count)
        env = os.environ | {"LLMFLOW_HOME": str(tmp / "home")}
        start = time.perf_counter()
        process = subprocess.Popen(
            [*command(rows, output), "-q", *flags], env=env, cwd=tmp, stderr=subprocess.PIPE
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        assert process.stderr is not None
        stderr = process.stderr.read().decode()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"llmflow run failed ({process.returncode}): {stderr[-2000:]}")
        lines = failed = 0
        with output.open() as results:  # line by line: this process must stay small
            for line in results:
                lines += 1
                failed += json.loads(line)["error"] is not None
        if lines != count or failed:
            raise SystemExit(f"{count} rows: {lines} lines written, {failed} failed")
    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": count,
        "rep": rep,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "seconds": seconds,
        "parent_peak_rss_mib": mine,
    }


def single(times: int) -> dict[str, float]:
    """The program's one-row `llmflow.run`, in-process: seconds per run (2 calls)."""
    import llmflow

    row = {"ticket": "Ticket 0: the export button does nothing on page 0."}
    plan = llmflow.compile(PROGRAM, inputs=row)
    with tempfile.TemporaryDirectory(prefix="llmflow-batch-single-") as name:
        os.environ["LLMFLOW_HOME"] = name
        llmflow.run(plan, row)  # warm: imports, the backend
        runs = []
        for i in range(times):
            inputs = {"ticket": f"Ticket {i}: the export button does nothing on page {i % 7}."}
            start = time.perf_counter()
            outputs = llmflow.run(plan, inputs)
            runs.append(time.perf_counter() - start)
            assert outputs["team"] == inputs["ticket"], outputs
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}


def trace(count: int, top: int = 12) -> None:
    """Run `count` rows through the CLI in-process under tracemalloc, snapshot what is
    alive once a fifth and once four fifths of the rows are written, and print what grew
    in between, by line: what a run keeps per row."""
    from llmflow.cli import main as cli

    with tempfile.TemporaryDirectory(prefix="llmflow-batch-trace-") as name:
        tmp = Path(name)
        rows, output = tmp / "rows.jsonl", tmp / "out.jsonl"
        write_rows(rows, count)
        os.environ["LLMFLOW_HOME"] = str(tmp / "home")
        snapshots: list[tuple[int, tracemalloc.Snapshot]] = []
        done = threading.Event()

        def watch() -> None:
            for mark in (count // 5, count * 4 // 5):
                while not done.is_set():
                    written = output.read_bytes().count(b"\n") if output.exists() else 0
                    if written >= mark:
                        snapshots.append((written, tracemalloc.take_snapshot()))
                        break
                    time.sleep(0.05)

        tracemalloc.start(12)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        code = cli([*command(rows, output)[1:], "-q"])
        done.set()
        watcher.join()
        tracemalloc.stop()
    if len(snapshots) < 2:
        raise SystemExit(f"the run ended (exit {code}) before both snapshots")
    (first, before), (second, after) = snapshots
    mine = [tracemalloc.Filter(False, tracemalloc.__file__)]  # the first snapshot itself
    growth = after.filter_traces(mine).compare_to(before.filter_traces(mine), "traceback")
    total = sum(d.size_diff for d in growth)
    rows_between = second - first
    print(
        f"{rows_between} rows between the snapshots (exit {code}): "
        f"{total / 2**20:+.2f} MiB traced, {total / rows_between:+.0f} bytes per row"
    )
    grew = [d for d in growth if d.size_diff > 0]  # what was freed (lark's tables) aside
    for diff in grew[:top]:
        print(f"\n{diff.size_diff / rows_between:+7.0f} B/row {diff.count_diff:+8d} blocks")
        for line in diff.traceback.format(limit=6, most_recent_first=True):
            print("   " + line)


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--single", type=int, default=200, help="one-row runs (0: none)")
    parser.add_argument("--no-cache", action="store_true", help="pass --no-cache to each run")
    parser.add_argument("--trace", type=int, help="rows to run under tracemalloc instead")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    if args.trace:
        trace(args.trace)
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    print(machine_line() + " (at the start)", flush=True)
    results = []
    for rep in range(args.reps):
        for count in sizes:
            results.append(measure(count, rep, ["--no-cache"] if args.no_cache else []))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(machine_line() + " (at the end)\n")
    print("| rows | peak RSS | wall clock | rows/s |")
    print("|---:|---:|---:|---:|")
    for count in sizes:
        mine = [r for r in results if r["rows"] == count]
        rss = [r["peak_rss_mib"] for r in mine]
        secs = [r["seconds"] for r in mine]
        spread = f" ({min(rss):.1f}–{max(rss):.1f})" if len(mine) > 1 else ""
        print(
            f"| {count:,} | {statistics.median(rss):.1f} MiB{spread} "
            f"| {statistics.median(secs):.2f} s | {count / statistics.median(secs):,.0f} |"
        )
    small, large = min(sizes), max(sizes)
    if small != large:
        per_rep = []
        for rep in range(args.reps):
            by = {r["rows"]: r["seconds"] for r in results if r["rep"] == rep}
            per_rep.append((by[large] - by[small]) / (large - small))
        slope = statistics.median(per_rep)
        print(
            f"\nper row (slope {small:,} → {large:,} rows): {slope * 1e6:.0f} µs "
            f"({min(per_rep) * 1e6:.0f}–{max(per_rep) * 1e6:.0f}), {slope * 1e6 / 2:.0f} µs "
            "per call"
        )
    if args.single:
        one = single(args.single)
        print(
            f"one-row llmflow.run in-process ({args.single} runs): "
            f"{one['median'] * 1e6:.0f} µs median ({one['min'] * 1e6:.0f}–"
            f"{one['max'] * 1e6:.0f}), {one['median'] * 1e6 / 2:.0f} µs per call"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

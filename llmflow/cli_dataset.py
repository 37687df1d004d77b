"""`llmflow run PROGRAM --inputs rows.jsonl --output results.jsonl`: the flow once per row.

The driver of a dataset run: it reads the rows lazily, skips the ones the results file
already holds, hands the rest to an executor (this process, or a Ray cluster), and alone
writes each row's result line, so both executors resume alike. The run's record (run.json)
names the results file, the inputs and the plan's digest: running again with the same
`--output` resumes that run (its journal answers the calls already made), and refuses
when the program or a written row's inputs changed, unless `--force`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from llmflow.api import compile, is_saved_plan
from llmflow.cli_args import positive
from llmflow.cli_prompts import show_exchange
from llmflow.compiler.ir import Plan
from llmflow.errors import LLMFlowError
from llmflow.runtime import runs
from llmflow.runtime.batch import RowResult
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.executors import Executor
from llmflow.runtime.executors.local import LocalExecutor
from llmflow.runtime.results import ResultsFile, id_key
from llmflow.runtime.rows import STDIN, Row, RowsError, count_rows, read_rows, source_format
from llmflow.runtime.runs import RunDir
from llmflow.runtime.secrets import redact
from llmflow.runtime.session import Session, check_plan
from llmflow.runtime.stats import ModelStats
from llmflow.runtime.store import dumps
from llmflow.runtime.values import InvalidValue, check_json


def add_options(run: argparse.ArgumentParser) -> None:
    rows = run.add_argument_group("dataset runs (the flow once per row)")
    rows.add_argument(
        "--inputs",
        metavar="ROWS",
        help="run once per row of this JSON-lines or CSV file (- reads stdin); a row's "
        "fields are the flow's inputs, -i inputs are given to every row",
    )
    rows.add_argument(
        "--output",
        metavar="FILE",
        help="append one JSON line per row here (default: stdout); running again with the "
        "same --output resumes: rows written are skipped",
    )
    rows.add_argument(
        "--format", choices=("jsonl", "csv"), help="of --inputs (default: by its extension)"
    )
    rows.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="INPUT=COLUMN",
        help="read the flow's INPUT from the rows' COLUMN",
    )
    rows.add_argument("--id", metavar="COLUMN", help="each row's id (default: its line number)")
    rows.add_argument(
        "--rows-in-flight",
        "--concurrency",
        type=positive,
        default=16,
        metavar="N",
        help="rows running at once (default 16; with --executor ray, per worker)",
    )
    rows.add_argument("--limit", type=positive, metavar="N", help="only the first N rows")
    rows.add_argument(
        "--max-failures", type=positive, metavar="N", help="stop once N rows have failed"
    )
    rows.add_argument(
        "--retry-failed", action="store_true", help="when resuming, run the failed rows again"
    )
    rows.add_argument(
        "--force",
        action="store_true",
        help="resume even though the program or the rows changed since the results were written",
    )
    rows.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the rows run: this process, or a Ray cluster (needs llmflow[ray])",
    )
    rows.add_argument(
        "--ray-address", metavar="ADDR", help="the Ray cluster (default: start a local one)"
    )
    rows.add_argument(
        "--ray-workers", type=positive, metavar="N", help="Ray actors (default: one per CPU)"
    )


_NOT_RUN = (
    "budget",
    "objective",
    "estimates",
    "total",
    "makespan",
    "critical_path",
    "decisions",
    "evals",
)
"""Parts of a plan that say what the optimizer thought (or how `llmflow eval` scores
it), not what a run does."""


def plan_digest(plan: Plan) -> str:
    """What a resumed dataset run compares: what the plan runs (its graph, templates,
    types, models, groups and fallbacks, where each node is in the source), so that a
    resume with another budget is the same run."""
    data = {k: v for k, v in plan.to_json().items() if k not in _NOT_RUN}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Progress:
    """A live line on stderr while a terminal watches (rows done and failed, rows/s,
    spend, ETA), and the summary at the end."""

    def __init__(self, total: int | None, quiet: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and self.stream.isatty()
        self.total = total
        self.started = time.perf_counter()
        self.done = self.failed = 0
        self.dollars = 0.0
        self.models: dict[str, ModelStats] = {}
        self._shown = 0.0

    def add(self, result: RowResult) -> None:
        self.done += 1
        self.failed += result.error is not None
        self.dollars += result.stats.dollars
        for model, s in result.models.items():
            total = self.models.setdefault(model, ModelStats())
            for name, value in s:
                setattr(total, name, getattr(total, name) + value)
        now = time.perf_counter()
        if self.live and (now - self._shown > 0.1 or self.done == self.total):
            self._shown = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        failed = f" ({self.failed} failed)" if self.failed else ""
        if self.total:
            width = 24
            filled = round(width * min(self.done / self.total, 1))
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} rows"
            eta = f"  ETA {_duration(left)}"
        else:
            bar, eta = f"{self.done} rows", ""
        return f"{bar}{failed}  {rate:.1f} rows/s  ${self.dollars:.4f}{eta}"

    def summary(self, run: RunDir, skipped: int, output: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
        if self.quiet:
            return
        for model, s in self.models.items():
            cached = f", {s.cache_hits} from the cache" if s.cache_hits else ""
            replayed = f", {s.journal_hits} from the journal" if s.journal_hits else ""
            self.stream.write(
                f"{model}: {s.calls} call{'s' if s.calls != 1 else ''}{cached}{replayed}, "
                f"{s.prompt_tokens} prompt tokens ({s.reused_prompt_tokens} reused), "
                f"{s.output_tokens} output tokens, ${s.dollars:.4f}\n"
            )
        elapsed = time.perf_counter() - self.started
        failed = f", {self.failed} failed" if self.failed else ""
        before = f", {skipped} written before" if skipped else ""
        self.stream.write(
            f"{self.done} row{'s' if self.done != 1 else ''}{failed}{before} in "
            f"{elapsed:.1f}s ({self.done / max(elapsed, 1e-9):.1f} rows/s), "
            f"${self.dollars:.4f} (run {run.id}) → {output}\n"
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def run_dataset(args: argparse.Namespace) -> int:
    """`llmflow run --inputs`: exit 0 if every row succeeded, 1 if any failed (now or
    before) or the run stopped early."""
    from llmflow import cli as shared  # input parsing, budgets and signals as single runs

    run_dir, recorded = _recorded(args)
    if recorded is not None:
        dataset = recorded["dataset"]
        args.inputs = args.inputs or dataset.get("inputs")
        args.output = args.output or dataset.get("output")
        args.map = args.map or [f"{k}={v}" for k, v in dataset.get("map", {}).items()]
        args.id = args.id or dataset.get("id")
        args.format = args.format or dataset.get("format")
    output = None if args.output in (None, "-") else Path(args.output)
    if output is None and (recorded is not None or args.retry_failed):
        raise LLMFlowError("resuming needs the --output file the rows were written to")
    mapping = _mapping(args.map)
    plan = shared.load_program(args.program, args.flow)
    results = ResultsFile(output, warn=shared._warn) if output else None
    try:
        if results is not None and results.rows and run_dir is None:
            assert output is not None
            run_dir = RunDir.of_output(output)
            if run_dir is None and not args.force:
                raise LLMFlowError(
                    f"{output} holds {results.rows} rows that no run in {runs.home()} wrote; "
                    "write to another --output, or --force to add to it (rows written are "
                    "skipped)"
                )
            recorded = run_dir.read_meta() if run_dir else None
        given = {pair.partition("=")[0] for pair in args.input}
        if recorded is not None and not args.input:
            constants = dict(recorded["inputs"])
        else:
            bound = shared.parse_inputs(plan, args.input, partial=True)
            constants = {name: value for name, value in bound.items() if name in given}
        if args.level > 0 and not is_saved_plan(args.program):
            # Decided once for the dataset, knowing the inputs every row shares.
            plan = compile(plan, inputs=constants, objective=args.objective, budget=args.budget)
        check_plan(plan, priced=args.budget is not None, reached=args.executor == "local")
        digest = plan_digest(plan)
        if recorded is not None and not args.force:
            _same_run(recorded, run_dir, output, constants, digest)
        if results is not None and args.retry_failed:
            results.retry_failed()
        return _drive(args, shared, plan, digest, constants, mapping, results, run_dir, recorded)
    finally:
        if results is not None:
            results.close()


def _same_run(
    recorded: dict[str, Any],
    run_dir: RunDir | None,
    output: Path | None,
    constants: dict[str, Any],
    digest: str,
) -> None:
    """A resumed dataset run runs what wrote its results: the same plan and -i inputs."""
    who = f"run {run_dir.id}" if run_dir else "the run"
    if constants != recorded["inputs"]:
        raise LLMFlowError(
            f"{output} was written by {who} with other -i inputs; resume without -i to "
            "reuse them, write to another --output, or --force"
        )
    before = recorded.get("dataset", {}).get("plan")
    if before != digest:
        raise LLMFlowError(
            f"{output} was written by {who} with another program or plan (plan {before}, "
            f"now {digest}); write to another --output, or --force to add to it"
        )


def _drive(
    args: argparse.Namespace,
    shared: Any,
    plan: Plan,
    digest: str,
    constants: dict[str, Any],
    mapping: dict[str, str],
    results: ResultsFile | None,
    run_dir: RunDir | None,
    recorded: dict[str, Any] | None,
) -> int:
    output = results.path if results is not None else None
    source = STDIN if args.inputs == "-" else str(Path(args.inputs).resolve())
    shown_rows = "<stdin>" if source == STDIN else args.inputs

    def rows() -> Iterator[Row]:
        return read_rows(
            args.inputs,
            plan,
            fmt=args.format,
            id_column=args.id,
            mapping=mapping,
            constants=constants,
        )

    total: int | None = None
    if source != STDIN and results is not None and results.rows:
        total = _check_rows(rows(), results, args.force, args.limit, shown_rows)
    elif source != STDIN and sys.stderr.isatty() and not args.quiet:
        total = count_rows(args.inputs, fmt=args.format, limit=args.limit)
    args.resume = run_dir.id if run_dir else None
    unanswered = shared._resumed_budget(args, recorded)
    budget = None
    if args.budget is not None:
        budget = Budget(args.budget, spent=unanswered)
        budget.unanswered = unanswered
    seed = _seed(args, recorded)
    meta = (
        dict(recorded)
        if recorded
        else {
            "program": str(Path(args.program).resolve()),
            "flow": plan.flow,
            "inputs": constants,
            "models": list(plan.models),
            "started": time.time(),
        }
    )
    meta.update(seed=seed.value, seed_chosen=seed.chosen, status="running")
    meta["dataset"] = {
        "inputs": source,
        "format": source_format(source, args.format),
        "output": str(output.resolve()) if output else "-",
        "map": mapping,
        "id": args.id,
        "plan": digest,
    }
    shared._record_spending(meta, budget)
    try:
        check_json(meta)
    except InvalidValue as err:
        raise LLMFlowError(f"cannot record this run in run.json: {err}") from None
    run_dir = run_dir or RunDir.create()
    run_dir.lock()
    restore_sigterm = shared._stop_on_sigterm()
    cache = None if args.no_cache else ResponseCache(runs.home() / "cache", shared._warn)
    skipped = results.rows if results else 0
    progress = Progress(max(total - skipped, 0) if total is not None else None, args.quiet)
    shown = str(output or "stdout")
    try:
        run_dir.write_meta(meta)
        if not args.quiet:
            resumed = f" (resumed: {skipped} rows written before)" if skipped else ""
            sys.stderr.write(f"run {run_dir.id}{resumed}\n")
        executor = _executor(args, plan, seed, budget, cache, run_dir)
        todo = _todo(rows(), results, args.force, args.limit, shown_rows)
        outcome = asyncio.run(_write_all(executor, todo, results, progress, args.max_failures))
    except BaseException as err:
        meta["status"] = "stopped"
        shared._record_spending(meta, budget)
        _finish(meta, run_dir, progress, results, shared)
        progress.summary(run_dir, skipped, shown)
        if output is not None:
            sys.stderr.write(f"resume: {_again(args)}\n")
        if isinstance(err, shared._Terminated):
            sys.stderr.write("terminated\n")
            return 143
        raise
    finally:
        restore_sigterm()
        if cache:
            cache.close()
    failed = results.failed_rows if results else progress.failed
    finished = outcome == "done"
    meta["status"] = ("failed" if failed else "done") if finished else "stopped"
    meta["finished"] = time.time()
    shared._record_spending(meta, budget)
    _finish(meta, run_dir, progress, results, shared)
    progress.summary(run_dir, skipped, shown)
    if outcome == "budget":
        assert budget is not None
        again = _again(args, without="--budget")
        sys.stderr.write(
            f"stopped: the budget of ${budget.limit:.4f} cannot pay for more rows "
            f"(${budget.spent:.4f} spent); resume with a larger one: {again} --budget USD\n"
        )
    elif outcome == "failures":
        sys.stderr.write(f"stopped: {args.max_failures} rows failed (--max-failures)\n")
    if failed:
        earlier = failed - progress.failed
        note = f" ({earlier} of them before this run)" if earlier > 0 else ""
        retry = f"; run them again: {_again(args, add='--retry-failed')}" if output else ""
        sys.stderr.write(f"{failed} row{'s' if failed != 1 else ''} failed{note}{retry}\n")
    return 0 if finished and not failed else 1


def _again(args: argparse.Namespace, without: str | None = None, add: str = "") -> str:
    """The command that goes on with this run: the one typed, every option kept (an `--id`
    or `--map` left out would make the written rows look changed), less `without`'s
    option, plus `add` when it is not there."""
    words: list[str] = []
    skip = False
    for word in getattr(args, "argv", None) or [args.program]:
        if skip:
            skip = False
        elif without and word == without:
            skip = True
        elif not (without and word.startswith(without + "=")):
            words.append(word)
    if add and add not in words:
        words.append(add)
    return redact("llmflow " + shlex.join(words))


def _finish(
    meta: dict[str, Any],
    run_dir: RunDir,
    progress: Progress,
    results: ResultsFile | None,
    shared: Any,
) -> None:
    meta["dataset"]["rows"] = results.rows if results else progress.done
    meta["dataset"]["failed"] = results.failed_rows if results else progress.failed
    try:
        run_dir.write_meta(meta)
    except LLMFlowError as problem:
        shared._warn(str(problem))
    finally:
        run_dir.unlock()


async def _write_all(
    executor: Executor,
    rows: Iterator[Row],
    results: ResultsFile | None,
    progress: Progress,
    max_failures: int | None,
) -> str:
    """Write each row's result as it arrives; returns why it ended: "done", "budget"
    (a row could not be paid for) or "failures" (`--max-failures`)."""
    outcome = "done"
    async with executor:
        stream = executor.results(rows)
        try:
            async for result in stream:
                if result.not_run:
                    outcome = "budget"  # not written: a resume runs it
                    continue
                if results is not None:
                    results.write(result)
                else:
                    sys.stdout.write(dumps(result.to_json()) + "\n")
                    sys.stdout.flush()
                progress.add(result)
                if max_failures is not None and progress.failed >= max_failures:
                    outcome = "failures"
                    break
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    return outcome


def _todo(
    rows: Iterator[Row], results: ResultsFile | None, force: bool, limit: int | None, shown: str
) -> Iterator[Row]:
    """The rows to run: the first `limit` of the source, less those written."""
    for count, row in enumerate(rows, 1):
        if limit is not None and count > limit:
            return
        if results is not None and results.has(row.id):
            _same(row, results, force, shown)
            continue
        yield row


def _check_rows(
    rows: Iterator[Row], results: ResultsFile | None, force: bool, limit: int | None, shown: str
) -> int:
    """Before anything runs: every written row still has the inputs it ran with (unless
    `force`). Returns the number of rows (up to `limit`), for the progress bar."""
    count = 0
    for count, row in enumerate(rows, 1):
        if limit is not None and count > limit:
            return limit
        if results is not None and results.has(row.id):
            _same(row, results, force, shown)
    return count


def _same(row: Row, results: ResultsFile, force: bool, shown: str) -> None:
    written = results.digest(row.id)
    if not force and written is not None and written != row.digest:
        raise RowsError(
            f"{shown}:{row.line}: row {id_key(row.id)} has other inputs than when it was "
            f"written to {results.path} (the inputs changed?); write to another --output, "
            "or --force to keep what was written"
        )


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise LLMFlowError(f"--map {pair}: expected INPUT=COLUMN")
        if name in mapping:
            raise LLMFlowError(f"--map {name}=…: given twice")
        mapping[name] = column
    return mapping


def is_dataset_run(ref: str) -> bool:
    """Whether `--resume REF` names a dataset run (else a single run, or no run: the
    single-run path reports that)."""
    try:
        return isinstance(RunDir.find(ref).read_meta().get("dataset"), dict)
    except LLMFlowError:
        return False


def _recorded(args: argparse.Namespace) -> tuple[RunDir | None, dict[str, Any] | None]:
    """`--resume RUN` of a dataset run: its folder and record."""
    if not args.resume:
        return None, None
    run_dir = RunDir.find(args.resume)
    recorded = run_dir.read_meta()
    if not isinstance(recorded.get("dataset"), dict):
        raise LLMFlowError(f"run {run_dir.id} is not a dataset run: resume it without --inputs")
    if Path(args.program).resolve() != Path(recorded["program"]):
        raise LLMFlowError(f"run {run_dir.id} ran {recorded['program']}, not {args.program}")
    return run_dir, recorded


def _seed(args: argparse.Namespace, recorded: dict[str, Any] | None) -> RunSeed:
    if recorded is not None and isinstance(recorded.get("seed"), int):
        if args.seed not in (None, recorded["seed"]):
            raise LLMFlowError(
                f"these results were written with seed {recorded['seed']}; resume without "
                "--seed to reuse it"
            )
        return RunSeed(recorded["seed"], chosen=recorded.get("seed_chosen") is True)
    return RunSeed(args.seed) if args.seed is not None else RunSeed.draw()


def _executor(
    args: argparse.Namespace,
    plan: Plan,
    seed: RunSeed,
    budget: Budget | None,
    cache: ResponseCache | None,
    run_dir: RunDir,
) -> Executor:
    if args.executor == "ray":
        from llmflow.runtime.executors.ray import JobSettings, RayExecutor

        if args.prompts:
            raise LLMFlowError(
                "--prompts prints what this process sends; with --executor ray the rows run "
                "in other processes: use --executor local (with --limit) to see the prompts"
            )

        settings = JobSettings.for_run(budget=budget, cache=cache)
        return RayExecutor(
            plan,
            settings,
            address=args.ray_address,
            workers=args.ray_workers,
            in_flight=args.rows_in_flight,
            seed=seed,
            run_dir=run_dir,
        )
    show = show_exchange(plan, sys.stderr) if args.prompts else None
    session = Session(budget=budget, cache=cache, run_dir=run_dir, show=show)
    return LocalExecutor(session, plan, in_flight=args.rows_in_flight, seed=seed)

"""The `llmflow` command. Data on stdout, progress and errors on stderr; exit 0 on
success, 1 on a program, input or run error, 2 on a usage error."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import stat
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from llmflow import cli_cassette, cli_dataset, cli_doc, cli_eval, cli_test, cli_tune
from llmflow.api import Session, bind_inputs, compile, is_saved_plan, quoted_name
from llmflow.cli_args import add_measured_options, dollars, profile_choice, seed
from llmflow.cli_prompts import show_exchange
from llmflow.compiler import catalog, check_file
from llmflow.compiler import config as config_file
from llmflow.compiler.diagnostics import render_run
from llmflow.compiler.ir import IRNode, LLMNode, Plan
from llmflow.compiler.models import DEFAULT_MODEL_ID, LOCAL_MODELS, ModelSpec
from llmflow.compiler.types import Type
from llmflow.errors import CompileError, LLMFlowError
from llmflow.runtime import runs, secrets
from llmflow.runtime.budget import Budget
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.cassette import CassetteError
from llmflow.runtime.inputs import value_from_text
from llmflow.runtime.journal import read_journal
from llmflow.runtime.otel import otlp_provider
from llmflow.runtime.runs import RunDir
from llmflow.runtime.scheduler import RunResult
from llmflow.runtime.secrets import redact
from llmflow.runtime.session import check_plan
from llmflow.runtime.stats import ModelStats, call_count, model_stats
from llmflow.runtime.trace import read_trace
from llmflow.runtime.values import InvalidValue, check_json

EXAMPLES = {
    "run": "llmflow run examples/hello.llmflow -i name=Ada\n"
    "  llmflow run examples/review_triage.llmflow --inputs examples/data/reviews.jsonl \\\n"
    "      --id id --output triage.jsonl\n"
    "  llmflow run examples/qa_over_doc.llmflow -i doc=@paper.txt \\\n"
    '      -i \'questions=["Who?", "When?"]\' --json',
    "check": "llmflow check examples/*.llmflow",
    "plan": "llmflow plan examples/qa_over_doc.llmflow --json",
    "models": "llmflow models examples/hello.llmflow",
    "trace": "llmflow trace 20261126-124501-ab12 -o timeline.svg",
    "eval": cli_eval.EXAMPLE,
    "tune": cli_tune.EXAMPLE,
    "test": cli_test.EXAMPLE,
    "doc": cli_doc.EXAMPLE,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmflow",
        description="Compile and run programs that call several LLMs.",
        epilog="Run `llmflow COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show Python tracebacks for internal errors"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show Python tracebacks for internal errors",
        )
        return sub

    run = command("run", "Run a program's flow and print its outputs.")
    run.add_argument("program", help="a .llmflow file")
    run.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input; NAME=@FILE reads it from a file; non-string inputs are JSON",
    )
    run.add_argument("--flow", help="the flow to run (default: main, or the only flow)")
    run.add_argument("--json", action="store_true", help="print the outputs as one JSON object")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    run.add_argument(
        "--stats", action="store_true", help='with --json: {"outputs": …, "stats": per model}'
    )
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="ask the models again even where the response cache has the answer",
    )
    run.add_argument(
        "--prompts",
        action="store_true",
        help="print on stderr every prompt the run sends, turn by turn, and its answer",
    )
    run.add_argument(
        "--otel",
        action="store_true",
        help="also export each call as an OpenTelemetry span to the OTLP endpoint "
        "OTEL_EXPORTER_OTLP_ENDPOINT names (needs llmflow[otel])",
    )
    run.add_argument(
        "--seed",
        type=seed,
        metavar="N",
        help="the run's seed: every sampled call's seed derives from it and the call's place, "
        "so the same seed samples the same answers (default: drawn at random, kept in run.json)",
    )
    run.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a run that stopped (its id, or `last`): finished calls are not sent again",
    )
    _optimizer_options(run)
    cli_dataset.add_options(run)
    cli_cassette.add_options(run)

    cli_eval.add_command(command("eval", "Score a program on labeled rows (docs/evals.md)."))
    cli_tune.add_command(
        command("tune", "Choose each function's model from measurements (docs/tuning.md).")
    )
    cli_test.add_command(
        command("test", "Run the eval rows as test cases on recorded answers (docs/testing.md).")
    )

    cli_doc.add_command(command("doc", "Show the standard library's modules, functions and docs."))

    check = command("check", "Check programs and report every error in them.")
    check.add_argument("programs", nargs="+", metavar="program")

    plan = command("plan", "Compile a program and show its plan (the dataflow graph).")
    plan.add_argument("program")
    plan.add_argument("--flow", help="the flow to plan (default: main, or the only flow)")
    plan.add_argument("--json", action="store_true", help="the whole plan as JSON")
    plan.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a known input: exact map sizes, prompts, prefix groups and estimates",
    )
    plan.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="draw the plan with Graphviz: .svg, .png, .pdf or .dot",
    )
    plan.add_argument("--explain", action="store_true", help="what each pass decided, and why")
    _optimizer_options(plan)

    trace = command("trace", "Show a run's calls, or draw them as a timeline.")
    trace.add_argument(
        "run", metavar="RUN", help="a run id (see .llmflow/runs), its folder, or `last`"
    )
    trace.add_argument(
        "-o", "--output", metavar="FILE", help="draw the timeline: .svg, .png, .pdf or .dot"
    )
    trace.add_argument("--json", action="store_true", help="the trace records as a JSON list")

    models = command("models", "List the models a program can use (and the embedded ones).")
    models.add_argument("program", nargs="?", help="a .llmflow file (default: the embedded models)")
    models.add_argument("--json", action="store_true", help="every field of every model as JSON")
    models.add_argument(
        "--prices",
        metavar="TEXT",
        help="search the vendored price table for model ids containing TEXT",
    )
    return parser


def _masked_stdout(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command that describes the program with its stdout masked: a URL password or
    a key-shaped string written in it is printed as [redacted]. With --json the command
    masks its data itself (`_redacted`), so that what it prints stays JSON."""
    if args.json:
        return handler(args)
    shown = io.StringIO()
    try:
        with contextlib.redirect_stdout(shown):
            return handler(args)
    finally:
        sys.stdout.write(secrets.redact(shown.getvalue()))


def _redacted(data: Any) -> Any:
    """JSON data with every string redacted (the plan nests a few levels only)."""
    if isinstance(data, str):
        return secrets.redact(data)
    if isinstance(data, list):
        return [_redacted(item) for item in data]
    if isinstance(data, dict):
        return {key: _redacted(value) for key, value in data.items()}
    return data


def _optimizer_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "-O",
        dest="level",
        type=int,
        choices=(0, 1),
        default=1,
        help="-O0: no optimizer (declared or default models, no prefix groups)",
    )
    sub.add_argument(
        "--objective",
        choices=("cost", "quality", "latency"),
        default="cost",
        help="what model assignment optimizes (default: cost)",
    )
    sub.add_argument(
        "--budget",
        type=dollars,
        metavar="USD",
        help="spend at most this much: the plan fits it, and a run sends no call that could "
        "exceed it",
    )
    add_measured_options(sub)


def load_program(program: str, flow: str | None) -> Plan:
    """The plan a command's PROGRAM argument names: a `.llmflow` file compiled, not
    optimized yet, or a saved plan's `.json` as it was saved."""
    return compile(program, flow, optimize=False)


def _compile(
    args: argparse.Namespace, partial: bool, recorded: dict[str, Any] | None = None
) -> tuple[Plan, dict[str, Any]]:
    """Load the program, read the inputs against the flow's types (a resumed run's
    `recorded` inputs when none are given), then optimize knowing them."""
    plan = load_program(args.program, args.flow)
    if recorded is not None and not args.input:
        inputs = bind_inputs(plan, recorded)
    else:
        inputs = parse_inputs(plan, args.input, partial=partial)
    if args.level > 0 and not is_saved_plan(args.program):  # a saved plan runs as saved
        plan = compile(
            plan,
            inputs=inputs,
            objective=args.objective,
            budget=args.budget,
            profile=profile_choice(args),
            min_quality=args.min_quality,
        )
    return plan, inputs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for "resume: ..." hints
    secrets.register_environment()
    handler = {
        "run": _run,
        "eval": cli_eval.run_eval,
        "tune": cli_tune.run_tune,
        "test": cli_test.run_test,
        "doc": cli_doc.run_doc,
        "check": _check,
        "plan": _plan,
        "models": _models,
        "trace": _trace,
    }[args.command]
    try:
        if args.command in ("plan", "models"):  # they print model options and constants
            return _masked_stdout(handler, args)
        return handler(args)
    except CassetteError as err:
        sys.stderr.write(err.render())
        return 1
    except CompileError as err:
        sys.stderr.write(err.render())
        count = len(err.diagnostics)
        sys.stderr.write(f"{count} error{'s' if count != 1 else ''}\n")
        return 1
    except LLMFlowError as err:
        message = redact(str(err))
        sys.stderr.write(f"error: {message}\n".replace("\n", "\nerror: ", message.count("\n")))
        return 1
    except FileNotFoundError as err:
        sys.stderr.write(f"error: no such file: {err.filename}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as err:
        if args.debug:
            sys.stderr.write(redact(traceback.format_exc()))
        else:
            sys.stderr.write(
                redact(f"internal error: {type(err).__name__}: {err}\n")
                + "(run with --debug for a traceback)\n"
            )
        return 1


# ---- run --------------------------------------------------------------------------------


MAX_INPUT_BYTES = 16 * 2**20
"""Largest file `-i NAME=@FILE` reads (16 MiB): far more text than any context window
takes, little enough to hold in memory and record with the run."""


def parse_inputs(plan: Plan, pairs: list[str], partial: bool = False) -> dict[str, Any]:
    """`name=value` pairs → checked values, defaults filled in: strings as given, other
    types as JSON. Each input is given once; every problem is reported, each naming its
    input. `partial`: missing inputs are fine (planning with what is known)."""
    types = {spec.name: spec.type for spec in plan.inputs}
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            bare = quoted_name(pair)[1:-1]
            problems[pair] = f"input '{bare}' needs a value: -i {bare}=VALUE (or -i {bare}=@FILE)"
            continue
        if name in values or name in problems:
            values.pop(name, None)
            problems[name] = f"input {quoted_name(name)} is given twice: give each input once"
            continue
        try:
            values[name] = _input_value(f"input {quoted_name(name)}", types.get(name), raw)
        except InvalidValue as err:
            problems[name] = str(err)
    return bind_inputs(plan, values, partial, given=problems)


def _input_value(who: str, t: Type | None, raw: str) -> Any:
    """One `-i` value: the text itself for `str` and enum inputs (and unknown names,
    reported later), JSON for the others. Problems are InvalidValue, naming `who`."""
    if raw.startswith("@"):
        text = _read_input_file(who, Path(raw[1:]))
    else:
        text = raw
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # argv bytes that were not UTF-8, escaped
            offset = len(text[: err.start].encode("utf-8", "surrogateescape"))
            code = ord(text[err.start])
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
            raise InvalidValue(f"{who} is not UTF-8 text ({what} at offset {offset})") from None
    return value_from_text(who, t, text)


def _read_input_file(who: str, path: Path) -> str:
    """The text of an `@FILE` input: a regular file (never a FIFO, which could block
    forever) of UTF-8 text (a BOM is dropped), at most MAX_INPUT_BYTES."""
    shown = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise InvalidValue(f"{who}: cannot read {shown}: {err.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidValue(f"{who}: {shown} is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise InvalidValue(f"{who}: {shown} is not a regular file (a pipe or a device)")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_INPUT_BYTES + 1)
    except OSError as err:
        raise InvalidValue(f"{who}: cannot read {shown}: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidValue(f"{who}: {shown} is larger than {MAX_INPUT_BYTES // 2**20} MiB")
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 BOM is not text
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start
        raise InvalidValue(
            f"{who}: {shown} is not UTF-8 text (byte 0x{data[at]:02x} at offset {at})"
        ) from None


class _Progress:
    """A progress line on stderr while a terminal watches (calls done of planned, dollars
    so far), and the run summary at the end; nothing but the summary otherwise."""

    def __init__(self, plan: Plan, quiet: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.started = time.perf_counter()
        self.planned = int(plan.total.instances) if plan.total else len(plan.calls())
        self.begun = self.done = 0
        self.dollars = 0.0

    def __call__(self, kind: str, node: IRNode, info: dict[str, Any]) -> None:
        if kind == "start" and node.kind == "llm":
            self.begun += 1
            self.planned = max(self.planned, self.begun)
        elif kind in ("done", "failed", "fallback") and "stats" in info:
            self.dollars += info["stats"].dollars
            self.done += kind != "fallback"
        if self.live:
            width = 24
            filled = round(width * self.done / max(self.planned, 1))
            elapsed = time.perf_counter() - self.started
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.planned} calls"
                f"  ${self.dollars:.4f}  {elapsed:.1f}s \x1b[K"
            )
            self.stream.flush()

    def summary(
        self,
        result: RunResult,
        stats: dict[str, ModelStats],
        run: RunDir,
        budget: Budget | None = None,
    ) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
        if self.quiet:
            return
        for model, s in stats.items():
            cached = f", {s.cache_hits} from the cache" if s.cache_hits else ""
            replayed = f", {s.journal_hits} from the journal" if s.journal_hits else ""
            retries = f", {s.retries} retried" if s.retries else ""
            self.stream.write(
                f"{model}: {s.calls} call{'s' if s.calls != 1 else ''}{cached}{replayed}, "
                f"{s.prompt_tokens} prompt tokens ({s.reused_prompt_tokens} reused), "
                f"{s.output_tokens} output tokens, ${s.dollars:.4f}, {s.seconds:.1f}s{retries}\n"
            )
        elapsed = time.perf_counter() - self.started
        n = call_count(result.calls)
        spent = f", ${budget.spent:.4f} of the ${budget.limit:.4f} budget spent" if budget else ""
        self.stream.write(
            f"{n} call{'s' if n != 1 else ''} in {elapsed:.1f}s{spent} (run {run.id})\n"
        )


def _run(args: argparse.Namespace) -> int:
    if args.inputs is not None or (args.resume and cli_dataset.is_dataset_run(args.resume)):
        return cli_dataset.run_dataset(args)
    for option in ("output", "id", "limit", "max_failures", "ray_address", "ray_workers"):
        if getattr(args, option) is not None:
            raise LLMFlowError(f"--{option.replace('_', '-')} is for dataset runs: give --inputs")
    if args.map or args.retry_failed or args.executor != "local":
        raise LLMFlowError(
            "--map, --retry-failed and --executor are for dataset runs: give --inputs"
        )
    resumed, recorded = _resumed_run(args)
    unanswered = _resumed_budget(args, recorded)
    plan, inputs = _compile(args, partial=False, recorded=recorded["inputs"] if recorded else None)
    if resumed is not None and recorded is not None and inputs != recorded["inputs"]:
        raise LLMFlowError(
            f"run {resumed.id} ran with other inputs; resume without -i to reuse them"
        )
    # Whatever can fail before the first call fails before the run folder exists: a
    # failed start leaves nothing that `--resume last` or `trace last` would pick up.
    # With a budget, -O0 plans and fallbacks too need their prices.
    cassette = cli_cassette.cassette_of(args)
    check_plan(plan, priced=args.budget is not None, reached=cli_cassette.sends(cassette))
    budget = None
    if args.budget is not None:
        # What earlier sessions were charged for tries no journal line records; the
        # journal's answers are added when it is opened.
        budget = Budget(args.budget, spent=unanswered)
        budget.unanswered = unanswered
    otel = otlp_provider() if args.otel else None
    seed = RunSeed(args.seed) if args.seed is not None else RunSeed.draw()
    if resumed is not None and recorded is not None and isinstance(recorded.get("seed"), int):
        if args.seed not in (None, recorded["seed"]):
            raise LLMFlowError(
                f"run {resumed.id} ran with seed {recorded['seed']}; resume without --seed "
                "to reuse it"
            )
        seed = RunSeed(recorded["seed"], chosen=recorded.get("seed_chosen") is True)
    meta = recorded or {
        "program": str(Path(args.program).resolve()),
        "flow": plan.flow,
        "inputs": inputs,
        "models": list(plan.models),
        "started": time.time(),
    }
    meta.update(seed=seed.value, seed_chosen=seed.chosen, status="running")
    _record_spending(meta, budget)
    try:
        check_json(meta)  # the inputs are checked; this catches a non-UTF-8 program path
    except InvalidValue as err:
        raise LLMFlowError(f"cannot record this run in run.json: {err}") from None
    run_dir = resumed or RunDir.create()  # `last` skips it until run.json is written
    run_dir.lock()
    restore_sigterm = _stop_on_sigterm()
    cache = None
    try:
        run_dir.write_meta(meta)
        if not args.quiet:
            sys.stderr.write(f"run {run_dir.id}{' (resumed)' if recorded else ''}\n")
        progress = _Progress(plan, args.quiet)
        cache = None if args.no_cache else ResponseCache(runs.home() / "cache", _warn)
        show = show_exchange(plan, sys.stderr) if args.prompts else None
        session = Session(
            budget=budget, cache=cache, run_dir=run_dir, otel=otel, cassette=cassette, show=show
        )
        result = asyncio.run(_run_in(session, plan, inputs, progress, seed))
    except BaseException as err:
        # Whatever ended the run (an error of any kind, Ctrl-C, SIGTERM), its record
        # must not say "running".
        meta["status"] = "stopped"
        _record_spending(meta, budget)
        try:
            run_dir.write_meta(meta)
        except LLMFlowError as problem:
            _warn(str(problem))
        finally:
            run_dir.unlock()
        sys.stderr.write(f"\n{_resume_line(args.program, run_dir)}\n")
        if isinstance(err, _Terminated):
            sys.stderr.write("terminated\n")
            return 143
        raise
    finally:
        restore_sigterm()
        if cache:
            cache.close()
    meta.update(status="failed" if result.failures else "done", outputs=result.outputs)
    meta["finished"] = time.time()
    _record_spending(meta, budget)
    try:
        run_dir.write_meta(meta)
    except LLMFlowError as problem:  # the outputs are computed: print them all the same
        _warn(str(problem))
    finally:
        run_dir.unlock()
    cli_cassette.report(cassette, sys.stderr)
    stats = model_stats(result.calls)
    progress.summary(result, stats, run_dir, budget)
    if args.json and args.stats:
        data = {"outputs": result.outputs, "stats": {m: s.model_dump() for m, s in stats.items()}}
        sys.stdout.write(_json_text(data) + "\n")
    elif args.json:
        sys.stdout.write(_json_text(result.outputs) + "\n")
    else:
        _print_outputs(result.outputs, len(plan.outputs))
    if result.failures:
        _report_failures(plan, result, budget)
        sys.stderr.write(_resume_line(args.program, run_dir) + "\n")
        return 1
    return 0


def _resume_line(program: str, run_dir: RunDir) -> str:
    """How to go on from a stopped or failed run (worded so it reads as no output)."""
    return f"to resume, keeping the finished calls: llmflow run {program} --resume {run_dir.id}"


async def _run_in(
    session: Session, plan: Plan, inputs: dict[str, Any], progress: _Progress, seed: RunSeed
) -> RunResult:
    async with session:
        return await session.run(plan, inputs, on_event=progress, seed=seed)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, to stop it the way Ctrl-C does."""


def _stop_on_sigterm() -> Callable[[], None]:
    """Until the returned function is called, SIGTERM stops the run cleanly (its record
    says "stopped", and it can be resumed); a second SIGTERM kills at once."""

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals are not ours to handle
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {redact(message)}\n")


def _resumed_run(args: argparse.Namespace) -> tuple[RunDir | None, dict[str, Any] | None]:
    """The folder and record of the run `--resume` names (None, None: a new run). A run
    whose record still says "running" was killed: it resumes like a stopped one."""
    if not args.resume:
        return None, None
    run_dir = RunDir.find(args.resume)
    recorded = run_dir.read_meta()
    if Path(args.program).resolve() != Path(recorded["program"]):
        raise LLMFlowError(f"run {run_dir.id} ran {recorded['program']}, not {args.program}")
    _, unreadable = read_journal(run_dir.journal)
    read_trace(run_dir.trace)  # a directory in its place is an error now, not mid-run
    if unreadable:
        _warn(
            f"run {run_dir.id}: {unreadable} unreadable journal line"
            f"{'s' if unreadable != 1 else ''} skipped (their calls are sent again)"
        )
    return run_dir, recorded


def _resumed_budget(args: argparse.Namespace, recorded: dict[str, Any] | None) -> float:
    """A resumed run's budget: its limit is kept unless `--budget` gives another, which
    then applies to the whole run, what it has spent included (a resume can raise or
    lower the budget, not drop it); stderr says so. Returns what earlier sessions were
    charged for tries that got no answer (`Budget.unanswered`), which no journal holds."""
    if recorded is None:
        return 0.0
    before = recorded.get("budget")
    if not isinstance(before, dict) or not isinstance(before.get("limit"), int | float):
        before = {}
    for field in ("limit", "unanswered"):  # NaN would let every spend through
        value = before.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = -1
        if not math.isfinite(value) or value < 0:
            raise LLMFlowError(
                f"{args.resume}: run.json's budget {field} is {before.get(field)!r}, not a "
                "finite amount of $0 or more"
            )
    limit = before.get("limit")
    if args.budget is None:
        args.budget = limit
    elif args.budget != limit and not args.quiet:
        was = f"instead of ${limit:.4f}" if limit is not None else "(it had none)"
        sys.stderr.write(
            f"budget: ${args.budget:.4f} for the whole run from now on {was}; "
            "what it has spent counts\n"
        )
    unanswered = before.get("unanswered")
    return float(unanswered) if isinstance(unanswered, int | float) else 0.0


def _record_spending(meta: dict[str, Any], budget: Budget | None) -> None:
    """The budget's limit, what the run has spent so far, and the part of it no journal
    line records (kept in run.json for a resume)."""
    if budget is not None:
        meta["budget"] = {
            "limit": budget.limit,
            "spent": budget.spent,
            "unanswered": budget.unanswered,
        }


def _report_failures(plan: Plan, result: RunResult, budget: Budget | None) -> None:
    sys.stderr.write(render_run(f.diagnostic() for f in result.failures if not f.not_run))
    not_run = [f.node.label for f in result.failures if f.not_run]
    if not_run:
        limit, spent = (budget.limit, budget.spent) if budget else (0.0, 0.0)
        sys.stderr.write(
            f"not run: {', '.join(sorted(set(not_run)))}: the budget of ${limit:.4f} "
            f"could not pay for them (${spent:.4f} spent)\n"
        )
    missing = [n for n in plan.outputs if n not in result.outputs]
    sys.stderr.write(f"not computed: {', '.join(missing)}\n")


def _json_text(data: Any) -> str:
    """JSON for stdout: valid JSON always (no NaN or Infinity), non-ASCII as is where
    stdout takes UTF-8 and escaped elsewhere."""
    utf8 = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") == "utf8"
    return json.dumps(data, ensure_ascii=not utf8, allow_nan=False, indent=2)


def _print_outputs(outputs: dict[str, Any], declared: int) -> None:
    def text(value: Any) -> str:
        return value if isinstance(value, str) else _json_text(value)

    if declared == 1 and len(outputs) == 1:
        sys.stdout.write(text(next(iter(outputs.values()))) + "\n")
        return
    for name, value in outputs.items():
        rendered = text(value)
        sep = "\n" if "\n" in rendered else " "
        sys.stdout.write(f"{name}:{sep}{rendered}\n")


# ---- check, plan, models ----------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for program in args.programs:
        try:
            check_file(program)
        except CompileError as err:  # an unreadable file too: then the next one is checked
            sys.stderr.write(err.render())
            failed += len(err.diagnostics)
    files = len(args.programs)
    sys.stderr.write(
        f"{files} file{'s' if files != 1 else ''} checked: "
        + (f"{failed} error{'s' if failed != 1 else ''}\n" if failed else "no errors\n")
    )
    return 1 if failed else 0


def _plan(args: argparse.Namespace) -> int:
    plan, _ = _compile(args, partial=True)
    if args.output:
        from llmflow.compiler.draw import render_plan

        path = render_plan(plan, Path(args.output))
        sys.stderr.write(f"wrote {path}\n")
    if args.json:
        sys.stdout.write(_json_text(_redacted(plan.to_json())) + "\n")
    elif args.explain:
        _print_explain(plan)
    elif not args.output:
        _print_plan(plan)
    return 0


def _print_explain(plan: Plan) -> None:
    if not plan.decisions:
        sys.stdout.write("no optimizer passes ran (-O0)\n")
    rule = None
    for decision in plan.decisions:
        if decision.rule != rule:
            rule = decision.rule
            sys.stdout.write(f"{rule}:\n")
        sys.stdout.write(f"  {decision.message}\n")


def _print_plan(plan: Plan) -> None:
    sys.stdout.write(f"flow {plan.flow} in {plan.file}\n")
    sys.stdout.write("inputs: " + ", ".join(f"{i.name}: {i.type}" for i in plan.inputs) + "\n")
    sys.stdout.write("outputs: " + ", ".join(f"{n}: {t}" for n, t in plan.outputs.items()) + "\n")
    _print_graph(plan.graph.nodes, plan, "")
    for group in plan.groups:
        sys.stdout.write(
            f"prefix group {group.id} on {group.model}: {', '.join(group.calls)} "
            f"({group.instances} calls share ~{group.prefix_tokens} tokens)\n"
        )
    if plan.total is not None:
        t = plan.total
        sys.stdout.write(
            f"estimate: {t.instances:g} calls, ~{t.input_tokens:.0f} prompt tokens "
            f"(~{t.cached_tokens:.0f} reused), ~{t.output_tokens:.0f} output tokens, "
            f"${t.dollars:.4f}, ~{plan.makespan or 0:.1f}s\n"
        )


def _print_graph(nodes: list[IRNode], plan: Plan, indent: str) -> None:
    """Each node, its subgraphs below it, indented. With a stack: an else-if chain nests
    subgraphs as deep as it is long (indented 16 levels at most, deeper ones numbered)."""
    stack: list[Iterator[str | tuple[IRNode, int]]] = [iter([(n, 0) for n in nodes])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        if isinstance(item, str):
            sys.stdout.write(item)
            continue
        node, depth = item
        pad = indent + "    " * min(depth, 16)
        detail = f" on {node.call.model}" if isinstance(node, LLMNode) else ""
        est = plan.estimates.get(node.id)
        if est is not None:
            detail += f" [~{est.input_tokens:.0f}+{est.output_tokens:.0f} tok, ${est.dollars:.4f}]"
        args = f"({', '.join(node.args)})" if node.args else ""
        var = f" → {node.var}" if node.var else ""
        sys.stdout.write(
            f"{pad}{node.id} {node.kind} {node.label}{args}{detail}: {node.type}{var}\n"
        )
        inside: list[str | tuple[IRNode, int]] = []
        for key, body in node.bodies.items():
            level = f" (level {depth + 1})" if depth >= 16 else ""
            inside.append(f"{pad}  {key}:{level}\n")
            inside += [(n, depth + 1) for n in body.nodes]
        stack.append(iter(inside))


def _trace(args: argparse.Namespace) -> int:
    """A run's calls: a table, the records as JSON, or a timeline picture."""
    from llmflow.runtime.timeline import render_timeline

    run_dir = RunDir.find(args.run)
    meta = run_dir.read_meta()
    records, unreadable = read_trace(run_dir.trace)
    if unreadable:
        _warn(f"{unreadable} unreadable trace line{'s' if unreadable != 1 else ''} skipped")
    if args.output:
        title = f"{Path(meta['program']).name} · run {run_dir.id}"
        path = render_timeline(records, Path(args.output), title, meta.get("models", ()))
        sys.stderr.write(f"wrote {path}\n")
    if args.json:
        sys.stdout.write(_json_text(records) + "\n")
    elif not args.output:
        _print_trace(records)
    return 0


def _print_trace(records: list[dict[str, Any]]) -> None:
    t0 = min((r["start"] for r in records), default=0.0)
    for r in records:
        marks = [
            mark
            for mark, on in (
                (f"{r['llmflow.retries']} retried", r.get("llmflow.retries")),
                (f"fallback from {r.get('llmflow.fallback_from')}", r.get("llmflow.fallback_from")),
                ("cache", r.get("llmflow.cache_hit")),
                ("journal", r.get("llmflow.journal_hit")),
                (f"error: {r.get('error.type')}", r.get("llmflow.status") == "error"),
            )
            if on
        ]
        sys.stdout.write(
            f"{r['start'] - t0:7.2f}s {r['end'] - r['start']:6.2f}s  {r['llmflow.node']:<6} "
            f"{r['llmflow.function']} on {r['llmflow.model']}: "
            f"{r['gen_ai.usage.input_tokens']} → {r['gen_ai.usage.output_tokens']} tokens, "
            f"${r['llmflow.cost_usd']:.4f}" + (f" ({'; '.join(marks)})" if marks else "") + "\n"
        )
    sys.stdout.write(f"{len(records)} call{'s' if len(records) != 1 else ''}\n")


def _models(args: argparse.Namespace) -> int:
    """Every model a program (plus its config file) knows, or the embedded catalog."""
    if args.prices is not None:
        return _price_table(args.prices, args.json)
    if args.program:
        checked = check_file(args.program)
        specs, default = list(checked.models.values()), checked.default_model
        config, _ = config_file.load_config(Path(args.program), args.program)
    else:
        config, diags = config_file.load_config_in(Path())
        if diags:
            assert config is not None
            raise CompileError(diags, {config.name: config.shown_text})
        specs, default = _catalog_models(config)
    if args.json:
        rows = [{**spec.model_dump(mode="json"), "default": spec.name == default} for spec in specs]
        sys.stdout.write(_json_text(_redacted(rows)) + "\n")
        return 0
    sys.stdout.write(_models_table(specs, default))
    sys.stdout.write(_models_notes(specs, config))
    return 0


def _catalog_models(config: config_file.Config | None) -> tuple[list[ModelSpec], str]:
    """Without a program: the embedded models and the models of the config file here."""
    specs = [
        catalog.resolve(name, "local", name, config_file.overrides(config, name))
        for name in LOCAL_MODELS
    ]
    default = DEFAULT_MODEL_ID
    if config is not None:
        for entry in config.models.values():
            if entry.defines and entry.name not in LOCAL_MODELS:
                spec, diags = config_file.config_spec(config, entry)
                if diags:
                    raise CompileError(diags, {config.name: config.shown_text})
                assert spec is not None
                specs.append(spec)
        if config.default_model in {s.name for s in specs}:
            default = config.default_model
    return specs, default


def _money(price: float | None) -> str:
    if price is None:
        return "?"
    return "free" if price == 0 else f"{price:g}"


def _models_table(specs: list[ModelSpec], default: str) -> str:
    header = ["NAME", "BACKEND", "ID", "CONTEXT", "IN", "OUT", "CACHED", "SPEED", "LIMITS"]
    rows: list[list[str]] = []
    for spec in specs:
        limits = spec.limits
        by_source: dict[str, list[str]] = {}
        for skill, score in spec.skills.items():
            by_source.setdefault(spec.skill_source.get(skill, "?"), []).append(f"{skill}={score:g}")
        rows.append(
            [
                spec.name + (" *" if spec.name == default else ""),
                spec.backend,
                spec.id,
                f"{spec.context}" if spec.context else "?",
                _money(spec.price_in),
                _money(spec.price_out),
                _money(spec.price_cached_in if spec.price_cached_in is not None else None),
                f"{spec.prefill_tps:.0f}/{spec.decode_tps:.0f}"
                if spec.prefill_tps and spec.decode_tps
                else "-",
                " ".join(
                    f"{k}={v}"
                    for k, v in (
                        ("rpm", limits.rpm),
                        ("tpm", limits.tpm),
                        ("concurrency", limits.concurrency),
                    )
                    if v is not None
                )
                or "-",
                "; ".join(f"{' '.join(v)} ({src})" for src, v in by_source.items()) or "-",
            ]
        )
    header.append("SKILLS (SOURCE)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    right = {3, 4, 5, 6, 7}
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def _models_notes(specs: list[ModelSpec], config: config_file.Config | None) -> str:
    src = catalog.source()
    table = f"{catalog.source_label()} (taken {src['taken']})"
    lines = [
        "",
        "* default model. IN, OUT, CACHED: USD per 1M tokens (CACHED: input read from the "
        "provider's prompt cache); SPEED: prefill/decode tokens per second.",
        "prices:",
    ]
    width = max(len(s.name) for s in specs)
    for spec in specs:
        if spec.price_source is not None:
            origin = spec.price_source.replace(catalog.source_label(), table)
            entry = (
                f" [{spec.catalog_id}]" if spec.catalog_id and spec.catalog_id != spec.id else ""
            )
            lines.append(f"  {spec.name:<{width}}  {origin}{entry}")
            continue
        why = (
            f'"{spec.id}" is not in the price table'
            if spec.backend == "openai"
            else f"{spec.backend} models are not looked up in the price table"
        )
        lines.append(
            f"  {spec.name:<{width}}  no price ({why}): declare price_in and price_out, "
            "or a catalog_id (llmflow models --prices TEXT)"
        )
    if config is not None:
        lines.append(f"config: {config.name}")
    return "\n".join(lines) + "\n"


def _price_table(text: str, as_json: bool) -> int:
    """`llmflow models --prices TEXT`: the price-table entries whose id contains TEXT."""
    entries = [e for e in (catalog.get(k) for k in catalog.search(text, limit=50)) if e]
    if as_json:
        rows = [dataclasses.asdict(e) for e in entries]
        sys.stdout.write(_json_text(rows) + "\n")
        return 0
    if not entries:
        sys.stderr.write(f"no entry of the {catalog.source_label()} contains '{text}'\n")
        return 1
    header = ["CATALOG ID", "PROVIDER", "MODE", "CONTEXT", "IN", "OUT", "CACHED", "SCHEMA"]
    rows = [header] + [
        [
            e.key,
            e.provider,
            "chat" if e.chat else "completion",
            str(e.context or "?"),
            _money(e.price_in),
            _money(e.price_out),
            _money(e.price_cached_in),
            {True: "yes", False: "no", None: "?"}[e.supports_schema],
        ]
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        cells = [
            c.rjust(w) if 3 <= i <= 6 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")
    sys.stdout.write(f"USD per 1M tokens, from the {catalog.source_label()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

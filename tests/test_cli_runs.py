"""What `llmflow run` leaves behind and reads back: run folders, the response cache,
`--resume` checks, `--budget` at run time and on resume, the summary's counts, `llmflow
trace`, the progress line. Against
the loopback test server; no model runs here."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmflow.cli import _Progress, main
from llmflow.runtime.backends.base import GenerationRequest, Turn
from llmflow.runtime.calls import CallStats
from llmflow.runtime.gateway import prompt_tokens_at_most
from llmflow.runtime.testing.server import (
    ServerHandle,
    count_tokens,
    default_answer,
    start_server,
)

PROGRAM = """
model remote = openai_compatible("priced", base_url="{url}", price_in=1000, price_out=2000)

fn ask(q: str) -> a: str
\"\"\"Ask {{{{q}}}}: {{{{a | max_tokens=10}}}}\"\"\"

flow main(qs: list[str]) -> answers: list[str] {{
    answers = map q in qs: ask(q)
}}
"""


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    with start_server() as handle:
        yield handle


@pytest.fixture
def program(tmp_path: Path, server: ServerHandle) -> Path:
    path = tmp_path / "ask.llmflow"
    path.write_text(PROGRAM.format(url=server.url))
    return path


def runs() -> list[Path]:
    return sorted((Path(os.environ["LLMFLOW_HOME"]) / "runs").iterdir())


def test_a_run_leaves_a_private_folder_and_its_answers_in_the_cache(
    program: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    qs = json.dumps(["a", "b"])
    assert main(["run", str(program), "-i", f"qs={qs}", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answers": [default_answer("Ask a:"), default_answer("Ask b:")]}
    (run,) = runs()
    assert f"(run {run.name})" in err
    assert run.stat().st_mode & 0o777 == 0o700
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "done" and meta["inputs"] == {"qs": ["a", "b"]}
    assert meta["outputs"] == json.loads(out)
    assert len(server.log) == 2

    assert main(["run", str(program), "-i", f"qs={qs}"]) == 0
    _, err = capsys.readouterr()
    assert len(server.log) == 2  # both answered from the cache
    assert "2 from the cache" in err and "$0.0000" in err
    assert main(["run", str(program), "-i", f"qs={qs}", "--no-cache", "-q"]) == 0
    assert len(server.log) == 4


def test_resume_checks_the_run_program_and_inputs(
    program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(program), "--resume", "20990101-000000-0000"]) == 1
    assert "error: no run '20990101-000000-0000'" in capsys.readouterr().err
    assert main(["run", str(program), "-i", 'qs=["a"]', "-q"]) == 0
    (run,) = runs()
    assert main(["run", str(program), "-i", 'qs=["b"]', "--resume", run.name]) == 1
    assert "ran with other inputs; resume without -i" in capsys.readouterr().err
    other = tmp_path / "other.llmflow"
    other.write_text(program.read_text())
    assert main(["run", str(other), "--resume", run.name]) == 1
    assert f"ran {program}, not {other}" in capsys.readouterr().err
    assert main(["run", str(program), "-i", "qs=not json"]) == 1  # no folder for it
    assert runs() == [run]
    assert main(["run", str(program), "--resume", "last", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answers": [default_answer("Ask a:")]}
    assert f"run {run.name} (resumed)" in err


def reservation(question: str) -> float:
    """What a call of PROGRAM reserves: its prompt's bound at $1000/M, 10 tokens at $2000/M."""
    turn = GenerationRequest(model="remote", turns=[Turn(role="user", text=f"Ask {question}:")])
    return (prompt_tokens_at_most(turn) * 1000 + 10 * 2000) / 1e6


def cost(question: str) -> float:
    """What the server bills for it: 4 characters a token, the answer 15 characters."""
    return (
        count_tokens(f"user: Ask {question}:\n") * 1000 + count_tokens("ok:" + "0" * 12) * 2000
    ) / 1e6


def spent_in_trace(run: Path) -> float:
    return sum(json.loads(line)["llmflow.cost_usd"] for line in (run / "trace.jsonl").open())


def test_a_failed_start_leaves_no_folder_and_last_is_still_the_last_good_run(
    program: Path, tmp_path: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(program), "-i", 'qs=["a"]', "-q"]) == 0
    (good,) = runs()
    keyless = tmp_path / "keyless.llmflow"
    keyless.write_text(
        program.read_text().replace(
            "price_out=2000", 'price_out=2000, api_key_env="LLMFLOW_NO_KEY"'
        )
    )
    failed_starts = [
        (program, ["-i", 'qs=["bad \udcff byte"]'], "input 'qs' is not UTF-8 text"),
        (program, ["-i", 'qs=["\\ud800"]'], "input 'qs' expects list[str] written as JSON"),
        (program, ["-i", 'qs=["a"]', "-i", 'qs=["b"]'], "input 'qs' is given twice"),
        (program, ["-i", "qs=[NaN]"], "NaN is not JSON"),
        (keyless, ["-i", 'qs=["a"]'], "set the environment variable LLMFLOW_NO_KEY"),
    ]
    for path, inputs, message in failed_starts:
        assert main(["run", str(path), *inputs]) == 1
        err = capsys.readouterr().err
        assert message in err and "internal error" not in err
        assert runs() == [good]
    assert len(server.log) == 1
    assert main(["trace", "last"]) == 0
    assert capsys.readouterr().out.endswith("1 call\n")
    assert main(["run", str(program), "--resume", "last", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answers": [default_answer("Ask a:")]}
    assert f"run {good.name} (resumed)" in err
    assert len(server.log) == 1  # answered from the journal


def test_the_budget_is_spent_not_left_and_says_what_was_not_run(
    program: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each call reserves ~8x what it costs: calls that do not fit wait for those in
    # flight to settle, so the run stops only when less than one reservation is left.
    qs = [f"q{i:02}" for i in range(30)]
    budget = 2.5 * reservation("q00")
    code = main(["run", str(program), "-i", f"qs={json.dumps(qs)}", "--budget", str(budget)])
    _, err = capsys.readouterr()
    assert code == 1
    assert f"not run: ask: the budget of ${budget:.4f} could not pay for them" in err
    assert "not computed: answers" in err
    (run,) = runs()
    spent = spent_in_trace(run)
    assert budget - reservation("q00") < spent <= budget
    assert len(server.log) == round(spent / cost("q00")) > 2  # not waiting: 2 calls
    meta = json.loads((run / "run.json").read_text())
    assert meta["budget"] == {"limit": budget, "spent": pytest.approx(spent), "unanswered": 0}
    assert f"${spent:.4f} of the ${budget:.4f} budget spent" in err


def test_a_resumed_run_keeps_its_budget_and_what_it_spent(
    program: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    qs = json.dumps([f"q{i}" for i in range(6)])
    budget = reservation("q0") + 1.5 * cost("q0")  # two calls
    assert main(["run", str(program), "-i", f"qs={qs}", "--budget", str(budget), "-q"]) == 1
    assert len(server.log) == 2
    (run,) = runs()

    # No --budget: the same one, and the two answers it paid for count as spent.
    assert main(["run", str(program), "--resume", run.name]) == 1
    _, err = capsys.readouterr()
    assert len(server.log) == 2
    assert (
        f"the budget of ${budget:.4f} could not pay for them (${2 * cost('q0'):.4f} spent)" in err
    )
    assert "remote: 2 calls, 2 from the journal" in err

    # A lower one: still nothing sent.
    assert main(["run", str(program), "--resume", run.name, "--budget", "0.001"]) == 1
    assert "budget: $0.0010 for the whole run from now on instead of" in capsys.readouterr().err
    assert len(server.log) == 2

    # A higher one applies to the whole run: the four left are sent, the total counts.
    assert main(["run", str(program), "--resume", run.name, "--budget", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "budget: $1.0000 for the whole run from now on instead of $0.0010" in err
    assert len(json.loads(out)["answers"]) == 6 and len(server.log) == 6
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "done"
    assert meta["budget"]["limit"] == 1 and meta["budget"]["spent"] == pytest.approx(6 * cost("q0"))
    assert "6 calls in" in err and f"${6 * cost('q0'):.4f} of the $1.0000 budget spent" in err


UNPRICED = """
model mystery = openai_compatible("gpt-9-turbo", base_url="{url}")

fn ask(q: str) -> a: str
\"\"\"Ask {{{{q}}}}: {{{{a | max_tokens=10}}}}\"\"\"

flow main(q: str) -> a: str {{
    a = ask(q)
}}
"""


def test_a_budget_needs_the_price_of_every_model_it_pays_for(
    tmp_path: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "unpriced.llmflow"
    program.write_text(UNPRICED.format(url=server.url))
    for command in (["plan"], ["run", "-i", "q=x"], ["run", "-O0", "-i", "q=x"]):
        assert main([command[0], str(program), *command[1:], "--budget", "1"]) == 1
        err = capsys.readouterr().err
        assert "model 'mystery' (openai_compatible \"gpt-9-turbo\") has no price_in and" in err
        assert "declare price_in and price_out" in err and "internal error" not in err
    assert not (Path(os.environ["LLMFLOW_HOME"]) / "runs").exists() or runs() == []
    assert server.log == []
    assert main(["run", str(program), "-i", "q=x", "-q"]) == 0  # no budget: no price needed


TWO_OUTPUTS = """
model remote = openai_compatible("priced", base_url="{url}", price_in=1, price_out=2)

fn ask(q: str) -> a: str, b: str
\"\"\"Ask {{{{q}}}}: {{{{a | max_tokens=10}}}} And then? {{{{b | max_tokens=10}}}}\"\"\"

flow main(q: str) -> a: str, b: str {{
    a, b = ask(q)
}}
"""


def test_the_summary_counts_calls_not_requests(
    tmp_path: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "two.llmflow"
    program.write_text(TWO_OUTPUTS.format(url=server.url))
    assert main(["run", str(program), "-i", "q=x"]) == 0
    assert len(server.log) == 2  # one request per output
    err = capsys.readouterr().err
    assert "remote: 1 call, " in err and "\n1 call in " in err
    assert main(["run", str(program), "-i", "q=x", "--json", "--stats"]) == 0
    out, err = capsys.readouterr()
    assert len(server.log) == 2
    assert "remote: 1 call, 1 from the cache, " in err and "\n1 call in " in err
    stats = json.loads(out)["stats"]["remote"]
    assert (stats["calls"], stats["cache_hits"], stats["journal_hits"]) == (1, 1, 0)


SAMPLED = """
model remote = openai_compatible("priced", base_url="{url}", price_in=0, price_out=0)

fn ask(q: str) -> a: str
\"\"\"Ask {{{{q}}}}: {{{{a | max_tokens=10, temperature=0.9}}}}\"\"\"

flow main(qs: list[str]) -> answers: list[str] {{
    answers = map q in qs: ask(q)
}}
"""


def test_the_run_seed_is_kept_in_run_json_and_resume_reuses_it(
    tmp_path: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "sampled.llmflow"
    program.write_text(SAMPLED.format(url=server.url))
    qs = 'qs=["a", "a", "a"]'
    assert main(["run", str(program), "-i", qs, "-q"]) == 0  # a seed drawn at random
    assert main(["run", str(program), "-i", qs, "-q", "--seed", "42"]) == 0
    records = [json.loads((run / "run.json").read_text()) for run in runs()]
    assert sorted((r["seed"] == 42, r["seed_chosen"]) for r in records) == [
        (False, False),
        (True, True),
    ]  # a chosen seed's sampled answers may be cached; a drawn one's are not
    seeds = {record["seed"]: run for record, run in zip(records, runs(), strict=True)}
    assert 42 in seeds and len(seeds) == 2
    chosen = seeds.pop(42)
    ((seed, drawn),) = seeds.items()
    assert isinstance(seed, int) and 0 <= seed < 2**31
    sent = [entry["seed"] for entry in server.log]
    assert len(set(sent)) == 6  # three samples per run, each its own seed
    # Resumed, a run sends the same requests (same seeds): its journal answers them all.
    assert main(["run", str(program), "--resume", drawn.name, "-q"]) == 0
    assert main(["run", str(program), "--resume", chosen.name, "-q", "--seed", "42"]) == 0
    assert len(server.log) == 6
    assert main(["run", str(program), "--resume", chosen.name, "--seed", "43"]) == 1
    assert f"run {chosen.name} ran with seed 42; resume without --seed" in capsys.readouterr().err
    for bad in ("-1", "x", "1.5", str(2**63)):
        with pytest.raises(SystemExit) as usage:
            main(["run", str(program), "-i", qs, "--seed", bad])
        assert usage.value.code == 2
    assert "--seed: expected an integer from 0 to" in capsys.readouterr().err


@pytest.mark.graphviz("neato")
def test_trace_lists_prints_and_draws_a_run(
    program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(program), "-i", 'qs=["a", "b", "c"]', "-q"]) == 0
    (run,) = runs()
    assert main(["trace", run.name]) == 0
    out = capsys.readouterr().out
    assert out.count("ask on remote") == 3 and out.endswith("3 calls\n")
    assert main(["trace", str(run), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["gen_ai.request.model"] for r in records} == {"priced"}
    assert all(r["llmflow.cost_usd"] > 0 for r in records)
    svg = tmp_path / "timeline.svg"
    assert main(["trace", run.name, "-o", str(svg)]) == 0
    assert "<svg" in svg.read_text() and "remote" in svg.read_text()
    assert main(["trace", run.name, "-o", str(tmp_path / "t.gif")]) == 1
    assert "must end in .svg" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_line_on_a_terminal_and_silent_otherwise(compile_source) -> None:
    plan = compile_source(PROGRAM.format(url="http://127.0.0.1:9/v1"))
    (node,) = plan.calls()
    stats = CallStats(function="ask", model="remote", dollars=0.25)
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = _Progress(plan, quiet=False, stream=stream)
        progress("start", node, {"model": "remote"})
        progress("done", node, {"stats": stats})
    assert "\r[" in terminal.getvalue() and "1/4 calls  $0.2500" in terminal.getvalue()
    assert pipe.getvalue() == ""


# ---- what a run folder, a journal or a cache may hold ------------------------------------


def test_resume_skips_unreadable_journal_lines_and_says_so_once(
    program: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    qs = json.dumps(["a", "b", "c"])
    assert main(["run", str(program), "-i", f"qs={qs}", "--no-cache", "-q"]) == 0
    (run,) = runs()
    lines = (run / "journal.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 3 and len(server.log) == 3
    torn_answer = json.loads(lines[1])["generation"]["text"]  # answers land in any order
    torn = lines[1][: len(lines[1]) // 2]
    (run / "journal.jsonl").write_bytes(lines[0] + b"123\n" + lines[2] + torn)
    capsys.readouterr()
    assert main(["run", str(program), "--resume", "last", "--no-cache", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answers": [default_answer(f"Ask {q}:") for q in "abc"]}
    assert err.count("2 unreadable journal lines skipped") == 1
    assert len(server.log) == 4  # only the torn answer was asked again
    entries = (run / "journal.jsonl").read_bytes().splitlines()
    assert json.loads(entries[-1])["generation"]["text"] == torn_answer


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff")


def _wrong_shape(path: Path) -> None:
    path.write_text(json.dumps({"program": 1}))


def _folder(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("run.json", _garbage, "not a run record: not UTF-8"),
        ("run.json", _wrong_shape, "not a run record: 'flow' is missing"),
        ("run.json", _folder, "is a directory, not a file"),
        ("journal.jsonl", _folder, "is a directory, not a file"),
        ("trace.jsonl", _folder, "is a directory, not a file"),
    ],
)
def test_a_damaged_run_folder_is_an_error_naming_the_file(
    program: Path, capsys: pytest.CaptureFixture[str], name: str, damage, message: str
) -> None:
    assert main(["run", str(program), "-i", 'qs=["a"]', "-q"]) == 0
    (run,) = runs()
    damage(run / name)
    capsys.readouterr()
    for command in (["run", str(program), "--resume", "last"], ["trace", "last"]):
        if name == "journal.jsonl" and command[0] == "trace":
            continue  # the trace does not read the journal
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run / name}") and message in err, err
        assert err.count("\n") == 1 and "internal error" not in err


@pytest.mark.parametrize("damage", [_garbage, _folder])
def test_a_damaged_cache_is_reported_once_and_the_run_goes_on(
    program: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str], damage
) -> None:
    qs = json.dumps(["a", "b"])
    assert main(["run", str(program), "-i", f"qs={qs}", "-q"]) == 0
    db = Path(os.environ["LLMFLOW_HOME"]) / "cache" / "cache.db"
    for side in db.parent.glob("cache.db-*"):
        side.unlink()
    damage(db)
    capsys.readouterr()
    assert main(["run", str(program), "-i", f"qs={qs}", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answers": [default_answer("Ask a:"), default_answer("Ask b:")]}
    assert err.count("warning: response cache unusable, running without it") == 1, err
    assert len(server.log) == 4
    assert json.loads((runs()[-1] / "run.json").read_text())["status"] == "done"


def test_an_existing_home_keeps_its_mode_and_everything_else_is_owner_only(
    program: Path, llmflow_home: Path
) -> None:
    llmflow_home.chmod(0o751)
    assert main(["run", str(program), "-i", 'qs=["a"]', "-q"]) == 0
    assert llmflow_home.stat().st_mode & 0o777 == 0o751
    made = list(llmflow_home.rglob("*"))
    assert {p.name for p in made if p.is_file()} >= {"run.json", "journal.jsonl", "cache.db"}
    for path in made:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


def test_a_home_that_is_not_a_folder_is_an_error(
    program: Path, llmflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    llmflow_home.rmdir()
    llmflow_home.write_text("")
    assert main(["run", str(program), "-i", 'qs=["a"]']) == 1
    assert capsys.readouterr().err.startswith(f"error: {llmflow_home} is not a folder")


RAISING = """
extern fn boom(text: str) -> str = "{module}:boom"
flow main(text: str) -> out: str {{ out = boom(text) }}
"""


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "SystemExit", "Odd", "RecursionError"])
def test_whatever_ends_a_run_its_record_does_not_say_running(tmp_path: Path, raised: str) -> None:
    module = f"boom_{raised.lower()}"
    (tmp_path / f"{module}.py").write_text(
        "class Odd(BaseException):\n"
        '    """Neither an Exception nor an interrupt."""\n\n\n'
        f"def boom(text):\n    raise {raised}()\n"
    )
    path = tmp_path / "boom.llmflow"
    path.write_text(RAISING.format(module=module))
    args = ["run", str(path), "-i", "text=x", "-q"]
    if raised == "KeyboardInterrupt":
        assert main(args) == 130
    elif raised == "RecursionError":  # an Exception in an extern fails its node
        assert main(args) == 1
    else:
        with pytest.raises(BaseException) as caught:
            main(args)
        assert type(caught.value).__name__ == raised
    (run,) = runs()
    status = json.loads((run / "run.json").read_text())["status"]
    assert status == ("failed" if raised == "RecursionError" else "stopped")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_terminated_run_is_recorded_as_stopped_and_resumes(
    tmp_path: Path, llmflow_home: Path, signum: int, code: int
) -> None:
    # 24 calls, two at a time, 0.4 s each: the signal lands seconds before the run could
    # end, even on a loaded machine.
    qs = json.dumps([f"q{i}" for i in range(24)])
    with start_server(latency=0.4) as slow:
        path = tmp_path / "slow.llmflow"
        path.write_text(PROGRAM.format(url=slow.url).replace("price_in", "concurrency=2, price_in"))
        env = {**os.environ, "LLMFLOW_HOME": str(llmflow_home)}
        command = [sys.executable, "-m", "llmflow.cli", "run", str(path), "--json", "--no-cache"]
        first = subprocess.Popen(
            [*command, "-i", f"qs={qs}"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            # A shell without job control starts background jobs with SIGINT ignored, and
            # the child would inherit that: give it the default, as a terminal would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while not [r for r in slow.log if r["status"] == 200]:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        first.send_signal(signum)
        _, err = first.communicate(timeout=60)
        assert first.returncode == code, err
        (run,) = runs()
        assert (
            f"to resume, keeping the finished calls: llmflow run {path} --resume {run.name}" in err
        )
        assert json.loads((run / "run.json").read_text())["status"] == "stopped"
        assert "Traceback" not in err

        second = subprocess.run(
            [*command, "--resume", run.name], env=env, capture_output=True, text=True, timeout=60
        )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["answers"][23] == default_answer("Ask q23:")
    assert json.loads((run / "run.json").read_text())["status"] == "done"

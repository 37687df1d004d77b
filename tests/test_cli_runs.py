"""What `llmflow run` leaves behind and reads back: run folders, the response cache,
`--resume` checks, `--budget` at run time, `llmflow trace`, the progress line. Against
the loopback test server; no model runs here."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmflow.cli import _Progress, main
from llmflow.runtime.calls import CallStats
from llmflow.runtime.testing.server import ServerHandle, default_answer, start_server

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


def test_the_budget_stops_sending_and_says_what_was_not_run(
    program: Path, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each call reserves ~(5 prompt + 10 output tokens) at $1000/$2000 per 1M: ~$0.027.
    qs = json.dumps([f"q{i}" for i in range(6)])
    code = main(["run", str(program), "-i", f"qs={qs}", "--budget", "0.06", "--no-cache"])
    _, err = capsys.readouterr()
    assert code == 1
    assert 1 <= len(server.log) <= 2
    assert "not run: ask: the budget of $0.0600 could not pay for them" in err
    assert "not computed: answers" in err
    spent = sum(json.loads(line)["llmflow.cost_usd"] for line in (runs()[0] / "trace.jsonl").open())
    assert 0 < spent <= 0.06


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
    seeds = {json.loads((run / "run.json").read_text())["seed"]: run for run in runs()}
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

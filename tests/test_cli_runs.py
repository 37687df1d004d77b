"""What `llmflow run` leaves behind and reads back: run folders, the response cache,
`--resume` checks, `--budget` at run time, `llmflow trace`, the progress line. Against
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
    torn = lines[1][: len(lines[1]) // 2]
    (run / "journal.jsonl").write_bytes(lines[0] + b"123\n" + lines[2] + torn)
    capsys.readouterr()
    assert main(["run", str(program), "--resume", "last", "--no-cache", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answers": [default_answer(f"Ask {q}:") for q in "abc"]}
    assert err.count("2 unreadable journal lines skipped") == 1
    assert len(server.log) == 4  # only the torn answer was asked again
    entries = (run / "journal.jsonl").read_bytes().splitlines()
    assert json.loads(entries[-1])["generation"]["text"] == default_answer("Ask b:")


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
    qs = json.dumps([f"q{i}" for i in range(12)])
    with start_server(latency=0.4) as slow:
        path = tmp_path / "slow.llmflow"
        path.write_text(PROGRAM.format(url=slow.url).replace("price_in", "concurrency=2, price_in"))
        env = {**os.environ, "LLMFLOW_HOME": str(llmflow_home)}
        command = [sys.executable, "-m", "llmflow.cli", "run", str(path), "--json", "--no-cache"]
        first = subprocess.Popen(
            [*command, "-i", f"qs={qs}"], env=env, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while not [r for r in slow.log if r["status"] == 200]:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        first.send_signal(signum)
        _, err = first.communicate(timeout=60)
        assert first.returncode == code, err
        (run,) = runs()
        assert f"resume: llmflow run {path} --resume {run.name}" in err
        assert json.loads((run / "run.json").read_text())["status"] == "stopped"
        assert "Traceback" not in err

        second = subprocess.run(
            [*command, "--resume", run.name], env=env, capture_output=True, text=True, timeout=60
        )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["answers"][11] == default_answer("Ask q11:")
    assert json.loads((run / "run.json").read_text())["status"] == "done"

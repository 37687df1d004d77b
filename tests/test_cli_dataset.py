"""`llmflow run PROGRAM --inputs ROWS --output RESULTS`: one line per row, resumable.

Through the real CLI: rows written once; a failing row keeps its error and the exit status
says so; resume skips what was written, `--retry-failed` reruns failures, a torn last line
is redone; a changed program or changed rows are refused unless `--force`; a run killed
with SIGKILL resumes without losing or duplicating a row and without asking a finished
call again (counted at a real HTTP server's log)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmflow.cli import main
from llmflow.runtime.testing.server import ServerHandle, default_answer, start_server

PROGRAM = """
model m = scripted("m", reply="hi")

fn greet(name: str, style: str) -> greeting: str
\"\"\"Greet {{name}} in a {{style}} way: {{greeting}}\"\"\"

flow main(name: str, style: str = "warm") -> greeting: str {
    greeting = greet(name, style)
}
"""


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.llmflow").write_text(PROGRAM)
    return tmp_path


def write_rows(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(*args: str) -> int:
    return main(["run", "prog.llmflow", "-q", *args])


def test_each_row_is_one_line_and_a_bad_row_does_not_stop_the_others(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_rows(work / "rows.jsonl", [{"name": "Ada"}, {"nom": "Bob"}, "{not json", {"name": "Cy"}])
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 1
    out = {r["id"]: r for r in lines(work / "out.jsonl")}
    assert sorted(out) == [1, 2, 3, 4]
    assert out[1]["outputs"] == {"greeting": "hi"} and out[1]["error"] is None
    assert out[1]["stats"]["calls"] == 1 and out[1]["stats"]["seconds"] >= 0
    assert out[2]["error"].startswith("rows.jsonl:2: missing input 'name'")
    assert out[3]["error"].startswith("rows.jsonl:3: not JSON at column 2")
    err = capsys.readouterr().err
    assert "2 rows failed" in err and "--retry-failed" in err and "Traceback" not in err


def test_running_again_skips_rows_written_and_new_rows_run(work: Path) -> None:
    rows = work / "rows.jsonl"
    write_rows(rows, [{"name": "Ada"}, {"name": "Bob"}])
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 0
    first = (work / "out.jsonl").read_text()
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 0
    assert (work / "out.jsonl").read_text() == first  # nothing run twice
    write_rows(rows, [{"name": "Ada"}, {"name": "Bob"}, {"name": "Cy"}])  # appended
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 0
    assert [r["id"] for r in lines(work / "out.jsonl")] == [1, 2, 3] or sorted(
        r["id"] for r in lines(work / "out.jsonl")
    ) == [1, 2, 3]
    (run_dir,) = (Path(os.environ["LLMFLOW_HOME"]) / "runs").iterdir()  # one run, resumed
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "done" and meta["dataset"]["rows"] == 3


def test_retry_failed_runs_the_failed_rows_again_and_keeps_one_line_each(work: Path) -> None:
    rows = work / "rows.jsonl"
    write_rows(rows, [{"name": "Ada"}, {"nom": "Bob"}])
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 1
    write_rows(rows, [{"name": "Ada"}, {"name": "Bob"}])  # the bad row fixed
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 1  # still failed: kept
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl", "--retry-failed") == 0
    out = lines(work / "out.jsonl")
    assert sorted(r["id"] for r in out) == [1, 2] and all(r["error"] is None for r in out)


def test_a_changed_program_or_changed_row_is_refused_unless_forced(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = work / "rows.jsonl"
    write_rows(rows, [{"name": "Ada"}, {"name": "Bob"}])
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 0
    capsys.readouterr()
    write_rows(rows, [{"name": "Ada"}, {"name": "Robert"}])
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 1
    err = capsys.readouterr().err
    assert "rows.jsonl:2" not in err or "row 2" in err
    assert "other inputs than when it was written" in err and "--force" in err
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl", "--force") == 0
    write_rows(rows, [{"name": "Ada"}, {"name": "Bob"}])
    (work / "prog.llmflow").write_text(PROGRAM.replace("Greet", "Welcome"))
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 1
    assert "another program or plan" in capsys.readouterr().err
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl", "-i", "style=cold") == 1
    assert "other -i inputs" in capsys.readouterr().err
    assert len(lines(work / "out.jsonl")) == 2  # nothing lost


def test_a_torn_last_line_is_dropped_and_its_row_runs_again(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_rows(work / "rows.jsonl", [{"name": "Ada"}, {"name": "Bob"}, {"name": "Cy"}])
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl", "--limit", "2") == 0
    out = work / "out.jsonl"
    text = out.read_text()
    last = text.splitlines()[-1]
    out.write_text(text[: -len(last) - 1] + last[:20])  # a crash mid-line
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 0
    assert "cut short" in capsys.readouterr().err
    assert sorted(r["id"] for r in lines(out)) == [1, 2, 3]


def test_a_results_file_no_run_wrote_is_refused_unless_forced(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_rows(work / "rows.jsonl", [{"name": "Ada"}])
    write_rows(work / "out.jsonl", [{"id": 9, "outputs": {}, "error": None}])
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl") == 1
    assert "no run" in capsys.readouterr().err
    assert run("--inputs", "rows.jsonl", "--output", "out.jsonl", "--force") == 0
    assert sorted(r["id"] for r in lines(work / "out.jsonl")) == [1, 9]


def test_limit_and_max_failures_stop_early(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rows(work / "rows.jsonl", [{"nom": str(i)} for i in range(30)])
    assert run("--inputs", "rows.jsonl", "--output", "a.jsonl", "--limit", "3") == 1
    assert len(lines(work / "a.jsonl")) == 3
    capsys.readouterr()
    assert (
        run("--inputs", "rows.jsonl", "--output", "b.jsonl", "--max-failures", "2",
            "--rows-in-flight", "1")
        == 1
    )  # fmt: skip
    assert len(lines(work / "b.jsonl")) == 2
    assert "stopped: 2 rows failed (--max-failures)" in capsys.readouterr().err


def test_csv_with_a_column_map_an_id_column_and_constants(work: Path) -> None:
    (work / "people.csv").write_text("key,who,extra\nk1,Ada,x\nk2,Bob,y\n")
    args = ["--inputs", "people.csv", "--map", "name=who", "--id", "key", "-i", "style=cold"]
    assert run(*args, "--output", "out.jsonl") == 0
    out = {r["id"]: r for r in lines(work / "out.jsonl")}
    assert set(out) == {"k1", "k2"} and out["k1"]["outputs"] == {"greeting": "hi"}


def test_without_output_lines_go_to_stdout(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rows(work / "rows.jsonl", [{"name": "Ada"}])
    assert run("--inputs", "rows.jsonl") == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["outputs"] == {"greeting": "hi"}


def test_dataset_options_need_inputs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("-i", "name=Ada", "--output", "out.jsonl") == 1
    assert "--output is for dataset runs: give --inputs" in capsys.readouterr().err
    assert run("--inputs", "missing.jsonl") == 1
    assert "cannot read missing.jsonl" in capsys.readouterr().err


def test_the_budget_stops_new_rows_and_a_resume_with_more_finishes(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "prog.llmflow").write_text(
        PROGRAM.replace('reply="hi")', 'reply="hi", price_in=10000, price_out=10000)')
    )
    write_rows(work / "rows.jsonl", [{"key": f"k{i:02d}", "name": f"n{i}"} for i in range(20)])
    args = ["--inputs", "rows.jsonl", "--output", "out.jsonl", "--id", "key"]
    assert run(*args, "--budget", "4", "--rows-in-flight", "1") == 1
    err = capsys.readouterr().err
    assert "cannot pay for more rows" in err
    done = lines(work / "out.jsonl")
    assert 0 < len(done) < 20 and all(r["error"] is None for r in done)  # not run: not written
    # The hint is the command as typed (its --id too, or the written rows would look
    # changed), less the old budget: run as printed with a larger one, it finishes.
    hint = err.split("resume with a larger one: ")[1].splitlines()[0]
    assert hint == (
        "llmflow run prog.llmflow -q --inputs rows.jsonl --output out.jsonl --id key "
        "--rows-in-flight 1 --budget USD"
    )
    assert main(shlex.split(hint.replace("USD", "100"))[1:]) == 0
    assert sorted(r["id"] for r in lines(work / "out.jsonl")) == [f"k{i:02d}" for i in range(20)]


def test_rows_from_stdin(work: Path) -> None:
    text = json.dumps({"name": "Ada"}) + "\n" + json.dumps({"name": "Bob"}) + "\n"
    done = subprocess.run(
        [sys.executable, "-m", "llmflow.cli", "run", "prog.llmflow", "--inputs", "-", "-q"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] in ([1, 2], [2, 1])


CHAIN = """
model remote = openai_compatible("slow-model", base_url="{url}", concurrency=4)

fn ask(x: str) -> y: str
\"\"\"Ask {{{{x}}}}: {{{{y}}}}\"\"\"

fn tell(y: str) -> z: str
\"\"\"Tell {{{{y}}}}: {{{{z}}}}\"\"\"

flow main(x: str) -> z: str {{
    z = tell(ask(x))
}}
"""


def finished(server: ServerHandle) -> list[dict]:
    return [r for r in server.log if r["status"] == 200]


def test_a_killed_dataset_run_resumes_losing_and_repeating_nothing(tmp_path: Path) -> None:
    program = tmp_path / "chain.llmflow"
    rows = write_rows(tmp_path / "rows.jsonl", [{"x": f"x{i:02d}"} for i in range(24)])
    out = tmp_path / "out.jsonl"
    env = {**os.environ}
    args = [sys.executable, "-m", "llmflow.cli", "run", str(program), "--inputs", str(rows)]
    args += ["--output", str(out), "--no-cache", "-q", "--rows-in-flight", "4"]
    with start_server(latency=0.15) as server:
        program.write_text(CHAIN.format(url=server.url))
        first = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(finished(server)) < 15:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(0.4)  # let the server log what was in flight
        written = lines(out)
        assert 0 < len(written) < 24
        answered = {r["prompt_sha256"] for r in finished(server)}
        sent_before = len(server.log)
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        again = server.log[sent_before:]

    results = lines(out)
    assert sorted(r["id"] for r in results) == list(range(1, 25))  # none lost, none twice
    assert {r["id"]: r["outputs"]["z"] for r in results} == {
        i + 1: default_answer(f"Tell {default_answer(f'Ask x{i:02d}:')}:") for i in range(24)
    }
    # Asked again: only what the server answered while the killed client waited for it
    # (at most one call per row in flight); every journaled answer was reused.
    repeated = [r for r in again if r["prompt_sha256"] in answered]
    assert len(repeated) <= 4
    assert len(again) == 48 - len(answered) + len(repeated)


SLOW = PROGRAM.replace('reply="hi")', 'reply="hi", delay=0.05)')


def test_ctrl_c_stops_cleanly_and_resume_run_finishes_it(tmp_path: Path) -> None:
    (tmp_path / "prog.llmflow").write_text(SLOW)
    write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(200)])
    args = [sys.executable, "-m", "llmflow.cli", "run", "prog.llmflow", "--inputs", "rows.jsonl"]
    args += ["--output", "out.jsonl", "--rows-in-flight", "2"]
    first = subprocess.Popen(args, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out.jsonl"
    deadline = time.monotonic() + 60
    while not out.exists() or len(out.read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=30)
    assert first.returncode == 130, err
    resume = "resume: llmflow run prog.llmflow --inputs rows.jsonl --output out.jsonl"
    assert f"{resume} --rows-in-flight 2\n" in err
    assert "Traceback" not in err
    (run_dir,) = (Path(os.environ["LLMFLOW_HOME"]) / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    written = len(lines(out))
    assert 0 < written < 200
    second = subprocess.run(
        [sys.executable, "-m", "llmflow.cli", "run", "prog.llmflow", "--resume", run_dir.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    assert f"resumed: {written} rows written before" in second.stderr
    assert sorted(r["id"] for r in lines(out)) == list(range(1, 201))


def test_the_progress_line_counts_rows_rate_spend_and_eta() -> None:
    import io

    from llmflow.cli_dataset import Progress
    from llmflow.runtime.batch import RowResult, RowStats

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress(4, quiet=False, stream=stream)
    progress.add(RowResult(1, 1, "d", {}, stats=RowStats(dollars=0.5)))
    progress.add(RowResult(2, 2, "d", {}, error="boom"))
    line = progress.line(progress.started + 2.0)
    assert line.startswith("[############............] 2/4 rows (1 failed)  1.0 rows/s  $0.5000")
    assert line.endswith("ETA 2s")
    assert "\r" in stream.getvalue()  # drawn live on a terminal
    assert Progress(None, quiet=False, stream=io.StringIO()).live is False


def test_the_plan_digest_is_the_same_in_every_process(work: Path) -> None:
    code = (
        "import llmflow; from llmflow.cli_dataset import plan_digest; "
        "print(plan_digest(llmflow.compile('prog.llmflow')))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=work,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2)
    }
    assert len(digests) == 1

"""The runtime against a misbehaving OpenAI-compatible server (runtime/testing/server.py):
every output right through 429s, 5xx, hangs, dropped connections and broken answers;
declared limits kept, as the server saw it; a killed run resumed without repeating a
finished call; a planted key nowhere in what a run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmflow.cli import main
from llmflow.runtime.testing.server import ServerHandle, default_answer, start_server

RECORD_PROGRAM = """
model fast = openai_compatible("rpm-model", base_url="{url}", supports_schema=true,
                               timeout=1, rpm={rpm}, concurrency=16)
model wide = openai_compatible("tpm-model", base_url="{url}", supports_schema=true,
                               timeout=1, tpm={tpm})

record Fact {{ name: str, count: int }}
record Note {{ about: str }}

@model(fast)
fn describe(q: str) -> fact: Fact
\"\"\"Describe item {{{{q}}}}: {{{{fact | max_tokens=40}}}}\"\"\"

@model(wide)
fn note(q: str, doc: str) -> n: Note
\"\"\"{{{{doc}}}} Note on {{{{q}}}}: {{{{n | max_tokens=10}}}}\"\"\"

flow main(facts_of: list[str], notes_on: list[str], doc: str) -> facts: list[Fact],
                                                                notes: list[Note] {{
    facts = map q in facts_of: describe(q)
    notes = map q in notes_on: note(q, doc)
}}
"""


def write_program(tmp_path: Path, source: str, **values: object) -> Path:
    path = tmp_path / "prog.llmflow"
    path.write_text(source.format(**values))
    return path


def answer_of_first_message(body: dict) -> str:
    """The right answer for the call, also when it is asked again after a bad one."""
    first = body["messages"][0]["content"]
    q = first.split()[-1].rstrip(":")
    if first.startswith("Describe"):
        return json.dumps({"name": f"item {q}", "count": int(q[1:])})
    return json.dumps({"about": q})


def windows_hold(log: list[dict], weight, period: float = 60.0) -> float:
    """The most any `period`-second window of the server's log holds (by arrival)."""
    arrivals = sorted((r["arrival"], weight(r)) for r in log)
    most, start, total = 0.0, 0, 0.0
    for t, w in arrivals:
        total += w
        while arrivals[start][0] <= t - period:
            total -= arrivals[start][1]
            start += 1
        most = max(most, total)
    return most


def test_a_200_call_program_survives_every_kind_of_fault_within_its_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rates = {
        "rate_limit": 0.04,
        "server_error": 0.03,
        "unavailable": 0.03,
        "hang": 0.03,
        "drop": 0.03,
        "malformed": 0.035,
        "invalid_output": 0.005,
    }
    assert sum(rates.values()) == pytest.approx(0.2)
    rpm, tpm = 120, 4_000  # ~180 requests of the first model, ~60 of ~110 tokens of the other
    with start_server(
        retry_after=0.2, hang_seconds=30, seed=7, responder=answer_of_first_message, **rates
    ) as server:
        program = write_program(tmp_path, RECORD_PROGRAM, url=server.url, rpm=rpm, tpm=tpm)
        facts_of = [f"q{i:03d}" for i in range(150)]
        notes_on = [f"n{i:03d}" for i in range(50)]
        args = ["-i", f"facts_of={json.dumps(facts_of)}", "-i", f"notes_on={json.dumps(notes_on)}"]
        args += ["-i", "doc=" + "The lighthouse keeper logs the weather at dawn. " * 8]
        code = main(["run", str(program), *args, "--json", "--no-cache"])
        out, err = capsys.readouterr()
        assert code == 0, err
        log = server.wait_for_log(len(server.log))
    outputs = json.loads(out)
    assert outputs["facts"] == [{"name": f"item {q}", "count": int(q[1:])} for q in facts_of]
    assert outputs["notes"] == [{"about": q} for q in notes_on]
    faults = {r["fault"] for r in log if r["fault"]}
    assert faults == set(rates), faults  # every kind of fault happened, and was survived
    assert len(log) > 200 + 20
    requests = windows_hold([r for r in log if r["model"] == "rpm-model"], lambda r: 1)
    tokens = windows_hold(
        [r for r in log if r["model"] == "tpm-model"],
        lambda r: (r["prompt_tokens"] or 0) + (r["output_tokens"] or 0),
    )
    assert requests <= rpm and tokens <= tpm
    assert requests > 0.9 * rpm and tokens > 0.75 * tpm  # the limits are what held it back
    assert "retried" in err


CHAIN_PROGRAM = """
model remote = openai_compatible("slow-model", base_url="{url}", concurrency=2)

fn step(x: str) -> y: str
\"\"\"Step {{{{x}}}}: {{{{y}}}}\"\"\"

flow main(xs: list[str]) -> ys: list[str] {{
    ys = map x in xs: step(x)
}}
"""


def run_cli(args: list[str], home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LLMFLOW_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "llmflow.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(server: ServerHandle) -> list[dict]:
    return [r for r in server.log if r["status"] == 200]


def test_a_killed_run_resumes_without_sending_a_finished_call_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    xs = [f"x{i:02d}" for i in range(16)]
    with start_server(latency=0.3) as server:
        program = write_program(tmp_path, CHAIN_PROGRAM, url=server.url)
        args = ["run", str(program), "-i", f"xs={json.dumps(xs)}", "--json", "--no-cache"]
        first = run_cli(args, home)
        deadline = time.monotonic() + 30
        while len(finished(server)) < 6:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(0.5)  # let the server log what was in flight
        before = {r["prompt_sha256"] for r in finished(server)}
        (run,) = list((home / "runs").iterdir())
        journaled = len((run / "journal.jsonl").read_text().splitlines())
        assert 6 - 2 <= journaled <= len(before) < len(xs)  # at most 2 were in flight
        sent_before = len(server.log)

        second = run_cli(["run", str(program), "--resume", run.name, "--json", "--no-cache"], home)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        again = server.log[sent_before:]

    assert json.loads(out)["ys"] == [default_answer(f"Step {x}:") for x in xs]
    resent = [r for r in again if r["prompt_sha256"] in before]
    # Only what finished on the server but never reached the killed client is sent again.
    assert len(resent) <= len(before) - journaled <= 2
    assert len(again) == len(xs) - journaled
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "done" and meta["outputs"]["ys"][0] == default_answer("Step x00:")


KEY = "sk-test-PLANTED-9f8e7d6c5b4a39281706"

KEY_PROGRAM = """
model remote = openai_compatible("keyed-model", base_url="{url}", api_key_env="LLMFLOW_TEST_KEY")

fn ask(q: str) -> a: str
\"\"\"Ask {{{{q}}}}: {{{{a}}}}\"\"\"

flow main(q: str) -> a: str {{
    a = ask(q)
}}
"""


def test_a_planted_key_appears_nowhere_a_run_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Path(os.environ["LLMFLOW_HOME"])
    monkeypatch.setenv("LLMFLOW_TEST_KEY", KEY)
    written = ""
    with start_server(api_key=KEY, fail_first=["server_error"]) as server:
        program = write_program(tmp_path, KEY_PROGRAM, url=server.url)
        assert main(["--debug", "run", str(program), "-i", "q=hi"]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == default_answer("Ask hi:")
        written += out + err
    with start_server(api_key="sk-some-other-key-000000000000") as server:  # rejects ours
        program = write_program(tmp_path, KEY_PROGRAM, url=server.url)
        assert main(["--debug", "run", str(program), "-i", "q=again"]) == 1
        out, err = capsys.readouterr()
        assert "401" in err
        written += out + err
    for path in home.rglob("*"):
        if path.is_file():
            written += path.read_bytes().decode("utf-8", "replace")
    assert "retried" in written  # the first run met a 500 and its trace was written
    assert KEY not in written and KEY[8:24] not in written

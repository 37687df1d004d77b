"""Fuzz: mutated programs through `llmflow check` and `llmflow plan --json`.

Each case (see fuzz_mutations.py) is one test, named `sSEED-INDEX-BASE-MUTATIONS`. Both
commands must end with exit 0 or 1, every error positioned (`FILE:line:col: error:` or
`FILE: error:`), never an internal error or a traceback, no diagnostic line longer than
LINE_LIMIT, no key-like string of the program in a diagnostic and no secret of the
environment anywhere, within TIMEOUT seconds a command; a plan printed with exit 0 is
valid JSON. Ordinary programs (10,000-long chains, an example with a BOM) must pass;
programs that can never work (a `base_url` of `ftp://`) must fail.

    LLMFLOW_FUZZ_SEED=7 pytest tests/test_fuzz.py              # another seed (or 1,2,3)
    LLMFLOW_FUZZ_N=3000 pytest tests/test_fuzz.py -x           # more cases a seed
    LLMFLOW_FUZZ_SEED=7 pytest tests/test_fuzz.py -k s7-0042-  # one case again

The commands run in two worker processes (fuzz_worker.py: `check` in one, `plan` in the
other, at the same time) that call `llmflow.cli.main` in-process, so a hang is killed at
its deadline without taking the session down. The ~280 small cases of a run take ~12 s;
the big ones (10,000-deep, 1 MB lines) take the rest.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzz_mutations as fm
import pytest

SEEDS = [int(s) for s in os.environ.get("LLMFLOW_FUZZ_SEED", "1").split(",")]
N = int(os.environ.get("LLMFLOW_FUZZ_N", "300"))
TIMEOUT = float(os.environ.get("LLMFLOW_FUZZ_TIMEOUT", "10"))
"""Seconds a command may take: generous, it catches hangs and quadratic blow-ups."""
WHOLE_BOUND = 60 + N * len(SEEDS) * 0.5
"""Seconds the whole fuzz run may take; cases past it fail rather than run."""
LINE_LIMIT = 4_096
"""No line of a diagnostic may be longer: a very long program line is echoed in part."""
ENV_KEY = "sk-fuzzenv" + "Jq4Rz8Wm2Xt6Yb0Nc"

HEADER = re.compile(r"^(?P<file>\S+?)(?::(?P<line>\d+):(?P<col>\d+))?: (?P<kind>error|warning): \S")
OTHER_LINES = (
    re.compile(r"^ *\d* \|( .*)?$"),  # the source line and its caret
    re.compile(r"^ *= \w+: "),  # hint, note
    re.compile(r"^\d+ files? checked: (no errors|\d+ errors?)$"),
    re.compile(r"^\d+ errors?$"),
    re.compile(r"^$"),
)
GUTTER = OTHER_LINES[0]


class Worker:
    """One `fuzz_worker.py` process; restarted after a hang or a crash."""

    def __init__(self, stray: Path) -> None:
        self.stray = stray
        self.proc: subprocess.Popen[str] | None = None
        self.sent = 0.0

    def _start(self) -> subprocess.Popen[str]:
        env = {  # only what a shell has: the real environment never reaches a failure message
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.stray.parent),
            "LANG": "C.UTF-8",
            "LLMFLOW_HOME": str(self.stray.parent / "home"),
            "OPENAI_API_KEY": ENV_KEY,
            "LLMFLOW_FUZZ_ENV_SECRET": fm.ENV_SECRET,
            "LLMFLOW_FUZZ_STRAY": str(self.stray),
        }
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fuzz_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and json.loads(proc.stdout.readline()) == {"ready": True}
        return proc

    def send(self, argv: list[str], cwd: Path) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n")
        self.proc.stdin.flush()
        self.sent = time.monotonic()

    def receive(self) -> dict[str, Any]:
        """The answer to what was sent, or `{"hang": seconds}` / `{"died": code}`."""
        assert self.proc is not None and self.proc.stdout is not None
        left = TIMEOUT - (time.monotonic() - self.sent)
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
        if not ready:
            self.stop()
            return {"hang": TIMEOUT}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"died": code}
        return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    """Two, so `check` and `plan` of a case run at the same time on two cores."""
    folder = tmp_path_factory.mktemp("fuzz-workers")
    pair = [Worker(folder / "stray-check.log"), Worker(folder / "stray-plan.log")]
    yield pair
    for w in pair:
        w.stop()


@pytest.fixture(scope="module")
def clock() -> dict[str, float]:
    return {"start": time.monotonic()}


def problems(answer: dict[str, Any], command: str, build: fm.Build, program: Path) -> list[str]:
    """What is wrong with one command's answer; empty when it behaved."""
    if "hang" in answer:
        return [f"{command}: no answer within {answer['hang']:g} s (hang or blow-up)"]
    if "died" in answer:
        return [f"{command}: the process died (exit {answer['died']}): a crash below Python"]
    found = []
    out, err = answer["stdout"], answer["stderr"]
    if answer["raised"]:
        found.append(f"{command}: an exception escaped main:\n{answer['raised'][-3000:]}")
    if answer["code"] not in (0, 1):
        found.append(f"{command}: exit {answer['code']!r}, not 0 or 1")
    text_lines = [line for line in err.split("\n") if not GUTTER.match(line)]
    internal = [line for line in text_lines if "internal error" in line]
    if internal:
        found.append(f"{command}: {internal[0][internal[0].index('internal error') :][:300]}")
    shown = "\n".join(text_lines) + out
    if "Traceback (most recent call last)" in shown or "Exception ignored in" in shown:
        found.append(f"{command}: a Python traceback")
    headers = 0
    source_lines = len(re.split(rb"\r\n|\r|\n", build.content()))
    for line in [] if found else text_lines:
        m = HEADER.match(line)
        if m:
            headers += m["kind"] == "error"
            if m["file"] == str(program) and m["line"] and int(m["line"]) > source_lines:
                found.append(f"{command}: error at line {m['line']} of a {source_lines}-line file")
        elif not any(p.match(line) for p in OTHER_LINES):
            found.append(f"{command}: an unpositioned or unexpected stderr line: {line[:300]!r}")
            break
    if answer["code"] == 1 and headers == 0 and not found:
        found.append(f"{command}: exit 1 without a positioned error")
    longest = max(len(line) for line in err.split("\n"))
    if longest > LINE_LIMIT:
        found.append(f"{command}: a stderr line of {longest:,} characters")
    for key in [ENV_KEY, fm.ENV_SECRET]:
        if _shows(key, out + err):
            found.append(f"{command}: a secret of the environment is printed: {key[:6]}…")
    # A key later mutations cut apart (a flipped byte inside it) is no key any more.
    written = build.content()
    if any(_shows(key, err) for key in build.secrets if key.encode() in written):
        found.append(f"{command}: a key-like string of the program is printed in a diagnostic")
    if answer["code"] == 0 and command.startswith("plan"):
        try:
            json.loads(out, parse_constant=_no_constant)
        except ValueError as exc:
            found.append(f"{command}: exit 0 but stdout is not valid JSON: {exc}")
    if answer["code"] == 0 and build.must_fail:
        found.append(f"{command}: a program that can never work is accepted")
    if answer["code"] != 0 and build.must_pass and not found:
        first = err.strip().split("\n")[0][:300]
        found.append(f"{command}: an ordinary program is refused: {first}")
    return found


def _shows(key: str, text: str) -> bool:
    """Any 12 characters of the key's secret part, so a cut or half-masked key counts."""
    body = key.removeprefix("sk-")
    return any(body[i : i + 12] in text for i in range(0, len(body) - 11))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


CASES = [fm.case(seed, index) for seed in SEEDS for index in range(N)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_mutated_program(
    case: fm.Case, workers: list[Worker], clock: dict[str, float], tmp_path: Path
) -> None:
    elapsed = time.monotonic() - clock["start"]
    assert elapsed < WHOLE_BOUND, f"the fuzz run took over {WHOLE_BOUND:g} s; {case.id} not run"
    build = case.build()
    program = fm.write(build, tmp_path / "case")
    commands = (["check", str(program)], ["plan", str(program), "--json"])
    for w, command in zip(workers, commands, strict=True):
        w.send(command, tmp_path)
    found: list[str] = []
    for w, command in zip(workers, commands, strict=True):
        name = " ".join(command[:1] + command[2:])
        found += problems(w.receive(), name, build, program)
    again = f"LLMFLOW_FUZZ_SEED={case.seed} LLMFLOW_FUZZ_N={max(N, case.index + 1)}"
    assert not found, (
        f"fuzz case {case.id}\n"
        f"reproduce: {again} pytest tests/test_fuzz.py -k s{case.seed}-{case.index:04d}-\n"
        f"program: {program}\n" + "\n".join(build.description) + "\n" + "\n".join(found)
    )


def test_a_case_builds_the_same_files_every_time() -> None:
    """The seed in a failure message is enough to rebuild the program."""
    for index in range(40):
        first, again = fm.case(1, index).build(), fm.case(1, index).build()
        assert first.content() == again.content() and first.files == again.files
        assert first.description == again.description


def test_the_oracle_flags_each_kind_of_failure(tmp_path: Path) -> None:
    """`problems` is what makes the fuzz test fail: each failure class it must catch."""
    program = tmp_path / "main.llmflow"
    key = "sk-" + "A1b2" * 10
    build = fm.Build(f"flow main() -> out: str {{\n}}\n# {key}\n", ["base test"], secrets=[key])

    def flagged(stderr: str, code: int = 1, stdout: str = "", **extra: Any) -> str:
        answer = {"code": code, "stdout": stdout, "stderr": stderr, "raised": None, **extra}
        return "\n".join(problems(answer, "plan --json", build, program))

    good = f"{program}:2:1: error: unexpected '}}'\n  |\n2 | }}\n  | ^\n1 file checked: 1 error\n"
    assert flagged(good) == ""
    assert flagged(f"{program}: error: not UTF-8 (byte 7)\n1 file checked: 1 error\n") == ""
    assert "internal error" in flagged("internal error: RecursionError: x\n(run with --debug)\n")
    assert "traceback" in flagged(good + "Traceback (most recent call last):\n  File x\n")
    assert "unpositioned" in flagged("error: no flow 'main' in x\n1 error\n")
    assert "line 9 of a 4-line file" in flagged(good.replace(":2:1:", ":9:1:"))
    assert "characters" in flagged(good.replace("2 | }", "2 | " + "x" * 5_000))
    assert "key-like" in flagged(good.replace("2 | }", "2 | x = sk-" + "A1b2" * 10))
    assert "environment" in flagged(good + f"{program}:1:1: error: {fm.ENV_SECRET}\n")
    assert "exit 2" in flagged(good, code=2)
    assert "without a positioned error" in flagged("1 file checked: 1 error\n")
    assert "escaped main" in flagged("", raised="Traceback ...\nValueError: x\n")
    assert "not valid JSON" in flagged("", code=0, stdout='{"a": NaN}')
    assert "hang" in "\n".join(problems({"hang": 10.0}, "plan --json", build, program))
    build.must_pass = True
    assert "ordinary program is refused" in flagged(good)

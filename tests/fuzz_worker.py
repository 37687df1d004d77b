"""Runs `llmflow.cli.main` in-process for tests/test_fuzz.py, one request at a time.

The fuzz test sends each command line here instead of calling `main` in its own
process: a program that hangs the compiler (or blows its stack) then costs one killed
worker, not the test session, and the time bound is a real kill. Requests and answers are
JSON lines on stdin/stdout; the CLI's own stdout and stderr are captured as a terminal
would encode them (stdout strict UTF-8, stderr with backslash escapes). Memory is capped
so a program that asks for a 10 GB string gets a MemoryError instead of the machine.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

MEMORY_LIMIT = 6 * 1024**3
BLOCKED_MODULES = ("antigravity", "this", "webbrowser")
"""Modules with side effects on import: a mutated `extern` must not reach them."""


class _Stream(io.TextIOWrapper):
    def __init__(self, errors: str) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors=errors, write_through=True)

    def text(self) -> str:
        self.flush()
        buffer = self.buffer
        assert isinstance(buffer, io.BytesIO)
        return buffer.getvalue().decode("utf-8", "replace")


def run(argv: list[str]) -> dict[str, Any]:
    from llmflow.cli import main

    out, err = _Stream("strict"), _Stream("backslashreplace")
    raised = None
    code: Any = None
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:  # noqa: BLE001 - whatever escapes main is the finding
        raised = traceback.format_exc()
    seconds = time.perf_counter() - start
    return {
        "code": code if isinstance(code, int | None) else repr(code),
        "stdout": out.text(),
        "stderr": err.text(),
        "raised": raised,
        "seconds": seconds,
    }


def serve() -> None:
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    stray = open(os.environ.get("LLMFLOW_FUZZ_STRAY", os.devnull), "a")  # noqa: SIM115
    os.dup2(stray.fileno(), 1)  # C-level writes must not corrupt the channel
    faulthandler.enable(stray)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    for name in BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    import llmflow.cli  # noqa: F401 - imported once, before the first deadline

    channel.write(json.dumps({"ready": True}) + "\n")
    channel.flush()
    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request.get("cwd") or Path.cwd())
        answer = run(request["argv"])
        channel.write(json.dumps(answer) + "\n")
        channel.flush()


if __name__ == "__main__":
    serve()

"""The cassette options of `llmflow run` (`llmflow/cli_cassette.py`), on a parser of their
own until the command takes them: which cassette and mode the flags ask for, and what is
reported after a run."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow import cli_cassette
from llmflow.compiler.ir import Plan
from llmflow.runtime.cassette import Cassette, CassetteError
from llmflow.runtime.session import Session

PROGRAM = """
model m = scripted("echo-1")

fn greet(name: str) -> greeting: str
\"\"\"Greet {{name}}.
{{greeting}}\"\"\"

flow main(name: str) -> greeting: str {
    greeting = greet(name)
}
"""


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    cli_cassette.add_options(parser)
    return parser.parse_args(list(argv))


def test_the_flags_choose_file_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    assert cli_cassette.cassette_of(parse()) is None
    assert cli_cassette.sends(None)
    recording = cli_cassette.cassette_of(parse("--cassette", str(path), "--record"))
    assert recording is not None and recording.mode == "record" and recording.sends
    adding = cli_cassette.cassette_of(parse("--cassette", str(path), "--record-missing"))
    assert adding is not None and adding.mode == "new"
    with pytest.raises(CassetteError, match="no cassette here"):
        cli_cassette.cassette_of(parse("--cassette", str(path)))
    with pytest.raises(cli_cassette.CassetteUsage, match="--record records into a cassette"):
        cli_cassette.cassette_of(parse("--record"))
    with pytest.raises(argparse.ArgumentError, match="not allowed with"):
        parse("--cassette", str(path), "--record", "--record-missing")
    default = cli_cassette.cassette_of(parse("--record"), default=path)
    assert default is not None and default.path == path


def test_the_default_cassette_is_beside_the_program() -> None:
    assert cli_cassette.default_path("examples/hello.llmflow") == Path(
        "examples/hello.cassette.json"
    )


def test_the_report_shows_each_miss_with_its_diff(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(PROGRAM)
    path = tmp_path / "c.json"

    async def run(cassette: Cassette, name: str) -> None:
        async with Session(cassette=cassette) as session:
            await session.run(plan, {"name": name})

    recording = Cassette(path, mode="record")
    asyncio.run(run(recording, "Ada"))
    shown = io.StringIO()
    cli_cassette.report(recording, shown)
    assert shown.getvalue() == f"cassette {path}: 1 recorded\n"
    replay = Cassette(path)
    asyncio.run(run(replay, "Bob"))
    shown = io.StringIO()
    cli_cassette.report(replay, shown)
    text = shown.getvalue()
    assert "-Greet Ada.\n+Greet Bob.\n" in text
    assert text.endswith(
        f"cassette {path}: 0 replayed, 1 not recorded (run with --record to record them)\n"
    )

"""`llmflow run PROGRAM --cassette FILE [--record | --record-missing]`: a run answered
from recorded answers (`runtime/cassette.py`) instead of the models, or recorded into
them. The options and the few steps `llmflow run` (and `llmflow test`) take with them,
kept here so the commands stay one line per concern:

    cli_cassette.add_options(run)                       # the parser
    cassette = cli_cassette.cassette_of(args)           # before the run starts
    check_plan(plan, ..., reached=cli_cassette.sends(cassette))
    Session(..., cassette=cassette)
    cli_cassette.report(cassette, sys.stderr)           # after it
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from llmflow.errors import LLMFlowError
from llmflow.runtime.cassette import Cassette, Mode
from llmflow.runtime.secrets import redact

SUFFIX = ".cassette.json"


class CassetteUsage(LLMFlowError):
    """The cassette options given do not go together (a usage error: exit 2)."""


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recorded answers (tests without models)")
    group.add_argument(
        "--cassette",
        metavar="FILE",
        help="answer every call from the answers recorded in FILE, a JSON file to commit "
        "beside the program; a call whose request is not recorded fails, showing what "
        "changed (no model is loaded or asked)",
    )
    modes = group.add_mutually_exclusive_group()
    modes.add_argument(
        "--record",
        action="store_true",
        help="with --cassette: ask the real models and record their answers in FILE, "
        "dropping recordings no call asked for",
    )
    modes.add_argument(
        "--record-missing",
        action="store_true",
        help="with --cassette: replay what FILE has, ask the models only for the rest "
        "and add their answers",
    )


def default_path(program: str | Path) -> Path:
    """The cassette beside a program: `examples/hello.llmflow` has
    `examples/hello.cassette.json` (what `llmflow test` uses when given none)."""
    path = Path(program)
    return path.with_name(path.name.removesuffix(path.suffix) + SUFFIX)


def mode_of(args: argparse.Namespace) -> Mode:
    if getattr(args, "record", False):
        return "record"
    if getattr(args, "record_missing", False):
        return "new"
    return "replay"


def cassette_of(args: argparse.Namespace, default: Path | None = None) -> Cassette | None:
    """The cassette the options ask for (None: none), read (CassetteError: it cannot be,
    with the file's line and column). `default`: the cassette to use when --cassette is
    not given (`llmflow test`: the program's own)."""
    path = getattr(args, "cassette", None) or default
    mode = mode_of(args)
    if path is None:
        if mode != "replay":
            flag = "--record" if mode == "record" else "--record-missing"
            raise CassetteUsage(f"{flag} records into a cassette: give --cassette FILE")
        return None
    return Cassette(path, mode=mode)


def sends(cassette: Cassette | None) -> bool:
    """Whether the run may reach its models (so their keys and addresses are checked)."""
    return cassette is None or cassette.sends


def report(cassette: Cassette | None, stream: TextIO) -> None:
    """Each request the replay could not answer, with its diff, then one line of what the
    cassette did."""
    if cassette is None:
        return
    for miss in cassette.misses:
        stream.write(redact(miss.explain()))
    done = []
    if cassette.replayed or cassette.mode == "replay":
        done.append(f"{cassette.replayed} replayed")
    if cassette.sends:
        done.append(f"{cassette.recorded} recorded")
    if cassette.misses:
        done.append(f"{len(cassette.misses)} not recorded (run with --record to record them)")
    stream.write(f"cassette {cassette.path}: {', '.join(done)}\n")

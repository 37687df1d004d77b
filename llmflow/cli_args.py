"""The value types of command-line options, shared by every command: each turns the
text into a value or says, as argparse shows it, what was expected."""

from __future__ import annotations

import argparse
import math

from llmflow.compiler.check import MAX_SEED


def dollars(text: str) -> float:
    """A `--budget`: a finite amount, zero or more (NaN would compare false with every
    spend and let all of it through)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of dollars: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a budget is a finite amount of $0 or more, not {text}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, not {text!r}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a score is a number from 0 to 1, not {text!r}")
    return value


def add_measured_options(sub: argparse.ArgumentParser) -> None:
    """`--min-quality`, `--profile`, `--no-profile`: how plan, run and eval assign
    models from measurements (read back with `profile_choice`)."""
    sub.add_argument(
        "--min-quality",
        type=float,
        metavar="SCORE",
        help="the cheapest assignment whose measured score (from the profile) reaches this",
    )
    measured = sub.add_mutually_exclusive_group()
    measured.add_argument(
        "--profile",
        metavar="FILE",
        help="assign models from this profile (default: PROGRAM.profile.json if there is one)",
    )
    measured.add_argument(
        "--no-profile",
        action="store_true",
        help="assign models from declared skills only",
    )


def profile_choice(args: argparse.Namespace) -> str | bool:
    """What `llmflow.compile(profile=)` gets from `add_measured_options`' flags."""
    return False if args.no_profile else (args.profile or True)

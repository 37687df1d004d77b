"""What the plan picture and the run timeline share: the palette, the model colours, the
label formatting, and writing a graph to the format a file name asks for."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from pathlib import Path

import graphviz

from llmflow.errors import LLMFlowError
from llmflow.runtime.secrets import clip

FORMATS = ("svg", "png", "pdf", "dot")

PALETTE = (
    "#77AADD",  # light blue
    "#EE8866",  # orange
    "#44BB99",  # mint
    "#EEDD88",  # light yellow
    "#FFAABB",  # pink
    "#99DDFF",  # light cyan
    "#BBCC33",  # pear
    "#AAAA00",  # olive
)
"""Paul Tol's "light" scheme: distinct for the common colour-vision deficiencies and
readable behind black text."""
CRITICAL = "#CC3311"
MUTED = "#777777"
FONT = "Helvetica"


class DrawError(LLMFlowError, ValueError):
    """A picture cannot be drawn as asked (an unknown file format, no Graphviz)."""


def model_colors(declared: Iterable[str]) -> dict[str, str]:
    """A colour per model by declaration order, so both pictures colour a model alike."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(declared)}


def write_graph(dot: graphviz.Digraph, path: Path, what: str, program: str = "dot") -> Path:
    """Write `dot` as the file's suffix asks (.svg .png .pdf .dot); `what` names the
    picture and `program` the Graphviz layout it needs, for the error messages."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise DrawError(
            f"cannot draw {what} as '{path.name}': the file name must end in "
            + ", ".join(f".{f}" for f in FORMATS)
        )
    if fmt == "dot":
        path.write_text(dot.source, encoding="utf-8")
        return path
    try:
        path.write_bytes(dot.pipe(format=fmt))
    except graphviz.ExecutableNotFound as err:
        raise DrawError(
            f"drawing {path.name} needs Graphviz's `{program}` program; install Graphviz, "
            "or write .dot and render it elsewhere"
        ) from err
    return path


def escape(text: object) -> str:
    """Text for an HTML-like label: & < > and quotes escaped, whitespace flattened."""
    return html.escape(" ".join(str(text).split()), quote=True)


def fmt_tokens(n: float) -> str:
    if n < 1000:
        return f"{n:.0f}"
    if n < 10_000:
        return f"{n / 1000:.1f}k"
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.1f}M"


def fmt_dollars(x: float) -> str:
    if x <= 0:
        return "$0"
    if x >= 0.1:
        return f"${x:.2f}"
    decimals = min(8, 1 - math.floor(math.log10(x)))
    return f"${x:.{decimals}f}"


def fmt_seconds(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 600:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"


def shorten(text: str, limit: int) -> str:
    """One line of at most `limit` characters, keys masked before the cut."""
    return clip(" ".join(text.split()), limit)


def font(text: str, size: int | None = None, color: str | None = None) -> str:
    attrs = (f' POINT-SIZE="{size}"' if size else "") + (f' COLOR="{color}"' if color else "")
    return f"<FONT{attrs}>{text}</FONT>" if attrs else text


def darker(color: str, factor: float = 0.6) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#{:02X}{:02X}{:02X}".format(*(round(c * factor) for c in (r, g, b)))

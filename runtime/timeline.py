"""Draw a run's trace as a timeline: when each LLM call ran, on which model, and what went
wrong, so a slow or expensive run can be read at a glance.

What the picture shows:

- one lane (row) per model, in the program's declaration order when `models` is given
  (then each model keeps the colour `compiler/draw.py` gives it in the plan), labelled
  with the backend's model id and the lane's calls and dollars;
- time runs left to right from the first call's start, with a seconds axis and grid;
- each call is a bar from its start to its end in its model's colour, labelled with its
  function when the name fits; the tooltip has the node, tokens, dollars and retries;
- calls that overlap within a lane are stacked in sub-rows, so concurrency is visible;
- a retried call has a dark bold outline and a red tick at each retry; a failed call a
  red outline and a ✗; a cache or journal hit a light bar with a dashed or dotted outline
  (kept a few points wide, so instant hits stay visible); a fallback starts with a dark
  arrowhead and is joined by a dashed arrow to the failed call on the model it replaces;
- the title has the run's totals (calls, wall time, tokens, dollars), and beside them a
  key to the styles the picture uses. Records without start/end times are counted there,
  not drawn; unknown keys are ignored, missing ones count as null or 0.

Boxes are pinned with `pos="x,y!"` (points, `inputscale=72`) and laid out by `neato`; the
graph says `layout=neato`, so its DOT text renders as is with `dot` or `neato`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graphviz

from llmflow.compiler.picture import (
    CRITICAL,
    FONT,
    MUTED,
    darker,
    escape,
    fmt_dollars,
    fmt_seconds,
    fmt_tokens,
    font,
    model_colors,
    shorten,
    write_graph,
)
from llmflow.errors import LLMFlowError
from llmflow.runtime.secrets import redact

RETRIED = "#222222"
FALLBACK = "#444444"
GRID = "#E4E4E4"
BAND = "#F6F6F6"
LABEL_W = 170.0
"""Points left of the time axis for the lane labels."""
MIN_BAR = 4.0
"""Points: an instant call (a cache hit) stays a visible sliver."""


class TraceError(LLMFlowError, ValueError):
    """A trace cannot be read or has nothing to draw."""


def render_timeline(
    records: Iterable[Mapping[str, Any]],
    path: Path | str,
    title: str = "llmflow run",
    models: Sequence[str] = (),
    width: float | None = None,
) -> Path:
    """Draw the timeline into `path`; the suffix picks the format (.svg .png .pdf .dot)."""
    dot = draw_timeline(records, title, models, width)
    return write_graph(dot, Path(path), "a timeline", program="neato")


def draw_timeline(
    records: Iterable[Mapping[str, Any]],
    title: str = "llmflow run",
    models: Sequence[str] = (),
    width: float | None = None,
) -> graphviz.Digraph:
    """The trace as a Graphviz graph (`.source` is its DOT text). `models`: the program's
    models in declaration order (`plan.models`), for the plan's colours and lane order;
    `width`: the time axis in points (by default it grows with the number of calls)."""
    calls, skipped = [], 0
    for record in records:
        call = _Call.of(record)
        skipped += call is None
        if call is not None:
            calls.append(call)
    if not calls:
        why = f" ({skipped} records without start/end times)" if skipped else ""
        raise TraceError(f"nothing to draw: the trace has no calls{why}")
    return _Timeline(calls, title, list(models), width, skipped).draw()


# ---- the records -------------------------------------------------------------------------


def _num(value: object) -> float:
    """A number from a record; absent, null or not a number counts as 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else 0.0


@dataclass(frozen=True)
class _Call:
    """What the picture needs from one record; unknown keys are ignored."""

    node: str
    function: str
    model: str
    backend: str
    start: float
    end: float
    input_tokens: float
    cached_tokens: float
    output_tokens: float
    cost: float
    retries: int
    validation_retries: int
    fallback_from: str | None
    cache_hit: bool
    journal_hit: bool
    error: str | None
    group: str | None
    retry_times: tuple[float, ...]

    @classmethod
    def of(cls, r: Mapping[str, Any]) -> _Call | None:
        """None for a record without numeric start and end (a call that never ran)."""
        start, end = r.get("start"), r.get("end")
        if not all(isinstance(t, int | float) and math.isfinite(t) for t in (start, end)):
            return None
        events = [e for e in r.get("events") or () if isinstance(e, Mapping)]
        fallback = r.get("llmflow.fallback_from") or next(
            (e.get("from") for e in events if e.get("name") == "fallback" and e.get("from")), None
        )
        failed = r.get("llmflow.status") == "error" or bool(r.get("error.type"))
        backend = " · ".join(
            str(r[k]) for k in ("gen_ai.request.model", "gen_ai.provider.name") if r.get(k)
        )
        return cls(
            node=str(r.get("llmflow.node") or "?"),
            function=str(r.get("llmflow.function") or r.get("llmflow.node") or "call"),
            model=str(r.get("llmflow.model") or r.get("gen_ai.request.model") or "?"),
            backend=backend,
            start=float(start),
            end=max(float(start), float(end)),
            input_tokens=_num(r.get("gen_ai.usage.input_tokens")),
            cached_tokens=_num(r.get("gen_ai.usage.cache_read.input_tokens")),
            output_tokens=_num(r.get("gen_ai.usage.output_tokens")),
            cost=_num(r.get("llmflow.cost_usd")),
            retries=int(_num(r.get("llmflow.retries"))),
            validation_retries=int(_num(r.get("llmflow.validation_retries"))),
            fallback_from=str(fallback) if fallback else None,
            cache_hit=bool(r.get("llmflow.cache_hit")),
            journal_hit=bool(r.get("llmflow.journal_hit")),
            error=redact(str(r.get("error.type") or "error")) if failed else None,
            group=str(r["llmflow.group"]) if r.get("llmflow.group") else None,
            retry_times=tuple(
                _num(e["time"]) for e in events if "retry" in str(e.get("name")) and "time" in e
            ),
        )

    @property
    def retried(self) -> bool:
        return self.retries + self.validation_retries > 0 or bool(self.retry_times)

    def tooltip(self, t0: float) -> str:
        lines = [
            f"{self.function} ({self.node}) on {self.model}"
            + (f" [{self.backend}]" if self.backend else ""),
            f"{self.start - t0:.2f} s → {self.end - t0:.2f} s ({self.end - self.start:.2f} s)",
            f"{fmt_tokens(self.input_tokens)} tokens in "
            f"({fmt_tokens(self.cached_tokens)} cached) · "
            f"{fmt_tokens(self.output_tokens)} out · {fmt_dollars(self.cost)}",
        ]
        notes = [
            _plural(self.retries, "retry", "retries"),
            _plural(self.validation_retries, "validation retry", "validation retries"),
            f"fallback from {self.fallback_from}" if self.fallback_from else "",
            "cache hit" if self.cache_hit else "",
            "journal hit" if self.journal_hit else "",
            f"failed: {self.error}" if self.error else "",
            f"group {self.group}" if self.group else "",
        ]
        if any(notes):
            lines.append(" · ".join(n for n in notes if n))
        return "\\n".join(lines)  # DOT's escape for a line break in a tooltip


def _plural(n: int, one: str, many: str) -> str:
    return "" if not n else f"1 {one}" if n == 1 else f"{n} {many}"


# ---- layout helpers ----------------------------------------------------------------------


def _text_width(text: str, size: float) -> float:
    """Roughly how wide `text` is set, in points (generous: a label must fit its bar)."""
    return len(text) * size * 0.62


def _lighter(color: str, amount: float = 0.6) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#{:02X}{:02X}{:02X}".format(*(round(c + (255 - c) * amount) for c in (r, g, b)))


STEPS = (15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 14400, 43200, 86400)


def _tick_step(span: float) -> float:
    """A round step giving four to ten ticks over `span` seconds."""
    if span <= 100:
        base = 10 ** math.floor(math.log10(max(span, 1e-3) / 10))
        return next(base * m for m in (1, 2, 5, 10) if span / (base * m) <= 10)
    return float(next((s for s in STEPS if span / s <= 10), STEPS[-1]))


def _tick_label(t: float, step: float) -> str:
    if step >= 60:
        return f"{t / 3600:g} h" if step >= 3600 else f"{t / 60:g} min"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{t:.{decimals}f} s"


def _pos(x: float, y: float) -> str:
    """A pinned position; `y` grows downwards in the layout, upwards in Graphviz."""
    return f"{x:.1f},{-y:.1f}!"


def _size(points: float) -> str:
    return f"{points / 72:.4f}"


def _point(x: float, y: float) -> dict[str, str]:
    """An invisible anchor for a line."""
    return {"shape": "point", "width": "0", "style": "invis", "pos": _pos(x, y)}


# ---- the drawing -------------------------------------------------------------------------

LAYERS = ("back", "grid", "bars", "marks", "text")
"""Graphviz paints nodes in the order they are declared (bands under grid lines under
bars under retry ticks), then the edges (`outputorder=nodesfirst`): arrows on top."""


@dataclass(frozen=True)
class _Style:
    """A kind of bar: how it is drawn, and its entry in the key."""

    key: str
    style: str = "filled"
    light: bool = False
    outline: str | None = None
    pen: float = 1.0


PLAIN = _Style("call")
RETRIED_STYLE = _Style("retried (red tick: each retry)", outline=RETRIED, pen=2)
FAILED = _Style("failed", outline=CRITICAL, pen=2.5)
CACHE_HIT = _Style("cache hit", "filled,dashed", light=True)
JOURNAL_HIT = _Style("journal hit (resumed run)", "filled,dotted", light=True)


def _styles(call: _Call) -> list[_Style]:
    """The styles a call's bar combines (fill from the first hit, outline from the last)."""
    out = [PLAIN]
    out += [CACHE_HIT] if call.cache_hit else [JOURNAL_HIT] if call.journal_hit else []
    out += [RETRIED_STYLE] if call.retried else []
    out += [FAILED] if call.error else []
    return out


class _Timeline:
    def __init__(
        self,
        calls: list[_Call],
        title: str,
        models: list[str],
        width: float | None,
        skipped: int,
    ) -> None:
        self.calls = sorted(calls, key=lambda c: (c.start, c.end))
        self.title = title
        self.skipped = skipped
        self.t0 = self.calls[0].start
        self.wall = max(c.end for c in self.calls) - self.t0
        self.width = width or min(1400.0, max(640.0, 480 + 2.4 * len(calls)))
        self.span_s = self.wall or 1.0
        """Seconds the axis covers: a run of instant calls still gets a readable axis."""
        self.scale = self.width / self.span_s
        seen = list(dict.fromkeys(c.model for c in self.calls))
        # Declaration order, so a model keeps its plan colour; unknown models after it.
        order = [*models, *sorted(set(seen) - set(models))] if models else seen
        self.colors = model_colors(order)
        self.lanes = [m for m in order if m in seen]
        self.layers: dict[str, list[tuple[str, dict[str, str]]]] = {k: [] for k in LAYERS}
        self.edges: list[tuple[str, str, dict[str, str]]] = []
        self.bars: dict[int, tuple[str, float, float, float]] = {}
        """id(call) → its bar's node, left and right edges and vertical centre."""

    def x(self, t: float) -> float:
        return (t - self.t0) * self.scale

    def span(self, call: _Call) -> tuple[float, float]:
        x0 = self.x(call.start)
        return x0, max(self.x(call.end), x0 + MIN_BAR)

    def rows(self) -> dict[str, list[list[_Call]]]:
        """Each lane's sub-rows: a call goes in the first row free at its start."""
        lanes: dict[str, list[list[_Call]]] = {m: [] for m in self.lanes}
        for call in self.calls:
            x0, _ = self.span(call)
            rows = lanes[call.model]
            row = next((r for r in rows if self.span(r[-1])[1] + 1 <= x0), None)
            if row is None:
                rows.append(row := [])
            row.append(call)
        return lanes

    def node(self, layer: str, name: str, **attrs: str) -> str:
        self.layers[layer].append((name, attrs))
        return name

    def line(self, name: str, a: tuple[float, float], b: tuple[float, float], **attrs: str) -> None:
        self.node("text", f"{name}_a", **_point(*a))
        self.node("text", f"{name}_b", **_point(*b))
        self.edges.append((f"{name}_a", f"{name}_b", attrs))

    def draw(self) -> graphviz.Digraph:
        lanes = self.rows()
        total_rows = sum(len(r) for r in lanes.values())
        row_h = max(5.0, min(18.0, 560 / total_rows))
        gap = max(1.0, row_h / 6)
        labels = len(self.calls) <= 100  # more, and only names that fit whole are shown
        y = 0.0
        for i, model in enumerate(self.lanes):
            rows = lanes[model]
            lane_h = len(rows) * (row_h + gap) - gap + 12
            self._lane(i, model, y, lane_h)
            for r, row in enumerate(rows):
                for call in row:
                    self._bar(call, y + 6 + r * (row_h + gap), row_h, labels)
            y += lane_h
        self._fallbacks()
        self._axis(y)
        dot = graphviz.Digraph(
            name="timeline",
            engine="neato",
            graph_attr={
                "layout": "neato",
                "inputscale": "72",
                "overlap": "true",
                "splines": "line",
                "outputorder": "nodesfirst",
                "fontname": FONT,
                "labelloc": "t",
                "labeljust": "l",
                "label": self._title(),
                "pad": "0.3",
            },
            node_attr={
                "fontname": FONT,
                "fontsize": "9",
                "shape": "box",
                "fixedsize": "true",
                "margin": "0",
            },
            edge_attr={"arrowsize": "0.6", "dir": "none", "color": MUTED},
        )
        for layer in LAYERS:
            for name, attrs in self.layers[layer]:
                dot.node(name, **attrs)
        for src, dst, attrs in self.edges:
            dot.edge(src, dst, **attrs)
        return dot

    # -- lanes and bars

    def _lane(self, i: int, model: str, y: float, h: float) -> None:
        calls = [c for c in self.calls if c.model == model]
        backends = ", ".join(dict.fromkeys(c.backend for c in calls if c.backend))
        usage = f"{len(calls)} call{'s' if len(calls) != 1 else ''}"
        if cost := sum(c.cost for c in calls):
            usage += f" · {fmt_dollars(cost)}"
        rows = [f"<B>{escape(shorten(model, 22))}</B>", font(escape(usage), 8, MUTED)]
        if backends:
            rows.insert(1, font(escape(shorten(backends, 30)), 8, MUTED))
        # The empty first row fixes the text column's width, so every lane's text
        # ends at the same place, next to its colour.
        label = (
            '<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="1">'
            f'<TR><TD WIDTH="{LABEL_W - 16:.0f}" HEIGHT="0"></TD>'
            f'<TD ROWSPAN="{len(rows) + 1}" WIDTH="4"></TD>'
            f'<TD ROWSPAN="{len(rows) + 1}" WIDTH="8" BGCOLOR="{self.colors[model]}"></TD></TR>'
            + "".join(f'<TR><TD ALIGN="RIGHT">{r}</TD></TR>' for r in rows)
            + "</TABLE>>"
        )
        self.node(
            "text",
            f"lane{i}",
            label=label,
            shape="plaintext",
            fixedsize="false",
            fontsize="11",
            pos=_pos(-LABEL_W / 2 - 6, y + h / 2),
        )
        if i % 2 == 0:
            self.node(
                "back",
                f"band{i}",
                label="",
                style="filled",
                fillcolor=BAND,
                color=BAND,
                pos=_pos(self.width / 2, y + h / 2),
                width=_size(self.width + 12),
                height=_size(h),
            )

    def _bar(self, call: _Call, y: float, h: float, truncate: bool) -> None:
        x0, x1 = self.span(call)
        name = f"c{len(self.bars)}"
        self.bars[id(call)] = (name, x0, x1, y + h / 2)
        color = self.colors[call.model]
        styles = _styles(call)
        outline = next((s.outline for s in reversed(styles) if s.outline), darker(color))
        self.node(
            "bars",
            name,
            label=self._bar_label(call, x1 - x0, h, truncate),
            tooltip=call.tooltip(self.t0),
            style=next((s.style for s in styles if s.light), "filled"),
            fillcolor=_lighter(color) if any(s.light for s in styles) else color,
            color=outline,
            penwidth=f"{max(s.pen for s in styles):g}",
            fontcolor=CRITICAL if call.error else "black",
            pos=_pos((x0 + x1) / 2, y + h / 2),
            width=_size(x1 - x0),
            height=_size(h),
        )
        for k, t in enumerate(call.retry_times):
            self.node(
                "marks",
                f"{name}_r{k}",
                label="",
                tooltip=f"retry at {t - self.t0:.2f} s",
                style="filled",
                fillcolor=CRITICAL,
                color=CRITICAL,
                penwidth="0.5",
                pos=_pos(min(max(self.x(t), x0), x1), y + h / 2),
                width=_size(1.5),
                height=_size(h + 6),
            )
        if call.fallback_from:
            side = min(h - 2, 9)
            self.node(
                "marks",
                f"{name}_f",
                label="",
                tooltip=f"fallback from {call.fallback_from}",
                shape="triangle",
                orientation="-90",
                style="filled",
                fillcolor=FALLBACK,
                color=FALLBACK,
                pos=_pos(x0 + side / 2 + 1, y + h / 2),
                width=_size(side),
                height=_size(side),
            )

    @staticmethod
    def _bar_label(call: _Call, w: float, h: float, truncate: bool) -> str:
        """The function's name, when the bar is tall and wide enough for it."""
        if h < 11:
            return ""
        text = ("✗ " if call.error else "") + call.function
        room = w - (16 if call.fallback_from else 6)
        longer = f"{text} ← {call.fallback_from}"
        if call.fallback_from and _text_width(longer, 9) <= room:
            return longer
        if _text_width(text, 9) <= room:
            return text
        chars = int(room / (9 * 0.62))
        return shorten(text, chars) if truncate and chars >= 7 else ""

    def _fallbacks(self) -> None:
        """A dashed arrow from the failed call a fallback replaced, when it is traced."""
        for call in self.calls:
            if not call.fallback_from:
                continue
            before = [
                c
                for c in self.calls
                if c.node == call.node and c.model == call.fallback_from and c.end <= call.start
            ]
            if before:
                _, _, x1, y1 = self.bars[id(max(before, key=lambda c: c.end))]
                name, x0, _, y0 = self.bars[id(call)]
                attrs = {"color": FALLBACK, "style": "dashed", "dir": "forward"}
                self.line(f"{name}_from", (x1, y1), (x0, y0), **attrs)

    # -- axis, key and title

    def _axis(self, bottom: float) -> None:
        step = _tick_step(self.span_s)
        for k in range(int(self.span_s / step + 1e-9) + 1):
            x = k * step * self.scale
            self.node(
                "grid",
                f"grid{k}",
                label="",
                style="filled",
                fillcolor=GRID,
                color=GRID,
                penwidth="0.5",
                pos=_pos(x, bottom / 2),
                width=_size(0.6),
                height=_size(bottom),
            )
            self.node(
                "text",
                f"tick{k}",
                label=_tick_label(k * step, step),
                shape="plaintext",
                fixedsize="false",
                fontcolor=MUTED,
                pos=_pos(x, bottom + 10),
            )
        self.line("axis", (0, bottom), (self.width, bottom))
        self.node(
            "text",
            "axis_title",
            label="time since the first call →",
            shape="plaintext",
            fixedsize="false",
            fontcolor=MUTED,
            pos=_pos(-LABEL_W / 2 - 6, bottom + 10),
        )

    def _key(self) -> list[tuple[str, str]]:
        """(sample cell, text) for each bar style the picture uses."""
        used = {s for c in self.calls for s in _styles(c)}
        sample = self.colors[self.lanes[0]]
        out = []
        for s in (PLAIN, RETRIED_STYLE, CACHE_HIT, JOURNAL_HIT, FAILED):
            if s in used:
                dash = s.style.partition(",")[2]
                out.append(
                    (
                        f'<TD BGCOLOR="{_lighter(sample) if s.light else sample}" '
                        f'BORDER="{round(s.pen)}" COLOR="{s.outline or darker(sample)}"'
                        + (f' STYLE="{dash}"' if dash else "")
                        + ' WIDTH="22" HEIGHT="11" FIXEDSIZE="TRUE"></TD>',
                        s.key,
                    )
                )
        if any(c.fallback_from for c in self.calls):
            out.append(
                (
                    f"<TD>{font('▶', 10, FALLBACK)}</TD>",
                    "fallback (dashed arrow: from the call it replaced)",
                )
            )
        return out

    def _title(self) -> str:
        """The totals on the left; the key on the right, in two columns, as in the plan's
        picture (Graphviz lays the table out, so no text needs measuring)."""
        calls = self.calls
        cost = sum(c.cost for c in calls)
        failed = sum(bool(c.error) for c in calls)
        retries = sum(c.retries + c.validation_retries for c in calls)
        hits = sum(c.cache_hit or c.journal_hit for c in calls)
        busy = sum(c.end - c.start for c in calls)
        head = (
            f"<B>{len(calls)} call{'s' if len(calls) != 1 else ''}</B> · "
            f"<B>{fmt_seconds(self.wall)}</B> wall time · <B>{fmt_dollars(cost)}</B>"
        )
        tokens = (
            f"{fmt_tokens(sum(c.input_tokens for c in calls))} prompt tokens "
            f"({fmt_tokens(sum(c.cached_tokens for c in calls))} cached) · "
            f"{fmt_tokens(sum(c.output_tokens for c in calls))} output tokens · "
            f"{fmt_seconds(busy)} spent in calls"
        )
        notes = [
            f"{failed} failed" if failed else "",
            _plural(retries, "retry", "retries"),
            _plural(hits, "cache/journal hit", "cache/journal hits"),
            f"{self.skipped} records without times not drawn" if self.skipped else "",
        ]
        rows = [
            f'<FONT POINT-SIZE="18"><B>{escape(self.title)}</B></FONT>',
            head + "".join(f" · {n}" for n in notes if n),
            font(tokens, 11, MUTED),
        ]
        key = self._key()
        half = (len(key) + 1) // 2
        columns = [key[:half], key[half:]]
        out = []
        for r, row in enumerate(rows):
            cells = f'<TD ALIGN="LEFT">{row}</TD>'
            for column in columns:
                sample, text = column[r] if r < len(column) else ("<TD></TD>", "")
                text = font(escape(text), 9, "#444444") if text else ""
                cells += f'<TD WIDTH="24"></TD>{sample}<TD ALIGN="LEFT">{text}</TD>'
            out.append(f"<TR>{cells}</TR>")
        out.append('<TR><TD HEIGHT="6"></TD></TR>')  # air above the lanes
        return f'<<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="1">{"".join(out)}</TABLE>>'

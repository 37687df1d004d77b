"""Drawing a run's trace as a timeline: the DOT structure, and real renders by Graphviz."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from llmflow.compiler.picture import CRITICAL, PALETTE, DrawError
from llmflow.runtime.timeline import TraceError, draw_timeline, render_timeline

needs_neato = pytest.mark.graphviz("neato")
T0 = 1764159000.0


def call(node: str, function: str, model: str, start: float, end: float, **more: Any) -> dict:
    """A trace record as the runtime writes it, times relative to T0."""
    return {
        "llmflow.node": node,
        "llmflow.function": function,
        "llmflow.model": model,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": {"big": "gpt-4o", "mini": "gpt-4o-mini"}.get(model, model),
        "start": T0 + start,
        "end": T0 + end,
        "gen_ai.usage.input_tokens": 800,
        "gen_ai.usage.output_tokens": 40,
        "llmflow.cost_usd": 0.001,
        "llmflow.status": "ok",
        **{f"llmflow.{k}" if k != "events" else k: v for k, v in more.items()},
    }


def trace() -> list[dict]:
    """Three models; `answer` and `retrieve` overlap on mini; one of each mark."""
    retry = [{"name": "retry", "time": T0 + 3.0, "reason": "429"}]
    return [
        call("n1", "outline", "big", 0.0, 2.0),
        call("n2", "answer", "mini", 2.0, 5.0, retries=1, events=retry),
        call("n3", "retrieve", "mini", 2.5, 4.0),
        call("n4", "summarize", "mini", 2.6, 2.601, cache_hit=True),
        call("n5", "judge", "big", 2.0, 3.0, status="error") | {"error.type": "RateLimitError"},
        call("n5", "judge", "mini", 5.5, 7.0, fallback_from="big"),
        call("n6", "classify", "local", 7.0, 8.0, journal_hit=True, future_key={"x": 1}),
    ]


def nodes(source: str) -> dict[str, dict[str, str]]:
    """Node name → its attributes (HTML labels kept whole)."""
    out = {}
    for line in source.splitlines():
        m = re.match(r"\t(\w+) \[(.*)\]$", line)
        if m and m.group(1) not in ("graph", "node", "edge"):
            attrs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|<.*?>(?= \w+=|$)|\S+)', m.group(2))
            out[m.group(1)] = {k: v.strip('"') for k, v in attrs}
    return out


def pos(attrs: dict[str, str]) -> tuple[float, float]:
    x, y = attrs["pos"].rstrip("!").split(",")
    return float(x), -float(y)


def bars(found: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Bars by their tooltip's first words (`judge (n5) on big`)."""
    out = {}
    for name, attrs in found.items():
        if re.fullmatch(r"c\d+", name):
            out[attrs["tooltip"].split(" [")[0]] = attrs | {"name": name}
    return out


# ---- the DOT source -----------------------------------------------------------------------


def test_one_lane_per_model_and_one_bar_per_call() -> None:
    source = draw_timeline(trace(), title="triage run").source
    found = nodes(source)
    lanes = [a["label"] for n, a in found.items() if n.startswith("lane")]
    assert len(lanes) == 3
    assert ["big" in lanes[0], "mini" in lanes[1], "local" in lanes[2]] == [True] * 3
    assert "gpt-4o-mini · openai" in lanes[1] and "4 calls" in lanes[1]
    assert len(bars(found)) == 7
    assert "layout=neato" in source and "inputscale=72" in source
    # The title has the run's totals.
    assert "triage run" in source
    assert "<B>7 calls</B>" in source and "8.0 s</B> wall time" in source
    assert "<B>$0.0070</B>" in source and "5.6k prompt tokens" in source
    assert "1 failed" in source and "1 retry" in source and "2 cache/journal hits" in source


def test_bars_span_their_calls_on_a_seconds_axis() -> None:
    found = nodes(draw_timeline(trace(), width=800).source)
    b = bars(found)
    x, _ = pos(b["outline (n1) on big"])
    assert x == pytest.approx(100.0)  # 0–2 s of 8 s over 800 points
    assert float(b["outline (n1) on big"]["width"]) * 72 == pytest.approx(200, abs=0.01)
    ticks = [found[f"tick{k}"]["label"] for k in range(9)]
    assert ticks == [f"{k} s" for k in range(9)]
    assert pos(found["tick8"])[0] == pytest.approx(800.0)


def test_overlapping_calls_stack_in_sub_rows() -> None:
    b = bars(nodes(draw_timeline(trace()).source))
    answer, retrieve = pos(b["answer (n2) on mini"]), pos(b["retrieve (n3) on mini"])
    later = pos(b["judge (n5) on mini"])
    assert answer[1] != retrieve[1]  # they overlap: two rows
    assert later[1] == answer[1]  # it starts after both: back in the first row
    # Lanes do not interleave: every mini bar sits below every big bar.
    assert min(pos(a)[1] for k, a in b.items() if "on mini" in k) > max(
        pos(a)[1] for k, a in b.items() if "on big" in k
    )


def test_retries_hits_failures_and_fallbacks_are_marked() -> None:
    source = draw_timeline(trace()).source
    found = nodes(source)
    b = bars(found)
    retried = b["answer (n2) on mini"]
    assert retried["color"] == "#222222" and retried["penwidth"] == "2"
    tick = found[retried["name"] + "_r0"]
    assert tick["fillcolor"] == CRITICAL
    assert pos(tick)[0] == pytest.approx(pos(b["outline (n1) on big"])[0] * 3)  # at 3 s
    assert b["summarize (n4) on mini"]["style"] == "filled,dashed"
    assert float(b["summarize (n4) on mini"]["width"]) * 72 >= 4  # an instant, still visible
    assert b["classify (n6) on local"]["style"] == "filled,dotted"
    failed = b["judge (n5) on big"]
    assert failed["color"] == CRITICAL and "✗ judge" in failed["label"]
    assert "RateLimitError" in failed["tooltip"]
    fallback = b["judge (n5) on mini"]
    assert found[fallback["name"] + "_f"]["shape"] == "triangle"
    assert "fallback from big" in fallback["tooltip"]
    # A dashed arrow from the end of the failed call to the start of its fallback.
    arrow = re.search(rf"{fallback['name']}_from_a -> {fallback['name']}_from_b \[(.*)\]", source)
    assert arrow and "dashed" in arrow.group(1) and "dir=forward" in arrow.group(1)
    # The key, in the title, lists the styles used.
    title = next(line for line in source.splitlines() if line.startswith("\tgraph ["))
    for text in ("retried (red tick", "cache hit<", "journal hit (", "failed<", "fallback ("):
        assert text in title


def test_a_plain_trace_keys_only_plain_bars() -> None:
    source = draw_timeline([call("n1", "a", "big", 0, 1), call("n2", "b", "big", 1, 2)]).source
    assert "call" in source and "retried" not in source and "cache hit" not in source
    assert CRITICAL not in source


def test_colours_follow_the_programs_declaration_order() -> None:
    b = bars(nodes(draw_timeline(trace(), models=["tiny", "mini", "big"]).source))
    assert b["answer (n2) on mini"]["fillcolor"] == PALETTE[1]
    assert b["outline (n1) on big"]["fillcolor"] == PALETTE[2]
    # Without the program's order: first appearance.
    b = bars(nodes(draw_timeline(trace()).source))
    assert b["outline (n1) on big"]["fillcolor"] == PALETTE[0]


@needs_neato
def test_missing_keys_count_as_nothing(tmp_path: Path) -> None:
    records = [{"start": T0, "end": T0, "llmflow.model": "m"}, {"llmflow.model": "m"}]
    source = draw_timeline(records).source
    assert "<B>1 call</B>" in source and "1 records without times not drawn" in source
    assert "0 prompt tokens" in source
    assert "0 s" in source and "1 s" in source  # an instant run still gets an axis
    texts = render_timeline(records, tmp_path / "run.svg").read_text(encoding="utf-8")
    assert "1 call" in texts


def test_five_hundred_calls_stay_readable() -> None:
    records = [
        call(f"n{i}", "extract_facts", "mini" if i % 3 else "big", i * 0.2, i * 0.2 + 1 + i % 7)
        for i in range(500)
    ]
    found = nodes(draw_timeline(records).source)
    b = [a for n, a in found.items() if re.fullmatch(r"c\d+", n)]
    assert len(b) == 500
    assert max(pos(a)[0] for a in b) <= 1400  # the axis is capped
    assert max(pos(a)[1] for a in b) < 800  # sub-rows shrink rather than grow without end
    assert not any("…" in a.get("label", "") for a in b)  # no clipped names when crowded


def test_an_empty_trace_has_nothing_to_draw(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="nothing to draw: the trace has no calls"):
        render_timeline([], tmp_path / "t.svg")
    assert not (tmp_path / "t.svg").exists()


# ---- files ---------------------------------------------------------------------------------


@needs_neato
def test_svg_renders_with_graphviz(tmp_path: Path) -> None:
    path = render_timeline(trace(), tmp_path / "run.svg", width=800)
    root = ET.parse(path).getroot()
    ns = {"svg": "http://www.w3.org/2000/svg"}
    texts = {"".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"outline", "big", "mini", "local", "0 s", "8 s", "7 calls"} <= texts
    assert "✗ judge" in texts
    # neato kept the pinned boxes: the 2-second bar is 200 points wide.
    for group in root.iterfind(".//svg:g[@class='node']", ns):
        if "outline" in {"".join(t.itertext()) for t in group.iterfind(".//svg:text", ns)}:
            points = group.find(".//svg:polygon", ns).get("points")
            xs = [float(p.split(",")[0]) for p in points.split()]
            assert max(xs) - min(xs) == pytest.approx(200, abs=1)
            break
    else:
        pytest.fail("no bar for outline")


@needs_neato
def test_png_renders_with_graphviz(tmp_path: Path) -> None:
    path = render_timeline(trace(), tmp_path / "run.PNG")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_neato
def test_the_dot_file_renders_by_itself(tmp_path: Path) -> None:
    path = render_timeline(trace(), tmp_path / "run.dot")
    assert path.read_text(encoding="utf-8") == draw_timeline(trace()).source
    svg = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, check=True).stdout
    assert b"retrieve" in svg and b"<svg" in svg


@pytest.mark.parametrize("name", ["run.jpeg", "run", "run.svg.txt"])
def test_an_unknown_suffix_is_an_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DrawError, match=r"\.svg, \.png, \.pdf, \.dot"):
        render_timeline(trace(), tmp_path / name)
    assert not (tmp_path / name).exists()

"""Remote latency: a 3-level fan-out/fan-in against the OpenAI-compatible test server with
200 ms per call, llmflow's makespan beside the critical-path lower bound and beside the
same workflow in LangGraph, in the same run.

    python bench/remote_latency/run.py [--reps 7] [--latency 0.2] [--prefill 0.0002]
                                       [--decode 0.01] [--json out.json]

The program (`program.llmflow`): 32 map calls over 8 groups of 4 parts, one reduce call
per group, one final call. llmflow runs it through `llmflow.api.run_async` (an
`openai_compatible` model, the server's URL in $OPENAI_BASE_URL, no response cache),
optimized (the default) and at -O0. LangGraph runs the same calls as a `StateGraph`
(`Send` per part, a collecting node, `Send` per group, a final node), each node calling
the server with the `openai` SDK's `AsyncOpenAI` directly. All send exactly the same 41
prompts (checked against the server's log), distinct per run.

The server (`python -m llmflow.runtime.testing.server`, its own process) serves every
request in `latency + prefill * prompt tokens + decode * output tokens` seconds, its
prefix cache off so that service times do not depend on arrival order. The lower bound
is the longest chain map → reduce → final of those service times, read from the
server's log. Makespan is the client's wall clock around the whole run (`asyncio.run`,
client creation included); the server's span (first arrival to last reply) is shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import operator
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

import llmflow
from llmflow.runtime.testing.server import default_answer

try:  # pip install -r bench/requirements.txt
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send
    from openai import AsyncOpenAI
except ImportError:
    raise SystemExit("LangGraph is missing: pip install -r bench/requirements.txt") from None

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "program.llmflow"
MODEL = "bench-model"
GROUPS, PER_GROUP = 8, 4
SYSTEMS = ("llmflow", "llmflow -O0", "langgraph")
MAX_TOKENS = 16

# The prompts, as llmflow renders program.llmflow's templates (a chat model gets the text
# before the output as one user turn, stripped); LangGraph's nodes use these too.
MAP = "Run {run}. Summarize this part of the report in one line.\n\n{part}"
REDUCE = "Run {run}. Combine these summaries of one section into one line.\n\n{summaries}"
FINAL = (
    "Run {run}. Write the report's conclusion in one line from these section summaries."
    "\n\n{summaries}"
)


def bullets(texts: list[str]) -> str:
    """A list of strings in a prompt, as llmflow renders it: one `- item` line each."""
    return "\n".join(f"- {t}" for t in texts)


def inputs(run: str) -> dict[str, Any]:
    parts = [
        [
            f"Part {g}.{i} of run {run}: figures for region {g}, quarter {i + 1}."
            for i in range(PER_GROUP)
        ]
        for g in range(GROUPS)
    ]
    return {"run": run, "groups": parts}


def expected_prompts(run: str) -> tuple[dict[str, tuple[str, int]], str]:
    """Every prompt the workflow sends, by the sha256 the server logs (of its text
    `"user: {prompt}\\n"`), as (level, group); and the workflow's answer. The server
    answers each prompt with its `default_answer`."""

    def sha(prompt: str) -> str:
        return hashlib.sha256(f"user: {prompt}\n".encode()).hexdigest()

    out: dict[str, tuple[str, int]] = {}
    sections = []
    for g, parts in enumerate(inputs(run)["groups"]):
        maps = [MAP.format(run=run, part=p) for p in parts]
        out.update({sha(p): ("map", g) for p in maps})
        reduce = REDUCE.format(run=run, summaries=bullets([default_answer(p) for p in maps]))
        out[sha(reduce)] = ("reduce", g)
        sections.append(default_answer(reduce))
    final = FINAL.format(run=run, summaries=bullets(sections))
    out[sha(final)] = ("final", -1)
    return out, default_answer(final)


# -- the server


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    log: Path
    latency: float
    prefill: float
    decode: float

    @classmethod
    def start(cls, latency: float, prefill: float, decode: float, log: Path) -> Server:
        args = ["--latency", str(latency), "--prefill", str(prefill), "--decode", str(decode)]
        cmd = [sys.executable, "-m", "llmflow.runtime.testing.server", *args]
        cmd += ["--cache-blocks", "0", "--log", str(log)]
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            process.kill()
            raise SystemExit(f"the test server did not start: {url!r}")
        return cls(process, url, log, latency, prefill, decode)

    def records(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines]

    def service(self, record: dict[str, Any]) -> float:
        uncached = record["prompt_tokens"] - (record["cached_tokens"] or 0)
        return self.latency + self.prefill * uncached + self.decode * record["output_tokens"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# -- the two systems


async def run_llmflow(plan: Any, run: str) -> str:
    result = await llmflow.run_async(plan, inputs(run))
    assert result.ok, [f.message for f in result.failures]
    return result.outputs["answer"]


class State(TypedDict):
    run: str
    groups: list[list[str]]
    summaries: Annotated[list[tuple[int, int, str]], operator.add]
    sections: Annotated[list[tuple[int, str]], operator.add]
    answer: str


class PartTask(TypedDict):
    run: str
    group: int
    index: int
    part: str


class GroupTask(TypedDict):
    run: str
    group: int
    summaries: list[str]


async def run_langgraph(url: str, run: str) -> str:
    """The same workflow in LangGraph, built and run as its users write it."""
    client = AsyncOpenAI(base_url=url, api_key="no-key")

    async def llm(prompt: str) -> str:
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS,
            temperature=0.0,
        )
        return (response.choices[0].message.content or "").strip()

    def to_parts(state: State) -> list[Send]:
        return [
            Send("summarize_part", PartTask(run=state["run"], group=g, index=i, part=p))
            for g, parts in enumerate(state["groups"])
            for i, p in enumerate(parts)
        ]

    async def summarize_part(task: PartTask) -> dict[str, Any]:
        text = await llm(MAP.format(run=task["run"], part=task["part"]))
        return {"summaries": [(task["group"], task["index"], text)]}

    def collect(state: State) -> dict[str, Any]:
        return {}

    def to_groups(state: State) -> list[Send]:
        by_group: dict[int, list[tuple[int, str]]] = {}
        for g, i, text in state["summaries"]:
            by_group.setdefault(g, []).append((i, text))
        return [
            Send(
                "combine", GroupTask(run=state["run"], group=g, summaries=[t for _, t in sorted(s)])
            )
            for g, s in sorted(by_group.items())
        ]

    async def combine(task: GroupTask) -> dict[str, Any]:
        text = await llm(REDUCE.format(run=task["run"], summaries=bullets(task["summaries"])))
        return {"sections": [(task["group"], text)]}

    async def conclude(state: State) -> dict[str, Any]:
        sections = [text for _, text in sorted(state["sections"])]
        return {"answer": await llm(FINAL.format(run=state["run"], summaries=bullets(sections)))}

    builder = StateGraph(State)
    builder.add_node("summarize_part", summarize_part)
    builder.add_node("collect", collect)
    builder.add_node("combine", combine)
    builder.add_node("conclude", conclude)
    builder.add_conditional_edges(START, to_parts, ["summarize_part"])
    builder.add_edge("summarize_part", "collect")
    builder.add_conditional_edges("collect", to_groups, ["combine"])
    builder.add_edge("combine", "conclude")
    builder.add_edge("conclude", END)
    graph = builder.compile()
    try:
        state = inputs(run) | {"summaries": [], "sections": []}
        out = await graph.ainvoke(state)
    finally:
        await client.close()
    return out["answer"]


# -- measuring


def measure(system: str, server: Server, rep: int) -> dict[str, Any]:
    """One run of one system; llmflow's program is compiled (untimed) with the run's
    inputs, as `llmflow run` does."""
    run = f"{system}-{rep}-{secrets.token_hex(3)}"
    plan = None
    if system.startswith("llmflow"):
        plan = llmflow.compile(PROGRAM, inputs=inputs(run), optimize=system == "llmflow")
    before = len(server.records())
    start, clock = time.perf_counter(), time.time()
    if plan is not None:
        answer = asyncio.run(run_llmflow(plan, run))
    else:
        answer = asyncio.run(run_langgraph(server.url, run))
    seconds = time.perf_counter() - start
    ended = clock + seconds
    records = server.records()[before:]
    expected, expected_answer = expected_prompts(run)
    levels = [expected.get(r["prompt_sha256"]) for r in records]
    if None in levels or len(records) != len(expected) or answer != expected_answer:
        raise SystemExit(f"{system} did not send the workflow's prompts ({len(records)} sent)")
    by = {level: r for level, r in zip(levels, records, strict=True) if level}
    final = by[("final", -1)]
    maps = [(lv, r) for lv, r in zip(levels, records, strict=True) if lv and lv[0] == "map"]
    chains = [
        max(server.service(r) for lv, r in maps if lv[1] == g) + server.service(by[("reduce", g)])
        for g in range(GROUPS)
    ]
    bound = max(chains) + server.service(final)
    # How long each reduce waited after its last map was answered, and the final after
    # the last reduce: the runtime's reaction time (and LangGraph's superstep barrier).
    waits = [
        by[("reduce", g)]["arrival"] - max(r["finish"] for lv, r in maps if lv[1] == g)
        for g in range(GROUPS)
    ]
    final_wait = final["arrival"] - max(by[("reduce", g)]["finish"] for g in range(GROUPS))
    return {
        "system": system,
        "rep": rep,
        "seconds": seconds,
        "bound": bound,
        "server_span": max(r["finish"] for r in records) - min(r["arrival"] for r in records),
        "first_request": min(r["arrival"] for r in records) - clock,
        "after_last_reply": ended - max(r["finish"] for r in records),
        "reduce_wait_max": max(waits),
        "final_wait": final_wait,
        "prefix_groups": len(plan.groups) if plan else None,
    }


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| system | makespan, median (min–max) | lower bound | makespan / bound "
        "| server span | span / bound | first request | after last reply "
        "| reduce waits (max) | final wait |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in SYSTEMS:
        mine = [r for r in rows if r["system"] == system]
        runs = [r["seconds"] for r in mine]
        med = statistics.median(runs)
        bound = statistics.median(r["bound"] for r in mine)
        ratios = [r["seconds"] / r["bound"] for r in mine]
        spans = [r["server_span"] / r["bound"] for r in mine]

        def ms(key: str, rs: list[dict[str, Any]] = mine) -> str:
            return f"{statistics.median(r[key] for r in rs) * 1e3:.0f} ms"

        lines.append(
            f"| {system} | {med * 1e3:.0f} ms ({min(runs) * 1e3:.0f}–{max(runs) * 1e3:.0f}) "
            f"| {bound * 1e3:.0f} ms | {statistics.median(ratios):.3f}x "
            f"| {ms('server_span')} | {statistics.median(spans):.3f}x "
            f"| {ms('first_request')} | {ms('after_last_reply')} "
            f"| {ms('reduce_wait_max')} | {ms('final_wait')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per call")
    parser.add_argument("--prefill", type=float, default=0.0002, help="seconds per prompt token")
    parser.add_argument("--decode", type=float, default=0.01, help="seconds per output token")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    print(machine_line() + " (at the start)", flush=True)
    with tempfile.TemporaryDirectory(prefix="llmflow-remote-") as tmp:
        server = Server.start(args.latency, args.prefill, args.decode, Path(tmp) / "log.jsonl")
        os.environ["OPENAI_BASE_URL"] = server.url
        try:
            rows = []
            for rep in range(-1, args.reps):  # rep -1 warms all up (imports, clients)
                order = SYSTEMS[rep % len(SYSTEMS) :] + SYSTEMS[: rep % len(SYSTEMS)]
                for system in order:
                    row = measure(system, server, rep)
                    print(json.dumps(row), file=sys.stderr)
                    if rep >= 0:
                        rows.append(row)
        finally:
            server.stop()
    print(machine_line() + " (at the end)\n")
    print(table(rows))
    print(
        f"\n{args.reps} runs each, alternating; server: {args.latency * 1e3:.0f} ms per call "
        f"+ {args.prefill * 1e3:g} ms per prompt token + {args.decode * 1e3:g} ms per output "
        "token, prefix cache off"
    )
    groups = {r["prefix_groups"] for r in rows if r["system"] == "llmflow"}
    print(f"prefix groups in llmflow's (-O1) plans: {', '.join(map(str, sorted(groups)))}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Remote latency: a 3-level fan-out/fan-in against the OpenAI-compatible test server with
200 ms per call, llmflow's makespan beside the critical-path lower bound and beside the
same workflow in LangGraph, in the same run.

    python bench/remote_latency/run.py [--reps 7] [--latency 0.2] [--prefill 0.0002]
                                       [--decode 0.01] [--json out.json] [--floors]

The program (`program.llmflow`): 32 map calls over 8 groups of 4 parts, one reduce call
per group, one final call. llmflow runs it through `llmflow.api.run_async` (an
`openai_compatible` model, the server's URL in $OPENAI_BASE_URL, no response cache),
optimized (the default) and at -O0. LangGraph runs the same calls as a `StateGraph`
(`Send` per part, a collecting node, `Send` per group, a final node), each node calling
the server with the `openai` SDK's `AsyncOpenAI` directly. All send exactly the same 41
prompts (checked against the server's log), distinct per run.

`--floors` adds the same workflow (each reduce as soon as its group is in) with no
runtime at all, each a floor for what a client on this machine can do: `sdk floor` calls
the server as llmflow's backend does (`AsyncOpenAI.post`, the answer read as JSON),
`httpx floor` with the SDK's HTTP client alone (`openai.DefaultAsyncHttpxClient`),
`socket floor` with hand-written HTTP/1.1 on asyncio streams (keep-alive connections).

The server (`python -m llmflow.runtime.testing.server`, its own process) serves every
request in `latency + prefill * prompt tokens + decode * output tokens` seconds, its
prefix cache off so that service times do not depend on arrival order. The lower bound
is the longest chain map → reduce → final of those service times, read from the
server's log. Makespan is the client's wall clock around the whole run (`asyncio.run`,
client creation included); the server's span (first arrival to last reply) is shown too.
Every run starts after a full garbage collection (untimed), as a run of `llmflow run` starts
in a fresh process: in this long-lived one, a full collection of what earlier runs and
compiles left behind takes ~100 ms and would fall into whichever run crosses the threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import operator
import os
import platform
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict
from urllib.parse import urlsplit

import llmflow
from llmflow.runtime.testing.server import default_answer

try:  # pip install -r bench/requirements.txt
    import openai
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
FLOORS = ("sdk floor", "httpx floor", "socket floor")
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


# -- floors: the workflow with no runtime, through less and less of the HTTP stack

LLM = Callable[[str], Awaitable[str]]


async def workflow(run: str, llm: LLM) -> str:
    """Each reduce as soon as its group's summaries are in, then the final call."""

    async def section(parts: list[str]) -> str:
        summaries = await asyncio.gather(*(llm(MAP.format(run=run, part=p)) for p in parts))
        return await llm(REDUCE.format(run=run, summaries=bullets(list(summaries))))

    sections = await asyncio.gather(*(section(parts) for parts in inputs(run)["groups"]))
    return await llm(FINAL.format(run=run, summaries=bullets(list(sections))))


def body(prompt: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0}


def answer_of(raw: bytes) -> str:
    return (json.loads(raw)["choices"][0]["message"]["content"] or "").strip()


def no_ca_client() -> Any:
    """The SDK's HTTP client as llmflow's backend makes it for an http:// server."""
    return openai.DefaultAsyncHttpxClient(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


async def run_sdk_floor(url: str, run: str) -> str:
    client = AsyncOpenAI(
        base_url=url, api_key="no-key", max_retries=0, timeout=60.0, http_client=no_ca_client()
    )

    async def llm(prompt: str) -> str:
        raw = await client.post("/chat/completions", cast_to=bytes, body=body(prompt))
        return answer_of(raw)

    try:
        return await workflow(run, llm)
    finally:
        await client.close()


async def run_httpx_floor(url: str, run: str) -> str:
    client = no_ca_client()
    headers = {"content-type": "application/json"}

    async def llm(prompt: str) -> str:
        data = json.dumps(body(prompt)).encode()
        response = await client.post(f"{url}/chat/completions", content=data, headers=headers)
        response.raise_for_status()
        return answer_of(response.content)

    try:
        return await workflow(run, llm)
    finally:
        await client.aclose()


async def run_socket_floor(url: str, run: str) -> str:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "", parts.port or 80, f"{parts.path}/chat/completions"
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def llm(prompt: str) -> str:
        reader, writer = idle.pop() if idle else await asyncio.open_connection(host, port)
        data = json.dumps(body(prompt)).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)
        status, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        if status.split()[1] != "200":
            raise RuntimeError(status)
        fields = dict(line.lower().split(": ", 1) for line in lines if line)
        raw = await reader.readexactly(int(fields["content-length"]))
        idle.append((reader, writer))
        return answer_of(raw)

    try:
        return await workflow(run, llm)
    finally:
        for _, writer in idle:
            writer.close()


FLOOR_RUNS = {
    "sdk floor": run_sdk_floor,
    "httpx floor": run_httpx_floor,
    "socket floor": run_socket_floor,
}


# -- measuring


def measure(system: str, server: Server, rep: int) -> dict[str, Any]:
    """One run of one system; llmflow's program is compiled (untimed) with the run's
    inputs, as `llmflow run` does."""
    run = f"{system}-{rep}-{secrets.token_hex(3)}"
    plan = None
    if system.startswith("llmflow"):
        plan = llmflow.compile(PROGRAM, inputs=inputs(run), optimize=system == "llmflow")
    before = len(server.records())
    gc.collect()  # what earlier runs left is not this run's to collect
    start, clock = time.perf_counter(), time.time()
    if plan is not None:
        answer = asyncio.run(run_llmflow(plan, run))
    elif system == "langgraph":
        answer = asyncio.run(run_langgraph(server.url, run))
    else:
        answer = asyncio.run(FLOOR_RUNS[system](server.url, run))
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


def table(rows: list[dict[str, Any]], systems: tuple[str, ...]) -> str:
    lines = [
        "| system | makespan, median (min–max) | lower bound | makespan / bound "
        "| server span | span / bound | first request | after last reply "
        "| reduce waits (max) | final wait |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in systems:
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
    parser.add_argument(
        "--floors", action="store_true", help="also run the workflow with no runtime (floors)"
    )
    args = parser.parse_args()
    systems = SYSTEMS + FLOORS if args.floors else SYSTEMS
    print(machine_line() + " (at the start)", flush=True)
    with tempfile.TemporaryDirectory(prefix="llmflow-remote-") as tmp:
        server = Server.start(args.latency, args.prefill, args.decode, Path(tmp) / "log.jsonl")
        os.environ["OPENAI_BASE_URL"] = server.url
        try:
            rows = []
            for rep in range(-1, args.reps):  # rep -1 warms all up (imports, clients)
                order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
                for system in order:
                    row = measure(system, server, rep)
                    print(json.dumps(row), file=sys.stderr)
                    if rep >= 0:
                        rows.append(row)
        finally:
            server.stop()
    print(machine_line() + " (at the end)\n")
    print(table(rows, systems))
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

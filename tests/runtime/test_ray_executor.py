"""The Ray executor on a real local cluster (one per module: `ray.init` costs seconds):
the same results as the local executor; a worker killed with SIGKILL mid-run loses and
duplicates no row and repeats no journaled call; each model's concurrency and rate limit
and the budget hold across workers (counted at a real HTTP server's log); the run folder
is shared with the local executor; without Ray, a clear error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.runtime.batch import RowResult
from llmflow.runtime.budget import Budget
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.executors.local import LocalExecutor
from llmflow.runtime.journal import read_journal_rows
from llmflow.runtime.rows import Row, bind_rows
from llmflow.runtime.runs import RunDir
from llmflow.runtime.testing.server import start_server
from llmflow.runtime.trace import read_trace

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'llmflow[ray]'")

from llmflow.runtime.executors.ray import ROW_ATTEMPTS, JobSettings, RayExecutor  # noqa: E402
from llmflow.runtime.executors.ray_state import GONE, BudgetActor, LimitsActor  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def compile_text(tmp_path: Path, text: str) -> llmflow.Plan:
    path = tmp_path / "prog.llmflow"
    path.write_text(text)
    return llmflow.compile(path)


def rows_of(plan: llmflow.Plan, values: list[dict[str, Any]]) -> list[Row]:
    return list(bind_rows(plan, ((i, v, None) for i, v in enumerate(values, 1))))


def on_ray(
    plan: llmflow.Plan, rows: list[Row], settings: JobSettings | None = None, **options: Any
) -> list[RowResult]:
    async def go() -> list[RowResult]:
        async with RayExecutor(plan, settings or JobSettings(), **options) as executor:
            return [r async for r in executor.results(rows)]

    return asyncio.run(go())


def on_local(
    plan: llmflow.Plan, rows: list[Row], session: llmflow.Session, **options: Any
) -> list[RowResult]:
    async def go() -> list[RowResult]:
        async with LocalExecutor(session, plan, **options) as executor:
            return [r async for r in executor.results(rows)]

    return asyncio.run(go())


def lines(results: list[RowResult]) -> dict[Any, dict[str, Any]]:
    out = {}
    for result in results:
        line = result.to_json()
        del line["stats"]["seconds"]
        out[result.id] = line
    return out


ECHO = """
model m = scripted("m")

fn ask(q: str) -> a: str
\"\"\"Say
{{q}}
{{a}}\"\"\"

fn count(a: str) -> n: int
\"\"\"How many
{{a}}
{{n}}\"\"\"

flow main(q: str) -> a: str, n: int {
    a = ask(q)
    n = count(a)
}
"""


def test_the_same_lines_as_the_local_executor(tmp_path: Path) -> None:
    plan = compile_text(tmp_path, ECHO)
    values: list[dict[str, Any]] = [{"q": str(i)} for i in range(12)]
    values[3] = {"q": "not a number"}  # `n` fails to parse: the row fails, the rest go on
    values[5] = {"nope": "x"}  # not an input: the row's problem, not a crash
    rows = rows_of(plan, values)
    seed = RunSeed(7)
    local = on_local(plan, rows, llmflow.Session(), in_flight=4, seed=seed)
    on_cluster = on_ray(plan, rows, workers=2, in_flight=3, seed=seed)
    assert sorted(r.id for r in on_cluster) == list(range(1, 13))  # each once
    assert lines(on_cluster) == lines(local)
    assert lines(on_cluster)[1]["outputs"] == {"a": "0", "n": 0}
    assert "count" in (lines(on_cluster)[4]["error"] or "")
    assert "missing input 'q'" in (lines(on_cluster)[6]["error"] or "")


TWO_SPEEDS = """
model fast = openai_compatible("fast", base_url="{fast}")
model slow = openai_compatible("slow", base_url="{slow}")

@model(fast)
fn ask(x: str) -> y: str
\"\"\"Ask {{{{x}}}}: {{{{y}}}}\"\"\"

@model(slow)
fn tell(y: str) -> z: str
\"\"\"Tell {{{{y}}}}: {{{{z}}}}\"\"\"

flow main(x: str) -> z: str {{
    z = tell(ask(x))
}}
"""


def test_a_worker_killed_mid_run_loses_and_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each row asks `fast` and then `slow` (1 s): when a worker is killed, its rows are
    waiting on `slow` with `fast`'s answer journaled; run again, they replay it."""
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    run_dir = RunDir.create(tmp_path)
    with start_server(latency=0.01) as fast, start_server(latency=1.0) as slow:
        plan = compile_text(tmp_path, TWO_SPEEDS.format(fast=fast.url, slow=slow.url))
        rows = rows_of(plan, [{"x": f"x{i:02d}"} for i in range(16)])
        killed: list[int] = []

        async def go() -> list[RowResult]:
            results = []
            settings = JobSettings()
            async with RayExecutor(
                plan, settings, workers=2, in_flight=3, seed=RunSeed(1), run_dir=run_dir
            ) as executor:
                async for result in executor.results(rows):
                    results.append(result)
                    if len(results) == 6:  # the first rows are done, the next on `slow`
                        await asyncio.sleep(0.5)
                        busy = [w for w in executor.workers_info() if w["running"]]
                        killed.append(busy[0]["pid"])
                        os.kill(busy[0]["pid"], signal.SIGKILL)
                info = executor.workers_info()
            assert sum(not w["alive"] for w in info) >= 1 and len(info) >= 3  # replaced
            return results

        results = asyncio.run(go())
        fast_log, slow_log = fast.log, slow.log

    assert killed
    assert sorted(r.id for r in results) == list(range(1, 17))  # none lost, none twice
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    # No journaled call was sent again: `fast` answered each row once, though the killed
    # worker's rows ran twice; only `slow` calls cut off by the kill were sent again.
    assert Counter(r["prompt_sha256"] for r in fast_log).most_common(1)[0][1] == 1
    assert len(fast_log) == 16 and 16 < len(slow_log) <= 16 + 3
    replayed = sum(r.models["fast"].journal_hits for r in results if "fast" in r.models)
    assert replayed >= 1
    entries, unreadable = read_journal_rows(run_dir.journal)
    assert unreadable == 0 and len(entries) == 32
    assert len({key for key, _, _ in entries}) == 32  # recorded once each, with its row
    assert Counter(row for _, _, row in entries) == {i: 2 for i in range(1, 17)}
    records, bad = read_trace(run_dir.trace)
    assert bad == 0 and {r["llmflow.row"] for r in records} == set(range(1, 17))


LIMITED = """
model remote = openai_compatible("limited", base_url="{url}", {limits})

fn ask(x: str) -> y: str
\"\"\"Ask {{{{x}}}}: {{{{y}}}}\"\"\"

flow main(x: str) -> y: str {{
    y = ask(x)
}}
"""


def most_at_once(log: list[dict[str, Any]]) -> int:
    edges = sorted([(r["arrival"], 1) for r in log] + [(r["finish"], -1) for r in log])
    at_once = most = 0
    for _, step in edges:
        at_once += step
        most = max(most, at_once)
    return most


def test_a_concurrency_limit_holds_across_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    with start_server(latency=0.3) as server:
        plan = compile_text(tmp_path, LIMITED.format(url=server.url, limits="concurrency=2"))
        rows = rows_of(plan, [{"x": f"x{i}"} for i in range(12)])

        async def go() -> list[dict[str, Any]]:
            async with RayExecutor(plan, JobSettings(), workers=2, in_flight=4) as executor:
                assert len([r async for r in executor.results(rows)]) == 12
                return executor.workers_info()

        workers = asyncio.run(go())
        log = server.log
    assert len(log) == 12 and most_at_once(log) == 2  # 8 rows in flight, 2 requests
    assert all(w["done"] > 0 for w in workers)  # both workers ran rows


def test_a_rate_limit_holds_across_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rpm=6 in windows of 1.5 s (+ the limiter's 0.5 s margin) instead of a minute."""
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    with start_server(latency=0.05) as server:
        plan = compile_text(tmp_path, LIMITED.format(url=server.url, limits="rpm=6"))
        rows = rows_of(plan, [{"x": f"x{i}"} for i in range(14)])
        results = on_ray(plan, rows, JobSettings(limit_period=1.5), workers=2, in_flight=4)
        arrivals = sorted(r["arrival"] for r in server.log)
    assert len(results) == 14 and all(r.ok for r in results)
    assert len(arrivals) == 14
    for i, start in enumerate(arrivals):  # no 1.5 s window at the server holds 7
        assert sum(1 for t in arrivals[i:] if t - start < 1.5) <= 6
    assert arrivals[-1] - arrivals[0] >= 2 * 1.5


def test_the_budget_holds_across_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    limits = "price_in=1000, price_out=2000"  # USD per million tokens
    with start_server(latency=0.05) as server:
        program = LIMITED.format(url=server.url, limits=limits).replace(
            "{{y}}", "{{y | max_tokens=10}}"
        )
        plan = compile_text(tmp_path, program)
        rows = rows_of(plan, [{"x": f"x{i}"} for i in range(40)])
        budget = Budget(0.2)  # each call reserves $0.03, costs about $0.013
        results = on_ray(plan, rows, JobSettings.for_run(budget=budget), workers=2, in_flight=4)
        sent = len(server.log)
    paid = [r for r in results if not r.not_run]
    assert 0 < len(paid) < 40 and sent == len(paid)  # the rest were never sent
    spent = sum(r.stats.dollars for r in paid)
    assert spent <= 0.2 and budget.spent == pytest.approx(spent)  # told the driver


def test_the_run_folder_is_shared_with_the_local_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal the local executor wrote answers every call on the cluster."""
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    run_dir = RunDir.create(tmp_path)
    with start_server() as server:
        plan = compile_text(tmp_path, LIMITED.format(url=server.url, limits="concurrency=8"))
        rows = rows_of(plan, [{"x": f"x{i}"} for i in range(10)])
        local = on_local(plan, rows, llmflow.Session(run_dir=run_dir), seed=RunSeed(3))
        sent = len(server.log)
        again = on_ray(plan, rows, workers=2, in_flight=2, seed=RunSeed(3), run_dir=run_dir)
        assert len(server.log) == sent == 10  # nothing asked twice
    assert {r.id: r.outputs for r in again} == {r.id: r.outputs for r in local}
    assert all(r.models["remote"].journal_hits == 1 for r in again)
    records, _ = read_trace(run_dir.trace)
    assert Counter(r["llmflow.journal_hit"] for r in records) == {False: 10, True: 10}


def test_the_cli_runs_rows_on_a_cluster_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "prog.llmflow").write_text(ECHO)
    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"q": str(i)}) + "\n" for i in range(6))
    )
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "llmflow.cli", "run", "prog.llmflow", "--inputs"]
    command += ["rows.jsonl", "--output", "out.jsonl", "--executor", "ray"]
    command += ["--ray-address", address, "--ray-workers", "2", "-q"]
    env = {**os.environ, "LLMFLOW_HOME": str(tmp_path / "home")}
    first = subprocess.run(command + ["--limit", "4"], cwd=tmp_path, env=env, **CAPTURE)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(command, cwd=tmp_path, env=env, **CAPTURE)
    assert second.returncode == 0, second.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in written) == [1, 2, 3, 4, 5, 6]
    assert {line["id"]: line["outputs"]["n"] for line in written} == {i: i - 1 for i in range(1, 7)}
    to_stdout = [c for c in command if c not in ("--output", "out.jsonl")] + ["--limit", "2"]
    third = subprocess.run(to_stdout, cwd=tmp_path, env=env, **CAPTURE)
    assert third.returncode == 0, third.stderr
    assert sorted(json.loads(line)["id"] for line in third.stdout.splitlines()) == [1, 2]


POISON = """
extern fn check(x: str) -> str = "ray_poison:check"

flow main(x: str) -> y: str {
    y = check(x)
}
"""


def test_a_row_that_kills_every_worker_it_meets_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "ray_poison.py").write_text(
        "import os, signal\n\n\ndef check(x):\n"
        "    if x == 'die':\n        os.kill(os.getpid(), signal.SIGKILL)\n    return x\n"
    )
    plan = compile_text(tmp_path, POISON)
    rows = rows_of(plan, [{"x": "die" if i == 3 else f"x{i}"} for i in range(1, 9)])
    results = on_ray(plan, rows, workers=2, in_flight=2)
    assert sorted(r.id for r in results) == list(range(1, 9))
    failed = {r.id: r.error for r in results if not r.ok}
    assert failed == {3: f"its Ray worker died {ROW_ATTEMPTS} times while running it"}
    assert {r.id: r.outputs["y"] for r in results if r.ok} == {
        i: f"x{i}" for i in range(1, 9) if i != 3
    }


def test_with_no_rows_left_no_worker_starts(tmp_path: Path) -> None:
    plan = compile_text(tmp_path, ECHO)

    async def go() -> list[dict[str, Any]]:
        async with RayExecutor(plan, JobSettings(), workers=2) as executor:
            assert [r async for r in executor.results([])] == []
            return executor.workers_info()

    assert asyncio.run(go()) == []  # a resume with every row written costs nothing


def test_a_plan_the_workers_cannot_run_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget needs every model's price: the workers check the plan before any row."""
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    with start_server() as server:
        plan = compile_text(tmp_path, LIMITED.format(url=server.url, limits="rpm=100"))
        rows = rows_of(plan, [{"x": "x"}])
        with pytest.raises(
            llmflow.LLMFlowError, match="a Ray worker cannot run this plan: .*price"
        ):
            on_ray(plan, rows, JobSettings(budget=1.0), workers=1)
        assert server.log == []


def test_a_dead_workers_slots_are_freed_and_its_late_requests_refused() -> None:
    """The shared actors' bookkeeping, driven directly (as the driver and two workers
    would): a dropped holder's slots go back, its reservations are charged in full."""

    async def go() -> None:
        limits = LimitsActor({"concurrency": 1})
        ticket = await limits.acquire("w1", 10)
        assert isinstance(ticket, int)
        waiting = asyncio.ensure_future(limits.acquire("w2", 10))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # one slot, held by w1
        assert await limits.drop("w1") == 1
        assert isinstance(await asyncio.wait_for(waiting, 1), int)  # w1's slot went to w2
        assert await limits.acquire("w1", 10) == GONE
        await limits.release(ticket, 5)  # a dead worker's late release changes nothing
        assert limits.usage()["held"] == 1

        budget = BudgetActor(1.0)
        assert await budget.reserve("w1", 0.4) is None
        assert await budget.reserve("w2", 0.4) is None
        await budget.settle("w2", 0.4, 0.1, True)
        assert await budget.drop("w1") == 1
        await budget.settle("w1", 0.4, 0.0, True)  # too late: charged in full already
        assert budget.spending() == {"limit": 1.0, "spent": 0.5, "unanswered": 0.4}
        assert await budget.reserve("w1", 0.1) == GONE
        assert "budget" in (await budget.reserve("w2", 0.6) or "")  # $0.5 left

    asyncio.run(go())


CAPTURE: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 180}

HIDDEN = """
import sys
sys.modules["ray"] = None  # as if Ray were not installed
from llmflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_ray_the_executor_says_how_to_install_it(tmp_path: Path) -> None:
    (tmp_path / "prog.llmflow").write_text(ECHO)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"q": "1"}) + "\n")
    command = [sys.executable, "-c", HIDDEN, "run", "prog.llmflow", "--inputs", "rows.jsonl"]
    env = {**os.environ, "LLMFLOW_HOME": str(tmp_path / "home")}
    done = subprocess.run([*command, "--executor", "ray"], cwd=tmp_path, env=env, **CAPTURE)
    assert done.returncode == 1
    assert "pip install 'llmflow[ray]'" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""

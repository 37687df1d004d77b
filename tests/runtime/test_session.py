"""A Session keeps a run's machinery warm across runs and closes it cleanly: one backend
(one HTTP connection to the loopback server) for many runs, one set of limits for runs
in flight together, every writer closed after an error or a cancellation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.errors import InputError, LLMFlowError
from llmflow.runtime.backends.base import Generation, GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.journal import read_journal
from llmflow.runtime.runs import RunDir
from llmflow.runtime.testing.server import FaultServer
from llmflow.runtime.trace import read_trace

HOSTED = """
model remote = openai_compatible("m", base_url="{url}")

@model(remote)
fn echo(x: str) -> y: str
\"\"\"Say {{{{x}}}}: {{{{y | max_tokens=5}}}}\"\"\"

flow main(x: str) -> y: str {{
    y = echo(x)
}}
"""

LIMITED = """
model one = openai_compatible("m", base_url="http://127.0.0.1:9/v1", concurrency=1)

@model(one)
fn echo(x: str) -> y: str
\"\"\"Say {{x}}: {{y | max_tokens=5}}\"\"\"

flow main(x: str) -> y: str {
    y = echo(x)
}
"""


def test_two_runs_on_one_session_use_one_backend(compile_source: Callable[..., Plan]) -> None:
    """The router makes the HTTP client once: both runs' requests come over one
    connection. A run of its own (`run_async`) opens a client, and a connection, each."""

    async def main() -> tuple[list[int], list[int]]:
        async with FaultServer() as server:
            plan = compile_source(HOSTED.format(url=server.url))
            async with llmflow.Session() as session:
                first = await session.run(plan, {"x": "a"})
                second = await session.run(plan, {"x": "b"})
            assert first.ok and second.ok, (first.failures, second.failures)
            shared = [record["conn"] for record in server.log]
            await llmflow.run_async(plan, {"x": "c"})
            await llmflow.run_async(plan, {"x": "d"})
            apart = [record["conn"] for record in server.log[2:]]
        return shared, apart

    shared, apart = asyncio.run(main())
    assert len(shared) == 2 and len(set(shared)) == 1
    assert len(apart) == 2 and len(set(apart)) == 2


def test_runs_in_flight_together_share_the_models_limits(
    compile_source: Callable[..., Plan],
) -> None:
    """`concurrency=1` holds across the session's runs, not per run."""
    plan = compile_source(LIMITED)
    backend = ScriptedBackend(lambda r: "ok", delay=0.05)

    async def main() -> None:
        async with llmflow.Session(backend=backend) as session:
            results = await asyncio.gather(*(session.run(plan, {"x": str(i)}) for i in range(4)))
        assert all(result.ok for result in results)

    asyncio.run(main())
    assert len(backend.served) == 4
    assert backend.max_in_flight == 1


def test_a_budget_counts_every_run_of_the_session(compile_source: Callable[..., Plan]) -> None:
    """The session's budget is spent by all its runs together: once the first runs have
    spent it, the next run's call is not sent."""
    program = LIMITED.replace('base_url="http://127.0.0.1:9/v1"', "price_in=1, price_out=1")
    plan = compile_source(program)
    # No usage reported: each answer is charged what its call reserved, the most it can cost.
    backend = ScriptedBackend(lambda r: Generation(text="ok"))

    async def main(budget: float) -> tuple[list[bool], float, float]:
        async with llmflow.Session(backend=backend, budget=budget) as session:
            results = [await session.run(plan, {"x": str(i)}) for i in range(3)]
        assert session.budget is not None
        paid = sum(call.dollars for result in results for call in result.calls)
        return [result.ok for result in results], session.budget.spent, paid

    oks, spent, paid = asyncio.run(main(1.0))
    assert oks == [True, True, True] and spent == pytest.approx(paid) and paid > 0
    oks, spent, _ = asyncio.run(main(paid * 2.5 / 3))  # two calls and a half
    assert oks == [True, True, False]
    assert spent == pytest.approx(paid * 2 / 3)


def test_runs_share_the_session_run_folder(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(LIMITED)
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()

    async def main() -> None:
        async with llmflow.Session(backend=ScriptedBackend(lambda r: "ok"), run_dir=run_dir) as s:
            for x in "abc":
                assert (await s.run(plan, {"x": x})).ok

    asyncio.run(main())
    entries, unreadable = read_journal(run_dir.journal)
    records, bad = read_trace(run_dir.trace)
    assert (len(entries), unreadable, len(records), bad) == (3, 0, 3, 0)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_a_cancelled_run_leaves_nothing_open(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(LIMITED)
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    started = asyncio.Event()

    async def hang(request: GenerationRequest) -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    async def main() -> None:
        before = _open_files()
        session = llmflow.Session(backend=ScriptedBackend(hang), run_dir=run_dir)
        async with session:
            task = asyncio.create_task(session.run(plan, {"x": "a"}))
            await started.wait()
            assert _open_files() > before  # the journal and the trace are open
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert _open_files() == before
        with pytest.raises(LLMFlowError, match="session is closed"):
            await session.run(plan, {"x": "b"})

    asyncio.run(main())


def test_inputs_are_checked_before_anything_is_opened(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(LIMITED)
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()

    async def main() -> None:
        async with llmflow.Session(backend=ScriptedBackend(lambda r: "ok"), run_dir=run_dir) as s:
            with pytest.raises(InputError) as err:
                await s.run(plan, {"z": 1})
        assert err.value.problems == {
            "z": "unknown input 'z' (inputs: x)",
            "x": "missing input 'x' (str)",
        }

    asyncio.run(main())
    assert not run_dir.journal.exists() and not run_dir.trace.exists()


def test_plans_that_declare_a_model_differently_get_backends_of_their_own(
    compile_source: Callable[..., Plan],
) -> None:
    """A model name means what its plan declares: two plans declaring `remote` at two
    addresses each reach their own server."""

    async def main() -> tuple[int, int]:
        async with FaultServer() as one, FaultServer() as two:
            first = compile_source(HOSTED.format(url=one.url), name="one.llmflow")
            second = compile_source(HOSTED.format(url=two.url), name="two.llmflow")
            async with llmflow.Session() as session:
                assert (await session.run(first, {"x": "a"})).ok
                assert (await session.run(second, {"x": "a"})).ok
                assert (await session.run(first, {"x": "b"})).ok
            return len(one.log), len(two.log)

    assert asyncio.run(main()) == (2, 1)


def test_show_is_told_every_request_and_where_its_answer_came_from(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    from llmflow.runtime.cache import ResponseCache

    plan = compile_source(LIMITED)
    seen: list[tuple[str, str, str]] = []

    def show(request: GenerationRequest, answer: Generation) -> None:
        seen.append((request.turns[-1].text, answer.text, answer.source))

    async def main() -> None:
        cache = ResponseCache(tmp_path / "cache")
        try:
            backend = ScriptedBackend(lambda r: "hi")
            async with llmflow.Session(backend=backend, cache=cache, show=show) as session:
                for _ in range(2):
                    assert (await session.run(plan, {"x": "a"})).ok
        finally:
            cache.close()

    asyncio.run(main())
    assert seen == [("Say a:", "hi", "model"), ("Say a:", "hi", "cache")]

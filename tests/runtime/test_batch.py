"""run_rows / Session.run_many / llmflow.run_batch: a plan once per row, a bounded number
of rows at a time, in one Session; failures stay in their row; the budget stops new rows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import llmflow
from llmflow.runtime.backends.base import GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.calls import RunSeed
from llmflow.runtime.rows import Row, bind_rows

PROGRAM = """
model m = scripted("m", reply="x")

fn ask(q: str) -> a: str
\"\"\"First {{q}}: {{a}}\"\"\"

fn tell(a: str) -> b: str
\"\"\"Second {{a}}: {{b}}\"\"\"

flow main(q: str) -> b: str {
    b = tell(ask(q))
}
"""


@pytest.fixture
def plan(tmp_path) -> llmflow.Plan:  # type: ignore[no-untyped-def]
    path = tmp_path / "prog.llmflow"
    path.write_text(PROGRAM)
    return llmflow.compile(path)


def rows_of(plan: llmflow.Plan, qs: list[str]) -> Iterator[Row]:
    return bind_rows(plan, ((i, {"q": q}, None) for i, q in enumerate(qs, 1)))


def reply(request: GenerationRequest) -> str:
    text = request.turns[-1].text
    if "boom" in text:
        return "not what anyone asked"  # fine for str: the failure is made by `fails`
    return text.split()[1].rstrip(":") + "!"


async def collect(session: llmflow.Session, plan: llmflow.Plan, rows, **kw) -> list:  # type: ignore[no-untyped-def]
    return [r async for r in session.run_many(plan, rows, **kw)]


def test_every_row_runs_once_at_most_in_flight_at_a_time(plan: llmflow.Plan) -> None:
    backend = ScriptedBackend(reply, delay=0.01)
    qs = [f"q{i}" for i in range(20)]

    async def go() -> list:  # type: ignore[type-arg]
        async with llmflow.Session(backend=backend) as session:
            return await collect(session, plan, rows_of(plan, qs), in_flight=3)

    results = asyncio.run(go())
    assert sorted(r.id for r in results) == list(range(1, 21))
    assert {r.id: r.outputs["b"] for r in results} == {i: f"q{i - 1}!!" for i in range(1, 21)}
    assert backend.max_in_flight <= 3  # one call in flight per row: second waits on first
    assert len(backend.served) == 40
    first = results[0]
    assert first.ok and first.stats.calls == 2 and first.stats.input_tokens > 0
    assert first.to_json()["stats"]["calls"] == 2 and first.calls == []


def test_rows_are_pulled_only_as_slots_free(plan: llmflow.Plan) -> None:
    pulled: list[int] = []
    done: list[int] = []

    def source() -> Iterator[Row]:
        for i in range(1, 31):
            pulled.append(i)
            assert len(pulled) - len(done) <= 4  # in flight + the one being pulled
            yield from bind_rows(plan, [(i, {"q": f"q{i}"}, None)])

    async def go() -> None:
        async with llmflow.Session(backend=ScriptedBackend(reply, delay=0.005)) as session:
            async for result in session.run_many(plan, source(), in_flight=3):
                done.append(result.id)

    asyncio.run(go())
    assert len(done) == 30


def test_a_failing_row_keeps_its_error_and_the_others_go_on(plan: llmflow.Plan) -> None:
    def script(request: GenerationRequest) -> str:
        if "bad" in request.turns[-1].text:
            raise llmflow.LLMFlowError("the model fell over")
        return reply(request)

    async def go() -> list:  # type: ignore[type-arg]
        rows = bind_rows(
            plan,
            [(1, {"q": "good"}, None), (2, {"q": "bad"}, None), (3, {"qq": "x"}, None)],
            shown="rows.jsonl",
        )
        async with llmflow.Session(backend=ScriptedBackend(script)) as session:
            return await collect(session, plan, rows)

    results = {r.id: r for r in asyncio.run(go())}
    assert results[1].ok and results[1].outputs == {"b": "good!!"}
    assert not results[2].ok and "ask failed" in (results[2].error or "")
    assert "prog.llmflow:" in (results[2].error or "")  # at the call, in the program
    assert results[3].error and results[3].error.startswith("rows.jsonl:3: missing input 'q'")
    assert results[3].stats.calls == 0


def test_once_the_budget_cannot_pay_no_new_row_starts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "priced.llmflow"
    path.write_text(
        PROGRAM.replace(
            'model m = scripted("m", reply="x")',
            'model m = scripted("m", reply="x", price_in=10000, price_out=10000)',
        )
    )
    plan = llmflow.compile(path)
    pulled: list[int] = []

    def source() -> Iterator[Row]:
        for i in range(1, 50):
            pulled.append(i)
            yield from bind_rows(plan, [(i, {"q": f"q{i}"}, None)])

    async def go() -> list:  # type: ignore[type-arg]
        async with llmflow.Session(backend=ScriptedBackend(reply), budget=5.0) as session:
            return await collect(session, plan, source(), in_flight=2)

    results = asyncio.run(go())
    assert any(r.not_run for r in results) and any(r.ok for r in results)
    assert all(r.error is None for r in results)  # not run is not failed
    assert len(pulled) < 49  # it stopped pulling rows
    assert not [r for r in results if r.not_run][0].ok


def test_closing_early_cancels_the_rows_in_flight(plan: llmflow.Plan) -> None:
    backend = ScriptedBackend(reply, delay=0.05)

    async def go() -> int:
        async with llmflow.Session(backend=backend) as session:
            stream = session.run_many(plan, rows_of(plan, [f"q{i}" for i in range(50)]))
            async for _ in stream:
                break
            await stream.aclose()  # type: ignore[attr-defined]
            await asyncio.sleep(0.1)
            return backend.in_flight

    assert asyncio.run(go()) == 0
    assert len(backend.served) < 100


def test_each_row_samples_with_its_own_seed_from_the_run_seed() -> None:
    seed = RunSeed(7)
    assert seed.for_row(1) == RunSeed(7).for_row(1)
    assert seed.for_row(1) != seed.for_row(2) != seed.for_row("2")
    assert RunSeed(7, chosen=False).for_row(1).chosen is False


def test_run_batch_sync_returns_rows_in_their_order(plan: llmflow.Plan) -> None:
    backend = ScriptedBackend(reply, delay=0.0)
    rows = [{"q": "a", "label": "ignored"}, {"q": "b"}, "not a row"]
    results = llmflow.run_batch_sync(plan, rows, backend=backend, in_flight=2)
    assert [r.id for r in results] == [1, 2, 3]
    assert [r.outputs.get("b") for r in results] == ["a!!", "b!!", None]
    assert results[2].error == "row 3: a row is a dict of input values, not a str"


def test_run_batch_uses_the_id_column_and_works_inside_a_running_loop(
    plan: llmflow.Plan,
) -> None:
    async def inside_a_notebook() -> list:  # type: ignore[type-arg]
        rows = [{"key": "k1", "q": "a"}, {"key": "k2", "q": "b"}]
        return llmflow.run_batch_sync(plan, rows, id_column="key", backend=ScriptedBackend(reply))

    results = asyncio.run(inside_a_notebook())
    assert [(r.id, r.outputs["b"]) for r in results] == [("k1", "a!!"), ("k2", "b!!")]


def test_in_flight_must_be_positive(plan: llmflow.Plan) -> None:
    async def go() -> None:
        async with llmflow.Session(backend=ScriptedBackend(reply)) as session:
            await collect(session, plan, [], in_flight=0)

    with pytest.raises(ValueError, match="1 or more"):
        asyncio.run(go())

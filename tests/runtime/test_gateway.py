"""The gateway between calls and backends: retries, limits, budget, cache and journal,
each shown doing its job on a scripted backend, plus fallbacks and the trace."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler.catalog import resolve
from llmflow.compiler.models import Limits
from llmflow.compiler.prices import dollars
from llmflow.runtime.backends.base import BackendError, Generation, GenerationRequest, Turn
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.budget import Budget, BudgetExceeded
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.gateway import Gateway, prompt_tokens_at_most
from llmflow.runtime.journal import Journal
from llmflow.runtime.limits import Limiter
from llmflow.runtime.retry import RetriesExhausted, RetryPolicy
from llmflow.runtime.runs import RunDir

MODELS = {
    "m": resolve(
        "m", "openai_compatible", "served", [("test", {"price_in": 1.0, "price_out": 2.0})]
    ),
    "free": resolve("free", "local", "smollm2-135m"),
}


def request(text: str = "hello", **extra: object) -> GenerationRequest:
    return GenerationRequest(model="m", turns=[Turn(role="user", text=text)], **extra)


class Flaky:
    """Fails with the given errors in order, then answers."""

    def __init__(self, *errors: BackendError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, req: GenerationRequest) -> Generation:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Generation(text="fine", input_tokens=100, output_tokens=10)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def gateway(script: object, sleeps: Sleeps | None = None, **options: object) -> Gateway:
    backend = ScriptedBackend(script)  # type: ignore[arg-type]
    return Gateway(backend, MODELS, sleep=sleeps or Sleeps(), **options)  # type: ignore[arg-type]


def test_transient_errors_are_retried_and_retry_after_is_a_floor():
    flaky = Flaky(
        BackendError("m: 429 slow down", status=429, retryable=True, retry_after=7.0),
        BackendError("m: 503", status=503, retryable=True),
    )
    sleeps = Sleeps()
    answer = asyncio.run(gateway(flaky, sleeps).generate(request()))
    assert answer.text == "fine" and flaky.calls == 3
    assert answer.retries == 2
    assert [e["reason"] for e in answer.events] == ["429", "503"]
    assert sleeps.delays[0] >= 7.0
    assert 0 <= sleeps.delays[1] <= RetryPolicy().base * 2


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(base=1.0, cap=5.0)
    rng = random.Random(1)
    error = BackendError("x", retryable=True)
    delays = [max(policy.delay(n, error, rng) for _ in range(200)) for n in range(6)]
    assert delays[0] <= 1.0 and delays[1] <= 2.0 and delays[2] <= 4.0
    assert all(d <= 5.0 for d in delays) and delays[5] > 4.0


def test_permanent_errors_fail_at_once():
    flaky = Flaky(BackendError("m: 401 bad key", status=401))
    with pytest.raises(BackendError, match="401 bad key") as err:
        asyncio.run(gateway(flaky).generate(request()))
    assert flaky.calls == 1 and not isinstance(err.value, RetriesExhausted)


def test_a_request_that_keeps_failing_gives_up_after_the_policy_attempts():
    flaky = Flaky(*[BackendError("m: 500", status=500, retryable=True)] * 10)
    with pytest.raises(RetriesExhausted, match="gave up after 3 tries: m: 500"):
        asyncio.run(gateway(flaky, policy=RetryPolicy(attempts=3)).generate(request()))
    assert flaky.calls == 3


def test_concurrency_limit_holds():
    spec = MODELS["m"].model_copy(update={"limits": Limits(concurrency=2)})
    backend = ScriptedBackend(lambda r: "ok", delay=0.05)
    gw = Gateway(backend, {"m": spec})

    async def many() -> None:
        await asyncio.gather(*(gw.generate(request(f"q{i}")) for i in range(8)))

    asyncio.run(many())
    assert backend.max_in_flight == 2


def test_requests_per_period_hold_over_a_sliding_window():
    limiter = Limiter(Limits(rpm=5), period=0.4)
    sent: list[float] = []

    async def one() -> None:
        async with limiter.slot(1):
            sent.append(time.monotonic())

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(12)))

    asyncio.run(many())
    sent.sort()
    for i in range(len(sent) - 5):
        assert sent[i + 5] - sent[i] >= 0.4  # any 6 consecutive sends span a full window


def test_a_request_counts_in_the_window_until_a_period_after_it_ends():
    """A request held up after taking its slot (a pause before it reaches the server)
    must not leave the window early: its entry is stamped when it ends."""
    limiter = Limiter(Limits(rpm=2), period=0.2)
    times: dict[str, tuple[float, float]] = {}

    async def one(name: str, hold: float) -> None:
        async with limiter.slot(1):
            began = time.monotonic()
            await asyncio.sleep(hold)
        times[name] = (began, time.monotonic())

    async def many() -> None:
        slow = asyncio.create_task(one("slow", 1.0))  # longer than the window
        quick = asyncio.create_task(one("quick", 0.0))
        await asyncio.sleep(0.01)
        await asyncio.gather(one("third", 0.0), one("fourth", 0.0), slow, quick)

    asyncio.run(many())
    assert times["third"][0] >= times["quick"][1] + 0.2  # a period after the first end
    for start, _ in times.values():  # never more than 2 in flight or ended within a period
        counted = [n for n, (b, e) in times.items() if b <= start < e + 0.2]
        assert len(counted) <= 2, counted


def test_tokens_per_period_hold_and_are_settled_to_real_usage():
    limiter = Limiter(Limits(tpm=100), period=0.3)
    started: list[tuple[float, int]] = []

    async def one(tokens: int, used: int) -> None:
        async with limiter.slot(tokens) as permit:
            started.append((time.monotonic(), tokens))
            permit.settle(used)

    async def many() -> None:
        # Each reserves 60 (only one fits a window) but uses 20: the window settles
        # to real usage, so the next one fits without waiting a whole window.
        await asyncio.gather(*(one(60, 20) for _ in range(3)))

    began = time.monotonic()
    asyncio.run(many())
    assert len(started) == 3
    assert started[-1][0] - began < 0.25


def test_a_request_bigger_than_the_token_limit_fails_clearly():
    spec = MODELS["m"].model_copy(update={"limits": Limits(tpm=50)})
    gw = Gateway(ScriptedBackend(lambda r: "ok"), {"m": spec})
    with pytest.raises(BackendError, match="can never fit a limit of 50 tokens"):
        asyncio.run(gw.generate(request("x" * 400, max_tokens=10)))


def test_the_budget_refuses_requests_that_could_exceed_it():
    budget = Budget(0.001)  # $1/M in, $2/M out: a 256-token answer reserves ~$0.0005
    gw = gateway(lambda r: Generation(text="ok", input_tokens=10, output_tokens=200), budget=budget)

    async def calls() -> list[object]:
        out: list[object] = []
        for i in range(4):
            try:
                out.append(await gw.generate(request(f"q{i}")))
            except BudgetExceeded as err:
                out.append(err)
        return out

    results = asyncio.run(calls())
    sent = [r for r in results if isinstance(r, Generation)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(sent) == 2 and len(refused) == 2
    assert budget.spent == pytest.approx(2 * (10 * 1 + 200 * 2) / 1e6)
    assert budget.spent <= budget.limit and budget.reserved == 0
    assert "not run" in str(refused[0])


def test_a_try_that_never_reached_the_server_costs_nothing_one_that_may_have_costs_all():
    refused = BackendError("connection refused", retryable=True, sent=False)
    dropped = BackendError("the server closed the connection", retryable=True)
    answer = (100 * 1 + 10 * 2) / 1e6
    for error, billed in ((refused, False), (dropped, True)):
        budget = Budget(1.0)
        asyncio.run(gateway(Flaky(error, error), budget=budget).generate(request()))
        assert (budget.unanswered > answer) is billed and budget.reserved == 0
        assert budget.spent == pytest.approx(answer + budget.unanswered)


def test_a_budget_is_never_nan_or_negative():
    for limit, spent in ((math.nan, 0.0), (1.0, math.nan), (-1.0, 0.0), (1.0, -5.0)):
        with pytest.raises(ValueError, match="finite amount of \\$0 or more"):
            Budget(limit, spent=spent)
    for bad in ({"dollars": math.nan}, {"dollars": -1.0}, {"input_tokens": -3}):
        with pytest.raises(ValueError):
            Generation(text="x", **bad)


def test_the_budget_reserves_the_model_tokenizer_count_when_the_backend_has_one():
    class Counting(ScriptedBackend):
        def count_tokens(self, req: GenerationRequest) -> int:
            return 5

    spec = MODELS["m"]
    answer = Generation(text="ok", input_tokens=5, output_tokens=1)
    budget = Budget(1.01 * dollars(spec, 5, 0, 16))
    long = request("x" * 1000, max_tokens=16)  # bounded at 1,000+ tokens without a count
    assert dollars(spec, prompt_tokens_at_most(long), 0, 16) > budget.limit
    assert asyncio.run(Gateway(Counting(lambda r: answer), MODELS, budget=budget).generate(long))
    with pytest.raises(BudgetExceeded):
        asyncio.run(gateway(lambda r: answer, budget=Budget(budget.limit)).generate(long))


def test_a_journal_counts_what_answers_cost_and_cache_answers_at_nothing(tmp_path: Path):
    cache = ResponseCache(tmp_path / "cache")
    asyncio.run(gateway(Flaky(), cache=cache).generate(request()))  # into the cache
    journal = Journal(tmp_path / "journal.jsonl")
    gw = gateway(Flaky(), cache=cache, journal=journal)
    assert asyncio.run(gw.generate(request())).source == "cache"
    fresh = asyncio.run(gw.generate(request("other")))
    journal.close()
    cache.close()
    assert fresh.dollars == pytest.approx((100 * 1 + 10 * 2) / 1e6)
    resumed = Journal(tmp_path / "journal.jsonl")
    assert resumed.dollars == pytest.approx(fresh.dollars)
    resumed.close()


def test_deterministic_answers_come_from_the_cache_the_second_time(tmp_path: Path):
    flaky = Flaky()
    cache = ResponseCache(tmp_path / "cache")
    gw = gateway(flaky, cache=cache)
    first = asyncio.run(gw.generate(request()))
    again = asyncio.run(gw.generate(request(group="g1", priority=3.0)))
    sampled = asyncio.run(gw.generate(request(temperature=0.8)))
    assert flaky.calls == 2  # the sampled request was not served from the cache
    assert (first.source, again.source, sampled.source) == ("model", "cache", "model")
    assert again.text == first.text
    stored = list((tmp_path / "cache").iterdir())
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700 and stored
    cache.close()


def test_the_journal_answers_a_resumed_run_in_order(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    answers = iter(["first", "second"])
    journal = Journal(path)
    gw = gateway(lambda r: next(answers), journal=journal)
    asyncio.run(gw.generate(request(temperature=1.0)))
    asyncio.run(gw.generate(request(temperature=1.0)))
    journal.close()
    with path.open("a") as f:
        f.write('{"key": "cut sh')  # a killed run's last line
    resumed = Journal(path)
    gw = gateway(lambda r: "new", journal=resumed)
    got = [asyncio.run(gw.generate(request(temperature=1.0))).text for _ in range(3)]
    assert got == ["first", "second", "new"]
    assert path.stat().st_mode & 0o777 == 0o600
    resumed.close()


TWO_MODELS = """
model big = openai_compatible("big", base_url="http://127.0.0.1:9/v1", skills={reasoning: 0.9},
                              price_in=5, price_out=10)
model small = openai_compatible("small", base_url="http://127.0.0.1:9/v1",
                                skills={reasoning: 0.8}, price_in=1, price_out=2)

@needs(reasoning >= 0.7)
fn answer(q: str) -> a: str
\"\"\"Q: {{q}} A: {{a}}\"\"\"

flow main(q: str) -> a: str {
    a = answer(q)
}
"""


def test_a_call_falls_back_to_the_next_qualifying_model_and_the_trace_says_so(
    compile_source, tmp_path: Path
):
    compile_source(TWO_MODELS)
    assert llmflow.compile(tmp_path / "prog.llmflow", optimize=False).fallbacks == {}  # -O0
    plan = llmflow.compile(tmp_path / "prog.llmflow")
    (call,) = plan.calls()
    assert call.call is not None and call.call.model == "small"
    assert plan.fallbacks[call.id] == ["big"]

    def script(req: GenerationRequest) -> str:
        if req.model == "small":
            raise BackendError("small: 503 overloaded", status=503, retryable=True)
        return "from big"

    run_dir = RunDir.create(tmp_path / "home")
    result = asyncio.run(
        llmflow.run_async(
            plan,
            {"q": "why"},
            backend=ScriptedBackend(script),
            run_dir=run_dir,
            retry=RetryPolicy(attempts=2, base=0.0),
        )
    )
    assert result.outputs == {"a": "from big"}
    records = [json.loads(line) for line in run_dir.trace.read_text().splitlines()]
    assert [(r["llmflow.model"], r["llmflow.status"]) for r in records] == [
        ("small", "error"),
        ("big", "ok"),
    ]
    gave_up, took_over = records
    assert gave_up["llmflow.retries"] == 1 and gave_up["events"][0]["reason"] == "503"
    assert "gave up after 2 tries" in gave_up["error.type"]
    assert took_over["llmflow.fallback_from"] == "small"
    assert took_over["llmflow.retries"] == 0
    assert [e["name"] for e in took_over["events"]] == ["fallback"]
    assert took_over["gen_ai.request.model"] == "big"
    assert took_over["gen_ai.usage.input_tokens"] > 0
    assert took_over["start"] <= took_over["end"]


def test_cached_prompt_tokens_are_billed_at_the_cached_price():
    """The bill uses the plans' arithmetic (`prices.dollars`): of a reported prompt, the
    tokens the server read from its cache cost `price_cached_in`, the rest `price_in`."""
    spec = resolve("mini", "openai", "gpt-4o-mini")
    assert spec.price_cached_in is not None and spec.price_cached_in < (spec.price_in or 0)
    reply = Generation(text="ok", input_tokens=2000, cached_tokens=1152, output_tokens=10)
    backend = ScriptedBackend(lambda req: reply)
    gw = Gateway(backend, {"mini": spec}, sleep=Sleeps())
    req = GenerationRequest(model="mini", turns=[Turn(role="user", text="hi")])
    answer = asyncio.run(gw.generate(req))
    assert answer.dollars == pytest.approx(dollars(spec, 848, 1152, 10))
    assert answer.dollars < dollars(spec, 2000, 0, 10)

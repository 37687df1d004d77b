"""The budget: a request that does not fit waits for those in flight, gives up only when
nothing can free enough, and spending never passes the limit, whatever the answers cost
and in whatever order they settle; what servers report (or leave out) is what is
charged; dense text cannot overspend; a resumed run counts what it spent before."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler import tokens
from llmflow.compiler.catalog import resolve
from llmflow.compiler.prices import dollars
from llmflow.runtime.backends.base import BackendError, Generation, GenerationRequest, Turn
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.budget import Budget, BudgetExceeded
from llmflow.runtime.gateway import Gateway, prompt_tokens_at_most
from llmflow.runtime.retry import RetryPolicy
from llmflow.runtime.runs import RunDir

SPEC = resolve("m", "openai_compatible", "served", [("test", {"price_in": 1.0, "price_out": 2.0})])
MODELS = {"m": SPEC}


def request(text: str = "hello", max_tokens: int = 256) -> GenerationRequest:
    return GenerationRequest(model="m", turns=[Turn(role="user", text=text)], max_tokens=max_tokens)


def reservation(req: GenerationRequest) -> float:
    return dollars(SPEC, prompt_tokens_at_most(req), 0, req.max_tokens)


class Sleeps:
    async def __call__(self, seconds: float) -> None:
        return None


def gateway(script: object, budget: Budget) -> Gateway:
    backend = ScriptedBackend(script)  # type: ignore[arg-type]
    return Gateway(backend, MODELS, budget=budget, sleep=Sleeps())


# ---- waiting --------------------------------------------------------------------------


def test_a_request_that_does_not_fit_now_waits_for_the_ones_in_flight():
    budget = Budget(1.0)
    order: list[str] = []

    async def main() -> None:
        await budget.reserve(0.6)
        waiter = asyncio.create_task(budget.reserve(0.6))
        await asyncio.sleep(0.01)
        assert not waiter.done()  # 0.6 + 0.6 > 1: it waits, it does not fail
        order.append("settle")
        await budget.settle(0.6, 0.1)  # the first cost far less than it reserved
        await waiter
        order.append("second reserved")

    asyncio.run(main())
    assert order == ["settle", "second reserved"]
    assert budget.spent == pytest.approx(0.1) and budget.reserved == pytest.approx(0.6)


def test_it_gives_up_when_nothing_is_in_flight_or_nothing_could_free_enough():
    async def main() -> None:
        budget = Budget(1.0, spent=0.5)
        with pytest.raises(BudgetExceeded, match=r"could cost up to \$0.6000.*\$0.5000 left"):
            await budget.reserve(0.6)  # nothing in flight: fails at once
        await budget.reserve(0.3)
        with pytest.raises(BudgetExceeded):
            # Would not fit even if the 0.3 in flight cost nothing: no point waiting.
            await asyncio.wait_for(budget.reserve(0.6), 5)
        waiter = asyncio.create_task(budget.reserve(0.4))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await budget.settle(0.3, 0.2)  # 0.7 spent, nothing in flight, 0.4 does not fit
        with pytest.raises(BudgetExceeded):
            await asyncio.wait_for(waiter, 5)
        assert budget.in_flight == 0 and budget.reserved == 0

    asyncio.run(main())


def test_one_budget_serves_several_runs():
    budget = Budget(1.0)

    async def wait_once() -> None:
        await budget.reserve(0.6)
        waiter = asyncio.create_task(budget.reserve(0.6))
        await asyncio.sleep(0.01)
        await budget.settle(0.6, 0.1)
        await waiter
        await budget.settle(0.6, 0.1)

    asyncio.run(wait_once())
    asyncio.run(wait_once())  # another event loop
    assert budget.spent == pytest.approx(0.4) and budget.in_flight == 0


def test_a_waiting_request_holds_no_rate_limit_slot():
    """One request in flight at a time (concurrency=1); the second waits for the budget
    while the first holds the only slot: the first must finish and free both."""
    spec = SPEC.model_copy(update={"limits": SPEC.limits.model_copy(update={"concurrency": 1})})
    budget = Budget(1.5 * reservation(request()))
    answer = Generation(text="ok", input_tokens=5, output_tokens=2)
    gw = Gateway(ScriptedBackend(lambda r: answer, delay=0.01), {"m": spec}, budget=budget)

    async def main() -> list[Generation]:
        return await asyncio.wait_for(
            asyncio.gather(*(gw.generate(request(f"q{i}")) for i in range(6))), 30
        )

    assert len(asyncio.run(main())) == 6


def test_a_30_call_run_spends_its_budget_instead_of_stopping_early():
    """Each call reserves ~10x what it costs: without waiting, a run of 30 concurrent
    calls stopped after the first few reservations and left most of the budget."""
    answer = Generation(text="ok", input_tokens=20, output_tokens=20)
    most = reservation(request("q00"))
    cost = dollars(SPEC, 20, 0, 20)
    budget = Budget(8 * most)
    gw = Gateway(ScriptedBackend(lambda r: answer, delay=0.01), MODELS, budget=budget)

    async def one(i: int) -> bool:
        try:
            await gw.generate(request(f"q{i:02}"))
            return True
        except BudgetExceeded:
            return False

    async def main() -> list[bool]:
        return await asyncio.gather(*(one(i) for i in range(30)))

    sent = sum(asyncio.run(main()))
    assert sent == 30  # 30 real costs fit the budget; only the reservations did not
    assert budget.spent == pytest.approx(30 * cost) and budget.spent <= budget.limit


# ---- never exceeded -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_spending_never_passes_the_limit_under_concurrency_with_random_costs(seed: int):
    rng = random.Random(seed)
    budget = Budget(0.05)
    peaks: list[float] = []

    async def script(req: GenerationRequest) -> Generation:
        peaks.append(budget.spent + budget.reserved)
        await asyncio.sleep(rng.random() / 500)
        prompt = rng.randint(1, prompt_tokens_at_most(req))
        output = rng.randint(1, req.max_tokens)
        return Generation(text="x", input_tokens=prompt, output_tokens=output)

    gw = gateway(script, budget)
    requests = [
        request("w" * rng.randint(0, 2000), max_tokens=rng.choice([16, 64])) for _ in range(300)
    ]

    async def one(req: GenerationRequest) -> bool:
        await asyncio.sleep(rng.random() / 1000)
        try:
            await gw.generate(req)
            return True
        except BudgetExceeded:
            return False

    async def main() -> list[bool]:
        return await asyncio.wait_for(asyncio.gather(*(one(r) for r in requests)), 60)

    sent = asyncio.run(main())
    assert 0 < sum(sent) < len(requests)
    assert max(peaks) <= budget.limit + 1e-12
    assert budget.spent <= budget.limit and budget.in_flight == 0 and budget.reserved == 0
    # Never wasted: every request refused needed more than what was left at the end.
    refused = [reservation(r) for r, ok in zip(requests, sent, strict=True) if not ok]
    assert budget.limit - budget.spent < min(refused)


def test_dense_text_cannot_overspend():
    """CJK and emoji are 1-4 tokens a character: the server here reports the worst case a
    byte-level tokenizer can (a token per UTF-8 byte). Counting 3 characters a token, 20
    such calls spent ~4x a budget meant for 5."""
    text = "東京都の天気は晴れ。🌸🎉" * 40
    req = request(text, max_tokens=16)
    worst = len(text.encode()) + 8  # every byte a token, and a chat template's markers
    answer = Generation(text="晴れ", input_tokens=worst, output_tokens=16)
    budget = Budget(5 * dollars(SPEC, worst, 0, 16))
    gw = Gateway(ScriptedBackend(lambda r: answer, delay=0.01), MODELS, budget=budget)

    async def main() -> list[object]:
        return await asyncio.gather(*(gw.generate(req) for _ in range(20)), return_exceptions=True)

    results = asyncio.run(main())
    sent = [r for r in results if isinstance(r, Generation)]
    assert all(isinstance(r, Generation | BudgetExceeded) for r in results)
    assert 1 <= len(sent) <= 5
    assert budget.spent <= budget.limit


# ---- what is charged ------------------------------------------------------------------


def test_an_answer_is_charged_the_usage_its_server_reports():
    budget = Budget(1.0)
    gw = gateway(lambda r: Generation(text="ok", input_tokens=40, output_tokens=3), budget)
    answer = asyncio.run(gw.generate(request()))
    assert answer.dollars == budget.spent == pytest.approx(dollars(SPEC, 40, 0, 3))


def test_usage_a_server_leaves_out_is_charged_at_its_bound():
    req = request("hello", max_tokens=32)
    budget = Budget(1.0)
    gw = gateway(lambda r: Generation(text="some text"), budget)  # no usage at all
    answer = asyncio.run(gw.generate(req))
    assert answer.dollars == pytest.approx(reservation(req)) == pytest.approx(budget.spent)
    budget = Budget(1.0)
    gw = gateway(lambda r: Generation(text="", input_tokens=12), budget)  # nothing generated
    assert asyncio.run(gw.generate(req)).dollars == pytest.approx(dollars(SPEC, 12, 0, 0))


def test_usage_above_the_reservation_is_charged_as_reported_and_stops_the_next():
    req = request("hello", max_tokens=8)
    budget = Budget(3 * reservation(req))
    # A server that ignored max_tokens: what it reports is what it bills.
    gw = gateway(lambda r: Generation(text="long", input_tokens=10, output_tokens=2000), budget)
    answer = asyncio.run(gw.generate(req))
    assert answer.dollars == pytest.approx(dollars(SPEC, 10, 0, 2000)) == budget.spent
    with pytest.raises(BudgetExceeded):
        asyncio.run(gw.generate(req))


def test_a_try_without_an_answer_counts_as_billed_and_a_retry_reserves_again():
    req = request("hello", max_tokens=32)
    most = reservation(req)
    errors = [
        BackendError("m: no answer in 60s", retryable=True),  # a timeout: maybe billed
        BackendError("m: 503", status=503, retryable=True),  # the server said no: free
    ]

    def script(r: GenerationRequest) -> Generation:
        if errors:
            raise errors.pop(0)
        return Generation(text="ok", input_tokens=10, output_tokens=2)

    budget = Budget(1.0)
    gw = Gateway(
        ScriptedBackend(script), MODELS, budget=budget, policy=RetryPolicy(base=0.0), sleep=Sleeps()
    )
    answer = asyncio.run(gw.generate(req))
    assert answer.retries == 2 and answer.dollars == pytest.approx(dollars(SPEC, 10, 0, 2))
    assert budget.unanswered == pytest.approx(most)
    assert budget.spent == pytest.approx(most + answer.dollars)
    assert budget.in_flight == 0 and budget.reserved == 0

    # The retry that can no longer be paid for is not sent.
    budget = Budget(1.5 * most)
    errors[:] = [BackendError("m: dropped", retryable=True)]
    gw = Gateway(
        ScriptedBackend(script), MODELS, budget=budget, policy=RetryPolicy(base=0.0), sleep=Sleeps()
    )
    with pytest.raises(BudgetExceeded):
        asyncio.run(gw.generate(req))
    assert budget.spent == pytest.approx(most) and budget.in_flight == 0


def test_a_cancelled_request_counts_as_billed():
    budget = Budget(1.0)

    async def slow(r: GenerationRequest) -> str:
        await asyncio.sleep(10)
        return "late"

    gw = gateway(slow, budget)

    async def main() -> None:
        task = asyncio.create_task(gw.generate(request()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert budget.spent == pytest.approx(reservation(request())) == budget.unanswered
    assert budget.in_flight == 0


# ---- estimates ------------------------------------------------------------------------


HOSTILE = [
    "",
    "a",
    " ",
    "hello world",
    "1234567890" * 20,
    "!@#$%^&*()_+{}|:<>?~`" * 10,
    "\x00\x01\x02\x7f" * 10,
    "東京都の天気は晴れ" * 20,
    "🌸🎉👩‍👩‍👧‍👦" * 20,
    "Ünïcödé ñ ß ø " * 20,
    "Привет, мир! " * 20,
    "\ud800 lone surrogate",
    "​\u200b\ufeff" * 30,
]


@pytest.mark.parametrize("text", HOSTILE)
def test_the_bound_counts_a_token_per_utf8_byte(text: str):
    assert tokens.at_most(text) == len(text.encode("utf-8", "surrogatepass")) + 1
    assert tokens.typical(text) <= tokens.at_most(text)


def test_the_bound_holds_for_a_real_byte_level_tokenizer():
    """SmolLM2's vocabulary (byte-level BPE, loaded alone: no weights)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llmflow.runtime.backends.local import find_model_file

    try:
        path = find_model_file("smollm2-135m")
    except BackendError as error:
        pytest.skip(str(error))
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    rng = random.Random(0)
    texts = [t for t in HOSTILE if "\ud800" not in t]
    texts += ["".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(200)) for _ in range(20)]
    texts = [t for t in texts if not any(0xD800 <= ord(c) < 0xE000 for c in t)]
    for text in texts:
        real = len(vocab.tokenize(text.encode(), add_bos=True, special=False))
        assert real <= tokens.at_most(text) + 1, text  # + the BOS token


def test_the_optimizer_estimates_dense_text_with_the_same_module(compile_source, tmp_path: Path):
    doc = "東京都の天気は晴れ。" * 100
    source = """
    model m = openai_compatible("served", base_url="http://127.0.0.1:9/v1",
                                price_in=1, price_out=2)
    fn ask(d: str) -> a: str
    \"\"\"{{d}} {{a | max_tokens=10}}\"\"\"
    flow main(d: str) -> a: str {
        a = ask(d)
    }
    """
    compile_source(source)
    plan = llmflow.compile(tmp_path / "prog.llmflow", inputs={"d": doc})
    assert plan.total is not None
    # A token per CJK character, not one per four.
    assert plan.total.input_tokens == pytest.approx(tokens.typical(doc), abs=8)
    assert plan.total.input_tokens >= len(doc) * 0.9


# ---- resume ---------------------------------------------------------------------------


PRICED = """
model m = openai_compatible("served", base_url="http://127.0.0.1:9/v1", price_in=1000,
                            price_out=1000)

fn ask(q: str) -> a: str
\"\"\"Ask {{q}}: {{a | max_tokens=10}}\"\"\"

flow main(qs: list[str]) -> answers: list[str] {
    answers = map q in qs: ask(q)
}
"""


def test_a_resumed_run_counts_what_it_spent_before(compile_source, tmp_path: Path):
    plan = compile_source(PRICED)
    qs = [f"q{i}" for i in range(4)]
    answer = Generation(text="ok", input_tokens=10, output_tokens=10)
    cost = dollars(plan.models["m"], 10, 0, 10)
    run_dir = RunDir.create(tmp_path / "home")
    served = ScriptedBackend(lambda r: answer)
    first = Budget(10.0)
    asyncio.run(llmflow.run_async(plan, {"qs": qs}, served, budget=first, run_dir=run_dir))
    assert first.spent == pytest.approx(4 * cost)

    # Resumed, with room for less than one more call: the four are replayed for free,
    # and what they cost counts as spent.
    again = Budget(4 * cost + cost / 2)
    result = asyncio.run(
        llmflow.run_async(plan, {"qs": [*qs, "q4"]}, served, budget=again, run_dir=run_dir)
    )
    assert again.spent == pytest.approx(4 * cost)
    assert len(served.served) == 4  # nothing new was sent: q4 did not fit
    assert [f.not_run for f in result.failures] == [True]


def test_a_budget_refuses_a_model_without_a_price(compile_source, tmp_path: Path):
    source = """
    model mystery = openai_compatible("gpt-9-turbo", base_url="http://127.0.0.1:9/v1")
    fn ask(q: str) -> a: str
    \"\"\"{{q}} {{a}}\"\"\"
    flow main(q: str) -> a: str {
        a = ask(q)
    }
    """
    compile_source(source)
    path = tmp_path / "prog.llmflow"
    with pytest.raises(llmflow.LLMFlowError, match="model 'mystery'.*no price_in and price_out"):
        llmflow.compile(path, budget=1.0)
    plan = llmflow.compile(path, optimize=False)  # -O0: the run checks it
    with pytest.raises(llmflow.LLMFlowError, match="declare price_in and price_out"):
        asyncio.run(llmflow.run_async(plan, {"q": "?"}, ScriptedBackend(lambda r: "x"), budget=1))
    llmflow.compile(path)  # no budget: fine (the plan flags it as counted free)
    # A declared price, even 0, is a price.
    compile_source(source.replace('-turbo"', '-turbo", price_in=0, price_out=0'))
    llmflow.compile(path, budget=1.0)

"""Plans count what the backend will do: a shared prefix is cached only where the model's
backend reuses it (OpenAI from 1,024 tokens, in steps of 128; the embedded engine from
64), priced with the arithmetic the runtime bills with, timed by the backend's declared
timing, never by its name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler import catalog, prefix_reuse, prices
from llmflow.compiler.ir import Plan
from llmflow.compiler.models import Capabilities, Timing
from llmflow.compiler.optimizer import optimize

PREAMBLE = "You are a careful analyst who reads support tickets and classifies them. "
"""18 tokens by the optimizer's estimate (`tokens.typical`: 4 characters a token)."""


def fan_out(tmp_path: Path, model: str, repeats: int) -> Plan:
    """A map of 4 calls on `model` whose prompts share `repeats` copies of PREAMBLE."""
    source = f'''
    model m = {model}

    fn answer(question: str) -> answer: str
    """
    {PREAMBLE * repeats}
    Question: {{{{question}}}}
    {{{{answer | max_tokens=48}}}}
    """

    flow main(questions: list[str]) -> answers: list[str] {{
        answers = map q in questions: answer(q)
    }}
    '''
    path = tmp_path / "prog.llmflow"
    path.write_text(textwrap.dedent(source))
    return optimize(llmflow.compile(path, optimize=False), inputs={"questions": list("abcd")})


def said(plan: Plan, rule: str) -> list[str]:
    return [d.message for d in plan.decisions if d.rule == rule]


def test_openai_does_not_cache_a_prefix_below_1024_tokens(tmp_path: Path) -> None:
    """`plan` used to claim 444 cached tokens for this 148-token prefix on gpt-4o-mini."""
    plan = fan_out(tmp_path, 'openai("gpt-4o-mini")', 8)
    (group,) = plan.groups  # the calls still group: they are scheduled together
    assert 140 <= group.prefix_tokens < 1024
    assert plan.total is not None and plan.total.cached_tokens == 0
    fresh = plan.total.input_tokens
    spec = plan.models["m"]
    assert plan.total.dollars == pytest.approx(
        prices.dollars(spec, fresh, 0, plan.total.output_tokens)
    )
    assert any("below the 1,024 its backend reuses from" in m for m in said(plan, "estimates"))


def test_openai_caches_a_long_prefix_in_steps_of_128_tokens(tmp_path: Path) -> None:
    plan = fan_out(tmp_path, 'openai("gpt-4o-mini")', 64)
    (group,) = plan.groups
    assert group.prefix_tokens > 1024 and group.prefix_tokens % 128 != 0
    counted = group.prefix_tokens // 128 * 128  # OpenAI reports cache hits in 128s
    assert plan.total is not None
    assert plan.total.cached_tokens == pytest.approx(3 * counted)  # all but the first
    spec = plan.models["m"]
    cached_price = prices.price_cached_in(spec)
    assert 0 < cached_price < prices.price_in(spec)  # and they cost less
    fresh = plan.total.input_tokens - plan.total.cached_tokens
    assert plan.total.dollars == pytest.approx(
        prices.dollars(spec, fresh, plan.total.cached_tokens, plan.total.output_tokens)
    )
    assert not any("below" in m for m in said(plan, "estimates"))


def test_the_embedded_engine_reuses_from_64_tokens(tmp_path: Path) -> None:
    short = fan_out(tmp_path, 'local("smollm2-135m")', 3)
    (group,) = short.groups  # a map's instances group below the threshold
    assert group.prefix_tokens < 64
    assert short.total is not None and short.total.cached_tokens == 0
    assert any("below the 64 its backend reuses from" in m for m in said(short, "estimates"))
    long = fan_out(tmp_path, 'local("smollm2-135m")', 4)
    (group,) = long.groups
    assert group.prefix_tokens >= 64
    assert long.total is not None
    assert long.total.cached_tokens == pytest.approx(3 * group.prefix_tokens)


def test_the_reuse_rule() -> None:
    local = catalog.resolve("m", "local", "smollm2-135m")
    assert prefix_reuse.cached_tokens_expected(local, 63.9) == 0
    assert prefix_reuse.cached_tokens_expected(local, 64) == 64
    assert prefix_reuse.cached_tokens_expected(local, 200.5) == 200.5
    hosted = catalog.resolve("m", "openai", "gpt-4o-mini")
    assert prefix_reuse.cached_tokens_expected(hosted, 1023) == 0
    assert prefix_reuse.cached_tokens_expected(hosted, 1024) == 1024
    assert prefix_reuse.cached_tokens_expected(hosted, 1279.5) == 1152
    never = hosted.model_copy(update={"capabilities": Capabilities()})
    assert prefix_reuse.cached_tokens_expected(never, 5000) == 0
    # Warming a hosted cache waits for a prefix it reuses and that repays a round trip.
    server = catalog.resolve("m", "openai_compatible", "x")
    assert not prefix_reuse.worth_warming(server, 512) and prefix_reuse.worth_warming(server, 1024)
    assert not prefix_reuse.worth_warming(never, 4096)


def test_backend_capabilities_not_names_decide_cost_and_order(tmp_path: Path) -> None:
    """A hosted model whose kind declared it serial, free and timed like the embedded
    engine is planned exactly like one: the optimizer reads capabilities, not names."""
    local = fan_out(tmp_path, 'local("smollm2-135m")', 4)
    plan = fan_out(tmp_path, 'openai_compatible("x", price_in=0, price_out=0)', 4)
    embedded = local.models["m"].capabilities
    assert embedded.timing == Timing.embedded(225.8, 75.8)  # the catalog's measured speed
    plan.models["m"] = plan.models["m"].model_copy(update={"capabilities": embedded})
    plan = optimize(plan, inputs={"questions": list("abcd")})
    assert plan.total is not None and local.total is not None
    assert plan.total.seconds == pytest.approx(local.total.seconds)
    assert plan.makespan == pytest.approx(local.makespan)  # its calls queue, as on local
    assert prices.priced(plan.models["m"].model_copy(update={"price_in": None}))

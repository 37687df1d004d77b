"""What tokens cost on a model, in dollars: the one place prices are read and multiplied.

The optimizer's estimates (`optimizer/costs.py`), the budget's reservations and the bill
of every answer (`runtime/gateway.py`) all go through `dollars`, so a plan's figures and
a run's are the same arithmetic over different token counts: estimated ones before the
run, the counts the server reported after.

Prices are USD per million tokens (`ModelSpec.price_in`, `price_out`, `price_cached_in`,
resolved from the declaration, the config file or the price table; an embedded model's
are 0). An unknown price counts as 0 in plans without a budget and is refused by a
budget (`check_priced`), unless the model's backend declares it free
(`Capabilities.free`: in-process inference), whose price is always known.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmflow.compiler.models import ModelSpec
from llmflow.errors import LLMFlowError


class UnknownPrice(LLMFlowError):
    """A budget was asked for, but a model it would pay for has no price."""


def price_in(model: ModelSpec) -> float:
    """USD per million fresh prompt tokens (0 when unknown)."""
    return model.price_in or 0.0


def price_out(model: ModelSpec) -> float:
    """USD per million output tokens (0 when unknown)."""
    return model.price_out or 0.0


def price_cached_in(model: ModelSpec) -> float:
    """USD per million prompt tokens read from a reused prefix; without a cache price of
    its own, they cost what fresh ones do (the provider bills them in full)."""
    return model.price_cached_in if model.price_cached_in is not None else price_in(model)


def priced(model: ModelSpec) -> bool:
    """Whether what a call costs on this model is known (a free backend's always is)."""
    return model.capabilities.free or (model.price_in is not None and model.price_out is not None)


def check_priced(models: Iterable[ModelSpec]) -> None:
    """A budget cannot be kept on a model whose price is unknown: say which, and how to
    declare its price, instead of counting it as free."""
    lines = []
    for m in (m for m in models if not priced(m)):
        missing = " and ".join(n for n in ("price_in", "price_out") if getattr(m, n) is None)
        lines.append(
            f"--budget: model '{m.name}' ({m.backend} \"{m.id}\") has no {missing}; declare "
            "price_in and price_out on it (USD per 1M tokens, 0 for a free server), or a "
            "catalog_id from the price table (llmflow models --prices TEXT)"
        )
    if lines:
        raise UnknownPrice("\n".join(lines))


def dollars(model: ModelSpec, fresh: float, cached: float, output: float) -> float:
    """What tokens cost on a model: `fresh` prompt tokens evaluated, `cached` ones read
    from a reused prefix, and `output` tokens generated."""
    return (
        fresh * price_in(model) + cached * price_cached_in(model) + output * price_out(model)
    ) / 1e6


def prompt_dollars(model: ModelSpec, prompt: float, cached: float, output: float) -> float:
    """`dollars` for a prompt of `prompt` tokens of which `cached` were reused (as usage
    reports count them: cached tokens are part of the prompt, never more than it)."""
    cached = min(max(cached, 0.0), prompt)
    return dollars(model, prompt - cached, cached, output)

"""The price table: what a hosted model costs and how much text it takes.

The data is a pinned, trimmed copy of litellm's `model_prices_and_context_window_backup.json`
(`model_prices.json` beside this file; its `_source` key says which litellm release and
when). Only chat and completion models with token prices are kept, and only the columns
the optimizer reads. litellm itself is never imported.

Prices in the file are litellm's USD per token; `PriceEntry` converts them to USD per
million tokens, the unit of every price in llmflow.

To refresh the copy from a newer litellm (the wheel is only downloaded, never installed):

    pip download litellm --no-deps -d /tmp/litellm
    python -m llmflow.compiler.catalog /tmp/litellm/litellm-*.whl --date YYYY-MM-DD
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from llmflow.compiler.models import Limits, ModelSpec
from llmflow.runtime.backends import registry
from llmflow.runtime.backends.registry import Catalog

DECLARATION = "declaration"
"""The origin of a value written in the program's `model` declaration."""

DATA_FILE = Path(__file__).with_name("model_prices.json")
LITELLM_FILE = "litellm/model_prices_and_context_window_backup.json"
MODES = ("chat", "completion")
COLUMNS = (
    "litellm_provider",
    "mode",
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "max_input_tokens",
    "max_output_tokens",
    "supports_response_schema",
    "supports_prompt_caching",
    "supports_function_calling",
)


@dataclass(frozen=True)
class PriceEntry:
    """One row of the price table, in llmflow's units."""

    key: str
    """The table's key: an API model id, often with a provider prefix (`groq/...`)."""
    provider: str
    """litellm's provider name (`openai`, `anthropic`, `groq`, ...)."""
    chat: bool
    """Chat model (mode `chat`) or completion model (mode `completion`)."""
    price_in: float
    """USD per million input tokens."""
    price_out: float
    """USD per million output tokens."""
    price_cached_in: float | None
    """USD per million input tokens read from the provider's prompt cache."""
    context: int | None
    """Most input tokens (litellm's max_input_tokens)."""
    max_output: int | None
    supports_schema: bool | None
    """Structured output with a JSON schema (None: the table does not say)."""
    supports_caching: bool | None
    supports_tools: bool | None


def per_million(per_token: float | None) -> float | None:
    """USD per token → USD per million tokens, without binary rounding noise."""
    if per_token is None:
        return None
    return float(Decimal(repr(per_token)).scaleb(6))


@cache
def _table() -> tuple[dict[str, Any], dict[str, list[Any]]]:
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    if tuple(data["_columns"]) != COLUMNS:
        raise ValueError(f"{DATA_FILE.name}: unexpected columns {data['_columns']}")
    return data["_source"], data["models"]


def source() -> dict[str, Any]:
    """Where the table comes from: package, version, file, sha256, date taken."""
    return dict(_table()[0])


def source_label() -> str:
    """How the table is named where a value came from it: `litellm 1.2.3 price table`."""
    src = _table()[0]
    return f"{src['package']} {src['version']} price table"


def keys() -> list[str]:
    return list(_table()[1])


def get(key: str) -> PriceEntry | None:
    """The table's entry with exactly this key."""
    row = _table()[1].get(key)
    if row is None:
        return None
    r = dict(zip(COLUMNS, row, strict=True))
    return PriceEntry(
        key=key,
        provider=r["litellm_provider"],
        chat=r["mode"] == "chat",
        price_in=per_million(r["input_cost_per_token"]) or 0.0,
        price_out=per_million(r["output_cost_per_token"]) or 0.0,
        price_cached_in=per_million(r["cache_read_input_token_cost"]),
        context=r["max_input_tokens"],
        max_output=r["max_output_tokens"],
        supports_schema=r["supports_response_schema"],
        supports_caching=r["supports_prompt_caching"],
        supports_tools=r["supports_function_calling"],
    )


def lookup(backend: str, model_id: str, catalog_id: str | None = None) -> PriceEntry | None:
    """The entry for a declared model, as its kind finds it (`BackendKind.price_entry`):
    `catalog_id` (the `catalog_id` option) names the entry outright; otherwise an `openai`
    model is looked up by its id, then as `openai/ID`, and an `openai_compatible` model
    has none: the same id served by your own server costs what you pay for the server,
    not a provider's price."""
    return registry.get(backend).price_entry(model_id, catalog_id)


def put_entry(found: Catalog, entry: PriceEntry) -> None:
    """Record a price-table entry's values in a kind's catalog lookup."""
    found.put(
        source_label(),
        context=entry.context,
        max_output=entry.max_output,
        chat=entry.chat,
        price_in=entry.price_in,
        price_out=entry.price_out,
        price_cached_in=entry.price_cached_in,
        supports_schema=entry.supports_schema,
    )
    found.catalog_id = entry.key


def search(text: str, limit: int = 20) -> list[str]:
    """Table keys containing `text` (case-insensitive), shortest first."""
    needle = text.lower()
    hits = [k for k in _table()[1] if needle in k.lower()]
    return sorted(hits, key=lambda k: (len(k), k))[:limit]


# ---- resolving a model: declaration > config file > catalog -----------------------------

RESOLVED = (
    "context",
    "max_output",
    "chat",
    "price_in",
    "price_out",
    "price_cached_in",
    "supports_schema",
    "rpm",
    "tpm",
    "concurrency",
)
"""The fields taken from the first layer that sets them (skills merge per skill)."""
NOT_SETTINGS = ("context", "chat", "skills", "backend", "id")
"""Keys kept out of `ModelSpec.settings`: they have fields of their own (or are the model)."""


def resolve(
    name: str,
    backend: str,
    model_id: str,
    layers: Sequence[tuple[str, dict[str, Any]]] = (),
) -> ModelSpec:
    """A model's spec from its option layers, highest precedence first (the declaration,
    then the config file), over what its kind's catalogs know. Each value records its
    origin. The layers hold valid settings of the kind (see `compiler/resolve.py`)."""
    kind = registry.get(backend)
    written: dict[str, Any] = {}
    for _, opts in reversed(layers):
        written.update(opts)
    settings = kind.settings.model_validate(written)
    found = kind.catalog(model_id, settings)
    fields: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in RESOLVED:
        for label, opts in layers:
            if key in opts:
                fields[key], sources[key] = opts[key], label
                break
        else:
            if key in found.values:
                fields[key], sources[key] = found.values[key], found.origin[key]
    skills: dict[str, float] = {}
    skill_source: dict[str, str] = {}
    ordered = [(found.origin.get("skills", ""), {"skills": found.values.get("skills", {})})]
    for label, opts in [*ordered, *reversed(layers)]:
        for skill, score in (opts.get("skills") or {}).items():
            skills[skill], skill_source[skill] = float(score), label
    set_by = {k: next(label for label, opts in layers if k in opts) for k in written}
    window, window_source = kind.context_window(
        fields.get("context"), sources.get("context"), settings, set_by
    )
    if window is not None:
        fields["context"], sources["context"] = window, window_source or "default"
    prices = ("price_in", "price_out", "price_cached_in")
    price_origins = list(dict.fromkeys(sources[p] for p in prices if p in sources))
    return ModelSpec(
        name=name,
        backend=backend,
        id=model_id,
        context=fields.get("context"),
        max_output=fields.get("max_output"),
        chat=fields.get("chat", True),
        price_in=_float(fields.get("price_in")),
        price_out=_float(fields.get("price_out")),
        price_cached_in=_float(fields.get("price_cached_in")),
        price_source=" + ".join(price_origins) or None,
        supports_schema=fields.get("supports_schema"),
        skills=skills,
        skill_source=skill_source,
        limits=Limits(**{k: fields.get(k) for k in ("rpm", "tpm", "concurrency")}),
        prefill_tps=found.values.get("prefill_tps"),
        decode_tps=found.values.get("decode_tps"),
        speed_source=found.origin.get("prefill_tps"),
        catalog_id=found.catalog_id,
        sources=sources,
        capabilities=kind.capabilities(found),
        settings={k: v for k, v in written.items() if k not in NOT_SETTINGS},
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# ---- vendoring --------------------------------------------------------------------------


def trim(prices: dict[str, Any]) -> dict[str, list[Any]]:
    """litellm's table → the rows llmflow keeps: chat/completion models with token prices."""
    rows: dict[str, list[Any]] = {}
    for key in sorted(prices):
        entry = prices[key]
        if not isinstance(entry, dict) or entry.get("mode") not in MODES:
            continue
        if not all(
            isinstance(entry.get(k), int | float) and not isinstance(entry.get(k), bool)
            for k in ("input_cost_per_token", "output_cost_per_token")
        ):
            continue
        row = []
        for column in COLUMNS:
            value = entry.get(column)
            if column.startswith("max_") and not isinstance(value, int):
                value = None
            if column.startswith("supports_") and not isinstance(value, bool):
                value = None
            row.append(value)
        rows[key] = row
    return rows


def render(source: dict[str, Any], rows: dict[str, list[Any]]) -> str:
    """The data file: its source, its columns, then one model per line (diffable)."""
    lines = [
        "{",
        f'"_source": {json.dumps(source, ensure_ascii=False)},',
        f'"_columns": {json.dumps(list(COLUMNS))},',
        '"models": {',
    ]
    body = [f"{json.dumps(key)}: {json.dumps(row)}" for key, row in rows.items()]
    lines.append(",\n".join(body))
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def vendor(wheel: Path, date: str, out: Path = DATA_FILE) -> int:
    """Extract litellm's table from its wheel and write the trimmed copy; return its rows."""
    match = re.match(r"litellm-([^-]+)-", wheel.name)
    if match is None:
        raise SystemExit(f"{wheel.name} does not look like a litellm wheel")
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(LITELLM_FILE)
    rows = trim(json.loads(raw))
    source = {
        "package": "litellm",
        "version": match.group(1),
        "file": LITELLM_FILE,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "taken": date,
        "url": f"https://pypi.org/project/litellm/{match.group(1)}/",
        "license": "MIT (litellm)",
        "kept": "entries with mode chat or completion and numeric input/output token prices",
        "units": "USD per token; max_* in tokens; null: not given",
    }
    out.write_text(render(source, rows), encoding="utf-8")
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Vendor litellm's price table.")
    parser.add_argument("wheel", type=Path, help="a litellm wheel from `pip download`")
    parser.add_argument("--date", required=True, help="the date the copy is taken")
    parser.add_argument("--out", type=Path, default=DATA_FILE)
    args = parser.parse_args(argv)
    count = vendor(args.wheel, args.date, args.out)
    print(f"{args.out}: {count} models")


if __name__ == "__main__":
    main()

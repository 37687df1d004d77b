"""The model catalog: the vendored price table, what a declared model resolves to and
where each value comes from, and `llmflow models`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow.cli import main
from llmflow.compiler import catalog
from llmflow.compiler.check import Checked
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.models import (
    LOCAL_CONTEXT,
    LOCAL_MODELS,
    LOCAL_SKILL_SOURCE,
    default_model,
    local_context,
)

Check = Callable[..., Checked]
Diags = Callable[..., list[Diagnostic]]
Write = Callable[[str, str], Path]

TABLE = "litellm 1.110.2 price table"

FLOW = '''
@model(MODEL)
fn answer(q: str) -> a: str
"""
{{q}} {{a}}
"""

flow main(q: str) -> a: str {
    a = answer(q)
}
'''


def program(models: str, pin: str) -> str:
    return models + FLOW.replace("MODEL", pin)


# ---- the vendored file ------------------------------------------------------------------


def test_vendored_file_records_its_source_and_keeps_only_priced_chat_and_completion() -> None:
    data = json.loads(catalog.DATA_FILE.read_text(encoding="utf-8"))
    source = data["_source"]
    assert (source["package"], source["version"], source["taken"]) == (
        "litellm",
        "1.110.2",
        "2026-11-26",
    )
    assert source["file"] == "litellm/model_prices_and_context_window_backup.json"
    assert len(source["sha256"]) == 64
    assert tuple(data["_columns"]) == catalog.COLUMNS
    rows = data["models"]
    assert len(rows) > 1000
    assert catalog.DATA_FILE.stat().st_size < 600_000
    mode, price_in, price_out = (
        catalog.COLUMNS.index(c) for c in ("mode", "input_cost_per_token", "output_cost_per_token")
    )
    for key, row in rows.items():
        assert len(row) == len(catalog.COLUMNS), key
        assert row[mode] in ("chat", "completion"), key
        assert isinstance(row[price_in], int | float) and isinstance(row[price_out], int | float)
    assert "sample_spec" not in rows
    # per token in the file, exactly as litellm 1.110.2 has it
    assert rows["gpt-4o-mini"] == [
        "openai",
        "chat",
        1.5e-07,
        6e-07,
        7.5e-08,
        128000,
        16384,
        True,
        True,
        True,
    ]


def test_price_lookup_for_a_known_id_in_usd_per_million_tokens() -> None:
    entry = catalog.lookup("openai", "gpt-4o-mini")
    assert entry is not None
    assert (entry.price_in, entry.price_out, entry.price_cached_in) == (0.15, 0.6, 0.075)
    assert (entry.context, entry.max_output) == (128000, 16384)
    assert (entry.supports_schema, entry.supports_caching, entry.supports_tools) == (
        True,
        True,
        True,
    )
    assert entry.provider == "openai" and entry.chat
    big = catalog.lookup("openai", "gpt-4o")
    assert big is not None and (big.price_in, big.price_out, big.price_cached_in) == (
        2.5,
        10.0,
        1.25,
    )
    instruct = catalog.lookup("openai", "gpt-3.5-turbo-instruct")
    assert instruct is not None and not instruct.chat


def test_lookup_rules() -> None:
    assert catalog.lookup("openai", "gpt-9-turbo") is None
    # a self-hosted server's model is not priced by id, only by an explicit catalog_id
    assert catalog.lookup("openai_compatible", "gpt-4o-mini") is None
    named = catalog.lookup("openai_compatible", "whatever", "gpt-4o-mini")
    assert named is not None and named.price_in == 0.15
    assert catalog.per_million(1.5e-07) == 0.15 and catalog.per_million(None) is None


def test_trim_drops_other_modes_unpriced_entries_and_other_fields() -> None:
    raw = {
        "sample_spec": {"mode": "one of: chat, embedding", "input_cost_per_token": 0.0},
        "chat-model": {
            "mode": "chat",
            "litellm_provider": "p",
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 2e-06,
            "max_input_tokens": 1000,
            "supports_vision": True,
            "source": "https://example.com",
        },
        "embedder": {"mode": "embedding", "input_cost_per_token": 1e-07},
        "no-price": {"mode": "chat", "litellm_provider": "p", "max_input_tokens": 10},
    }
    rows = catalog.trim(raw)
    assert rows == {"chat-model": ["p", "chat", 1e-06, 2e-06, None, 1000, None, None, None, None]}


# ---- resolved specs ---------------------------------------------------------------------


def test_openai_declaration_takes_prices_and_context_from_the_table(checked: Check) -> None:
    result = checked(program('model mini = openai("gpt-4o-mini")\n', "mini"))
    mini = result.models["mini"]
    assert (mini.price_in, mini.price_out, mini.price_cached_in) == (0.15, 0.6, 0.075)
    assert (mini.context, mini.max_output, mini.supports_schema) == (128000, 16384, True)
    assert mini.price_source == TABLE
    assert mini.sources["context"] == TABLE and mini.catalog_id == "gpt-4o-mini"
    assert mini.skills == {} and mini.limits.rpm is None


def test_declared_options_override_the_catalog(checked: Check) -> None:
    result = checked(
        program(
            'model mini = openai("gpt-4o-mini", price_in=0.2, context=64000, '
            "supports_schema=false, rpm=500, skills={reasoning: 0.8})\n",
            "mini",
        )
    )
    mini = result.models["mini"]
    assert (mini.price_in, mini.price_out, mini.price_cached_in) == (0.2, 0.6, 0.075)
    assert mini.sources["price_in"] == "declaration"
    assert mini.sources["price_out"] == TABLE
    assert mini.price_source == f"declaration + {TABLE}"
    assert (mini.context, mini.supports_schema) == (64000, False)
    assert mini.sources["context"] == "declaration"
    assert mini.limits.rpm == 500 and mini.sources["rpm"] == "declaration"
    assert mini.skills == {"reasoning": 0.8}
    assert mini.skill_source == {"reasoning": "declaration"}


def test_unknown_hosted_id_has_no_price(checked: Check) -> None:
    result = checked(
        program(
            'model x = openai("gpt-9-turbo")\n'
            'model v = openai_compatible("gpt-4o-mini", base_url="http://localhost:8000/v1")\n',
            "x",
        )
    )
    for name in ("x", "v"):
        spec = result.models[name]
        assert (spec.price_in, spec.price_out, spec.price_cached_in) == (None, None, None)
        assert spec.price_source is None and spec.catalog_id is None
        assert spec.context is None and spec.supports_schema is None


def test_catalog_id_prices_a_compatible_server(checked: Check, diagnostics: Diags) -> None:
    result = checked(
        program(
            'model v = openai_compatible("served", base_url="http://h/v1", '
            'catalog_id="gpt-4o-mini")\n',
            "v",
        )
    )
    v = result.models["v"]
    assert (v.price_in, v.price_out, v.catalog_id) == (0.15, 0.6, "gpt-4o-mini")
    diags = diagnostics(program('model v = openai("x", catalog_id="gpt-4o-mni")\n', "v"))
    assert [(d.kind, d.message, d.hint) for d in diags] == [
        ("unknown-name", "no entry 'gpt-4o-mni' in the price table", "did you mean 'gpt-4o-mini'?")
    ]


def test_embedded_models_are_free_constrained_measured_and_roughly_skilled(
    checked: Check,
) -> None:
    result = checked(
        program(
            'model small = local("smollm2-135m", skills={reasoning: 0.3})\n'
            'model base = local("gemma3-270m")\n',
            "small",
        )
    )
    small, base = result.models["small"], result.models["base"]
    for spec in (small, base):
        assert (spec.price_in, spec.price_out, spec.price_cached_in) == (0.0, 0.0, 0.0)
        assert spec.price_source == "embedded (free)"
        assert spec.supports_schema is True
        local = LOCAL_MODELS[spec.id]
        assert (spec.prefill_tps, spec.decode_tps) == (local.prefill_tps, local.decode_tps)
        assert spec.prefill_tps and spec.decode_tps and spec.speed_source
        assert "bench/local_speed.py" in spec.speed_source
    assert small.skills == {"reasoning": 0.3, "writing": 0.2, "extraction": 0.2}
    assert small.skill_source == {
        "reasoning": "declaration",
        "writing": LOCAL_SKILL_SOURCE,
        "extraction": LOCAL_SKILL_SOURCE,
    }
    assert base.chat is False and base.context == LOCAL_CONTEXT  # not its trained 32768
    assert max(base.skills.values()) < min(LOCAL_MODELS["smollm2-135m"].skills.values()) + 1e-9


def test_a_local_model_is_planned_with_the_window_it_runs_with(checked: Check) -> None:
    """`context` of a local model is what llama.cpp allocates (the runtime reads it):
    n_ctx if set, else the model's window capped at LOCAL_CONTEXT."""
    result = checked(
        program(
            'model capped = local("smollm2-135m")\n'
            'model small = local("smollm2-135m", context=1024)\n'
            'model big = local("gemma3-270m", n_ctx=16384)\n',
            "capped",
        )
    )
    capped, small, big = (result.models[n] for n in ("capped", "small", "big"))
    assert LOCAL_MODELS["smollm2-135m"].context == 8192 > LOCAL_CONTEXT
    assert capped.context == LOCAL_CONTEXT
    assert capped.sources["context"] == f"llmflow catalog, capped (n_ctx {LOCAL_CONTEXT})"
    assert (small.context, small.sources["context"]) == (1024, "declaration")
    assert (big.context, big.sources["context"]) == (16384, "n_ctx (declaration)")
    assert default_model().context == LOCAL_CONTEXT
    assert local_context(None, None) == LOCAL_CONTEXT  # a .gguf file without `context`


def test_the_embedded_default_model() -> None:
    spec = default_model()
    assert (spec.name, spec.backend, spec.id) == ("default", "local", "smollm2-135m")
    assert spec.skills == {"reasoning": 0.1, "writing": 0.2, "extraction": 0.2}
    assert spec.price_in == 0.0 and spec.supports_schema is True


def test_bad_new_options_are_type_errors(diagnostics: Diags) -> None:
    diags = diagnostics(
        program(
            'model m = openai("gpt-4o-mini", price_cached_in=-1, max_output="x", '
            "supports_schema=1)\n",
            "m",
        )
    )
    assert [d.message for d in diags] == [
        "model option 'price_cached_in' cannot be negative",
        "model option 'max_output' expects int",
        "model option 'supports_schema' expects bool",
    ]


# ---- llmflow models ---------------------------------------------------------------------


def test_models_lists_a_program_with_a_local_and_an_openai_model(
    write: Write, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        "prog.llmflow",
        program(
            'model small = local("smollm2-135m")\n'
            'model mini = openai("gpt-4o-mini", skills={reasoning: 0.8}, rpm=500)\n'
            'model mystery = openai("gpt-9-turbo")\n',
            "mini",
        ),
    )
    monkeypatch.chdir(path.parent)
    assert main(["models", "prog.llmflow"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:9] == [
        "NAME",
        "BACKEND",
        "ID",
        "CONTEXT",
        "IN",
        "OUT",
        "CACHED",
        "SPEED",
        "LIMITS",
    ]
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert rows["small"].split()[:8] == [
        "small",
        "*",
        "local",
        "smollm2-135m",
        "4096",  # what it runs with
        "free",
        "free",
        "free",
    ]
    assert f"({LOCAL_SKILL_SOURCE})" in rows["small"]
    assert rows["mini"].split()[:7] == [
        "mini",
        "openai",
        "gpt-4o-mini",
        "128000",
        "0.15",
        "0.6",
        "0.075",
    ]
    assert "rpm=500" in rows["mini"] and "reasoning=0.8 (declaration)" in rows["mini"]
    assert rows["mystery"].split()[3:7] == ["?", "?", "?", "?"]
    # columns line up: ids start under ID, prices end under the end of OUT
    start = lines[0].index(" ID ") + 1
    assert [line[start:].split()[0] for line in lines[1:4]] == [
        "smollm2-135m",
        "gpt-4o-mini",
        "gpt-9-turbo",
    ]
    assert {line[start - 1] for line in lines[:4]} == {" "}
    end = lines[0].index(" OUT ") + 4
    assert [line[:end].split()[-1] for line in lines[1:4]] == ["free", "0.6", "?"]
    assert {line[end] for line in lines[:4]} == {" "}
    notes = "\n".join(lines[4:])
    assert f"mini     {TABLE} (taken 2026-11-26)" in notes
    assert 'mystery  no price ("gpt-9-turbo" is not in the price table)' in notes

    assert main(["models", "prog.llmflow", "--json"]) == 0
    data = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert list(data) == ["small", "mini", "mystery"]
    assert data["small"]["default"] and not data["mini"]["default"]
    assert (data["mini"]["price_in"], data["mini"]["price_out"]) == (0.15, 0.6)
    assert data["mini"]["limits"] == {"rpm": 500, "tpm": None, "concurrency": None}
    assert data["mystery"]["price_in"] is None
    assert data["small"]["prefill_tps"] == LOCAL_MODELS["smollm2-135m"].prefill_tps


def test_models_without_a_program_lists_the_embedded_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["default"]) for m in data] == [
        ("smollm2-135m", True),
        ("gemma3-270m", False),
    ]
    assert all(m["price_in"] == 0 and m["decode_tps"] for m in data)


def test_models_prices_searches_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--prices", "gpt-4o-mini"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[1].split()
    assert first == ["gpt-4o-mini", "openai", "chat", "128000", "0.15", "0.6", "0.075", "yes"]
    assert main(["models", "--prices", "no-such-model-anywhere"]) == 1
    assert "no entry" in capsys.readouterr().err

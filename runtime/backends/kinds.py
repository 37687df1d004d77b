"""llmflow's own backend kinds, declared like any plugin's (entry points in pyproject.toml,
group `llmflow.backends`): settings, catalog, capabilities, and a factory that imports
the heavy backend module only when a run needs it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import field_validator

from llmflow.compiler.diagnostics import did_you_mean
from llmflow.compiler.models import (
    LOCAL_CATALOG_SOURCE,
    LOCAL_CONTEXT,
    LOCAL_MODELS,
    LOCAL_PRICE_SOURCE,
    LOCAL_SKILL_SOURCE,
    LOCAL_SPEED_SOURCE,
    Capabilities,
    ModelSettings,
    ModelSpec,
    Timing,
    local_context,
    settings_problems,
    url_error,
)
from llmflow.runtime.backends.base import BackendError
from llmflow.runtime.backends.registry import BackendKind, Catalog, ModelIdError

if TYPE_CHECKING:
    from llmflow.compiler.catalog import PriceEntry
    from llmflow.runtime.backends.base import Backend


# ---- local: llama.cpp in-process -------------------------------------------------------


class LocalSettings(ModelSettings):
    n_ctx: int | None = None
    """Tokens of context llama.cpp allocates (default: the model's window, at most
    LOCAL_CONTEXT); plans use the same window."""
    state_cache_mb: float | None = None
    """Megabytes of saved KV states this model may keep (default: the backend's whole
    budget, 1 GiB for all models together)."""


def local_settings(spec: ModelSpec) -> LocalSettings:
    """A local model's typed settings; a spec whose settings are not valid ones (built by
    hand: the checker lets no such model through) is the model's error."""
    problems = settings_problems(LocalSettings, spec.settings)
    if problems:
        raise BackendError(f"model '{spec.name}': " + "; ".join(problems.values()))
    return LocalSettings.model_validate(spec.settings)


class LocalKind(BackendKind):
    """The embedded engine: one call at a time per model, KV states of shared prefixes
    reused from 64 tokens, grammars for structured output, free."""

    name = "local"
    provider = "llama.cpp"
    settings = LocalSettings
    example_id = "smollm2-135m"

    def catalog(self, model_id: str, settings: ModelSettings) -> Catalog:
        found = Catalog()
        found.put(LOCAL_PRICE_SOURCE, price_in=0.0, price_out=0.0, price_cached_in=0.0)
        found.put(LOCAL_CATALOG_SOURCE, supports_schema=True)  # llama.cpp grammars
        local = LOCAL_MODELS.get(model_id)
        if local is not None:
            found.put(LOCAL_CATALOG_SOURCE, context=local.context, chat=local.chat)
            found.put(
                LOCAL_SPEED_SOURCE, prefill_tps=local.prefill_tps, decode_tps=local.decode_tps
            )
            found.put(LOCAL_SKILL_SOURCE, skills=dict(local.skills))
        return found

    def capabilities(self, found: Catalog) -> Capabilities:
        return Capabilities(
            concurrent=False,
            prefix_reuse_min_tokens=64,
            structured_output=True,
            free=True,
            timing=Timing.embedded(found.values.get("prefill_tps"), found.values.get("decode_tps")),
        )

    def model_id(self, model_id: str, base: Path, base_name: str) -> str:
        if model_id in LOCAL_MODELS:
            return model_id
        if not model_id.endswith(".gguf"):
            raise ModelIdError(
                f"unknown embedded model '{model_id}'",
                did_you_mean(model_id, LOCAL_MODELS)
                or "embedded models: " + ", ".join(LOCAL_MODELS) + ", or a path to a .gguf file",
            )
        path = base / model_id
        if not path.is_file():
            raise ModelIdError(
                f"no model file '{model_id}'",
                f"paths are relative to {base_name}; looked for {path}",
                kind="declaration",
            )
        return str(path.resolve())

    def context_window(
        self,
        context: int | None,
        source: str | None,
        settings: ModelSettings,
        set_by: dict[str, str],
    ) -> tuple[int | None, str | None]:
        """The window it will run with, not the one it was trained with."""
        assert isinstance(settings, LocalSettings)
        window = local_context(context, settings.n_ctx)
        if window == context:
            return window, source
        if settings.n_ctx:
            return window, f"n_ctx ({set_by['n_ctx']})"
        capped = f"{source}, capped" if source else "default"
        return window, f"{capped} (n_ctx {LOCAL_CONTEXT})"

    def create(self, models: dict[str, ModelSpec]) -> Backend:
        from llmflow.runtime.backends.local import LocalBackend

        return LocalBackend(models)


# ---- openai, openai_compatible: any OpenAI-compatible HTTP server ----------------------


class OpenAISettings(ModelSettings):
    base_url: str | None = None
    """The server's address (default: $OPENAI_BASE_URL, else OpenAI's)."""
    api_key_env: str | None = None
    """The environment variable that holds the key (default: OPENAI_API_KEY)."""
    timeout: float | None = None
    """Seconds one request may take."""

    @field_validator("base_url", mode="after")
    @classmethod
    def _reachable(cls, value: str | None) -> str | None:
        problem = url_error(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


class OpenAIKind(BackendKind):
    """OpenAI's API: concurrent, prompts cached from 1,024 tokens, `response_format`."""

    name = "openai"
    provider = "openai"
    settings = OpenAISettings
    example_id = "gpt-4o-mini"
    engine = "openai"
    open_early = True
    prefix_reuse_min_tokens = 1024
    prefix_reuse_step_tokens = 128
    """OpenAI caches prompts from 1,024 tokens on, in increments of 128 tokens."""

    def price_entry(self, model_id: str, catalog_id: str | None) -> PriceEntry | None:
        from llmflow.compiler import catalog

        if catalog_id is not None:
            return catalog.get(catalog_id)
        return catalog.get(model_id) or catalog.get(f"openai/{model_id}")

    def capabilities(self, found: Catalog) -> Capabilities:
        return Capabilities(
            concurrent=True,
            prefix_reuse_min_tokens=self.prefix_reuse_min_tokens,
            prefix_reuse_step_tokens=self.prefix_reuse_step_tokens,
            structured_output=True,
            timing=Timing.hosted(),
        )

    def check(self, spec: ModelSpec) -> None:
        from llmflow.runtime.backends.openai import check_model

        check_model(spec)

    def create(self, models: dict[str, ModelSpec]) -> Backend:
        from llmflow.runtime.backends.openai import OpenAIBackend

        return OpenAIBackend(models)


class OpenAICompatibleKind(OpenAIKind):
    """Your own OpenAI-compatible server (llama.cpp server, vLLM, SGLang): it reuses any
    cached prefix (counted from the grouping minimum), and has no provider's prices
    unless the model names a price-table entry (`catalog_id`)."""

    name = "openai_compatible"
    prefix_reuse_min_tokens = 64
    prefix_reuse_step_tokens = 1

    def price_entry(self, model_id: str, catalog_id: str | None) -> PriceEntry | None:
        return BackendKind.price_entry(self, model_id, catalog_id)


# ---- scripted: canned answers, for demos and tests without a model --------------------


class ScriptedSettings(ModelSettings):
    reply: str | None = None
    """The answer to every call (default: the prompt's last line, echoed)."""
    delay: float | None = None
    """Seconds each answer takes."""


class ScriptedKind(BackendKind):
    """Answers without a model (`runtime/backends/scripted.py`): every call gets `reply`,
    or the last line of its prompt. Free, concurrent, no prefix reuse."""

    name = "scripted"
    provider = "llmflow.scripted"
    settings = ScriptedSettings
    example_id = "canned"

    def catalog(self, model_id: str, settings: ModelSettings) -> Catalog:
        found = super().catalog(model_id, settings)
        if found.catalog_id is None:
            found.put("scripted (free)", price_in=0.0, price_out=0.0, price_cached_in=0.0)
        return found

    def capabilities(self, found: Catalog) -> Capabilities:
        return Capabilities(free=True, timing=Timing(decode_tps=10_000.0))

    def create(self, models: dict[str, ModelSpec]) -> Backend:
        from llmflow.runtime.backends.scripted import settings_script

        return settings_script(models)


# ---- replay: recorded answers of real models --------------------------------------------


class ReplaySettings(ModelSettings):
    table: str | None = None
    """The JSON-lines table of recorded answers (`runtime/backends/replay.py`); a
    relative path is relative to the main program's folder."""
    latency: float | None = None
    """Seconds each answer takes (default: none)."""


class ReplayKind(BackendKind):
    """Answers as a real model once did, from a table of its recorded answers
    (`runtime/backends/replay.py`): the id names the recorded model (the table's column)
    and, by default, its price-table entry (`catalog_id` names another). Concurrent, no
    prefix reuse, billed at the table's prices for estimated tokens."""

    name = "replay"
    provider = "llmflow.replay"
    settings = ReplaySettings
    example_id = "gpt-4-1106-preview"

    def price_entry(self, model_id: str, catalog_id: str | None) -> PriceEntry | None:
        from llmflow.compiler import catalog

        return catalog.get(catalog_id if catalog_id is not None else model_id)

    def capabilities(self, found: Catalog) -> Capabilities:
        return Capabilities(timing=Timing(decode_tps=10_000.0))

    def anchored(self, spec: ModelSpec, base: Path) -> ModelSpec:
        table = spec.settings.get("table")
        if not isinstance(table, str) or not table or Path(table).is_absolute():
            return spec
        settings = {**spec.settings, "table": str(base / table)}
        return spec.model_copy(update={"settings": settings})

    def check(self, spec: ModelSpec) -> None:
        from llmflow.runtime.backends.replay import model_table

        model_table(spec)

    def create(self, models: dict[str, ModelSpec]) -> Backend:
        from llmflow.runtime.backends.replay import ReplayBackend

        return ReplayBackend(models)

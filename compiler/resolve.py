"""Model declarations and config-file models → `ModelSpec`s, checked in one place.

A program's `model m = KIND("id", k=v)` and a config file's `[models.m]` go through the
same steps: the backend kind is looked up in the registry (plugins included), every
option is validated against the kind's settings model (a positioned error for an unknown
option, with the kind's settings as the hint, or a wrong value), the id is checked by the
kind, and `catalog.resolve` layers declaration over config file over catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmflow.compiler import catalog
from llmflow.compiler.ast import Span
from llmflow.compiler.diagnostics import Diagnostic, Kind, did_you_mean
from llmflow.compiler.models import ModelSettings, ModelSpec, settings_problems
from llmflow.runtime.backends import registry
from llmflow.runtime.backends.registry import BackendKind, ModelIdError, PluginError

if TYPE_CHECKING:
    from llmflow.compiler.config import Config

Where = Literal["program", "config"]
"""Where options are written: their diagnostics' kinds and wording differ."""
Layer = tuple[str, dict[str, Any]]
"""(origin label, valid settings) as `catalog.resolve` takes it."""


@dataclass(frozen=True)
class Option:
    """One option as written, with the spans its errors point at."""

    key: str
    value: Any
    key_span: Span
    value_span: Span
    span: Span
    """The whole `key=value`."""
    skill_span: Callable[[str], Span] | None = None
    """Where one skill's score is (config files point at it; programs at the value)."""


class Diagnostics:
    """Collects what a resolution finds, with the kinds each place uses."""

    def __init__(self, where: Where) -> None:
        self.where = where
        self.list: list[Diagnostic] = []

    def error(self, kind: Kind, message: str, span: Span, hint: str = "") -> None:
        kind = "config" if self.where == "config" else kind
        self.list.append(Diagnostic(kind=kind, message=message, span=span, hint=hint))


def backend_kind(name: str, span: Span, diags: Diagnostics) -> BackendKind | None:
    """The registered kind `name`; None (and an error at `span`) if there is none or its
    plugin is broken."""
    names = registry.names()
    if name not in names:
        diags.error(
            "unknown-name",
            f"unknown model backend '{name}'",
            span,
            hint=did_you_mean(name, names) or "backends: " + ", ".join(names),
        )
        return None
    try:
        return registry.get(name)
    except PluginError as err:
        diags.error("declaration", str(err), span, hint="see docs/architecture.md")
        return None


def check_options(
    kind: BackendKind | None, options: Sequence[Option], diags: Diagnostics
) -> dict[str, Any]:
    """The valid options, by key; each invalid one is reported at its span. `kind`
    None (a config-file model that only overrides): an option of any kind is accepted."""
    valid: dict[str, Any] = {}
    for opt in options:
        if _check_option(kind, opt, diags):
            valid[opt.key] = opt.value
    return valid


def _check_option(kind: BackendKind | None, opt: Option, diags: Diagnostics) -> bool:
    key, value = opt.key, opt.value
    if key == "api_key":
        eq = '="MY_KEY"' if diags.where == "program" else ' = "MY_KEY"'
        text = "program text" if diags.where == "program" else "config files"
        diags.error(
            "declaration",
            f"API keys do not belong in {text}",
            opt.span,
            hint=f"name the environment variable that holds it: api_key_env{eq}",
        )
        return False
    candidates = _settings(kind)
    if not any(key in s.model_fields for s in candidates):
        names = _option_names(kind, diags.where)
        if kind is not None and key in registry.setting_names():
            message = f"model option '{key}' is not a setting of {kind.name} models"
        else:
            message = f"unknown model option '{key}'"
        diags.error(
            "unknown-name",
            message,
            opt.key_span,
            hint=did_you_mean(key, names) or "options: " + ", ".join(names),
        )
        return False
    problems = [settings_problems(s, {key: value}).get(key) for s in candidates]
    problems = [p for s, p in zip(candidates, problems, strict=True) if key in s.model_fields]
    if all(problems):
        message = problems[0] or ""
        span = opt.value_span
        if key == "skills" and message.startswith("skill '") and opt.skill_span is not None:
            span = opt.skill_span(message.split("'")[1])
        diags.error("type", message, span)
        return False
    if key == "catalog_id":
        missing, hint = catalog_id_problem(value)
        if missing:
            diags.error("unknown-name", missing, opt.value_span, hint=hint)
            return False
    return True


def _settings(kind: BackendKind | None) -> list[type[ModelSettings]]:
    if kind is not None:
        return [kind.settings]
    found = []
    for name in registry.names():
        try:
            found.append(registry.get(name).settings)
        except PluginError:
            continue
    return found


def _option_names(kind: BackendKind | None, where: Where) -> list[str]:
    names = list(kind.settings.model_fields) if kind is not None else registry.setting_names()
    return ["backend", "id", *names] if where == "config" else names


def catalog_id_problem(value: str) -> tuple[str, str]:
    """('', '') when `value` is a key of the price table, else a message and a hint."""
    if catalog.get(value) is not None:
        return "", ""
    close = catalog.search(value, limit=3)
    hint = (
        "entries containing it: " + ", ".join(close)
        if close
        else did_you_mean(value, catalog.keys()) or "list entries: llmflow models --prices TEXT"
    )
    return f"no entry '{value}' in the price table", hint


def model_id(
    kind: BackendKind, value: str, span: Span, base: Path, base_name: str, diags: Diagnostics
) -> str | None:
    """The id the kind will load (a path made absolute), or None with its error."""
    try:
        return kind.model_id(value, base, base_name)
    except ModelIdError as err:
        diags.error(err.kind, err.message, span, hint=err.hint)
        return None


def config_layer(
    config: Config | None, name: str, kind: BackendKind, diags: Diagnostics
) -> list[Layer]:
    """The config file's overrides for the model `name` of `kind` (backend and id are
    the declaration's), each checked against the kind's settings (the file was checked
    against every kind's when it was read). Errors point into the file."""
    if config is None or name not in config.models:
        return []
    entry = config.models[name]
    options = [
        Option(k, v, entry.spans[k], entry.spans[k], entry.spans[k])
        for k, v in entry.options.items()
        if k not in ("backend", "id")
    ]
    file_diags = Diagnostics("config")
    valid = check_options(kind, options, file_diags)
    diags.list.extend(file_diags.list)
    return [(config.label, valid)] if valid else []


def resolve(name: str, kind: BackendKind, model_id: str, layers: Sequence[Layer]) -> ModelSpec:
    """The spec of a checked model: `layers` (declaration, then config file) over the
    kind's catalog."""
    return catalog.resolve(name, kind.name, model_id, layers)


def default_model(config: Config | None, diags: Diagnostics) -> ModelSpec:
    """The embedded default model, with the config file's overrides for it."""
    from llmflow.compiler.models import DEFAULT_MODEL_ID, DEFAULT_MODEL_NAME

    kind = registry.get("local")
    layers = config_layer(config, DEFAULT_MODEL_NAME, kind, diags)
    return resolve(DEFAULT_MODEL_NAME, kind, DEFAULT_MODEL_ID, layers)

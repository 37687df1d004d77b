"""The registry of backend kinds: what `model x = KIND("id", ...)` may name.

A kind is a `BackendKind` subclass registered as a Python entry point in the group
`llmflow.backends`; the entry point's name is the kind's name. llmflow's own kinds
(`local`, `openai`, `openai_compatible`, `scripted`, `replay`) are registered the same way in its
`pyproject.toml`, so a plugin package adds a backend without a patch:

    [project.entry-points."llmflow.backends"]
    echo = "llmflow_echo:EchoKind"

Entry points are listed once (`names()` never imports a plugin) and each kind is loaded
and checked the first time it is asked for (`get`), then cached: a broken plugin fails
the programs that use it, with a `PluginError` naming its distribution, and no other.

This module and every kind's declaration are light: nothing heavy (llama.cpp, the
`openai` SDK) is imported until a kind's `create` makes a backend.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from llmflow.compiler.diagnostics import Kind
from llmflow.compiler.models import Capabilities, ModelSettings, ModelSpec
from llmflow.errors import LLMFlowError

if TYPE_CHECKING:
    from llmflow.compiler.catalog import PriceEntry
    from llmflow.runtime.backends.base import Backend

GROUP = "llmflow.backends"
OWN_DISTRIBUTION = "llmflow"
BUILTIN = {
    "local": "llmflow.runtime.backends.kinds:LocalKind",
    "openai": "llmflow.runtime.backends.kinds:OpenAIKind",
    "openai_compatible": "llmflow.runtime.backends.kinds:OpenAICompatibleKind",
    "scripted": "llmflow.runtime.backends.kinds:ScriptedKind",
    "replay": "llmflow.runtime.backends.kinds:ReplayKind",
}
"""llmflow's own entry points, as its pyproject.toml declares them. Used only when the
installed metadata has none of them (an editable install made before they existed)."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PluginError(LLMFlowError):
    """A backend plugin cannot be used: its entry point does not import, is not a
    `BackendKind`, or clashes with another. The message names the distribution."""


class ModelIdError(Exception):
    """A kind rejects a model id (`local("smollm3")`): the checker reports `message` at
    the id, with `hint`, as a diagnostic of kind `kind`."""

    def __init__(self, message: str, hint: str = "", kind: Kind = "unknown-name") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.kind = kind


@dataclass
class Catalog:
    """What a kind's catalogs know about one model: values by `ModelSpec` field (context,
    chat, price_in, supports_schema, skills, prefill_tps...), where each came from, and
    the price-table key they were taken from (None: not from the table)."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    catalog_id: str | None = None

    def put(self, source: str, **values: Any) -> None:
        """Record values (None is skipped: the catalog does not know it) from `source`."""
        for key, value in values.items():
            if value is not None:
                self.values[key] = value
                self.origin[key] = source


class BackendKind:
    """One kind of backend, declared as data and a few hooks. Subclass it, set `name`,
    `provider` and `settings`, override what differs from the defaults, and register the
    class as an entry point (see the module docstring and docs/architecture.md)."""

    name: ClassVar[str] = ""
    """What programs write: `model m = NAME("id")`; the entry point's name."""
    provider: ClassVar[str] = ""
    """The trace's `gen_ai.provider.name` (OpenTelemetry GenAI): "openai", "llama.cpp"."""
    settings: ClassVar[type[ModelSettings]] = ModelSettings
    """The options a model of this kind takes: `ModelSettings` and the kind's own."""
    example_id: ClassVar[str] = "model-id"
    """A model id to show in hints: `write NAME("example_id")`."""
    engine: ClassVar[str] = ""
    """Kinds with the same engine share one backend object (its models together; the
    OpenAI kinds share their HTTP clients). Empty: the kind's own name."""
    open_early: ClassVar[bool] = False
    """Create the backend before a run starts and call its `open(names)` with the models
    the plan uses (HTTP clients made up front); False: on the first call (a model load)."""

    def price_entry(self, model_id: str, catalog_id: str | None) -> PriceEntry | None:
        """The price-table row a model's prices and window come from. The default: the
        one its `catalog_id` names, else none (the table's prices are a provider's)."""
        from llmflow.compiler import catalog

        return catalog.get(catalog_id) if catalog_id is not None else None

    def catalog(self, model_id: str, settings: ModelSettings) -> Catalog:
        """What the kind knows about a model before its declaration is read. The default:
        its `price_entry`'s values."""
        from llmflow.compiler import catalog

        found = Catalog()
        entry = self.price_entry(model_id, settings.catalog_id)
        if entry is not None:
            catalog.put_entry(found, entry)
        return found

    def capabilities(self, found: Catalog) -> Capabilities:
        """What the optimizer plans around (serial, prefix reuse, structured output,
        timing), given what the catalog found for the model."""
        return Capabilities()

    def model_id(self, model_id: str, base: Path, base_name: str) -> str:
        """The id the backend will load, checked: raise `ModelIdError` for one it never
        can. Relative paths are relative to `base`, the directory of the declaring file
        (or of the config file), which hints call `base_name`."""
        return model_id

    def anchored(self, spec: ModelSpec, base: Path) -> ModelSpec:
        """The spec a run uses, with the relative paths of its settings (a replay table)
        made absolute against `base`, the main program's folder (where `extern` modules
        are found too). The default: the spec as it is."""
        return spec

    def context_window(
        self,
        context: int | None,
        source: str | None,
        settings: ModelSettings,
        set_by: dict[str, str],
    ) -> tuple[int | None, str | None]:
        """The window plans use and the backend runs with, and where it comes from,
        given the declared or catalogued `context` and who set each setting (`set_by`:
        "declaration", "llmflow.toml"). The embedded engine caps it."""
        return context, source

    def check(self, spec: ModelSpec) -> None:
        """Fail before a run starts if `spec` cannot be reached (a missing key, no
        address); raise `BackendError` with a message the user can act on."""
        return None

    def create(self, models: dict[str, ModelSpec]) -> Backend:
        """The backend that serves `models` (all of this kind's engine) in one run.
        Import heavy modules here, never at module level."""
        raise NotImplementedError(f"backend kind '{self.name}' does not create backends")


@dataclass(frozen=True)
class _Entry:
    name: str
    value: str
    distribution: str

    def describe(self) -> str:
        return f"{self.distribution} (entry point {self.name} = {self.value!r} in {GROUP})"


@cache
def _entries() -> dict[str, tuple[_Entry, ...]]:
    """Every entry point of the group by name (several: a clash), llmflow's first."""
    found: dict[str, list[_Entry]] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else "an unknown distribution"
        entry = _Entry(ep.name, ep.value, dist)
        if entry not in found.setdefault(ep.name, []):
            found[ep.name].append(entry)
    if not any(e.distribution == OWN_DISTRIBUTION for es in found.values() for e in es):
        for name, value in BUILTIN.items():
            found.setdefault(name, []).insert(0, _Entry(name, value, OWN_DISTRIBUTION))
    own = [n for n in BUILTIN if n in found]
    return {n: tuple(found[n]) for n in [*own, *sorted(set(found) - set(own))]}


def names() -> list[str]:
    """Every registered kind's name, llmflow's own first (no plugin is imported)."""
    return list(_entries())


_loaded: dict[str, BackendKind] = {}
_lock = threading.Lock()


def get(name: str) -> BackendKind:
    """The kind called `name`, loaded and checked on first use. PluginError: no such
    kind is installed (a plan made where a plugin was), or its plugin is broken."""
    kind = _loaded.get(name)
    if kind is not None:
        return kind
    entries = _entries().get(name)
    if entries is None:
        raise PluginError(
            f"no backend kind '{name}' is installed (installed: {', '.join(names())}); "
            "install the package that provides it"
        )
    with _lock:
        if name not in _loaded:
            _loaded[name] = _load(entries)
        return _loaded[name]


def kinds() -> list[BackendKind]:
    """Every registered kind, loaded (raises PluginError for a broken one)."""
    return [get(name) for name in names()]


def kind_of(spec: ModelSpec) -> BackendKind:
    return get(spec.backend)


def anchored(models: dict[str, ModelSpec], base: Path) -> dict[str, ModelSpec]:
    """A plan's models as a run uses them: each with its kind's `anchored` paths. A
    model whose kind is not installed stays as it is (its first use says so)."""
    found: dict[str, ModelSpec] = {}
    for name, spec in models.items():
        try:
            found[name] = kind_of(spec).anchored(spec, base)
        except PluginError:
            found[name] = spec
    return found


def settings_of(spec: ModelSpec) -> ModelSettings:
    """A model's typed settings (what its declaration and config file set, validated)."""
    return kind_of(spec).settings.model_validate(spec.settings)


def setting_names() -> list[str]:
    """Every option some kind takes, for config-file models that name no backend."""
    seen: dict[str, None] = {}
    for name in names():
        try:
            seen.update(dict.fromkeys(get(name).settings.model_fields))
        except PluginError:
            continue
    return list(seen)


def _load(entries: Sequence[_Entry]) -> BackendKind:
    if len(entries) > 1:
        raise PluginError(
            f"backend kind '{entries[0].name}' is registered twice: by "
            + " and by ".join(e.describe() for e in entries)
            + "; uninstall one of them"
        )
    (entry,) = entries
    try:
        loaded = importlib.metadata.EntryPoint(entry.name, entry.value, GROUP).load()
    except Exception as err:  # a plugin's import may fail in any way; say whose it is
        raise PluginError(
            f"backend kind '{entry.name}' could not be loaded from {entry.describe()}: "
            f"{type(err).__name__}: {err}"
        ) from err
    problem = _invalid(entry, loaded)
    if problem:
        raise PluginError(f"backend kind '{entry.name}' from {entry.describe()} {problem}")
    return loaded()


def _invalid(entry: _Entry, loaded: Any) -> str:
    """Why an entry point's object is not a usable kind ('' when it is)."""
    if not (isinstance(loaded, type) and issubclass(loaded, BackendKind)):
        return f"is {type(loaded).__name__} {loaded!r}, not a BackendKind subclass"
    if loaded.name != entry.name:
        return f"declares name {loaded.name!r}: it must equal the entry point's name"
    if not _NAME.match(entry.name):
        return "has a name a program cannot write: letters, digits and _ only"
    if not (isinstance(loaded.settings, type) and issubclass(loaded.settings, ModelSettings)):
        return "has settings that do not subclass llmflow's ModelSettings"
    if not loaded.provider:
        return "declares no provider (the trace's gen_ai.provider.name)"
    return ""


def reset() -> None:
    """Forget what was listed and loaded (a test that installs a plugin mid-process)."""
    _entries.cache_clear()
    _loaded.clear()

"""The registry of backend kinds: entry points listed once, each kind loaded and checked
on first use, built-ins registered like plugins; the router creates backends through it.

Plugins here are real distributions: a `.dist-info` folder with METADATA and
entry_points.txt written into a directory put on sys.path, which is all that
`importlib.metadata` reads of an installed package (tests/test_plugins.py installs one
with pip)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends import GenerationRequest, Router, Turn, registry
from llmflow.runtime.backends.kinds import LocalKind, LocalSettings, OpenAIKind
from llmflow.runtime.backends.registry import PluginError
from llmflow.runtime.backends.scripted import ScriptedBackend

Install = Callable[[str, dict[str, str], str], None]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """Install a distribution `name` with these entry points and one module's source."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def add(name: str, points: dict[str, str], source: str) -> None:
        info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "".join(f"{kind} = {value}\n" for kind, value in points.items())
        (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{lines}")
        module = next(iter(points.values())).split(":")[0]
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        registry.reset()

    yield add
    registry.reset()


KIND = """
from llmflow.backends import BackendKind, ModelSettings

class Settings(ModelSettings):
    colour: str | None = None

class {cls}(BackendKind):
    name = "{name}"
    provider = "test"
    settings = Settings
"""


def test_the_built_in_kinds_are_llmflows_own_entry_points() -> None:
    own = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group=registry.GROUP)
        if ep.dist is not None and ep.dist.metadata["Name"] == "llmflow"
    }
    assert own == registry.BUILTIN  # pyproject.toml and the fallback table agree
    assert registry.names()[:4] == ["local", "openai", "openai_compatible", "scripted"]
    assert isinstance(registry.get("local"), LocalKind)
    assert registry.get("local") is registry.get("local")  # loaded once


def test_a_plugin_kind_is_listed_without_being_imported(install: Install) -> None:
    install(
        "llmflow-paint", {"paint": "llmflow_paint_mod:PaintKind"}, "raise RuntimeError('boom')\n"
    )
    assert "paint" in registry.names()  # listing imports nothing: it would have raised
    with pytest.raises(PluginError, match=r"from llmflow-paint \(entry point paint = .*boom"):
        registry.get("paint")


def test_a_plugin_kind_loads_with_its_settings(install: Install) -> None:
    install(
        "llmflow-paint",
        {"paint": "llmflow_paint_ok:PaintKind"},
        KIND.format(cls="PaintKind", name="paint"),
    )
    kind = registry.get("paint")
    assert kind.provider == "test" and "colour" in kind.settings.model_fields
    assert "colour" in registry.setting_names()


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("PaintKind = 3\n", "is int 3, not a BackendKind subclass"),
        (KIND.format(cls="PaintKind", name="brush"), "declares name 'brush': it must equal"),
        (
            KIND.format(cls="PaintKind", name="paint").replace(
                "settings = Settings", "settings = dict"
            ),
            "has settings that do not subclass llmflow's ModelSettings",
        ),
        (
            KIND.format(cls="PaintKind", name="paint").replace('provider = "test"', ""),
            "declares no provider",
        ),
    ],
)
def test_an_invalid_kind_is_an_error_naming_its_distribution(
    install: Install, source: str, problem: str
) -> None:
    module = f"llmflow_paint_{abs(hash(source))}"  # a module of its own per case
    install("llmflow-paint", {"paint": f"{module}:PaintKind"}, source)
    with pytest.raises(PluginError) as caught:
        registry.get("paint")
    assert str(caught.value).startswith("backend kind 'paint' from llmflow-paint (entry point")
    assert problem in str(caught.value)


def test_a_kind_registered_twice_names_both_distributions(install: Install) -> None:
    install("llmflow-other", {"local": "llmflow_other_local:LocalKind"}, "")
    with pytest.raises(PluginError, match="'local' is registered twice: by ") as caught:
        registry.get("local")
    assert "by llmflow (entry point local = 'llmflow.runtime.backends.kinds:L" in str(caught.value)
    assert "by llmflow-other (entry point local = 'llmflow_other_local:L" in str(caught.value)
    assert isinstance(registry.get("openai"), OpenAIKind)  # the others still load


def test_a_kind_that_is_not_installed_is_a_clear_error() -> None:
    """A plan made where a plugin was installed names a kind this process lacks."""
    with pytest.raises(
        PluginError, match=r"no backend kind 'echo' is installed \(installed: local, "
    ):
        registry.get("echo")


def test_typed_settings_of_a_model() -> None:
    spec = ModelSpec(name="m", backend="local", id="smollm2-135m", settings={"state_cache_mb": 8})
    settings = registry.settings_of(spec)
    assert isinstance(settings, LocalSettings) and settings.state_cache_mb == 8.0
    assert settings.n_ctx is None


def test_the_router_creates_backends_through_their_kinds() -> None:
    models = {
        "s": ModelSpec(name="s", backend="scripted", id="x", settings={"reply": "yes"}),
        "t": ModelSpec(name="t", backend="scripted", id="y"),
        "a": ModelSpec(name="a", backend="openai", id="gpt-4o-mini"),
        "b": ModelSpec(name="b", backend="openai_compatible", id="m"),
    }
    router = Router(models)

    async def ask(model: str, text: str) -> str:
        request = GenerationRequest(model=model, turns=[Turn(role="user", text=text)])
        return (await router.generate(request)).text

    assert asyncio.run(ask("s", "anything")) == "yes"
    assert asyncio.run(ask("t", "first line\nlast line")) == "last line"
    (scripted,) = router._backends.values()
    assert isinstance(scripted, ScriptedBackend)  # one backend for both scripted models
    assert router._backend("openai") is router._backend("openai")  # a and b share it
    assert set(router._backends) == {"scripted", "openai"}
    asyncio.run(router.aclose())

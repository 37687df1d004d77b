"""The config file: models a program may use without declaring them, and overrides.

`llmflow.toml` in the main program's directory or the nearest parent directory that has
one, or the `[tool.llmflow]` table of the nearest `pyproject.toml` (a `pyproject.toml`
without that table is skipped); in one directory `llmflow.toml` comes first. Only the
nearest file counts: files are not merged.

```toml
default_model = "mini"          # optional: the model of calls that name none

[models.mini]                   # backend + id: a model every program here can use
backend = "openai"
id = "gpt-4o-mini"
skills = { reasoning = 0.8 }
rpm = 500

[models.small]                  # no backend/id: overrides for a model named `small`
skills = { writing = 0.3 }
```

Every option of a `model` declaration may appear (`price_in`, `context`, `rpm`...). For
the same model and option, the program's declaration wins over this file, and this file
wins over the price table and the embedded catalog. Errors are `Diagnostic`s whose span
is in this file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmflow.compiler import resolve
from llmflow.compiler.ast import Span
from llmflow.compiler.diagnostics import Diagnostic, did_you_mean
from llmflow.compiler.models import ModelSpec
from llmflow.compiler.modules import UnreadableSource, read_source
from llmflow.runtime.backends import registry

CONFIG_NAME = "llmflow.toml"
PYPROJECT = "pyproject.toml"
TOP_KEYS = ("default_model", "models")
_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_BARE = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)"""
_KEY = re.compile(rf"^\s*({_BARE}(?:\s*\.\s*{_BARE})*)\s*=")
_SECRET = re.compile(r"""(\bapi_key\s*=\s*)("(?:[^"\\]|\\.)*"|'[^']*'|[^\s,}#]+)""")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


@dataclass
class ConfigModel:
    """One `[models.NAME]` table, validated."""

    name: str
    options: dict[str, Any]
    """Valid model options (backend and id included when given)."""
    span: Span
    """Its table header (or its first key), for errors about the whole entry."""
    spans: dict[str, Span] = field(default_factory=dict)
    """Each option's line, for errors about one value."""

    @property
    def defines(self) -> bool:
        """A whole model (backend and id), not just overrides for a declared one."""
        return "backend" in self.options and "id" in self.options


@dataclass
class Config:
    path: Path
    name: str
    """How diagnostics name the file (relative like the program's name, when it is)."""
    text: str
    label: str
    """The origin label of its values: `llmflow.toml` or `pyproject.toml`."""
    prefix: tuple[str, ...] = ()
    """The table llmflow's keys live under: () or ("tool", "llmflow")."""
    models: dict[str, ConfigModel] = field(default_factory=dict)
    default_model: str | None = None
    default_span: Span | None = None

    @property
    def shown_text(self) -> str:
        """The text diagnostics quote: an `api_key` value, an error itself, is masked."""
        return _SECRET.sub(r'\1"***"', self.text)

    def span(self, *keys: str) -> Span:
        return locate(self.text, self.name, (*self.prefix, *keys))


Parsed = dict[str, Any] | str | UnreadableSource
"""A config file's data, or why it does not parse (TOML's message), or why it cannot be
read (then nothing of it is shown)."""


def find_config(start: Path) -> tuple[Path, tuple[str, ...], str, Parsed] | None:
    """The nearest config at or above `start`: path, key prefix, its text and its parsed
    data (or the problem, for the caller to report)."""
    for directory in [start, *start.parents]:
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate, (), *_parse(candidate)
        pyproject = directory / PYPROJECT
        if pyproject.is_file():
            text, data = _parse(pyproject)
            if not isinstance(data, dict):
                if isinstance(data, UnreadableSource) or re.search(
                    r"^\s*\[\s*tool\.llmflow\b", text, re.M
                ):
                    return pyproject, ("tool", "llmflow"), text, data
                continue
            tool = data.get("tool")
            if isinstance(tool, dict) and "llmflow" in tool:
                return pyproject, ("tool", "llmflow"), text, tool["llmflow"]
    return None


def _parse(path: Path) -> tuple[str, Parsed]:
    """Read with the checks a program gets (no FIFO, no binary, at most 8 MiB)."""
    try:
        text = read_source(path)
    except UnreadableSource as err:
        return "", err
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return text, str(err)
    except RecursionError:  # tomllib reads nested arrays and tables recursively
        return text, "arrays or tables nested too deeply"


def load_config(main: Path, main_name: str | None = None) -> tuple[Config | None, list[Diagnostic]]:
    """Find, parse and validate the config for the program whose main file is `main`.

    `main_name` is the program's name as the user wrote it; the config is named
    relative to it in diagnostics when it is relative.
    """
    return _load(main.resolve().parent, main, main_name or str(main))


def load_config_in(directory: Path) -> tuple[Config | None, list[Diagnostic]]:
    """The config that applies to programs in `directory` (named relative to it)."""
    return _load(directory.resolve(), directory / "_", os.path.join(str(directory), "_"))


def _load(start: Path, main: Path, main_name: str) -> tuple[Config | None, list[Diagnostic]]:
    found = find_config(start)
    if found is None:
        return None, []
    path, prefix, text, data = found
    config = Config(
        path=path,
        name=_display_name(path, main, main_name),
        text=text,
        label=path.name,
        prefix=prefix,
    )
    if isinstance(data, UnreadableSource):
        return config, [Diagnostic(kind="config", message=str(data), file=config.name)]
    if isinstance(data, str):
        return config, [_syntax_error(config, data)]
    return config, _validate(config, data)


def _display_name(path: Path, main: Path, main_name: str) -> str:
    if Path(main_name).is_absolute():
        return str(path)
    rel = os.path.relpath(path, main.resolve().parent)
    return os.path.normpath(os.path.join(os.path.dirname(main_name), rel))


def _syntax_error(config: Config, message: str) -> Diagnostic:
    match = _POSITION.search(message)
    lines = config.text.split("\n")  # as tomllib counts lines
    if match:
        line, col = int(match.group(1)), int(match.group(2))
        message = message[: match.start()]
    else:  # "(at end of document)"
        message = re.sub(r"\s*\(at end of document\)$", "", message)
        line = len(lines)
        col = len(lines[-1]) + 1 if lines else 1
    return Diagnostic(
        kind="config",
        message=f"{config.label} is not valid TOML: {message[:1].lower()}{message[1:]}",
        span=Span(file=config.name, line=line, col=col, end_line=line, end_col=col + 1),
        hint="see https://toml.io; llmflow's config format is in docs/models.md",
    )


def _validate(config: Config, data: dict[str, Any]) -> list[Diagnostic]:
    diags: list[Diagnostic] = []

    def error(message: str, span: Span, hint: str = "") -> None:
        diags.append(Diagnostic(kind="config", message=message, span=span, hint=hint))

    for key in data:
        if key not in TOP_KEYS:
            error(
                f"unknown key '{key}' in {config.label}",
                config.span(key),
                hint=did_you_mean(key, TOP_KEYS) or "keys: default_model, [models.NAME]",
            )
    default = data.get("default_model")
    if default is not None:
        config.default_span = config.span("default_model")
        if isinstance(default, str):
            config.default_model = default
        else:
            error("default_model expects a model name (a string)", config.default_span)
    models = data.get("models", {})
    if not isinstance(models, dict):
        error("models must be a table of models: [models.NAME]", config.span("models"))
        return diags
    for name, table in models.items():
        span = config.span("models", name)
        if not isinstance(table, dict):
            error(
                f"model '{name}' must be a table of options",
                span,
                hint=f'write [models.{name}] then backend = "openai", id = "gpt-4o-mini"',
            )
            continue
        entry = ConfigModel(name=name, options={}, span=span)
        entry.spans = {key: config.span("models", name, key) for key in table}
        file_diags = resolve.Diagnostics("config")
        kind = None
        if "backend" in table:
            backend = table["backend"]
            if isinstance(backend, str):
                kind = resolve.backend_kind(backend, entry.spans["backend"], file_diags)
            else:
                error("model option 'backend' expects str", entry.spans["backend"])
            if kind is not None:
                entry.options["backend"] = backend
        if "id" in table:
            if isinstance(table["id"], str):
                entry.options["id"] = table["id"]
            else:
                error("model option 'id' expects str", entry.spans["id"])
        options = [
            resolve.Option(
                key,
                value,
                entry.spans[key],
                entry.spans[key],
                entry.spans[key],
                skill_span=lambda skill, n=name: config.span("models", n, "skills", skill),
            )
            for key, value in table.items()
            if key not in ("backend", "id")
        ]
        entry.options.update(resolve.check_options(kind, options, file_diags))
        diags.extend(file_diags.list)
        if ("backend" in table) != ("id" in table):
            missing = "id" if "backend" in table else "backend"
            error(
                f"model '{name}' sets {'backend' if missing == 'id' else 'id'} but not {missing}",
                span,
                hint="give both to define a model, or neither to override a declared one",
            )
            entry.options.pop("backend", None)
            entry.options.pop("id", None)
        config.models[name] = entry
    return diags


def config_spec(config: Config, entry: ConfigModel) -> tuple[ModelSpec | None, list[Diagnostic]]:
    """The model a config entry with backend and id defines (checked like a declaration)."""
    options = dict(entry.options)
    kind = registry.get(options.pop("backend"))
    diags = resolve.Diagnostics("config")
    span = entry.spans.get("id", entry.span)
    model_id = resolve.model_id(
        kind, options.pop("id"), span, config.path.parent, config.label, diags
    )
    if model_id is None:
        return None, diags.list
    return resolve.resolve(entry.name, kind, model_id, [(config.label, options)]), diags.list


def overrides(config: Config | None, name: str, backend: str = "local") -> list[resolve.Layer]:
    """The config layer for the model `name` of kind `backend` (empty without one), as
    `catalog.resolve` takes it: the options that kind takes (checking a program reports
    the others)."""
    return resolve.config_layer(config, name, registry.get(backend), resolve.Diagnostics("config"))


# ---- finding a key's line ---------------------------------------------------------------


def locate(text: str, file: str, keys: tuple[str, ...]) -> Span:
    """The line where a dotted key is set, found by scanning the text: `[models.mini]`
    then `rpm = 5`, `models.mini.rpm = 5`, or `mini = { rpm = 5 }` under `[models]` for
    ("models", "mini", "rpm"). Falls back to the deepest enclosing table or key that is
    found, then to line 1. Cheap and approximate: good enough to point at a line."""
    best = (0, 1, 1, 2)  # depth, line, col, end_col
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.split("\n"), start=1):
        header = _HEADER.match(line)
        if header is not None and not line.lstrip().startswith("[["):
            table = _split(header.group(1))
            if _common(table, keys) == len(table) > best[0]:
                col = line.index("[") + 1
                best = (len(table), number, col, col + len(line.strip()))
            continue
        key = _KEY.match(line)
        if key is None:
            continue
        path = table + _split(key.group(1))
        if _common(path, keys) != len(path) or len(path) <= best[0]:
            continue
        col = len(line) - len(line.lstrip()) + 1
        best = (len(path), number, col, col + len(key.group(1)))
        rest, offset = line[key.end() :], key.end()
        for depth in range(len(path), len(keys)):  # into inline tables on this line
            inner = re.search(rf"(?<![\w-]){re.escape(keys[depth])}\s*=", rest)
            if inner is None:
                break
            col = offset + inner.start() + 1
            best = (depth + 1, number, col, col + len(keys[depth]))
            rest, offset = rest[inner.end() :], offset + inner.end()
    _, line_no, col, end = best
    return Span(file=file, line=line_no, col=col, end_line=line_no, end_col=end)


def _split(dotted: str) -> tuple[str, ...]:
    parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.\s]+', dotted)
    return tuple(p.strip("\"'") for p in parts)


def _common(path: tuple[str, ...], keys: tuple[str, ...]) -> int:
    n = 0
    for a, b in zip(path, keys, strict=False):
        if a != b:
            break
        n += 1
    return n

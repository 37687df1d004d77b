"""Profiles: what was measured about a program's semantic functions on candidate models.

A profile is a reviewable JSON file beside the program, `PROGRAM.profile.json` (for
`report.llmflow`, `report.profile.json`). It records one *baseline* (an assignment of a
model to every semantic function, and the program's end-to-end score on it) and, per
function and model, what was measured when that function ran on that model with the
rest at the baseline: the end-to-end score with its 95% interval and row count, tokens,
dollars and seconds per call, optionally the function's own accuracy (where the data
labels its outputs) and scores per value of one of its enum inputs.

Entries are keyed so that a change invalidates exactly what it touches: each one keeps
the content hash of its function's template (`template_hash`) and names a model of the
profile's `models` table, whose identity is its backend kind, model id and the settings
that change answers (`model_ref`). A template or model that changed since makes its
entries *stale*: `match` reports them and never uses them. The program's hash (every
template's) is kept to say when the rest of the program changed around an entry.

Reading trusts nothing: a file too large, not UTF-8, not JSON, nested too deep, with
NaN, duplicate keys or a wrong field raises ProfileError whose diagnostic points at
file:line:col. Writing replaces the file in one rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmflow.compiler.ast import Span
from llmflow.compiler.diagnostics import Diagnostic, render_all
from llmflow.compiler.ir import LLMCall, Plan
from llmflow.compiler.models import ModelSpec
from llmflow.errors import LLMFlowError

VERSION = 1
SUFFIX = ".profile.json"
MAX_PROFILE_BYTES = 64 * 2**20
"""Largest profile read (64 MiB): a thousand functions on ten models take about 5 MiB."""
MAX_DEPTH = 32
"""Deepest nesting read: a profile nests six levels; anything deeper is not one."""
MAX_ROWS = 10**12
MAX_ERRORS = 20
"""Field errors reported at once; past these, how many more there are."""

NEUTRAL_SETTINGS = frozenset(
    {
        "context",
        "max_output",
        "skills",
        "price_in",
        "price_out",
        "price_cached_in",
        "supports_schema",
        "catalog_id",
        "rpm",
        "tpm",
        "concurrency",
        "api_key_env",
        "timeout",
        "n_ctx",
        "state_cache_mb",
    }
)
"""Model settings that do not change what a model answers (prices, limits, windows,
where its key is, how long to wait): a change of one keeps its measurements. Every
other setting (`base_url`, a plugin's own) is part of the model's identity."""


class ProfileError(LLMFlowError):
    """A profile that cannot be used; `diagnostics` say where and why (every field
    error of the file at once)."""

    def __init__(self, diagnostics: Diagnostic | list[Diagnostic], source: str = "") -> None:
        self.diagnostics = diagnostics if isinstance(diagnostics, list) else [diagnostics]
        self.source = source
        super().__init__(self.render())

    @property
    def diagnostic(self) -> Diagnostic:
        return self.diagnostics[0]

    def render(self) -> str:
        first = self.diagnostics[0]
        file = first.span.file if first.span else first.file
        sources = {file: self.source} if file and self.source else {}
        return render_all(self.diagnostics, sources).rstrip("\n")


# ---- the file's shape --------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
Name = Field(min_length=1, max_length=200)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    return value


class Score(BaseModel):
    """A mean over rows with its 95% interval (`low`..`high`, as the eval computed it:
    bootstrap or Wilson) and the number of rows."""

    model_config = _STRICT
    mean: float
    low: float
    high: float
    n: int = Field(ge=1, le=MAX_ROWS)

    @model_validator(mode="after")
    def _ordered(self) -> Score:
        for name in ("mean", "low", "high"):
            _finite(getattr(self, name), name)
        if not self.low <= self.mean <= self.high:
            raise ValueError("a score needs low <= mean <= high")
        return self

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return (
            f"{self.mean:.2f} ± {self.half_width:.2f} on {self.n} row{'s' if self.n != 1 else ''}"
        )


class PerCall(BaseModel):
    """What one call of the function cost on the model, on average over the rows."""

    model_config = _STRICT
    input_tokens: float = Field(0.0, ge=0)
    output_tokens: float = Field(0.0, ge=0)
    dollars: float = Field(0.0, ge=0)
    seconds: float = Field(0.0, ge=0)

    @field_validator("*", mode="after")
    @classmethod
    def _is_finite(cls, value: float) -> float:
        return _finite(value, "a cost")


class Categories(BaseModel):
    """Scores per value of one enum input of the function (Composition of Experts)."""

    model_config = _STRICT
    input: str = Name
    scores: dict[str, Score]


class Measurement(BaseModel):
    """One function on one model, the rest of the program at the baseline."""

    model_config = _STRICT
    template: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    """The function's template hash when it was measured."""
    score: Score
    """End-to-end score of the program."""
    per_call: PerCall = Field(default_factory=PerCall)
    accuracy: Score | None = None
    """The function's own outputs against the labels, where the data has them."""
    categories: Categories | None = None


class ModelRef(BaseModel):
    """A model as the profile knows it: what identifies its answers."""

    model_config = _STRICT
    backend: str = Name
    id: str = Field(min_length=1, max_length=2000)
    answers: dict[str, Any] = Field(default_factory=dict)
    """`chat`, and the settings that change answers (`NEUTRAL_SETTINGS` excluded)."""

    @property
    def key(self) -> str:
        return _digest({"backend": self.backend, "id": self.id, "answers": self.answers})

    def __str__(self) -> str:
        return f"{self.backend}:{self.id}"


class ProgramRef(BaseModel):
    model_config = _STRICT
    file: str = Field(min_length=1, max_length=4096)
    """The program's file name, for people."""
    flow: str = Name
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    """`program_hash`: every template of the flow, when last measured."""


class Baseline(BaseModel):
    model_config = _STRICT
    assignment: dict[str, str]
    """Function → model (a name of `models`) for the baseline run."""
    score: Score
    categories: Categories | None = None


class Profile(BaseModel):
    """A profile file, as read and written."""

    model_config = _STRICT
    llmflow_profile: Literal[1] = VERSION
    program: ProgramRef
    data: str = Field("", max_length=10_000)
    """What was measured on, for people: the dataset, its hash, the metric."""
    models: dict[str, ModelRef]
    baseline: Baseline
    functions: dict[str, dict[str, Measurement]] = Field(default_factory=dict)
    """Function → model (a name of `models`) → measurement."""

    @model_validator(mode="after")
    def _names_known(self) -> Profile:
        for fn, model in self.baseline.assignment.items():
            if model not in self.models:
                raise ValueError(f"baseline.assignment: {fn} runs on {model!r}, not in models")
        for fn, entries in self.functions.items():
            for model in entries:
                if model not in self.models:
                    raise ValueError(f"functions.{fn}: {model!r} is not in models")
        return self

    def to_json(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---- keys ---------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def template_hash(call: LLMCall) -> str:
    """What makes a function's prompts and parsing: its name, parameters, outputs (type
    and options) and template text. Not its model, pin or needs."""
    return _digest(
        call.model_dump(mode="json", include={"function", "params", "outputs", "segments"})
    )


def templates(plan: Plan) -> dict[str, str]:
    """Every semantic function of the plan, with its template hash."""
    return {n.call.function: template_hash(n.call) for n in plan.calls()}


def program_hash(plan: Plan) -> str:
    """The flow and its functions' templates: changes when any template does (each entry
    keeps its own template hash, which decides whether the entry still holds)."""
    return _digest({"flow": plan.flow, "templates": sorted(templates(plan).items())})


def model_ref(spec: ModelSpec) -> ModelRef:
    answers = {k: v for k, v in sorted(spec.settings.items()) if k not in NEUTRAL_SETTINGS}
    return ModelRef(backend=spec.backend, id=spec.id, answers={"chat": spec.chat, **answers})


def new_profile(
    plan: Plan,
    baseline: Mapping[str, str],
    score: Score,
    measured: Mapping[tuple[str, str], tuple[Score, PerCall]],
    data: str = "",
    categories: Mapping[tuple[str, str], Categories] | None = None,
    baseline_categories: Categories | None = None,
) -> Profile:
    """A profile of `plan`'s flow: the baseline (function → model name of the plan) and
    its score, and per (function, model name) the end-to-end score and cost per call
    measured with that function moved (the keys and hashes are the plan's); with
    `categories`, the same scores per value of a flow input."""
    hashes = templates(plan)
    functions: dict[str, dict[str, Measurement]] = {}
    for (fn, model), (entry_score, per_call) in measured.items():
        functions.setdefault(fn, {})[model] = Measurement(
            template=hashes[fn],
            score=entry_score,
            per_call=per_call,
            categories=(categories or {}).get((fn, model)),
        )
    used = set(baseline.values()) | {m for _, m in measured}
    return Profile(
        program=ProgramRef(file=Path(plan.file).name, flow=plan.flow, hash=program_hash(plan)),
        data=data,
        models={name: model_ref(plan.models[name]) for name in sorted(used)},
        baseline=Baseline(assignment=dict(baseline), score=score, categories=baseline_categories),
        functions=functions,
    )


def profile_path(program: str | os.PathLike[str]) -> Path:
    """Where a program's profile lives: `report.llmflow` → `report.profile.json`."""
    path = Path(program)
    return path.with_name(path.stem + SUFFIX)


# ---- what a profile says about a plan -----------------------------------------------------


@dataclass
class Evidence:
    """A profile matched against a plan: only what still holds, by the plan's names."""

    measured: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    """(function, model name in the plan) → its measurement."""
    baseline: Score | None = None
    baseline_categories: Categories | None = None
    """The baseline's scores per value of a flow input, when tuned `--by` it."""
    baseline_models: dict[str, str] = field(default_factory=dict)
    """Function → the plan's model the baseline ran it on (those still in the plan)."""
    stale: list[str] = field(default_factory=list)
    """Entries not used, and why, for `--explain`."""

    def of(self, function: str, model: str) -> Measurement | None:
        return self.measured.get((function, model))

    def score_of(self, function: str, model: str) -> Score | None:
        """The end-to-end score with `function` on `model`: its measurement, or, for a
        function measured on other models, on the model the baseline ran it on, the
        baseline's own score. A function with no measurement has none."""
        entry = self.measured.get((function, model))
        if entry is not None:
            return entry.score
        if (
            self.baseline is not None
            and self.baseline_models.get(function) == model
            and function in self.functions()
        ):
            return self.baseline
        return None

    def category_scores(self, function: str, model: str, input: str) -> dict[str, Score] | None:
        """Scores per value of flow input `input` with `function` on `model`, as
        `score_of` finds its end-to-end score; None where nothing was measured by it."""
        entry = self.measured.get((function, model))
        if entry is not None:
            found = entry.categories
        elif self.baseline_models.get(function) == model and function in self.functions():
            found = self.baseline_categories
        else:
            return None
        return dict(found.scores) if found is not None and found.input == input else None

    def functions(self) -> set[str]:
        """The functions with at least one measurement that holds."""
        return {fn for fn, _ in self.measured}

    def estimate(self, assignment: Mapping[str, str]) -> float | None:
        """The program's score under `assignment` (function → model), by the additive
        model LLMSelector uses: the baseline's score plus, for each function, how much
        its measured score on its model differs from the baseline's. A function whose
        model was not measured counts at the baseline (adds nothing). None: no baseline."""
        if self.baseline is None:
            return None
        total = self.baseline.mean
        for fn, model in assignment.items():
            score = self.score_of(fn, model)
            if score is not None:
                total += score.mean - self.baseline.mean
        return total


def match(profile: Profile, plan: Plan) -> Evidence:
    """What of `profile` holds for `plan`: entries whose function has the same template
    and whose model is one of the plan's (by identity, whatever its name)."""
    evidence = Evidence()
    if profile.program.flow != plan.flow:
        evidence.stale.append(
            f"the profile is of flow {profile.program.flow!r}, not {plan.flow!r}: nothing used"
        )
        return evidence
    current = templates(plan)
    names: dict[str, str] = {}
    for spec in plan.models.values():
        names.setdefault(model_ref(spec).key, spec.name)
    by_profile = {name: names.get(ref.key) for name, ref in profile.models.items()}
    for name, ref in profile.models.items():
        if by_profile[name] is None and any(name in e for e in profile.functions.values()):
            evidence.stale.append(
                f"model {name} ({ref}) of the profile is not one of the program's models "
                "(or its settings changed): its entries are not used"
            )
    evidence.baseline = profile.baseline.score
    evidence.baseline_categories = profile.baseline.categories
    evidence.baseline_models = {
        fn: by_profile[m] for fn, m in profile.baseline.assignment.items() if by_profile[m]
    }
    changed = []
    for fn, entries in sorted(profile.functions.items()):
        if fn not in current:
            evidence.stale.append(f"{fn} is not a function of this flow: its entries are not used")
            continue
        for name, entry in sorted(entries.items()):
            model = by_profile[name]
            if model is None:
                continue
            if entry.template != current[fn]:
                changed.append(f"{fn} on {model}")
                continue
            evidence.measured[(fn, model)] = entry
    if changed:
        evidence.stale.append(
            f"{', '.join(changed)}: measured on an earlier template, not used (re-run llmflow tune)"
        )
    if profile.program.hash != program_hash(plan) and evidence.measured:
        evidence.stale.append(
            "the program's templates changed since it was measured: entries whose own "
            "template and model did not change are used"
        )
    return evidence


# ---- reading ------------------------------------------------------------------------------


def load(path: str | os.PathLike[str], name: str | None = None) -> Profile:
    """Read and validate a profile; `name` is how errors name the file (default: path)."""
    shown = name or str(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise _error(shown, "no such profile", hint="llmflow tune writes one") from None
    except IsADirectoryError:
        raise _error(shown, "is a directory, not a profile") from None
    except OSError as err:
        raise _error(shown, f"cannot read it: {err.strerror or err}") from None
    return parse(data, shown)


def parse(data: bytes | str, name: str) -> Profile:
    """A profile from its text; every problem is a ProfileError at file:line:col."""
    if len(data) > MAX_PROFILE_BYTES:
        raise _error(name, f"larger than {MAX_PROFILE_BYTES // 2**20} MiB: not a profile")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            text = data[: err.start].decode("utf-8", "replace")
            raise _error(name, "is not UTF-8 text", text, _end_of(text)) from None
    else:
        text = data
    text = text.removeprefix("\ufeff")
    raw = _decode(text, name)
    if not isinstance(raw, dict):
        raise _error(name, f"a profile is a JSON object, not {_kind(raw)}", text, (1, 1))
    version = raw.get("llmflow_profile")
    if version != VERSION:
        where = _locate(text, ("llmflow_profile",)) if "llmflow_profile" in raw else (1, 1)
        said = "has no llmflow_profile version" if version is None else f"is version {version!r}"
        raise _error(
            name,
            f"this profile {said}; this llmflow reads version {VERSION}",
            text,
            where,
            hint="re-run llmflow tune to write it again",
        )
    try:
        return Profile.model_validate(raw)
    except ValidationError as err:
        diagnostics = [_field_error(name, text, e) for e in err.errors()[:MAX_ERRORS]]
        if err.error_count() > MAX_ERRORS:
            diagnostics.append(
                Diagnostic(
                    kind="profile",
                    message=f"and {err.error_count() - MAX_ERRORS} more errors",
                    file=name,
                )
            )
        raise ProfileError(diagnostics, text) from None


def _field_error(name: str, text: str, error: Any) -> Diagnostic:
    loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown field {loc[-1]!r}"
    elif error["type"] == "missing":
        message = f"missing field {loc[-1]!r}"
    named = loc[:-1] if error["type"] in ("extra_forbidden", "missing") else loc
    where = ".".join(str(p) for p in named)
    line, col = _locate(text, loc)
    span = Span(file=name, line=line, col=col, end_line=line, end_col=col + 1)
    return Diagnostic(
        kind="profile", message=f"{where}: {message}" if where else message, span=span
    )


def _decode(text: str, name: str) -> Any:
    seen: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                seen.append(key)
            out[key] = value
        return out

    def constant(word: str) -> Any:
        raise _NotANumber(word)

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as err:
        raise _error(
            name,
            f"is not valid JSON: {err.msg[:1].lower()}{err.msg[1:]}",
            text,
            (err.lineno, err.colno),
        ) from None
    except _NotANumber as err:
        found = re.search(rf"(?<![\w\"]){err.word}", text)
        raise _error(
            name,
            f"{err.word} is not a number JSON allows",
            text,
            _line_col(text, found.start() if found else 0),
        ) from None
    except RecursionError:
        raise _error(name, "is nested too deeply to be a profile", text, (1, 1)) from None
    except ValueError as err:  # an int of more digits than Python reads
        raise _error(name, f"is not a profile: {err}", text, (1, 1)) from None
    if seen:
        found = [m.start() for m in re.finditer(re.escape(json.dumps(seen[0])) + r"\s*:", text)]
        at = found[1] if len(found) > 1 else (found[0] if found else 0)
        raise _error(name, f"key {seen[0]!r} appears twice", text, _line_col(text, at))
    if _depth(value) > MAX_DEPTH:
        raise _error(name, "is nested too deeply to be a profile", text, (1, 1))
    return value


class _NotANumber(Exception):
    def __init__(self, word: str) -> None:
        self.word = word


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend(
                    (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


def _kind(value: Any) -> str:
    return (
        {list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")
        if value is not None
        else "null"
    )


def _error(
    name: str,
    message: str,
    text: str = "",
    where: tuple[int, int] | None = None,
    hint: str = "",
) -> ProfileError:
    if where is None:
        return ProfileError(Diagnostic(kind="profile", message=message, file=name, hint=hint))
    line, col = where
    span = Span(file=name, line=line, col=col, end_line=line, end_col=col + 1)
    return ProfileError(Diagnostic(kind="profile", message=message, span=span, hint=hint), text)


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _end_of(text: str) -> tuple[int, int]:
    return _line_col(text, len(text))


_WS = re.compile(r"[ \t\n\r]*")


def _locate(text: str, loc: tuple[Any, ...]) -> tuple[int, int]:
    """Where the value at a pydantic error's `loc` starts in valid JSON `text` (for a last
    part that is a key, where the key is written); the deepest part found otherwise."""
    decoder = json.JSONDecoder()
    i = _WS.match(text, 0).end()  # type: ignore[union-attr]
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        if i < len(text) and text[i] == "{" and isinstance(part, str):
            j = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            found = None
            while j < len(text) and text[j] == '"':
                key_at = j
                key, j = json.decoder.scanstring(text, j + 1)
                j = _WS.match(text, j).end() + 1  # type: ignore[union-attr]
                j = _WS.match(text, j).end()  # type: ignore[union-attr]
                if key == part:
                    found = key_at if last else j
                    break
                _, j = decoder.raw_decode(text, j)
                j = _WS.match(text, j).end()  # type: ignore[union-attr]
                if j < len(text) and text[j] == ",":
                    j = _WS.match(text, j + 1).end()  # type: ignore[union-attr]
            if found is None:
                break
            i = found
        elif i < len(text) and text[i] == "[" and isinstance(part, int):
            j = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            for _ in range(part):
                _, j = decoder.raw_decode(text, j)
                j = _WS.match(text, j).end() + 1  # type: ignore[union-attr]
                j = _WS.match(text, j).end()  # type: ignore[union-attr]
            i = j
        else:
            break
    return _line_col(text, i)


# ---- writing and merging ------------------------------------------------------------------


def save(profile: Profile, path: str | os.PathLike[str]) -> None:
    """Write the profile in one rename: a reader, or a crash, sees the old file or the
    new one, never part of one."""
    target = Path(path)
    data = profile.to_json().encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise _error(str(target), f"cannot write it: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # a profile is meant to be read and reviewed
        os.replace(tmp, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _error(str(target), f"cannot write it: {err.strerror or err}") from None


@dataclass
class Merged:
    profile: Profile
    dropped: list[str]
    """Entries of the old profile not kept, and why."""


def merge(old: Profile | None, new: Profile) -> Merged:
    """`new`'s measurements over `old`'s. Both must share a flow and a baseline (the same
    models, by identity, for the same functions, and the same baseline score): entries
    are only comparable against one baseline. Otherwise `new` replaces `old`, and the
    entries it did not measure again are listed as dropped. On the same function and
    model, the newer measurement wins."""
    if old is None:
        return Merged(new, [])

    def baseline_of(p: Profile) -> tuple[Any, ...]:
        return (
            p.program.flow,
            tuple(sorted((fn, p.models[m].key) for fn, m in p.baseline.assignment.items())),
            p.baseline.score,
        )

    if baseline_of(old) != baseline_of(new):
        kept = {(fn, new_key) for fn, e in new.functions.items() for new_key in _keys(new, e)}
        dropped = [
            f"{fn} on {m}"
            for fn, entries in sorted(old.functions.items())
            for m in sorted(entries)
            if (fn, old.models[m].key) not in kept
        ]
        return Merged(new, [f"{d}: measured against another baseline" for d in dropped])
    models = dict(new.models)
    name_of = {ref.key: name for name, ref in models.items()}
    functions: dict[str, dict[str, Measurement]] = {}
    for fn, entries in old.functions.items():
        for m, entry in entries.items():
            ref = old.models[m]
            name = name_of.get(ref.key)
            if name is None:
                name = _free_name(m, models)
                models[name] = ref
                name_of[ref.key] = name
            functions.setdefault(fn, {})[name] = entry
    for fn, entries in new.functions.items():
        functions.setdefault(fn, {}).update(entries)
    merged = new.model_copy(update={"models": models, "functions": functions})
    return Merged(Profile.model_validate(merged.model_dump(mode="json")), [])


def _keys(profile: Profile, entries: Mapping[str, Measurement]) -> Iterable[str]:
    return (profile.models[m].key for m in entries)


def _free_name(name: str, taken: Mapping[str, Any]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate

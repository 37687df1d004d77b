"""The embedded backend: GGUF models run in-process by llama.cpp.

Embedded models ship as PyPI packages, so a program runs with no server and no
download. Each model is loaded on first use and serves one call at a time (llama.cpp
keeps one KV cache per context); different models run in parallel threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

import llama_cpp
from llama_cpp import Llama, LlamaGrammar, StoppingCriteriaList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmflow.compiler.models import LOCAL_MODELS, ModelSpec
from llmflow.runtime.backends.base import (
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
)

logger = logging.getLogger(__name__)

MAX_DEFAULT_CONTEXT = 4096
"""Context allocated unless a model sets `n_ctx`: enough for our prompts, cheap in RAM."""

DEFAULT_SEED = 0
"""Sampling seed when a request sets none, so runs are reproducible."""

_CHUNK_FILE = re.compile(r"(?P<name>.+\.gguf)\.part(?P<index>\d+)")
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_PATTERN_GRAMMARS = {
    "int": 'root ::= "-"? [0-9]+',
    "float": 'root ::= "-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
    "bool": 'root ::= "true" | "false"',
}

_GBNF_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@llama_cpp.llama_log_callback
def _log_to_python(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Send llama.cpp's C logging to Python logging (debug) instead of stderr."""
    logger.debug("%s", (text or b"").decode("utf-8", errors="replace").rstrip())


# Replaces llama-cpp-python's own callback, which prints errors to stderr.
llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))

_LOAD_LOCK = threading.Lock()
"""Loading swaps `sys.stderr` process-wide, so two loads must not overlap."""


def find_model_file(model_id: str) -> Path:
    """The GGUF file for an embedded model name or a path to a `.gguf` file.

    Catalog models are found through their package's installed file list, without
    importing the package (the `llm` plugin packages import heavy dependencies).
    A model shipped as chunk packages is assembled once into the user cache.
    """
    local = LOCAL_MODELS.get(model_id)
    if local is None:
        path = Path(model_id).expanduser()
        if not path.is_file():
            raise BackendError(
                f"'{model_id}' is neither an embedded model "
                f"({', '.join(LOCAL_MODELS)}) nor an existing .gguf file"
            )
        return path
    dist = _distribution(model_id, local.distribution, local.distribution)
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    return _assemble_chunks(model_id, dist)


def cache_dir() -> Path:
    """Where assembled model files live: `$XDG_CACHE_HOME/llmflow/models`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmflow" / "models"


def _distribution(model_id: str, name: str, install: str) -> Distribution:
    try:
        return distribution(name)
    except PackageNotFoundError:
        raise BackendError(
            f"embedded model '{model_id}' needs the package {install}: pip install {install}"
        ) from None


def _assemble_chunks(model_id: str, dist: Distribution) -> Path:
    """Concatenate `NAME.gguf.partNN` files from the package's dependencies, once.

    The result is written to a temporary file, checked against the package's
    SHA256SUMS and renamed into place, so a crash never leaves a bad model behind.
    """
    main = dist.metadata["Name"]
    parts: dict[int, Path] = {}
    names: set[str] = set()
    for requirement in dist.requires or []:
        match = _REQUIREMENT_NAME.match(requirement)
        if match is None or ";" in requirement:
            continue
        part_dist = _distribution(model_id, match.group(), main)
        for file in part_dist.files or []:
            chunk = _CHUNK_FILE.fullmatch(file.name)
            if chunk:
                names.add(chunk["name"])
                parts[int(chunk["index"])] = Path(str(part_dist.locate_file(file)))
    if len(names) != 1 or sorted(parts) != list(range(len(parts))):
        raise BackendError(f"the package {main} does not hold one complete GGUF file")
    (name,) = names
    chunks = [parts[index] for index in sorted(parts)]
    target = cache_dir() / f"{main}-{dist.version}" / name
    try:
        size = sum(chunk.stat().st_size for chunk in chunks)
        if target.is_file() and target.stat().st_size == size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        _concatenate(chunks, target, _expected_sha256(dist, name))
    except OSError as error:
        raise BackendError(
            f"could not assemble embedded model '{model_id}' into {target.parent}: "
            f"{error.strerror or error}"
        ) from None
    return target


def _expected_sha256(dist: Distribution, name: str) -> str | None:
    for file in dist.files or []:
        if file.name == "SHA256SUMS":
            for line in file.read_text().splitlines():
                digest, _, listed = line.partition(" ")
                if listed.strip().lstrip("*") == name:
                    return digest.lower()
    return None


def _concatenate(chunks: list[Path], target: Path, sha256: str | None) -> None:
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(1 << 20):
                        out.write(block)
                        digest.update(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise BackendError(
                f"the assembled model file {target.name} is corrupt (sha256 mismatch); "
                "reinstall its package"
            )
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the cache is plain data
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _gbnf_literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    escaped = "".join(
        _GBNF_ESCAPES.get(char)
        or (f"\\x{ord(char):02x}" if ord(char) < 0x20 or ord(char) == 0x7F else char)
        for char in text
    )
    return f'"{escaped}"'


def _grammar_source(constraint: Constraint) -> str | None:
    """The GBNF grammar enforcing a constraint, or None if it cannot be enforced."""
    if constraint.choices:
        return "root ::= " + " | ".join(map(_gbnf_literal, constraint.choices))
    if constraint.json_schema is not None:
        try:
            return json_schema_to_gbnf(json.dumps(constraint.json_schema))
        except Exception as error:  # the converter raises many kinds on odd schemas
            # Not enforcing is allowed: the caller validates every result.
            logger.debug("JSON schema not enforced: %s", error)
            return None
    if constraint.pattern is not None:
        return _PATTERN_GRAMMARS[constraint.pattern]
    return None


@dataclass
class _Model:
    """A model's slot: its spec, its loaded Llama and the locks serializing its use."""

    spec: ModelSpec
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Orders waiting calls without tying up a thread each."""
    busy: threading.Lock = field(default_factory=threading.Lock)
    """Held by the thread using `llm`; outlives a cancelled call's await."""
    llm: Llama | None = None
    formatter: Jinja2ChatFormatter | None = None


class LocalBackend:
    """Serves every `local` model of a run from GGUF files through llama.cpp."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self._models = {name: _Model(spec) for name, spec in models.items()}
        self._grammars: dict[str, LlamaGrammar | None] = {}

    async def generate(self, request: GenerationRequest) -> Generation:
        model = self._models.get(request.model)
        if model is None:
            raise BackendError(f"no embedded model named '{request.model}'")
        grammar = self._grammar(request.constraint)
        cancelled = threading.Event()
        async with model.queue:
            try:
                return await asyncio.to_thread(self._generate, model, request, grammar, cancelled)
            except asyncio.CancelledError:
                cancelled.set()  # the thread stops at its next token
                raise

    async def aclose(self) -> None:
        """Free every loaded model (waiting for a call still running on it)."""
        for model in self._models.values():
            await asyncio.to_thread(_unload, model)

    def _grammar(self, constraint: Constraint | None) -> LlamaGrammar | None:
        if constraint is None:
            return None
        key = constraint.model_dump_json()
        if key not in self._grammars:
            source = _grammar_source(constraint)
            self._grammars[key] = (
                None if source is None else LlamaGrammar.from_string(source, verbose=False)
            )
        return self._grammars[key]

    def _generate(
        self,
        model: _Model,
        request: GenerationRequest,
        grammar: LlamaGrammar | None,
        cancelled: threading.Event,
    ) -> Generation:
        """Run one call on the model's thread (blocking): load if needed, then generate."""
        with model.busy:
            llm = model.llm if model.llm is not None else _load(model)
            started = time.perf_counter()
            tokens = self._prompt_tokens(model, llm, request)
            if not tokens:
                raise BackendError(f"empty prompt for model '{model.spec.name}'")
            if len(tokens) >= llm.n_ctx():
                raise BackendError(
                    f"the prompt ({len(tokens)} tokens) does not fit the context of "
                    f"model '{model.spec.name}' ({llm.n_ctx()} tokens)"
                )
            # llama.cpp keeps the KV of the longest common prefix with what it last
            # evaluated, but always re-evaluates the last prompt token for its logits.
            reused = min(
                Llama.longest_token_prefix(llm._input_ids.tolist(), tokens),
                len(tokens) - 1,
            )
            try:
                result = llm.create_completion(
                    prompt=tokens,
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    stop=[stop for stop in request.stop if stop],
                    seed=DEFAULT_SEED if request.seed is None else request.seed,
                    grammar=grammar,
                    stopping_criteria=StoppingCriteriaList(
                        [lambda _ids, _logits: cancelled.is_set()]
                    ),
                )
            except (RuntimeError, ValueError) as error:  # llama.cpp decode failures
                raise BackendError(f"model '{model.spec.name}' failed: {error}") from None
            choice = result["choices"][0]  # type: ignore[index]
            usage = result["usage"]  # type: ignore[index]
            return Generation(
                text=choice["text"],
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
                cached_tokens=reused,
                seconds=time.perf_counter() - started,
                finish_reason=choice["finish_reason"],
            )

    @staticmethod
    def _prompt_tokens(model: _Model, llm: Llama, request: GenerationRequest) -> list[int]:
        """Chat models go through their own template; base models get the raw text."""
        if model.formatter is None:
            text = "".join(turn.text for turn in request.turns)
            return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        try:
            text = model.formatter(
                messages=[{"role": turn.role, "content": turn.text} for turn in request.turns]
            ).prompt
        except Exception as error:  # jinja2 errors, and the template's own raise_exception
            raise BackendError(
                f"model '{model.spec.name}' cannot format this conversation: {error}"
            ) from None
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if tokens[:2] == [llm.token_bos()] * 2:  # the template wrote the BOS itself
            tokens = tokens[1:]
        return tokens


def _load(model: _Model) -> Llama:
    """Load a model's GGUF file and, for a chat model, its chat template."""
    spec = model.spec
    local = LOCAL_MODELS.get(spec.id)
    path = find_model_file(spec.id)
    n_ctx = spec.options.get("n_ctx") or min(
        spec.context or (local.context if local else MAX_DEFAULT_CONTEXT),
        MAX_DEFAULT_CONTEXT,
    )
    # verbose=False would make llama-cpp-python redirect file descriptors 1 and 2
    # during the load, which loses output written meanwhile by other threads; with
    # verbose=True its C logs still go to our callback and its prints are swallowed.
    started = time.perf_counter()
    try:
        with (
            _LOAD_LOCK,
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stderr(devnull),
        ):
            llm = Llama(
                model_path=str(path), n_ctx=int(n_ctx), n_threads=os.cpu_count(), verbose=True
            )
    except (ValueError, RuntimeError) as error:
        raise BackendError(f"could not load model '{spec.name}' from {path}: {error}") from None
    llm.verbose = False
    logger.debug("loaded %s in %.2fs", path, time.perf_counter() - started)
    chat = spec.chat if local is None or "chat" in spec.model_fields_set else local.chat
    if chat:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise BackendError(
                f"model '{spec.name}' has no chat template in {path.name}; "
                "declare it as a completion model (chat = false)"
            )
        model.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(llm, llm.token_eos()),
            bos_token=_token_text(llm, llm.token_bos()),
            add_generation_prompt=True,
        )
    model.llm = llm
    return llm


def _token_text(llm: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _unload(model: _Model) -> None:
    with model.busy:
        if model.llm is not None:
            model.llm.close()
            model.llm = None
            model.formatter = None

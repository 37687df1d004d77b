"""Finding an embedded model's GGUF file, and assembling one shipped in chunks.

Embedded models ship as PyPI packages, so a program runs with no server and no
download; a model too large for one package comes as chunk packages, concatenated once
into the user cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from llmflow.compiler.models import LOCAL_MODELS
from llmflow.runtime.backends.base import BackendError

_CHUNK_FILE = re.compile(r"(?P<name>.+\.gguf)\.part(?P<index>\d+)")
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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

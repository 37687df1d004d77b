"""The response cache: a deterministic request's answer, kept across runs.

A request is deterministic when it samples greedily (temperature 0) or with a seed that was
chosen (`--seed`, `seed=`; a seed drawn at random for one run is never asked again);
then the same model, prompt and parameters give the same answer, and paying for it again
buys nothing. Keys are hashes of exactly what reaches the model (backend, model id,
endpoint, turns, sampling parameters, constraint), never of where the call sits in the
plan. Entries are JSON (diskcache's JSONDisk), never pickle, in a directory only the
owner can read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import diskcache

from llmflow.compiler.models import ModelSpec
from llmflow.runtime.backends.base import Generation, GenerationRequest


def request_key(spec: ModelSpec, request: GenerationRequest) -> str:
    """What identifies an answer: everything the model sees, nothing about scheduling."""
    identity = {
        "backend": spec.backend,
        "id": spec.id,
        "base_url": spec.options.get("base_url"),
        "chat": spec.chat,
        "request": request.model_dump(
            mode="json", exclude={"model", "group", "priority", "node", "random_seed"}
        ),
    }
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def deterministic(request: GenerationRequest) -> bool:
    """Worth caching: greedy, or sampled with a seed someone chose (a run's seed drawn
    at random is never asked again)."""
    return request.temperature == 0 or (request.seed is not None and not request.random_seed)


class ResponseCache:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(directory), disk=diskcache.JSONDisk)

    def get(self, key: str) -> Generation | None:
        data = self._cache.get(key)
        return Generation.model_validate(data) if data is not None else None

    def put(self, key: str, generation: Generation) -> None:
        self._cache.set(key, generation.model_dump(mode="json"))

    def close(self) -> None:
        self._cache.close()

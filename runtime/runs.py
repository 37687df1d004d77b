"""Where a run keeps what outlives it: `.llmflow/` in the working directory (or
`$LLMFLOW_HOME`), owner-only, holding the response cache and one folder per run.

    .llmflow/cache/                 response cache (diskcache, JSON entries)
    .llmflow/runs/RUN/run.json      program, flow, inputs, options, status, outputs
    .llmflow/runs/RUN/journal.jsonl every answer received (for --resume)
    .llmflow/runs/RUN/trace.jsonl   one record per call (OpenTelemetry GenAI names)
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from llmflow.errors import LLMFlowError


def home() -> Path:
    return Path(os.environ.get("LLMFLOW_HOME") or ".llmflow")


def private_dir(path: Path) -> Path:
    """Create a folder only its owner can read (and tighten one that exists)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    @classmethod
    def create(cls, root: Path | None = None) -> RunDir:
        runs = private_dir((root or home()) / "runs")
        private_dir(runs.parent)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = runs / f"{stamp}-{secrets.token_hex(2)}"
        return cls(private_dir(path))

    @classmethod
    def find(cls, ref: str, root: Path | None = None) -> RunDir:
        """A run by id (`20261126-124501-ab12`), the path of its folder, or `last`."""
        runs = (root or home()) / "runs"
        known = sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []
        if ref == "last" and known:
            ref = known[-1]
        for path in (Path(ref), runs / ref):
            if (path / "run.json").is_file():
                return cls(path)
        hint = f"; recent runs: {', '.join(known[-3:])}" if known else ""
        raise LLMFlowError(f"no run '{ref}' in {runs}{hint}")

    @property
    def journal(self) -> Path:
        return self.path / "journal.jsonl"

    @property
    def trace(self) -> Path:
        return self.path / "trace.jsonl"

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text(encoding="utf-8"))

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.meta_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=2)
        tmp.replace(self.meta_path)

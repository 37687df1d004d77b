"""Where a dataset's rows run: in this process (`local`) or on a Ray cluster (`ray`).

An executor turns rows into row results, in completion order; it writes no output file.
The driver (`llmflow run --inputs`, `llmflow.run_batch`) reads the rows, skips the ones
already written, and alone writes each result, once, so every executor has the same
resume semantics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Protocol, Self

from llmflow.runtime.batch import RowResult
from llmflow.runtime.rows import Row


class Executor(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def results(self, rows: Iterable[Row]) -> AsyncIterator[RowResult]:
        """Each row's result as it finishes."""
        ...

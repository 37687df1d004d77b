"""What an eval measured, as data: per flow output a score with its interval, per row
its scores, per semantic function what its calls used. Scores of any subset of rows can
be summed up again (`EvalReport.summary(ids)`): a tuner scores held-out rows apart."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from llmflow.runtime.calls import CallStats, RowId
from llmflow.runtime.evals.intervals import interval
from llmflow.runtime.stats import ran


@dataclass
class OutputScore:
    """One flow output's score over the rows."""

    output: str
    metric: str
    """As written: `exact`, `numeric(tolerance = 1)`, `judge(rate_reply)`."""
    judged: bool
    """Scored by a model (an LLM judge), not computed."""
    mean: float | None
    """The mean score (None: no row was scored)."""
    low: float | None
    high: float | None
    """The 95% confidence interval of the mean."""
    interval: str
    """How: "wilson" (every score 0 or 1) or "bootstrap"."""
    rows: int
    """Rows scored, failed ones included."""
    failed: int
    """Rows whose flow failed: each scored 0."""
    skipped: int
    """Rows not scored: no usable expected value, or the judge or metric failed."""

    def to_json(self) -> dict[str, Any]:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {
            "output": self.output,
            "metric": self.metric,
            "judged": self.judged,
            "score": rounded(self.mean),
            "ci95": [rounded(self.low), rounded(self.high)],
            "interval": self.interval,
            "rows": self.rows,
            "failed": self.failed,
            "skipped": self.skipped,
        }


@dataclass
class Usage:
    """What a set of calls consumed."""

    calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    seconds: float = 0.0
    """Model time, summed over calls."""
    cache_hits: int = 0
    models: list[str] = field(default_factory=list)
    """The models that served the calls."""

    def add(self, call: CallStats) -> None:
        if not ran(call):
            return
        self.calls += call.fallback_from is None
        self.input_tokens += call.input_tokens
        self.cached_tokens += call.cached_tokens
        self.output_tokens += call.output_tokens
        self.dollars += call.dollars
        self.seconds += call.seconds
        self.cache_hits += call.generations > 0 and call.cache_hits == call.generations
        if call.model not in self.models:
            self.models.append(call.model)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "dollars": round(self.dollars, 10),
            "seconds": round(self.seconds, 4),
            "cache_hits": self.cache_hits,
            "models": self.models,
        }


@dataclass
class RowScore:
    """One row: what the flow gave, what was expected, and each output's score."""

    id: RowId
    line: int
    outputs: dict[str, Any]
    expected: dict[str, Any]
    scores: dict[str, float]
    """Output → score, for the outputs scored (a failed row: 0 for each)."""
    error: str | None = None
    """Why the flow failed (or the row could not be run)."""
    problems: dict[str, str] = field(default_factory=dict)
    """Output → why it was not scored (`file:line: ...`)."""
    dollars: float = 0.0
    """What the flow's calls of the row cost (its judges' calls not included)."""
    seconds: float = 0.0
    priced: float = 0.0
    """What those calls cost at their models' prices, answers from the cache or the
    journal included (they cost nothing now, but an assignment does not become free
    because it was measured before: what a search over assignments compares)."""

    @property
    def score(self) -> float | None:
        """The mean of the row's output scores (None: none was scored): one number per
        row, for a search over assignments."""
        return sum(self.scores.values()) / len(self.scores) if self.scores else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "line": self.line,
            "outputs": self.outputs,
            "expected": self.expected,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "error": self.error,
            "problems": self.problems,
            "dollars": round(self.dollars, 10),
            "seconds": round(self.seconds, 4),
        }


@dataclass
class EvalReport:
    """An eval's result (`llmflow.evaluate`)."""

    eval: str
    flow: str
    data: str
    metrics: dict[str, str]
    """Output → its metric, as written."""
    judged: set[str]
    """The outputs a judge scored."""
    assignment: dict[str, str]
    """Semantic function → the model it was pinned to for this eval."""
    rows: list[RowScore]
    """In the data's order."""
    scores: dict[str, OutputScore]
    functions: dict[str, Usage]
    """Per semantic function of the flow: its calls over all rows."""
    judges: dict[str, Usage]
    """Per judge function: the calls that scored (not counted in `functions`)."""
    total: Usage
    """Every call, the judges' included."""
    seconds: float
    """Wall-clock seconds of the whole eval."""

    @property
    def failed(self) -> int:
        """Rows whose flow failed or that could not be run."""
        return sum(r.error is not None for r in self.rows)

    def summary(self, ids: Collection[RowId] | None = None) -> dict[str, OutputScore]:
        """Each output's score over the rows whose id is in `ids` (all: None)."""
        chosen = self.rows if ids is None else [r for r in self.rows if r.id in ids]
        return summarize(chosen, self.metrics, self.judged)

    def to_json(self, rows: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "eval": self.eval,
            "flow": self.flow,
            "data": self.data,
            "assignment": self.assignment,
            "rows": len(self.rows),
            "failed": self.failed,
            "scores": {k: s.to_json() for k, s in self.scores.items()},
            "functions": {k: u.to_json() for k, u in self.functions.items()},
            "judges": {k: u.to_json() for k, u in self.judges.items()},
            "total": self.total.to_json(),
            "seconds": round(self.seconds, 4),
        }
        if rows:
            data["row_scores"] = [r.to_json() for r in self.rows]
        return data


def summarize(
    rows: Iterable[RowScore], metrics: dict[str, str], judged: Collection[str]
) -> dict[str, OutputScore]:
    """Per output: mean, 95% interval, rows scored, failed and skipped."""
    rows = list(rows)
    out: dict[str, OutputScore] = {}
    for name, metric in metrics.items():
        scores = [r.scores[name] for r in rows if name in r.scores]
        failed = sum(1 for r in rows if name in r.scores and r.error is not None)
        skipped = sum(1 for r in rows if name not in r.scores)
        mean = sum(scores) / len(scores) if scores else None
        low, high, how = interval(scores) if scores else (None, None, "")
        out[name] = OutputScore(
            output=name,
            metric=metric,
            judged=name in judged,
            mean=mean,
            low=low,
            high=high,
            interval=how,
            rows=len(scores),
            failed=failed,
            skipped=skipped,
        )
    return out

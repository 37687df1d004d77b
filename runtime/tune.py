"""Searching model assignments against measurements: the core of `llmflow tune`.

The search knows nothing about how a program is run. It asks a callback,

    async def measure(assignment: dict[str, str], rows: Sequence[int]) -> Sequence[Outcome]

for the outcome of each row (its score, and what it cost) with every semantic function on
the model the assignment names, and decides from those numbers alone:

- The rows are split, seeded and stratified by category when there is one, into a
  *tuning* part, where assignments are compared, and a *held-out* part, where only the
  chosen assignment is measured, so its reported score is not the maximum of many noisy
  ones.
- Small spaces (at most `exact_limit` assignments, 64 by default) are enumerated.
  Larger ones are searched as LLMSelector does, one function's model at a time: the
  start assignment, then every one-function change of it (what a profile records), then
  the assignment the additive model (start score plus per-function changes) predicts
  best, then local search by one-function moves for at most `max_rounds` rounds. At most
  `1 + (2 + max_rounds) * sum(len(models) - 1)` assignments are measured (`bound`).
- The objective: the cheapest (under `latency`, the fastest) assignment whose mean score
  reaches `target`; the best mean score within `budget` dollars per row; both; or,
  given neither, the best score. Ties go to the assignment closest to the start (fewest
  functions changed), then to models listed first.
- `by_category`: a model assignment per value of the rows' category (Composition of
  Experts), chosen jointly so the whole set meets the target or budget.

Every (assignment, row) is measured once (`Measurements`, which can be kept and passed
to later searches), so re-tuning on the same rows costs nothing new.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from llmflow.compiler.profile import Score
from llmflow.errors import LLMFlowError

EXACT_LIMIT = 64
"""Largest number of assignments enumerated; above it, the one-function-at-a-time search."""
MAX_ROUNDS = 3
FRONTIER_LIMIT = 5_000
"""Largest Pareto frontier the additive model's exact solver keeps."""
EPSILON = 1e-12

Assignment = Mapping[str, str]
"""Semantic function → model name."""


class Outcome(NamedTuple):
    """One row under one assignment: its score (higher is better, typically 0 or 1), and
    what running it cost."""

    score: float
    dollars: float = 0.0
    seconds: float = 0.0


Measure = Callable[[dict[str, str], Sequence[int]], Awaitable[Sequence[Outcome]]]
"""`measure(assignment, rows)`: the outcome of each row, in the order of `rows`."""


class TuneError(LLMFlowError):
    """The search cannot go on: bad arguments, or a `measure` that broke its contract."""


# ---- splitting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    tuning: tuple[int, ...]
    held_out: tuple[int, ...]


def split_rows(
    rows: Sequence[int],
    held_out: float = 0.5,
    seed: int = 0,
    categories: Mapping[int, str] | None = None,
) -> Split:
    """Rows into a tuning part and a held-out part, `held_out` of each category (of all
    rows without categories) held out, rounded, keeping at least one row of a category
    with two or more in each part (a category of one row is tuned on). The same seed
    gives the same split."""
    if not 0 <= held_out < 1:
        raise TuneError(f"held_out must be at least 0 and below 1, not {held_out}")
    rng = random.Random(seed)
    strata: dict[str, list[int]] = {}
    for row in rows:
        strata.setdefault(categories[row] if categories else "", []).append(row)
    tuning: list[int] = []
    out: list[int] = []
    for name in sorted(strata):
        members = sorted(strata[name])
        rng.shuffle(members)
        k = round(len(members) * held_out)
        if held_out > 0 and len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        elif len(members) == 1:
            k = 0  # a category seen once is tuned on, so a category map knows it
        out += members[:k]
        tuning += members[k:]
    return Split(tuple(sorted(tuning)), tuple(sorted(out)))


# ---- measurements, memoized ---------------------------------------------------------------


def _key(assignment: Assignment) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(assignment.items()))


class Measurements:
    """Outcomes by (assignment, row), each asked of `measure` once."""

    def __init__(self, measure: Measure, parallel: int = 4) -> None:
        self.measure = measure
        self.outcomes: dict[tuple[tuple[str, str], ...], dict[int, Outcome]] = {}
        self.calls = 0
        self.rows_measured = 0
        self._limit = asyncio.Semaphore(max(1, parallel))

    async def get(self, assignment: Assignment, rows: Sequence[int]) -> list[Outcome]:
        known = self.outcomes.setdefault(_key(assignment), {})
        missing = [r for r in dict.fromkeys(rows) if r not in known]
        if missing:
            async with self._limit:
                got = list(await self.measure(dict(assignment), missing))
            self.calls += 1
            if len(got) != len(missing):
                raise TuneError(
                    f"measure returned {len(got)} outcomes for {len(missing)} rows "
                    f"(assignment {_shown(assignment)})"
                )
            for row, outcome in zip(missing, got, strict=True):
                known[row] = _checked(outcome, row, assignment)
            self.rows_measured += len(missing)
        return [known[r] for r in rows]

    def score(self, assignment: Assignment, rows: Sequence[int]) -> Score:
        """The mean score with its 95% interval of rows already measured (a profile's
        entry for the point); KeyError if one was not."""
        known = self.outcomes[_key(assignment)]
        return interval([known[r].score for r in rows])


def _checked(outcome: Outcome | Sequence[float], row: int, assignment: Assignment) -> Outcome:
    try:
        value = Outcome(*outcome)
        numbers = [float(value.score), float(value.dollars), float(value.seconds)]
    except (TypeError, ValueError):
        raise TuneError(
            f"measure returned {outcome!r} for row {row}: not an Outcome(score, dollars, seconds)"
        ) from None
    if not all(math.isfinite(x) for x in numbers) or numbers[1] < 0 or numbers[2] < 0:
        raise TuneError(
            f"measure returned {outcome!r} for row {row} of {_shown(assignment)}: scores "
            "must be finite, costs finite and not negative"
        )
    return Outcome(*numbers)


def _shown(assignment: Assignment) -> str:
    return ", ".join(f"{fn}={m}" for fn, m in sorted(assignment.items()))


# ---- points and the objective -------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """An assignment measured on some rows: mean score, dollars and seconds per row."""

    assignment: dict[str, str]
    score: float
    dollars: float
    seconds: float
    rows: int


def _point(assignment: Assignment, outcomes: Sequence[Outcome]) -> Point:
    n = len(outcomes)
    return Point(
        dict(assignment),
        sum(o.score for o in outcomes) / n,
        sum(o.dollars for o in outcomes) / n,
        sum(o.seconds for o in outcomes) / n,
        n,
    )


@dataclass(frozen=True)
class Objective:
    """What the search wants. `target`: least mean score; `budget`: most dollars per
    row; `objective`: under a target, "latency" minimizes seconds instead of dollars."""

    target: float | None = None
    budget: float | None = None
    objective: Literal["cost", "quality", "latency"] = "cost"

    def cost(self, p: Point) -> float:
        return p.seconds if self.objective == "latency" else p.dollars

    def reaches(self, p: Point) -> bool:
        return self.target is None or p.score >= self.target - EPSILON

    def affords(self, p: Point) -> bool:
        return self.budget is None or p.dollars <= self.budget + EPSILON

    def rank(self, p: Point, tie: tuple[int, ...]) -> tuple[float | bool | tuple[int, ...], ...]:
        """Smaller is better: within budget first; then, under a target, those reaching
        it by cost (the others by score); else by score; then cost; then `tie`."""
        score = round(p.score, 12)
        cost = round(self.cost(p), 12)
        if self.target is not None:
            reaches = self.reaches(p)
            return (not self.affords(p), not reaches, cost if reaches else -score, -score, tie)
        if self.budget is not None:
            affords = self.affords(p)
            return (not affords, -score if affords else cost, cost, tie)
        return (-score, cost, tie)


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other is both cheaper (or as cheap) and better than, cheapest first."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.dollars, -p.score)):
        if not front or p.score > front[-1].score + EPSILON:
            front.append(p)
    return front


# ---- the result ---------------------------------------------------------------------------


def interval(scores: Sequence[float]) -> Score:
    """The mean and its 95% interval: Wilson's for 0/1 scores, else the normal
    approximation (mean ± 1.96 standard errors)."""
    n = len(scores)
    if n == 0:
        raise TuneError("no rows to score")
    mean = sum(scores) / n
    z = 1.959963984540054
    if all(s in (0.0, 1.0) for s in scores):
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low, high = centre - half, centre + half
    else:
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else 0.0
        low, high = mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n)
    return Score(mean=mean, low=min(low, mean), high=max(high, mean), n=n)


@dataclass(frozen=True)
class Validation:
    """The chosen assignment on the held-out rows."""

    score: Score
    dollars: float
    seconds: float


@dataclass
class Result:
    chosen: Point
    """The chosen assignment as measured on the tuning rows (for `by_category`, the
    category map's combined point; `categories` holds the map)."""
    front: list[Point]
    """The cost–quality Pareto front of the single assignments measured on every tuning
    row, cheapest first."""
    held_out: Validation | None
    split: Split
    start: Point
    """The start assignment on the tuning rows: the baseline a profile is measured at."""
    how: str
    """"exact: N assignments" or the one-function search, with its bound."""
    reason: str = ""
    """Why the chosen point misses the target or the budget (empty: it does not)."""
    points: list[Point] = field(default_factory=list)
    """Every assignment measured on every tuning row."""
    categories: dict[str, dict[str, str]] | None = None
    """`by_category`: category value → assignment."""
    measured_rows: int = 0
    """(assignment, row) pairs measured by this search (memoized ones not counted)."""

    def one_change(self, function: str, model: str) -> Point | None:
        """The start assignment with only `function` moved to `model`, if measured: what
        a profile records for that function and model."""
        wanted = {**self.start.assignment, function: model}
        return next((p for p in self.points if p.assignment == wanted), None)


# ---- the search ---------------------------------------------------------------------------


async def tune(
    candidates: Mapping[str, Sequence[str]],
    measure: Measure | Measurements,
    rows: int | Sequence[int],
    *,
    target: float | None = None,
    budget: float | None = None,
    objective: Literal["cost", "quality", "latency"] = "cost",
    start: Assignment | None = None,
    categories: Mapping[int, str] | Sequence[str] | None = None,
    by_category: bool = False,
    held_out: float = 0.5,
    seed: int = 0,
    exact_limit: int = EXACT_LIMIT,
    max_rounds: int = MAX_ROUNDS,
    parallel: int = 4,
) -> Result:
    """Search assignments of `candidates` (function → its candidate models, preferred
    first) on `rows` (a count, or row ids) and validate the choice on held-out rows.
    `start`: the baseline (default: each function's first candidate). `categories`:
    each row's category (by row id), for the split and for `by_category`. `parallel`:
    how many `measure` calls may be in flight at once (a `Measurements` keeps its own)."""
    ids = list(range(rows)) if isinstance(rows, int) else list(rows)
    if not ids:
        raise TuneError("no rows to tune on")
    if not candidates or any(not models for models in candidates.values()):
        raise TuneError("every function needs at least one candidate model")
    space = {fn: list(dict.fromkeys(models)) for fn, models in candidates.items()}
    first = {fn: models[0] for fn, models in space.items()}
    begin = dict(start) if start is not None else first
    if set(begin) != set(space) or any(begin[fn] not in space[fn] for fn in space):
        raise TuneError(f"the start assignment {_shown(begin)} is not one of the candidates")
    cats = _categories(categories, ids)
    if by_category and cats is None:
        raise TuneError("by_category needs each row's category")
    memo = measure if isinstance(measure, Measurements) else Measurements(measure, parallel)
    before = memo.rows_measured
    split = split_rows(ids, held_out, seed, cats)
    if not split.tuning:
        raise TuneError("no rows left to tune on after holding out")
    goal = Objective(target, budget, objective)
    search = _Search(space, begin, memo, goal, exact_limit, max_rounds)
    if by_category:
        assert cats is not None
        result = await search.by_category(split, cats)
    else:
        result = await search.run(split.tuning)
    result.split = split
    if split.held_out:
        result.held_out = await _validate(memo, result, split.held_out, cats)
    result.measured_rows = memo.rows_measured - before
    return result


def _categories(
    categories: Mapping[int, str] | Sequence[str] | None, ids: Sequence[int]
) -> dict[int, str] | None:
    if categories is None:
        return None
    if isinstance(categories, Mapping):
        missing = [r for r in ids if r not in categories]
        if missing:
            raise TuneError(f"row {missing[0]} has no category")
        return {r: str(categories[r]) for r in ids}
    if any(not 0 <= r < len(categories) for r in ids):
        raise TuneError(f"{len(categories)} categories for row ids up to {max(ids)}")
    return {r: str(categories[r]) for r in ids}


async def _validate(
    memo: Measurements, result: Result, rows: Sequence[int], cats: Mapping[int, str] | None
) -> Validation:
    outcomes: list[Outcome] = []
    if result.categories is not None and cats is not None:
        groups: dict[str, list[int]] = {}
        for r in rows:
            groups.setdefault(cats[r], []).append(r)
        for value, members in sorted(groups.items()):
            # a category the tuning rows never saw runs on the best single assignment
            assignment = result.categories.get(value, result.front[-1].assignment)
            outcomes += await memo.get(assignment, members)
    else:
        outcomes = await memo.get(result.chosen.assignment, rows)
    n = len(outcomes)
    return Validation(
        interval([o.score for o in outcomes]),
        sum(o.dollars for o in outcomes) / n,
        sum(o.seconds for o in outcomes) / n,
    )


class _Search:
    def __init__(
        self,
        space: dict[str, list[str]],
        start: dict[str, str],
        memo: Measurements,
        goal: Objective,
        exact_limit: int,
        max_rounds: int,
    ) -> None:
        self.space, self.start, self.memo, self.goal = space, start, memo, goal
        self.exact_limit, self.max_rounds = exact_limit, max_rounds
        self.functions = sorted(space)

    def tie(self, assignment: Assignment) -> tuple[int, ...]:
        changed = sum(assignment[fn] != self.start[fn] for fn in self.functions)
        return (changed, *(self.space[fn].index(assignment[fn]) for fn in self.functions))

    def best(self, points: Sequence[Point], goal: Objective | None = None) -> Point:
        goal = goal or self.goal
        return min(points, key=lambda p: goal.rank(p, self.tie(p.assignment)))

    @property
    def size(self) -> int:
        return math.prod(len(m) for m in self.space.values())

    @property
    def bound(self) -> int:
        moves = sum(len(m) - 1 for m in self.space.values())
        return 1 + (2 + self.max_rounds) * moves

    async def measure_all(
        self, assignments: Sequence[Assignment], rows: Sequence[int]
    ) -> list[Point]:
        got = await asyncio.gather(*(self.memo.get(a, rows) for a in assignments))
        return [_point(a, o) for a, o in zip(assignments, got, strict=True)]

    async def run(self, rows: Sequence[int], goal: Objective | None = None) -> Result:
        goal = goal or self.goal
        if self.size <= self.exact_limit:
            everything = [
                dict(zip(self.functions, models, strict=True))
                for models in itertools.product(*(self.space[fn] for fn in self.functions))
            ]
            points = await self.measure_all(everything, rows)
            how = f"exact: all {len(points)} assignments"
        else:
            points = await self.coordinate(rows, goal)
            how = (
                f"one function at a time: {len(points)} of {self.size} assignments measured "
                f"(at most {self.bound}: start, one-function changes, the additive model's "
                f"pick, {self.max_rounds} rounds of moves)"
            )
        chosen = self.best(points, goal)
        start = next(p for p in points if p.assignment == self.start)
        return Result(
            chosen=chosen,
            front=pareto_front(points),
            held_out=None,
            split=Split((), ()),
            start=start,
            how=how,
            reason=_shortfall(goal, chosen),
            points=points,
        )

    async def coordinate(self, rows: Sequence[int], goal: Objective) -> list[Point]:
        seen: dict[tuple[tuple[str, str], ...], Point] = {}

        async def visit(assignments: Sequence[Assignment]) -> None:
            new = [a for a in assignments if _key(a) not in seen]
            for p in await self.measure_all(new, rows):
                seen[_key(p.assignment)] = p

        await visit([self.start])
        changes = [
            {**self.start, fn: m}
            for fn in self.functions
            for m in self.space[fn]
            if m != self.start[fn]
        ]
        await visit(changes)
        predicted = self.predict(seen[_key(self.start)], seen, goal)
        if predicted is not None:
            await visit([predicted])
        current = self.best(list(seen.values()), goal)
        for _ in range(self.max_rounds):
            moves = [
                {**current.assignment, fn: m}
                for fn in self.functions
                for m in self.space[fn]
                if m != current.assignment[fn]
            ]
            await visit(moves)
            better = self.best([current, *(seen[_key(a)] for a in moves)], goal)
            if better is current:
                break
            current = better
        return list(seen.values())

    def predict(
        self,
        base: Point,
        seen: Mapping[tuple[tuple[str, str], ...], Point],
        goal: Objective,
    ) -> dict[str, str] | None:
        """The assignment the additive model (start plus each function's measured change)
        says is best for the goal, solved exactly over Pareto frontiers."""
        values, weights, money = [], [], []
        for fn in self.functions:
            row_v, row_w, row_d = [], [], []
            for m in self.space[fn]:
                p = seen[_key({**self.start, fn: m})]
                row_v.append(p.score - base.score)
                row_w.append(goal.cost(p) - goal.cost(base))
                row_d.append(p.dollars - base.dollars)
            values.append(row_v)
            weights.append(row_w)
            money.append(row_d)
        states: list[tuple[float, float, float, tuple[int, ...]]] = [(0.0, 0.0, 0.0, ())]
        for f in range(len(self.functions)):
            grown = [
                (w + weights[f][i], v + values[f][i], d + money[f][i], picks + (i,))
                for w, v, d, picks in states
                for i in range(len(values[f]))
            ]
            grown.sort(key=lambda s: (s[0], -s[1], s[2]))
            states, top = [], -math.inf
            for s in grown:
                if s[1] > top + EPSILON:
                    states.append(s)
                    top = s[1]
            if len(states) > FRONTIER_LIMIT:
                return None
        guesses = [
            Point(
                {fn: self.space[fn][i] for fn, i in zip(self.functions, picks, strict=True)},
                base.score + v,
                base.dollars + d,
                base.seconds + (w if goal.objective == "latency" else 0.0),
                base.rows,
            )
            for w, v, d, picks in states
        ]
        return self.best(guesses, goal).assignment

    async def by_category(self, split: Split, cats: Mapping[int, str]) -> Result:
        """A search per category on its tuning rows, then one point per category chosen
        so that the whole (weighted by rows) meets the goal."""
        groups: dict[str, list[int]] = {}
        for r in split.tuning:
            groups.setdefault(cats[r], []).append(r)
        names = sorted(groups)
        per: dict[str, Result] = {}
        for value in names:
            per[value] = await self.run(groups[value])
        total = len(split.tuning)
        options = [
            [p for p in per[v].points if p.assignment == per[v].chosen.assignment]
            + [p for p in per[v].points if p.assignment != per[v].chosen.assignment]
            for v in names
        ]
        share = [len(groups[v]) / total for v in names]
        picks, slack = self.combine(options, share)
        mapping = {
            v: dict(options[c][i].assignment)
            for c, (v, i) in enumerate(zip(names, picks, strict=True))
        }
        chosen = Point(
            {},
            sum(share[c] * options[c][i].score for c, i in enumerate(picks)),
            sum(share[c] * options[c][i].dollars for c, i in enumerate(picks)),
            sum(share[c] * options[c][i].seconds for c, i in enumerate(picks)),
            total,
        )
        singles = await self.singles(per, groups, split.tuning)
        start = next(p for p in singles if p.assignment == self.start)
        hows = {r.how.split(":")[0] for r in per.values()}
        return Result(
            chosen=chosen,
            front=pareto_front(singles),
            held_out=None,
            split=split,
            start=start,
            how=f"per category ({len(names)} values), each {' / '.join(sorted(hows))}"
            + (
                f"; combined approximately (frontier past {FRONTIER_LIMIT} states): the map "
                f"costs at most {slack:.6g} per row more than the cheapest as good"
                if slack
                else ""
            ),
            reason=_shortfall(self.goal, chosen),
            points=singles,
            categories=mapping,
        )

    def combine(self, options: list[list[Point]], share: list[float]) -> tuple[list[int], float]:
        """One point per category: the objective over the row-weighted sums, over Pareto
        frontiers of (cost, score). Exact while a frontier has at most FRONTIER_LIMIT
        states; past that, each frontier keeps the best-scoring state of each of
        FRONTIER_LIMIT equal cost bands, which costs the optimum's path at most one band
        per category: the second value is that bound on the chosen cost (0.0: exact)."""
        states: list[tuple[float, float, float, float, tuple[int, ...]]] = [
            (0.0, 0.0, 0.0, 0.0, ())
        ]
        slack = 0.0
        for c, opts in enumerate(options):
            grown = [
                (
                    cost + share[c] * self.goal.cost(p),
                    score + share[c] * p.score,
                    dollars + share[c] * p.dollars,
                    seconds + share[c] * p.seconds,
                    picks + (i,),
                )
                for cost, score, dollars, seconds, picks in states
                for i, p in enumerate(opts)
            ]
            grown.sort(key=lambda s: (s[0], -s[1], s[4]))
            states, top = [], -math.inf
            for s in grown:
                if s[1] > top + EPSILON:
                    states.append(s)
                    top = s[1]
            if len(states) > FRONTIER_LIMIT:
                states, band = _thinned(states, FRONTIER_LIMIT)
                slack += band
        points = [
            (Point({}, score, dollars, seconds, 0), picks)
            for _, score, dollars, seconds, picks in states
        ]
        return list(min(points, key=lambda x: self.goal.rank(x[0], x[1]))[1]), slack

    async def singles(
        self, per: Mapping[str, Result], groups: Mapping[str, list[int]], rows: Sequence[int]
    ) -> list[Point]:
        """Single assignments measured on every category: their points on all tuning rows
        (from the memo: nothing new is measured)."""
        common = set.intersection(*({_key(p.assignment) for p in r.points} for r in per.values()))
        if _key(self.start) not in common:
            common.add(_key(self.start))
        return await self.measure_all([dict(k) for k in sorted(common)], rows)


def _thinned(
    states: list[tuple[float, float, float, float, tuple[int, ...]]], limit: int
) -> tuple[list[tuple[float, float, float, float, tuple[int, ...]]], float]:
    """A frontier sorted by cost (scores rising) cut to `limit` equal cost bands, each
    keeping its best-scoring (last) state; returns it and the band's width. Any dropped
    state is matched by a kept one scoring as well and costing at most a band more."""
    low, high = states[0][0], states[-1][0]
    band = (high - low) / limit
    kept: dict[int, tuple[float, float, float, float, tuple[int, ...]]] = {}
    for s in states:
        kept[min(int((s[0] - low) / band), limit - 1)] = s
    return list(kept.values()), band


def _shortfall(goal: Objective, chosen: Point) -> str:
    problems = []
    if not goal.affords(chosen):
        problems.append(
            f"the budget of ${goal.budget:.6f} per row buys no measured assignment: the "
            f"cheapest costs ${chosen.dollars:.6f}"
        )
    if not goal.reaches(chosen):
        problems.append(
            f"no measured assignment reaches the target {goal.target:g}"
            + (" within the budget" if goal.budget is not None and goal.affords(chosen) else "")
            + f": the best is {chosen.score:.4f}"
        )
    return "; ".join(problems)

"""The dataflow scheduler on a scripted backend: concurrency, expansion, branches,
loops, validation retries, externs, and failures that keep what was computed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import llmflow
from llmflow.runtime.backends.base import GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend

sys.path.insert(0, str(Path(__file__).parent))


def last_user(request: GenerationRequest) -> str:
    return [t.text for t in request.turns if t.role == "user"][-1]


def run(plan, inputs, backend):
    return asyncio.run(llmflow.run_async(plan, inputs, backend=backend))


ECHO = """
fn echo(x: str) -> y: str
\"\"\"Echo {{x}}: {{y}}\"\"\"
"""


def test_independent_calls_are_in_flight_together(compile_source):
    plan = compile_source(
        ECHO
        + """
    flow main(a: str, b: str) -> ya: str, yb: str {
        ya = echo(a)
        yb = echo(b)
    }
    """
    )
    backend = ScriptedBackend(lambda r: last_user(r).upper(), delay=0.2)
    result = run(plan, {"a": "one", "b": "two"}, backend)
    assert result.outputs == {"ya": "ECHO ONE:", "yb": "ECHO TWO:"}
    assert backend.max_in_flight == 2


def test_map_over_a_list_known_only_at_run_time(compile_source):
    plan = compile_source(
        ECHO
        + """
    flow main(text: str) -> ys: list[str] {
        ys = map w in split(text, " "): echo(w)
    }
    """
    )
    backend = ScriptedBackend(lambda r: last_user(r).split()[1].rstrip(":"), delay=0.05)
    result = run(plan, {"text": "a b c d e"}, backend)
    assert result.outputs["ys"] == ["a", "b", "c", "d", "e"]
    assert backend.max_in_flight == 5


def test_a_node_starts_as_soon_as_its_inputs_exist(compile_source):
    # fast → after_fast must not wait for the slow sibling (no lock-step rounds).
    plan = compile_source(
        ECHO
        + """
    flow main(a: str) -> slow: str, second: str {
        slow = echo("slow")
        first = echo(a)
        second = echo(first)
    }
    """
    )

    async def script(request: GenerationRequest) -> str:
        await asyncio.sleep(0.5 if "slow" in last_user(request) else 0.05)
        return "done"

    backend = ScriptedBackend(script)
    result = run(plan, {"a": "x"}, backend)
    assert result.ok
    by_prompt = {last_user(s.request): s for s in backend.served}
    slow, second = by_prompt["Echo slow:"], by_prompt["Echo done:"]
    assert second.end < slow.end


def test_branch_runs_only_the_chosen_side(compile_source):
    plan = compile_source("""
    enum Mood { happy, sad }
    fn mood(text: str) -> m: Mood
    \"\"\"Mood of {{text}}? {{m}}\"\"\"
    fn cheer(text: str) -> r: str
    \"\"\"Cheer up {{text}}: {{r}}\"\"\"
    flow main(text: str) -> m: Mood, reply: str {
        m = mood(text)
        if m == Mood.happy {
            reply = "great"
        } else {
            reply = cheer(text)
        }
    }
    """)
    backend = ScriptedBackend(lambda r: "Happy." if "Mood of" in last_user(r) else "there there")
    result = run(plan, {"text": "t"}, backend)
    assert result.outputs == {"m": "happy", "reply": "great"}
    assert len(backend.served) == 1
    assert backend.served[0].request.constraint.choices == ["happy", "sad"]


def test_loop_carries_values_and_stops_at_until(compile_source):
    plan = compile_source(
        ECHO
        + """
    flow main(seed: str) -> text: str, rounds: int {
        repeat at most 10 with text = seed, rounds = 0 {
            text = echo(text)
            rounds = rounds + 1
        } until rounds >= 3
    }
    """
    )
    backend = ScriptedBackend(lambda r: last_user(r).replace("Echo ", "").rstrip(":") + "!")
    result = run(plan, {"seed": "hi"}, backend)
    assert result.outputs == {"text": "hi!!!", "rounds": 3}


REPEAT_ROUNDS = """
    flow main(seed: str, rounds: int) -> text: str {
        repeat at most rounds with text = seed {
            text = echo(text)
        }
    }
    """


@pytest.mark.parametrize(("rounds", "text"), [(3, "hi!!!"), (1, "hi!"), (0, "hi")])
def test_a_repeat_runs_at_most_the_count_it_reads(compile_source, rounds, text):
    """`repeat at most rounds`: the count is read when the loop starts; 0 runs no
    iteration, so the carried value keeps its first one."""
    plan = compile_source(ECHO + REPEAT_ROUNDS)
    backend = ScriptedBackend(lambda r: last_user(r).replace("Echo ", "").rstrip(":") + "!")
    result = run(plan, {"seed": "hi", "rounds": rounds}, backend)
    assert result.outputs == {"text": text}
    assert len(backend.served) == rounds


def test_a_negative_repeat_count_fails_the_loop(compile_source):
    plan = compile_source(ECHO + REPEAT_ROUNDS)
    backend = ScriptedBackend(lambda r: "x")
    result = run(plan, {"seed": "hi", "rounds": -1}, backend)
    (failure,) = result.failures
    assert failure.node.label == "repeat ≤rounds"
    assert failure.message == "the count must be an int of 0 or more, but it is -1"
    assert backend.served == [] and result.outputs == {}


def test_for_loop_runs_in_order_over_the_list(compile_source):
    plan = compile_source("""
    fn add(acc: str, item: str) -> out: str
    \"\"\"{{acc}}+{{item}} {{out}}\"\"\"
    flow main(items: list[str]) -> acc: str {
        for it in items with acc = "" {
            acc = add(acc, it)
        }
    }
    """)
    backend = ScriptedBackend(lambda r: last_user(r).split()[0].lstrip("+"), delay=0.01)
    result = run(plan, {"items": ["a", "b", "c"]}, backend)
    assert result.outputs == {"acc": "a+b+c"}
    assert backend.max_in_flight == 1


def test_invalid_output_is_retried_with_the_error_fed_back(compile_source):
    plan = compile_source("""
    fn count(text: str) -> n: int
    \"\"\"How many words in {{text}}? {{n}}\"\"\"
    flow main(text: str) -> n: int { n = count(text) }
    """)
    replies = iter(["many", "3"])
    backend = ScriptedBackend(lambda r: next(replies))
    result = run(plan, {"text": "a b c"}, backend)
    assert result.outputs == {"n": 3}
    retry = backend.served[1].request
    assert [t.role for t in retry.turns] == ["user", "assistant", "user"]
    assert "not valid" in retry.turns[-1].text and "an integer" in retry.turns[-1].text
    assert result.calls[0].validation_retries == 1


def test_a_failed_call_names_function_and_output_and_keeps_other_outputs(compile_source):
    plan = compile_source(
        ECHO
        + """
    fn count(text: str) -> n: int
    \"\"\"How many words in {{text}}? {{n}}\"\"\"
    flow main(text: str) -> n: int, y: str, z: str {
        n = count(text)
        y = echo(text)
        z = echo(str(n))
    }
    """
    )
    backend = ScriptedBackend(lambda r: "ok" if r.turns[0].text.startswith("Echo") else "lots")
    result = run(plan, {"text": "a b"}, backend)
    assert result.outputs == {"y": "ok"}
    (failure,) = result.failures
    assert failure.node.label == "count"
    assert "count(): output 'n' is not a valid int after 2 attempts" in failure.message
    with pytest.raises(llmflow.RunError) as err:
        llmflow.run(plan, {"text": "a b"}, backend=ScriptedBackend(backend.script))
    assert err.value.outputs == {"y": "ok"}


def test_several_outputs_generate_in_order_each_continuing_the_text(compile_source):
    plan = compile_source("""
    fn qa(doc: str) -> q: str, a: str
    \"\"\"{{doc}} Question: {{q}} Answer: {{a}}\"\"\"
    flow main(doc: str) -> q: str, a: str { q, a = qa(doc) }
    """)
    backend = ScriptedBackend(lambda r: "why?" if len(r.turns) == 1 else "because")
    result = run(plan, {"doc": "D."}, backend)
    assert result.outputs == {"q": "why?", "a": "because"}
    second = backend.served[1].request.turns
    assert [(t.role, t.text) for t in second] == [
        ("user", "D. Question:"),
        ("assistant", "why?"),
        ("user", "Answer:"),
    ]


def test_externs_sync_async_and_named_outputs(compile_source):
    plan = compile_source("""
    extern fn word_count(text: str) -> int = "extern_tools:word_count"
    extern fn shout(text: str) -> str = "extern_tools:shout"
    extern fn stats(text: str) -> words: int, chars: int = "extern_tools:stats"
    flow main(text: str) -> n: int, loud: str, chars: int {
        n = word_count(text)
        loud = shout(text)
        chars = stats(text).chars
    }
    """)
    result = run(plan, {"text": "a bc"}, ScriptedBackend(lambda r: ""))
    assert result.outputs == {"n": 2, "loud": "A BC", "chars": 4}


def test_extern_returning_the_wrong_type_fails_that_node(compile_source):
    plan = compile_source("""
    extern fn broken(text: str) -> int = "extern_tools:broken"
    flow main(text: str) -> n: int { n = broken(text) }
    """)
    result = run(plan, {"text": "x"}, ScriptedBackend(lambda r: ""))
    assert "extern_tools:broken returned a value that is not int" in result.failures[0].message


def test_comprehension_filters_and_picks_fields(compile_source):
    plan = compile_source("""
    record Item { name: str, keep: bool }
    flow main(names: list[str]) -> kept: list[str] {
        items = [Item(name=n, keep=len(n) > 1) for n in names]
        kept = [i.name for i in items if i.keep]
    }
    """)
    result = run(plan, {"names": ["a", "bb", "ccc"]}, ScriptedBackend(lambda r: ""))
    assert result.outputs == {"kept": ["bb", "ccc"]}


def test_a_value_nothing_reads_is_never_computed(compile_source):
    plan = compile_source(
        ECHO
        + """
    flow main(a: str) -> y: str {
        unused = echo("never")
        y = echo(a)
    }
    """
    )
    backend = ScriptedBackend(lambda r: "ok")
    run(plan, {"a": "x"}, backend)
    assert [last_user(s.request) for s in backend.served] == ["Echo x:"]


def test_inputs_are_checked_and_named(compile_source):
    plan = compile_source("""
    flow main(doc: str, questions: list[str], k: int = 2) -> k2: int { k2 = k * 2 }
    """)
    with pytest.raises(llmflow.InputError) as err:
        llmflow.bind_inputs(plan, {"questions": ["a", 3], "dok": "x"})
    message = str(err.value)
    assert "unknown input 'dok'; did you mean 'doc'?" in message
    assert "missing input 'doc' (str)" in message
    assert "input 'questions' expects list[str]" in message
    assert llmflow.bind_inputs(plan, {"doc": "d", "questions": []}) == {
        "doc": "d",
        "questions": [],
        "k": 2,
    }
    result = run(plan, {"doc": "d", "questions": [], "k": 5}, ScriptedBackend(lambda r: ""))
    assert result.outputs == {"k2": 10}


def test_and_or_short_circuit(compile_source):
    plan = compile_source("""
    flow main(xs: list[str]) -> first_is_a: bool, empty_or_a: bool {
        first_is_a = len(xs) > 0 and xs[0] == "a"
        empty_or_a = len(xs) == 0 or xs[0] == "a"
    }
    """)
    result = run(plan, {"xs": []}, ScriptedBackend(lambda r: ""))
    assert result.outputs == {"first_is_a": False, "empty_or_a": True}


def test_a_default_asks_the_model_only_when_the_value_is_none(compile_source):
    plan = compile_source(
        """
    fn nickname(name: str?, text: str) -> nick: str
    \"\"\"Name: {{name}}. Text: {{text}}. Nickname: {{nick}}\"\"\"

    flow main(text: str, given: str? = none) -> nick: str, guess: str {
        nick = given ?? nickname(none, text)
        guess = nickname(given, text)
    }
    """
    )
    backend = ScriptedBackend(lambda r: "Bo")
    assert run(plan, {"text": "t", "given": "Al"}, backend).outputs == {"nick": "Al", "guess": "Bo"}
    assert [last_user(s.request) for s in backend.served] == ["Name: Al. Text: t. Nickname:"]
    backend = ScriptedBackend(lambda r: "Bo")
    assert run(plan, {"text": "t"}, backend).outputs == {"nick": "Bo", "guess": "Bo"}
    # none renders as `none` in a prompt
    assert [last_user(s.request) for s in backend.served] == ["Name: none. Text: t. Nickname:"] * 2


def test_extern_with_one_named_output_returns_a_dict(compile_source):
    plan = compile_source("""
    extern fn named_single(text: str) -> length: int = "extern_tools:named_single"
    flow main(text: str) -> n: int { n = named_single(text) }
    """)
    assert run(plan, {"text": "abc"}, ScriptedBackend(lambda r: "")).outputs == {"n": 3}


def test_values_have_their_declared_type_at_run_time(compile_source):
    plan = compile_source("""
    flow main(x: float = 2) -> m: float, xs: list[float], text: str {
        m = max(3, 2.5)
        xs = [1, x]
        text = format("items:\\n{items}", items=["a", "b"])
    }
    """)
    result = run(plan, {}, ScriptedBackend(lambda r: ""))
    assert result.outputs == {"m": 3.0, "xs": [1.0, 2.0], "text": "items:\n- a\n- b"}
    assert isinstance(result.outputs["m"], float)
    assert all(isinstance(x, float) for x in result.outputs["xs"])


SAMPLED = """
fn guess(x: str) -> y: str
\"\"\"Guess {{x}}: {{y | temperature=0.9}}\"\"\"

fn pinned(x: str) -> y: str
\"\"\"Pin {{x}}: {{y | temperature=0.9, seed=7}}\"\"\"

fn greedy(x: str) -> y: str
\"\"\"Greedy {{x}}: {{y}}\"\"\"
"""


def seeds_by_prompt(backend: ScriptedBackend) -> dict[str, list[int | None]]:
    seen: dict[str, list[int | None]] = {}
    for served in sorted(backend.served, key=lambda s: last_user(s.request)):
        seen.setdefault(last_user(served.request).split()[0], []).append(served.request.seed)
    return seen


def sampled_run(plan, inputs, seed):
    backend = ScriptedBackend(lambda r: "ok")
    result = asyncio.run(llmflow.run_async(plan, inputs, backend=backend, seed=seed))
    return result, backend


def test_sampled_calls_get_a_seed_of_their_own_that_a_seeded_run_repeats(compile_source):
    """Four samples of one prompt in a map get four seeds (the same prompt at one seed
    would come out the same four times); the run's seed decides them all, a `seed=`
    output keeps its own whatever the run's seed, and greedy calls send none."""
    plan = compile_source(
        SAMPLED
        + """
    flow main(x: str) -> a: list[str], b: list[str], c: str {
        a = map i in range(4): guess(x)
        b = map i in range(4): pinned(x)
        c = greedy(x)
    }
    """
    )
    first, backend = sampled_run(plan, {"x": "q"}, 1)
    seeds = seeds_by_prompt(backend)
    assert len(set(seeds["Guess"])) == 4 and len(set(seeds["Pin"])) == 4
    assert seeds["Greedy"] == [None]
    assert all(0 <= s < 2**31 for s in seeds["Guess"] + seeds["Pin"])
    assert first.seed == 1
    assert {tuple(c.seeds.values()) for c in first.calls if c.function == "guess"} == {
        (s,) for s in seeds["Guess"]
    }

    _, again = sampled_run(plan, {"x": "q"}, 1)
    assert [s.request.seed for s in again.served] == [s.request.seed for s in backend.served]
    _, other = sampled_run(plan, {"x": "q"}, 2)
    other_seeds = seeds_by_prompt(other)
    assert set(other_seeds["Guess"]).isdisjoint(seeds["Guess"])
    assert sorted(other_seeds["Pin"]) == sorted(seeds["Pin"])  # seed=7 decides them

    drawn, unseeded = sampled_run(plan, {"x": "q"}, None)
    assert isinstance(drawn.seed, int) and drawn.seed != 1
    assert {s.request.random_seed for s in unseeded.served if s.request.seed is not None} == {
        True,
        False,  # pinned: seed=7 was chosen
    }
    assert not any(s.request.random_seed for s in again.served)  # --seed 1 was chosen


def test_seeds_differ_across_nested_maps_loop_iterations_and_outputs(compile_source):
    plan = compile_source(
        """
    fn two(x: str) -> first: str, second: str
    \"\"\"Two {{x}}: {{first | temperature=1}} then {{second | temperature=1}}\"\"\"

    fn guess(x: str) -> y: str
    \"\"\"Guess {{x}}: {{y | temperature=0.5}}\"\"\"

    flow main(x: str) -> grid: list[list[str]], last: str, both: str {
        grid = map i in range(3): map j in range(3): guess(x)
        repeat at most 3 with last = x {
            last = guess(x)
        }
        f, s = two(x)
        both = f + s
    }
    """
    )
    result, backend = sampled_run(plan, {"x": "q"}, 11)
    seeds = [s.request.seed for s in backend.served]
    assert len(seeds) == 9 + 3 + 2 and None not in seeds
    assert len(set(seeds)) == len(seeds)
    (two,) = [c for c in result.calls if c.function == "two"]
    assert set(two.seeds) == {"first", "second"}


def test_answers_sampled_with_a_drawn_seed_are_not_cached_and_chosen_ones_are(
    compile_source, tmp_path
):
    from llmflow.runtime.cache import ResponseCache

    plan = compile_source(
        SAMPLED
        + """
    flow main(x: str) -> a: list[str] {
        a = map i in range(3): guess(x)
    }
    """
    )
    cache = ResponseCache(tmp_path / "cache")

    def run_with(seed):
        backend = ScriptedBackend(lambda r: "ok")
        asyncio.run(llmflow.run_async(plan, {"x": "q"}, backend=backend, cache=cache, seed=seed))
        return len(backend.served)

    assert run_with(None) == 3 and run_with(None) == 3  # a drawn seed: nothing kept
    assert run_with(5) == 3 and run_with(5) == 0  # --seed 5 twice: the same requests
    assert run_with(6) == 3
    cache.close()


def test_the_journal_and_the_trace_record_each_seed(compile_source):
    import json

    from llmflow.runtime.runs import RunDir

    plan = compile_source(
        SAMPLED
        + """
    flow main(x: str) -> a: list[str], c: str {
        a = map i in range(2): guess(x)
        c = greedy(x)
    }
    """
    )
    run_dir = RunDir.create()
    backend = ScriptedBackend(lambda r: "ok")
    asyncio.run(llmflow.run_async(plan, {"x": "q"}, backend=backend, run_dir=run_dir, seed=3))
    sent = sorted(s.request.seed for s in backend.served if s.request.seed is not None)
    journal = [json.loads(line) for line in run_dir.journal.read_text().splitlines()]
    assert sorted(e["generation"]["seed"] for e in journal if e["generation"]["seed"]) == sent
    trace = [json.loads(line) for line in run_dir.trace.read_text().splitlines()]
    assert sorted(r["llmflow.seeds"]["y"] for r in trace if r["llmflow.seeds"]) == sent
    assert [r["llmflow.seeds"] for r in trace if r["llmflow.function"] == "greedy"] == [None]


def test_a_map_whose_list_is_too_large_as_text_fails_its_node_only(compile_source):
    """A million copies of one long answer are small in memory, but not as JSON or as a
    prompt: the map fails under the size limit and the other outputs are kept."""
    plan = compile_source(
        ECHO
        + """
    flow main(x: str, n: int) -> copies: list[str], y: str {
        y = echo(x)
        copies = [y for i in range(n)]
    }
    """
    )
    backend = ScriptedBackend(lambda r: "w" * 1000)
    result = run(plan, {"x": "a", "n": 20_000}, backend)
    assert result.outputs == {"y": "w" * 1000}
    (failure,) = result.failures
    assert "the list this map makes would be larger than 10,000,000" in failure.message
    assert (
        len(run(plan, {"x": "a", "n": 1000}, ScriptedBackend(backend.script)).outputs["copies"])
        == 1000
    )


def test_a_long_loop_keeps_no_finished_task(compile_source):
    """Memory stays bounded over a long run: an iteration's tasks (and the values they
    hold) go once the next iteration has what it carries, so as many tasks are alive at
    the 2,000th iteration as at the 200th."""
    import gc

    plan = compile_source(
        ECHO
        + """
    flow main(seed: str) -> text: str, rounds: int {
        repeat at most 2000 with text = seed, rounds = 0 {
            text = echo(text)
            rounds = rounds + 1
        }
    }
    """
    )
    alive: dict[int, int] = {}
    calls = 0

    def on_event(kind, node, info):
        nonlocal calls
        if kind == "done" and node.kind == "llm":
            calls += 1
            if calls in (200, 2000):
                gc.collect()
                alive[calls] = sum(isinstance(o, asyncio.Task) for o in gc.get_objects())

    backend = ScriptedBackend(lambda r: "x")
    result = asyncio.run(llmflow.run_async(plan, {"seed": "s"}, backend, on_event))
    assert result.outputs == {"text": "x", "rounds": 2000}
    assert alive[2000] <= alive[200] + 5, alive


def test_a_value_every_reader_has_had_is_not_kept_for_the_rest_of_the_run(compile_source):
    """`big` is read by `len` only: by the time the call after it runs, no list of its
    length is alive (the flow's outputs, and values still to be read, are kept)."""
    import gc

    plan = compile_source(
        ECHO
        + """
    extern fn numbers(n: int) -> list[str] = "extern_tools:numbers"
    flow main(n: int) -> k: int, y: str {
        big = numbers(n)
        k = len(big)
        y = echo(str(k))
    }
    """
    )
    size = 123_457
    seen: list[bool] = []

    def script(request: GenerationRequest) -> str:
        gc.collect()
        seen.append(any(type(o) is list and len(o) == size for o in gc.get_objects()))
        return "done"

    result = run(plan, {"n": size}, ScriptedBackend(script))
    assert result.outputs == {"k": size, "y": "done"}
    assert seen == [False]

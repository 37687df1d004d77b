"""The replay backend answers as a model once did, from a table of recorded answers: the
key a rendered prompt contains (template text around it, glued to its ends, several keys
in one prompt), clear errors for a prompt with no key and for a bad table (file:line:col),
keys no one would write (empty, a megabyte long, not ASCII), prices from the price table,
token counts, and the kind registered and run like any other, through `llmflow run`."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

import llmflow
from llmflow.cli import main
from llmflow.compiler import tokens
from llmflow.compiler.ir import Plan
from llmflow.compiler.models import ModelSpec
from llmflow.errors import CompileError
from llmflow.runtime.backends import GenerationRequest, Turn, registry
from llmflow.runtime.backends import replay as replay_module
from llmflow.runtime.backends.base import BackendError, Generation
from llmflow.runtime.backends.replay import ReplayBackend, TableError, answer_tokens, read_table

GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
TOGETHER = "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1"

RECORDINGS = [
    {"key": "How many legs does a spider have?", "answers": {GPT4: "8", MIXTRAL: "6"}},
    {
        "key": "Which is a prime?\nA. 4\nB. 9\nC. 7\nD. 1\nAnswer:",
        "answers": {GPT4: "C", MIXTRAL: "B"},
    },
    {"key": "What is the capital of France", "answers": {GPT4: "Paris", MIXTRAL: "Lyon"}},
    {
        "key": "What is the capital of France, before 1682?",
        "answers": {GPT4: "Paris, still", MIXTRAL: "Versailles"},
    },
]


def write_table(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join(
            (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows
        ),
        encoding="utf-8",
    )
    return path


def spec(table: Path | str, model_id: str = GPT4, name: str = "m", **settings: object) -> ModelSpec:
    from llmflow.compiler.catalog import resolve

    written = {"table": str(table), **settings}
    return resolve(name, "replay", model_id, [("declaration", written)])


def ask(
    backend: ReplayBackend, prompt: str, model: str = "m", stop: list[str] | None = None
) -> Generation:
    request = GenerationRequest(
        model=model, turns=[Turn(role="user", text=prompt)], stop=stop or []
    )
    return asyncio.run(backend.generate(request))


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_table(tmp_path / "answers.jsonl", RECORDINGS)


@pytest.fixture
def both(table: Path) -> ReplayBackend:
    return ReplayBackend(
        {"gpt4": spec(table, GPT4, "gpt4"), "mix": spec(table, MIXTRAL, "mix", catalog_id=TOGETHER)}
    )


# ---- answers and lookup -------------------------------------------------------------------


def test_each_model_answers_its_own_recording(both: ReplayBackend) -> None:
    prompt = "Question: How many legs does a spider have?\nAnswer:"
    assert ask(both, prompt, "gpt4").text == "8"
    assert ask(both, prompt, "mix").text == "6"


def test_key_found_inside_template_text_glued_to_its_first_and_last_words(
    both: ReplayBackend,
) -> None:
    """`Q:{{q}}x`: the key's first and last words are not words of the prompt."""
    assert ask(both, "Q:How many legs does a spider have?x\nA:", "gpt4").text == "8"
    multi = "Subject: maths.Which is a prime?\nA. 4\nB. 9\nC. 7\nD. 1\nAnswer: "
    assert ask(both, multi, "gpt4").text == "C"
    assert ask(both, multi, "mix").text == "B"


def test_a_key_in_an_earlier_turn_is_found(both: ReplayBackend) -> None:
    turns = [
        Turn(role="user", text="How many legs does a spider have? Think first."),
        Turn(role="assistant", text="Let me think."),
        Turn(role="user", text="Now the answer:"),
    ]
    answer = asyncio.run(both.generate(GenerationRequest(model="gpt4", turns=turns)))
    assert answer.text == "8"


def test_the_longest_key_the_prompt_contains_answers(both: ReplayBackend) -> None:
    assert ask(both, "What is the capital of France?", "mix").text == "Lyon"
    longer = "Tell me: What is the capital of France, before 1682? Be brief."
    assert ask(both, longer, "mix").text == "Versailles"


def test_two_keys_of_the_same_length_in_one_prompt_are_an_error(tmp_path: Path) -> None:
    path = write_table(
        tmp_path / "t.jsonl",
        [
            {"key": "the first question asked here", "answers": {GPT4: "1"}},
            {"key": "the other question asked here", "answers": {GPT4: "2"}},
        ],
    )
    backend = ReplayBackend({"m": spec(path)})
    with pytest.raises(TableError, match=r"two recorded keys of the same length \(lines 1 and 2\)"):
        ask(backend, "the first question asked here; the other question asked here")


def test_a_prompt_with_no_recorded_key_names_the_model_and_the_prompt(both: ReplayBackend) -> None:
    prompt = "Question: How many legs does an ant have? " + "x" * 200
    with pytest.raises(BackendError) as err:
        ask(both, prompt, "gpt4")
    message = str(err.value)
    assert "model 'gpt4' (replay \"gpt-4-1106-preview\")" in message
    assert '"Question: How many legs does an ant have?' in message
    assert "x" * 100 not in message  # the prompt is cut
    assert "records 4 keys" in message
    assert not err.value.retryable


def test_a_key_without_this_models_answer_is_an_error(tmp_path: Path) -> None:
    path = write_table(
        tmp_path / "t.jsonl",
        [
            {"key": "one question for both models", "answers": {GPT4: "a", MIXTRAL: "b"}},
            {"key": "another question for one model", "answers": {GPT4: "c"}},
        ],
    )
    backend = ReplayBackend({"mix": spec(path, MIXTRAL, "mix")})
    assert ask(backend, "one question for both models", "mix").text == "b"
    with pytest.raises(BackendError, match=r"t\.jsonl:2 records no answer of 'mistralai/"):
        ask(backend, "another question for one model", "mix")


def test_a_key_of_several_texts_needs_them_all(tmp_path: Path) -> None:
    """One question under two subjects, recorded with different outcomes."""
    question = "Hydrogen ions are formed when what happens?"
    path = write_table(
        tmp_path / "t.jsonl",
        [
            {"key": ["clinical_knowledge", question], "answers": {GPT4: "A"}},
            {"key": ["college_medicine", question], "answers": {GPT4: "B"}},
        ],
    )
    backend = ReplayBackend({"m": spec(path)})
    assert ask(backend, f"About college_medicine.\n{question}").text == "B"
    assert ask(backend, f"About clinical_knowledge.\n{question}").text == "A"
    with pytest.raises(BackendError, match="no recorded key"):
        ask(backend, f"About anatomy.\n{question}")


def test_stop_strings_cut_the_recorded_answer(both: ReplayBackend) -> None:
    answer = ask(both, "What is the capital of France, before 1682?", "gpt4", stop=[","])
    assert answer.text == "Paris"


# ---- keys no one would write ----------------------------------------------------------


def test_short_keys_and_keys_of_no_words_are_found(tmp_path: Path) -> None:
    path = write_table(
        tmp_path / "t.jsonl",
        [
            {"key": "42", "answers": {GPT4: "forty-two"}},
            {"key": "?!?", "answers": {GPT4: "puzzled"}},
            {"key": "two words", "answers": {GPT4: "pair"}},
        ],
    )
    backend = ReplayBackend({"m": spec(path)})
    assert ask(backend, "x42y").text == "forty-two"
    assert ask(backend, "say ?!? now").text == "puzzled"
    assert ask(backend, "Q:two wordsx").text == "pair"


def test_unicode_and_very_long_keys(tmp_path: Path) -> None:
    long_key = "word " * 200_000 + "end of a megabyte key"
    cjk = "東京は日本の首都ですか 🗼 naïve café?"
    path = write_table(
        tmp_path / "t.jsonl",
        [
            {"key": long_key, "answers": {GPT4: "long"}},
            {"key": cjk, "answers": {GPT4: "はい"}},
            {"key": "a (regex) [special] .* key $1 \\d", "answers": {GPT4: "literal"}},
        ],
    )
    backend = ReplayBackend({"m": spec(path)})
    assert ask(backend, f"Q: {long_key}\nA:").text == "long"
    assert ask(backend, f"質問: {cjk}\n答え:").text == "はい"
    assert ask(backend, "so: a (regex) [special] .* key $1 \\d !").text == "literal"
    with pytest.raises(BackendError, match="no recorded key"):
        ask(backend, long_key[:-3])


@pytest.mark.parametrize(
    ("line", "where", "message"),
    [
        ('{"key": "q", "answers": {"gpt-4-1106-preview": "a"', "2:51", "not valid JSON"),
        ('{"key": "q" "answers": {}}', "2:13", "not valid JSON: Expecting ',' delimiter"),
        ('["key", "answers"]', "2:1", "a recording is an object"),
        ('{"key": "q", "answer": {}}', "2:1", "unknown field 'answer'"),
        ('{"key": "", "answers": {}}', "2:1", "'key' is empty"),
        ('{"key": "  \\n ", "answers": {}}', "2:1", "'key' is empty"),
        ('{"key": ["a", ""], "answers": {}}', "2:1", "'key' is empty"),
        ('{"key": [], "answers": {}}', "2:1", "'key' must be the text"),
        ('{"key": 7, "answers": {}}', "2:1", "'key' must be the text"),
        ('{"key": "q", "answers": {"gpt-4-1106-preview": 8}}', "2:1", "'answers' must map"),
        ('{"key": "q", "answers": ["8"]}', "2:1", "'answers' must map"),
        (
            '{"key": "How many legs does a spider have?", "answers": {}}',
            "2:1",
            "key recorded twice (first on line 1)",
        ),
        ("[" * 100_000, "2:1", "nested too deeply"),
    ],
)
def test_a_bad_table_line_is_an_error_at_its_position(
    tmp_path: Path, line: str, where: str, message: str
) -> None:
    path = write_table(tmp_path / "t.jsonl", [RECORDINGS[0], line, RECORDINGS[1]])
    with pytest.raises(TableError) as err:
        read_table(path)
    assert str(err.value).startswith(f"{path}:{where}: ")
    assert message in str(err.value)


def test_a_table_cut_mid_line_and_one_not_utf8(tmp_path: Path) -> None:
    whole = json.dumps(RECORDINGS[0]) + "\n" + json.dumps(RECORDINGS[1])
    cut = tmp_path / "cut.jsonl"
    cut.write_text(whole[: len(whole) - 10])
    with pytest.raises(TableError, match=r"cut\.jsonl:2:\d+: not valid JSON"):
        read_table(cut)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"key": "caf\xe9 au lait", "answers": {}}\n')
    with pytest.raises(TableError, match=r"latin\.jsonl:1:13: not UTF-8 text"):
        read_table(latin)


def test_a_line_too_long_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "MAX_LINE_BYTES", 1000)
    path = write_table(
        tmp_path / "t.jsonl",
        [RECORDINGS[0], {"key": "k " * 600, "answers": {GPT4: "a"}}, RECORDINGS[1]],
    )
    with pytest.raises(TableError, match=r"t\.jsonl:2:1: line longer than"):
        read_table(path)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = write_table(tmp_path / "t.jsonl", [RECORDINGS[0], "", "  ", RECORDINGS[2]])
    assert read_table(path).lines == [1, 4]


def test_a_model_the_table_does_not_record_and_a_missing_table(tmp_path: Path, table: Path) -> None:
    backend = ReplayBackend({"m": spec(table, "gpt-5")})
    with pytest.raises(TableError, match=r"has no answers of 'gpt-5'; it records: gpt-4-1106"):
        ask(backend, "How many legs does a spider have?")
    missing = ReplayBackend({"m": spec(tmp_path / "nope.jsonl")})
    with pytest.raises(TableError, match=r"nope\.jsonl cannot be read: No such file"):
        ask(missing, "anything")
    empty = ReplayBackend({"m": spec(write_table(tmp_path / "empty.jsonl", []))})
    with pytest.raises(TableError, match="records nothing"):
        ask(empty, "anything")


def test_a_model_without_a_table_says_how_to_give_one() -> None:
    from llmflow.compiler.catalog import resolve

    backend = ReplayBackend({"m": resolve("m", "replay", GPT4, [])})
    with pytest.raises(BackendError, match=r"has no table: write replay\("):
        ask(backend, "anything")


def test_a_changed_table_is_read_again(tmp_path: Path) -> None:
    path = write_table(tmp_path / "t.jsonl", RECORDINGS[:1])
    assert ask(ReplayBackend({"m": spec(path)}), RECORDINGS[0]["key"]).text == "8"
    write_table(path, [{"key": RECORDINGS[0]["key"], "answers": {GPT4: "eight, again"}}])
    assert ask(ReplayBackend({"m": spec(path)}), RECORDINGS[0]["key"]).text == "eight, again"


# ---- prices, tokens, latency ------------------------------------------------------------


def test_prices_come_from_the_price_table(table: Path) -> None:
    gpt4 = spec(table, GPT4)
    assert (gpt4.price_in, gpt4.price_out, gpt4.catalog_id) == (10.0, 30.0, GPT4)
    mixtral = spec(table, MIXTRAL, catalog_id=TOGETHER)
    assert (mixtral.price_in, mixtral.price_out, mixtral.catalog_id) == (0.6, 0.6, TOGETHER)
    unpriced = spec(table, MIXTRAL)  # no entry has the bare id: no price, not a guess
    assert unpriced.price_in is None and unpriced.catalog_id is None
    assert not gpt4.capabilities.free and gpt4.capabilities.concurrent


def test_tokens_are_the_typical_estimate_rounded_up(both: ReplayBackend) -> None:
    prompt = "Question: What is the capital of France, before 1682? Ünïcödé"
    answer = ask(both, prompt, "gpt4")
    assert answer.input_tokens == math.ceil(tokens.typical(prompt)) == answer_tokens(prompt)
    assert answer.output_tokens == math.ceil(len("Paris, still") / 4) == 3
    assert answer_tokens("") == 0


def test_a_run_bills_its_tokens_at_the_tables_prices(
    tmp_path: Path, table: Path, compile_source: Callable[..., Plan]
) -> None:
    plan = compile_source(PROGRAM.format(table=table.name))
    rows = [{"q": r["key"]} for r in RECORDINGS]
    results = llmflow.run_batch_sync(plan, rows)
    assert [r.outputs for r in results] == [
        {"a": "8", "b": "6"},
        {"a": "C", "b": "B"},
        {"a": "Paris", "b": "Lyon"},
        {"a": "Paris, still", "b": "Versailles"},
    ]
    for result in results:
        gpt4, mix = result.models["gpt4"], result.models["mix"]
        assert gpt4.dollars == pytest.approx(
            (10 * gpt4.prompt_tokens + 30 * gpt4.output_tokens) / 1e6
        )
        assert mix.dollars == pytest.approx(0.6 * (mix.prompt_tokens + mix.output_tokens) / 1e6)


def test_latency_setting_delays_each_answer(table: Path) -> None:
    backend = ReplayBackend({"m": spec(table, latency=0.05)})
    assert ask(backend, "How many legs does a spider have?").seconds >= 0.05


# ---- as a kind: settings, registration, the CLI --------------------------------------

PROGRAM = """
model gpt4 = replay("gpt-4-1106-preview", table="{table}")
model mix = replay("mistralai/Mixtral-8x7B-Instruct-v0.1", table="{table}",
                   catalog_id="together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1")

@model(gpt4)
fn strong(q: str) -> a: str
\"\"\"Question: {{{{q}}}}
Answer: {{{{a}}}}\"\"\"

@model(mix)
fn cheap(q: str) -> a: str
\"\"\"Q:{{{{q}}}}
A: {{{{a}}}}\"\"\"

flow main(q: str) -> a: str, b: str {{
    a = strong(q)
    b = cheap(q)
}}
"""


def test_the_kind_is_registered_like_any_plugin() -> None:
    assert "replay" in registry.names()
    kind = registry.get("replay")
    assert kind.name == "replay" and set(kind.settings.model_fields) >= {"table", "latency"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("table=3", "model option 'table' expects str"),
        ('table="t.jsonl", latency="slow"', "model option 'latency' expects number"),
        ('table="t.jsonl", latency=-1.0', "model option 'latency' cannot be negative"),
        ('tabel="t.jsonl"', "unknown model option 'tabel'"),
    ],
)
def test_bad_settings_are_errors_at_the_option(
    compile_source: Callable[..., Plan], options: str, message: str
) -> None:
    source = f'model m = replay("gpt-4-1106-preview", {options})\n' + (
        'fn f(q: str) -> a: str\n"""{{q}} {{a}}"""\nflow main(q: str) -> a: str { a = f(q) }\n'
    )
    with pytest.raises(CompileError) as err:
        compile_source(source)
    rendered = err.value.render()
    assert message in rendered
    assert "prog.llmflow:1:" in rendered


def test_llmflow_models_lists_replay_models_with_prices(
    tmp_path: Path, table: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "prog.llmflow"
    program.write_text(PROGRAM.format(table=table.name))
    assert main(["models", str(program), "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["gpt4"]["backend"] == "replay" and listed["gpt4"]["price_out"] == 30.0
    assert listed["mix"]["catalog_id"] == TOGETHER


def test_llmflow_run_over_rows_with_a_table_beside_the_program(
    tmp_path: Path, table: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table's path is relative to the program, wherever the run starts."""
    program = tmp_path / "prog.llmflow"
    program.write_text(PROGRAM.format(table=table.name))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rows = elsewhere / "rows.jsonl"
    questions = [RECORDINGS[0]["key"], RECORDINGS[2]["key"] + "?", "an unrecorded question"]
    rows.write_text("".join(json.dumps({"q": q}) + "\n" for q in questions))
    code = main(["run", str(program), "-q", "--inputs", "rows.jsonl", "--output", "out.jsonl"])
    assert code == 1  # the unrecorded row failed, the others did not
    lines = (elsewhere / "out.jsonl").read_text().splitlines()
    results = {r["id"]: r for r in map(json.loads, lines)}  # in the order rows finish
    assert results[1]["outputs"] == {"a": "8", "b": "6"}
    assert results[2]["outputs"] == {"a": "Paris", "b": "Lyon"}
    assert "no recorded key in the prompt" in results[3]["error"]
    assert results[1]["stats"]["dollars"] > 0


def test_a_bad_table_stops_the_run_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_table(tmp_path / "t.jsonl", [RECORDINGS[0], '{"key": "cut'])
    program = tmp_path / "prog.llmflow"
    program.write_text(PROGRAM.format(table="t.jsonl"))
    assert main(["run", str(program), "-q", "-i", "q=How many legs does a spider have?"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 't.jsonl'}:2:9: not valid JSON" in err
    assert "Traceback" not in err

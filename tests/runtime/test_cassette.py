"""Recorded answers (`runtime/cassette.py`): a run recorded against real backends (the
scripted kind, the loopback OpenAI-compatible server, the embedded model) replays with no
backend at all; a changed prompt fails with a diff; bad, cut, huge and hostile files are
errors with their position; recording never loses or corrupts the file; no secret is
stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llmflow
from llmflow.compiler.ir import Plan
from llmflow.runtime import cassette as cassette_module
from llmflow.runtime import secrets
from llmflow.runtime.backends import registry
from llmflow.runtime.backends.base import BackendError, Generation, GenerationRequest
from llmflow.runtime.backends.scripted import ScriptedBackend
from llmflow.runtime.cache import ResponseCache
from llmflow.runtime.cassette import Cassette, CassetteError, CassetteMiss, load
from llmflow.runtime.rows import Row
from llmflow.runtime.scheduler import RunResult
from llmflow.runtime.session import Session
from llmflow.runtime.testing.server import FaultServer

REPO = Path(__file__).resolve().parents[2]

GREET = """
model m = scripted("echo-1")

fn greet(name: str) -> greeting: str
\"\"\"
Write a greeting for {{name}}.
Be brief.
{{greeting | max_tokens=20}}
\"\"\"

flow main(name: str) -> greeting: str {
    greeting = greet(name)
}
"""

SAMPLED = """
model m = scripted("echo-1", reply="idea")

fn brainstorm(topic: str) -> idea: str
\"\"\"Give an idea about {{topic}}: {{idea | temperature=0.9}}\"\"\"

flow main(topic: str) -> ideas: list[str] {
    ideas = map t in [topic, topic, topic]: brainstorm(t)
}
"""


class Refusing:
    """A backend that fails the test if anything asks it: replay must never send."""

    def __init__(self) -> None:
        self.asked: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        self.asked.append(request)
        raise AssertionError(f"a replay sent a request: {request.turns[-1].text!r}")

    async def aclose(self) -> None:
        return None


def run(plan: Plan, inputs: dict[str, Any], cassette: Cassette | None, **session: Any) -> RunResult:
    async def main() -> RunResult:
        async with Session(cassette=cassette, **session) as s:
            return await s.run(plan, inputs)

    return asyncio.run(main())


def record(plan: Plan, inputs: dict[str, Any], path: Path, **session: Any) -> RunResult:
    result = run(plan, inputs, Cassette(path, mode="record"), **session)
    assert result.ok, result.failures
    return result


def entries(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["entries"]


# ---- record, then replay with nothing behind it ---------------------------------------


def test_record_with_the_scripted_kind_then_replay_with_a_backend_that_fails(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(GREET)
    path = tmp_path / "greet.cassette.json"
    recorded = record(plan, {"name": "Ada"}, path)
    assert recorded.outputs == {"greeting": "Be brief."}  # the scripted kind's echo

    data = json.loads(path.read_text())
    assert data["version"] == 1
    [entry] = data["entries"]
    assert entry["model"] == {"name": "m", "backend": "scripted", "id": "echo-1", "chat": True}
    assert entry["request"]["turns"] == [
        {"role": "user", "text": ["Write a greeting for Ada.\n", "Be brief."]}
    ]
    assert entry["request"]["max_tokens"] == 20 and entry["request"]["seed"] is None
    assert entry["answer"]["text"] == ["Be brief."]
    assert entry["answer"]["output_tokens"] == 2
    assert path.read_text() == cassette_module.dump(load(path))  # stable: rewriting changes nothing

    refusing = Refusing()
    cassette = Cassette(path)
    replayed = run(plan, {"name": "Ada"}, cassette, backend=refusing)
    assert replayed.ok and replayed.outputs == recorded.outputs
    assert refusing.asked == [] and cassette.replayed == 1 and cassette.misses == []
    assert replayed.calls[0].output_tokens == 2 and replayed.calls[0].dollars == 0


def test_replay_creates_no_backend_and_needs_no_key(
    compile_source: Callable[..., Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hosted model whose key is not set and whose server is down replays all the same:
    no check of its key, no backend created (no HTTP client, no model loaded)."""
    monkeypatch.delenv("CASSETTE_TEST_KEY", raising=False)
    source = GREET.replace(
        'scripted("echo-1")',
        'openai_compatible("gpt-x", base_url="http://127.0.0.1:9/v1",\n'
        '                  api_key_env="CASSETTE_TEST_KEY")',
    )
    plan = compile_source(source)
    path = tmp_path / "c.json"
    with pytest.raises(llmflow.LLMFlowError, match="CASSETTE_TEST_KEY"):
        run(plan, {"name": "Ada"}, Cassette(path, mode="record"))  # recording needs the key
    monkeypatch.setenv("CASSETTE_TEST_KEY", "k-123456789")
    backend = ScriptedBackend(lambda request: "Hello, Ada!")
    record(plan, {"name": "Ada"}, path, backend=backend)
    monkeypatch.delenv("CASSETTE_TEST_KEY")

    def no_backend(self: Any, models: Any) -> Any:
        raise AssertionError("a replay created a backend")

    monkeypatch.setattr(registry.BackendKind, "create", no_backend)
    for kind in registry.kinds():
        monkeypatch.setattr(type(kind), "create", no_backend)
    replayed = run(plan, {"name": "Ada"}, Cassette(path))
    assert replayed.ok and replayed.outputs == {"greeting": "Hello, Ada!"}


def test_record_against_the_loopback_server_then_replay_without_it(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    """Through the real HTTP client and server; the replay runs after the server is gone."""
    path = tmp_path / "hosted.json"

    async def recording() -> tuple[Plan, RunResult, int]:
        async with FaultServer() as server:
            plan = compile_source(
                GREET.replace(
                    'scripted("echo-1")', f'openai_compatible("gpt-x", base_url="{server.url}")'
                )
            )
            async with Session(cassette=Cassette(path, mode="record")) as session:
                result = await session.run(plan, {"name": "Ada"})
            return plan, result, len(server.log)

    plan, recorded, sent = asyncio.run(recording())
    assert recorded.ok and sent == 1
    [entry] = entries(path)
    assert entry["model"]["backend"] == "openai_compatible" and entry["model"]["id"] == "gpt-x"
    assert entry["answer"]["text"] == [recorded.outputs["greeting"]]
    assert entry["answer"]["text"][0].startswith("ok:")
    assert entry["answer"]["finish_reason"] == "stop" and entry["answer"]["input_tokens"] > 0
    replayed = run(plan, {"name": "Ada"}, Cassette(path))
    assert replayed.ok and replayed.outputs == recorded.outputs


# ---- a request that is not recorded -------------------------------------------------------


def test_a_changed_prompt_fails_with_the_diff(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    path = tmp_path / "greet.json"
    record(compile_source(GREET), {"name": "Ada"}, path)
    changed = compile_source(GREET.replace("Be brief.", "Be brief and warm."), name="v2.llmflow")
    cassette = Cassette(path)
    result = run(changed, {"name": "Ada"}, cassette, backend=Refusing())
    assert not result.ok and "greeting" not in result.outputs
    [failure] = result.failures
    key = entries(path)[0]["key"]
    assert failure.message == (
        f"{path}: no recorded answer for this request to model 'm' (closest recording "
        f"{key}: the prompt differs in 1 line); run with --record to record it again"
    )
    [miss] = cassette.misses
    assert isinstance(miss, CassetteMiss)
    assert miss.explain() == (
        f"{failure.message}\n"
        f"--- recorded ({key})\n"
        "+++ now\n"
        "@@ -1,5 +1,5 @@\n"
        " [user]\n"
        " Write a greeting for Ada.\n"
        "-Be brief.\n"
        "+Be brief and warm.\n"
        " max_tokens: 20\n"
        " temperature: 0.0\n"
    )


def test_a_changed_parameter_and_an_unknown_model_are_named(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    path = tmp_path / "greet.json"
    record(compile_source(GREET), {"name": "Ada"}, path)
    longer = compile_source(GREET.replace("max_tokens=20", "max_tokens=30"), name="b.llmflow")
    cassette = Cassette(path)
    [failure] = run(longer, {"name": "Ada"}, cassette).failures
    assert "max_tokens 20 → 30" in failure.message
    assert "-max_tokens: 20" in cassette.misses[0].diff
    assert "+max_tokens: 30" in cassette.misses[0].diff
    other = compile_source(GREET.replace('"echo-1"', '"echo-2"'), name="c.llmflow")
    [failure] = run(other, {"name": "Ada"}, Cassette(path)).failures
    assert "closest recording" in failure.message  # same declared name, another id


def test_a_miss_is_no_fallback(compile_source: Callable[..., Plan], tmp_path: Path) -> None:
    """A miss fails its call: it does not move on to the next model, retry, or pass."""
    path = tmp_path / "c.json"
    record(compile_source(GREET), {"name": "Ada"}, path)
    cassette = Cassette(path)
    result = run(compile_source(GREET), {"name": "Bob"}, cassette)
    assert [c.retries for c in result.calls] == [0] and len(cassette.misses) == 1
    assert "[user]" in "\n".join(cassette.misses[0].diff)


def test_the_response_cache_answers_nothing_beside_a_cassette(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    """A cached answer must not hide a missing recording (CI has no cache), and a
    recording asks the model, not the cache."""
    plan = compile_source(GREET)
    cache = ResponseCache(tmp_path / "cache")
    try:
        warm = run(plan, {"name": "Ada"}, None, cache=cache)
        assert warm.ok and cache.get(next(iter(_cache_keys(cache)))) is not None
        path = tmp_path / "c.json"
        path.write_text('{"entries": [], "version": 1}')
        cassette = Cassette(path)
        assert not run(plan, {"name": "Ada"}, cassette, cache=cache).ok
        assert len(cassette.misses) == 1
        backend = ScriptedBackend(lambda r: "fresh")
        record(plan, {"name": "Ada"}, path, cache=cache, backend=backend)
        assert len(backend.served) == 1 and entries(path)[0]["answer"]["text"] == ["fresh"]
    finally:
        cache.close()


def _cache_keys(cache: ResponseCache) -> list[str]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(cache.path)) as db:
        return [row[0] for row in db.execute("SELECT key FROM answers")]


# ---- modes ---------------------------------------------------------------------------------


def test_a_full_recording_drops_what_it_no_longer_asks(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(GREET)
    path = tmp_path / "c.json"

    async def session(mode: Any, names: list[str], prune: bool = True) -> Cassette:
        cassette = Cassette(path, mode=mode, prune=prune)
        async with Session(cassette=cassette) as s:
            for name in names:
                assert (await s.run(plan, {"name": name})).ok
        return cassette

    asyncio.run(session("record", ["Ada", "Bob"]))
    assert len(entries(path)) == 2
    asyncio.run(session("record", ["Ada"], prune=False))  # some tests only: keep the rest
    assert len(entries(path)) == 2
    asyncio.run(session("record", ["Ada"]))
    assert ["Ada" in e["request"]["turns"][0]["text"][0] for e in entries(path)] == [True]
    new = asyncio.run(session("new", ["Ada", "Cy"]))
    assert (new.replayed, new.recorded) == (1, 1) and len(entries(path)) == 2
    replay = asyncio.run(session("replay", ["Ada"]))
    assert [e.key for e in replay.unused()] == [
        e["key"] for e in entries(path) if "Cy" in e["request"]["turns"][0]["text"][0]
    ]


def test_one_recording_over_several_sessions_keeps_all_they_asked(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    """A test runner may open a session per test case on one cassette: each session's
    close prunes, and none drops what a later one records."""
    plan = compile_source(GREET)
    path = tmp_path / "c.json"
    record(plan, {"name": "Old"}, path)
    cassette = Cassette(path, mode="record")
    for name in ("Ada", "Bob"):
        assert run(plan, {"name": name}, cassette).ok
    texts = [e["request"]["turns"][0]["text"][0] for e in entries(path)]
    assert texts == ["Write a greeting for Ada.\n", "Write a greeting for Bob.\n"]


def test_a_recording_that_fails_or_stops_drops_nothing(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(GREET)
    path = tmp_path / "c.json"
    record(plan, {"name": "Ada"}, path)
    record(plan, {"name": "Bob"}, path, backend=ScriptedBackend(lambda r: "hi"))
    assert len(entries(path)) == 1  # Ada's dropped: a complete recording of Bob only

    def failing(request: GenerationRequest) -> str:
        if "Cy" in request.turns[0].text:
            raise BackendError("down", retryable=False)
        return "hi"

    async def partly(error: bool) -> None:
        async with Session(cassette=Cassette(path, mode="record")) as s:
            s.backend = ScriptedBackend(failing)
            await s.run(plan, {"name": "Dee"})
            if error:
                raise KeyboardInterrupt
            await s.run(plan, {"name": "Cy"})

    asyncio.run(partly(error=False))
    assert len(entries(path)) == 2  # Bob kept: the recording was not complete
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(partly(error=True))
    assert len(entries(path)) == 2  # stopped: what it recorded is saved, nothing dropped


def test_modes_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CassetteError) as caught:
        Cassette(tmp_path / "none.json")
    assert str(caught.value) == f"{tmp_path / 'none.json'}: no cassette here"
    assert "hint: record one with --record" in caught.value.render()
    with pytest.raises(CassetteError, match="no folder"):
        Cassette(tmp_path / "no" / "such.json", mode="record")
    with pytest.raises(ValueError, match="replay, record, new"):
        Cassette(tmp_path / "c.json", mode="rewind")  # type: ignore[arg-type]


# ---- determinism: seeds, dataset runs ------------------------------------------------------


def test_sampled_calls_replay_with_the_cassettes_seed(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    """Runs with no chosen seed use the cassette's: a sampled call sends the seed it was
    recorded with, and three samples of one prompt stay three entries."""
    plan = compile_source(SAMPLED)
    path = tmp_path / "c.json"
    answers = iter(["first", "second", "third"])
    record(plan, {"topic": "tea"}, path, backend=ScriptedBackend(lambda r: next(answers)))
    recorded = entries(path)
    assert len(recorded) == 3 and len({e["request"]["seed"] for e in recorded}) == 3
    by_seed = {e["request"]["seed"]: e["answer"]["text"] for e in recorded}
    replayed = run(plan, {"topic": "tea"}, Cassette(path), backend=Refusing())
    assert replayed.ok and sorted(replayed.outputs["ideas"]) == ["first", "second", "third"]
    assert replayed.outputs == run(plan, {"topic": "tea"}, Cassette(path)).outputs
    assert len(by_seed) == 3
    other_seed = run(plan, {"topic": "tea"}, Cassette(path), backend=Refusing())
    assert other_seed.outputs == replayed.outputs

    async def chosen() -> RunResult:
        async with Session(cassette=Cassette(path)) as s:
            return await s.run(plan, {"topic": "tea"}, seed=7)  # a chosen seed is the key

    assert [c.error is not None for c in asyncio.run(chosen()).calls] == [True] * 3


def test_a_dataset_run_records_and_replays_its_rows(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(SAMPLED)
    path = tmp_path / "rows.json"
    rows = [Row(id=i, line=i + 1, digest=str(i), inputs={"topic": f"t{i}"}) for i in range(8)]

    def answer(request: GenerationRequest) -> str:
        return f"{request.turns[0].text} #{request.seed}"

    async def many(cassette: Cassette, backend: Any) -> dict[Any, Any]:
        async with Session(cassette=cassette, backend=backend) as s:
            return {r.id: r.outputs async for r in s.run_many(plan, rows, in_flight=4)}

    recorded = asyncio.run(many(Cassette(path, mode="record"), ScriptedBackend(answer, delay=0.01)))
    assert len(entries(path)) == 24
    seeds = {e["request"]["seed"] for e in entries(path)}
    assert len(seeds) == 24  # rows sample apart (their seeds derive from the row's id)
    assert asyncio.run(many(Cassette(path), Refusing())) == recorded


# ---- two sessions recording one file ------------------------------------------------------


def test_sessions_recording_one_cassette_at_once_lose_nothing(
    compile_source: Callable[..., Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four sessions (in four threads, each its own event loop) record into one file,
    saving after every answer: the file is whole and holds every answer."""
    monkeypatch.setattr(cassette_module, "SAVE_EVERY", 0.0)
    plan = compile_source(GREET)
    path = tmp_path / "shared.json"
    path.write_text('{"entries": [], "version": 1}\n')
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        async def main() -> None:
            async with Session(
                cassette=Cassette(path, mode="new"), backend=ScriptedBackend(lambda r: "hi")
            ) as s:
                for i in range(10):
                    assert (await s.run(plan, {"name": f"w{n}-{i}"})).ok

        try:
            asyncio.run(main())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(load(path)) == 40
    assert [p.name for p in tmp_path.glob("*.json*")] == ["shared.json"]  # no temporary left


def test_a_failed_write_keeps_the_old_file(
    compile_source: Callable[..., Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = compile_source(GREET)
    path = tmp_path / "c.json"
    record(plan, {"name": "Ada"}, path)
    before = path.read_bytes()

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(CassetteError, match="cannot write it: No space left on device"):
        record(plan, {"name": "Bob"}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.glob("*.json*")] == ["c.json"]


def test_a_file_garbled_meanwhile_is_not_overwritten(
    compile_source: Callable[..., Plan], tmp_path: Path
) -> None:
    plan = compile_source(GREET)
    path = tmp_path / "c.json"
    record(plan, {"name": "Ada"}, path)

    async def main() -> None:
        async with Session(cassette=Cassette(path, mode="record")) as s:
            await s.run(plan, {"name": "Bob"})
            path.write_text("<<<<<<< HEAD\n")  # a merge conflict, say

    with pytest.raises(CassetteError, match=r"c.json:1:1: not JSON"):
        asyncio.run(main())
    assert path.read_text() == "<<<<<<< HEAD\n"


# ---- bad, cut, huge and hostile files -----------------------------------------------------


@pytest.fixture
def recorded_file(compile_source: Callable[..., Plan], tmp_path: Path) -> Path:
    path = tmp_path / "c.json"
    record(compile_source(GREET), {"name": "Ada"}, path)
    return path


def failure_of(path: Path) -> CassetteError:
    with pytest.raises(CassetteError) as caught:
        Cassette(path)
    return caught.value


def test_a_cut_file_names_line_and_column(recorded_file: Path) -> None:
    text = recorded_file.read_text()
    recorded_file.write_text(text[: len(text) // 2])
    error = failure_of(recorded_file)
    line = text[: len(text) // 2].count("\n") + 1
    assert str(error).startswith(f"{recorded_file}:{line}:")
    assert ": not JSON: " in str(error)
    assert error.render().startswith(f"{recorded_file}:{line}:")


def test_a_wrong_shape_is_placed_at_its_value(recorded_file: Path) -> None:
    data = json.loads(recorded_file.read_text())
    data["entries"][0]["answer"]["input_tokens"] = -3
    data["entries"][0]["request"]["turns"][0]["role"] = "robot"
    recorded_file.write_text(json.dumps(data, indent=2, sort_keys=True))
    error = failure_of(recorded_file)
    text = recorded_file.read_text()
    rendered = error.render()
    numbered = list(enumerate(text.splitlines(), 1))
    tokens_line = next(i for i, line in numbered if '"input_tokens"' in line)
    role_line = next(i for i, line in numbered if '"robot"' in line)
    assert f"c.json:{tokens_line}:" in rendered and f"c.json:{role_line}:" in rendered
    assert "entries.0.answer.input_tokens: Input should be greater than or equal to 0" in rendered
    assert "entries.0.request.turns.0.role" in rendered
    assert "-3" in rendered  # the offending line is shown


def test_edited_requests_versions_and_duplicates(recorded_file: Path) -> None:
    data = json.loads(recorded_file.read_text())
    entry = data["entries"][0]
    entry["request"]["turns"][0]["text"][0] = "Write a poem for Ada.\n"
    recorded_file.write_text(json.dumps(data, indent=2, sort_keys=True))
    assert "entry 1: its key does not match its request" in str(failure_of(recorded_file))
    entry["request"]["turns"][0]["text"][0] = "Write a greeting for Ada.\n"
    data["entries"].append(entry)
    recorded_file.write_text(json.dumps(data, indent=2, sort_keys=True))
    error = failure_of(recorded_file)
    assert "entry 2 records a request twice" in str(error)
    for version in ("2", '"1"', "null", "1" + "0" * 5000):
        recorded_file.write_text(f'{{"version": {version}, "entries": []}}')
        message = str(failure_of(recorded_file))
        assert message.startswith(f"{recorded_file}:1:") or "digits" in message, message
    recorded_file.write_text('{"entries": []}')
    assert "cassette version null is not one" in str(failure_of(recorded_file))
    recorded_file.write_text("[]")
    assert (
        str(failure_of(recorded_file)) == f"{recorded_file}:1:1: not a cassette: not a JSON object"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "1:1: not JSON: Expecting value"),
        (b'{"version": 1, "entries": [}', "1:28: not JSON: Expecting value"),
        (b'\n\n  {"version": 1,\n "entries": [] \xff}', "4:16: not UTF-8 text"),
        (b'{"version": 1, "entries": []}\x00', "1:30: not a cassette: it holds a NUL byte"),
        (b"[" * 200_000 + b"]" * 200_000, "not a cassette: nested too deeply"),
        (b'{"version": 1, "entries": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "nested too deeply"),
        (b'{"version": 1, "entries": [], "x": "\xe2\x80\xae"}', "1:36: not a cassette: x: Extra"),
        (
            b'{"version": 1, "entries": [], "\\u001b[2J' + b"k" * 100 + b'": 1}',
            'not a cassette: "\\u001b[2J' + "k" * 29 + '\u2026": Extra inputs',
        ),
    ],
)
def test_garbled_and_hostile_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    error = failure_of(path)
    assert expected in str(error), str(error)
    for shown in (str(error), error.render()):  # shown text cannot drive the terminal
        assert "\u202e" not in shown and "\x1b" not in shown


def test_huge_and_special_files(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(cassette_module.MAX_BYTES + 1)  # sparse: nothing is written
    assert str(failure_of(huge)) == f"{huge}: larger than 64 MiB: not a cassette"
    assert str(failure_of(tmp_path)) == f"{tmp_path}: not a regular file"
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert str(failure_of(fifo)) == f"{fifo}: not a regular file"  # and does not hang
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    assert str(failure_of(link)) == f"{link}: not a regular file"


# ---- secrets --------------------------------------------------------------------------------


def test_no_secret_reaches_the_file(
    compile_source: Callable[..., Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key in the environment that the server echoes in its answer, a password in the
    model's address and a registered key in the prompt: none is in the cassette."""
    key, password, planted = "k-Zq8xK2-77aa", "hunter2-Secret", "sk-planted1234567890"
    monkeypatch.setenv("CASSETTE_KEY", key)
    secrets.register(planted)
    path = tmp_path / "c.json"

    async def recording() -> RunResult:
        async with FaultServer() as server:
            server.config.responder = lambda body: f"you sent {key} and {planted}"
            url = server.url.replace("://", f"://user:{password}@")
            source = GREET.replace(
                'scripted("echo-1")',
                f'openai_compatible("gpt-x", base_url="{url}", api_key_env="CASSETTE_KEY")',
            )
            plan = compile_source(source)
            async with Session(cassette=Cassette(path, mode="record")) as session:
                return await session.run(plan, {"name": f"Ada {planted}"})

    result = asyncio.run(recording())
    assert result.ok, result.failures
    data = path.read_bytes()
    for secret in (key, password, planted):
        assert secret.encode() not in data
    assert b"you sent [redacted] and [redacted]" in data
    assert b"Ada [redacted]" in data
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # a file to commit


# ---- the embedded model --------------------------------------------------------------------


@pytest.mark.model
def test_the_embedded_model_records_and_replays_without_loading(tmp_path: Path) -> None:
    """hello.llmflow on SmolLM2, recorded; replayed in a fresh process that never
    imports llama.cpp (so never loads the GGUF)."""
    path = tmp_path / "hello.cassette.json"
    plan = llmflow.compile(REPO / "examples" / "hello.llmflow")
    recorded = record(plan, {"name": "Ada"}, path)
    [entry] = entries(path)
    assert entry["model"]["backend"] == "local" and not os.path.isabs(entry["model"]["id"])
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        import llmflow
        from llmflow.runtime.cassette import Cassette
        from llmflow.runtime.session import Session

        async def main():
            plan = llmflow.compile({str(REPO / "examples" / "hello.llmflow")!r})
            async with Session(cassette=Cassette({str(path)!r})) as session:
                result = await session.run(plan, {{"name": "Ada"}})
            print(json.dumps([result.outputs, "llama_cpp" in sys.modules]))

        asyncio.run(main())
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    outputs, loaded = json.loads(done.stdout)
    assert outputs == recorded.outputs and loaded is False

"""The OpenAI-compatible backend: against a real llama_cpp.server on loopback (marked
`model`), and against a scripted server for failures and wire details."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

import llmflow
from llmflow.compiler.models import Capabilities, ModelSpec
from llmflow.compiler.prefix_reuse import WARM_MIN_TOKENS
from llmflow.compiler.types import Prim, RecordT, json_schema
from llmflow.runtime.backends import Router
from llmflow.runtime.backends import openai as openai_backend
from llmflow.runtime.backends.base import (
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
    Turn,
)
from llmflow.runtime.backends.openai import OpenAIBackend, strict_schema
from llmflow.runtime.gateway import Gateway
from llmflow.runtime.retry import RetriesExhausted, RetryPolicy

PLANTED = "sk-test-PLANTED-1234567890"


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    """A JSON-able value, or bytes sent as they are."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started: float
    finished: float = 0.0


@dataclass
class ScriptedServer:
    """An HTTP server on loopback whose answers a test scripts: `reply(request) -> Reply`."""

    url: str
    reply: Callable[[Seen], Reply]
    seen: list[Seen] = field(default_factory=list)


def chat_reply(text: str = "ok", **usage: Any) -> Reply:
    """A chat completion as OpenAI sends it."""
    return Reply(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, **usage},
        }
    )


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    server_state = ScriptedServer(url="", reply=lambda seen: chat_reply())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            headers = {name.lower(): value for name, value in self.headers.items()}
            seen = Seen(self.path, headers, {}, time.monotonic())
            length = int(self.headers.get("content-length") or 0)
            seen.body = json.loads(self.rfile.read(length) or b"{}")
            server_state.seen.append(seen)
            reply = server_state.reply(seen)
            time.sleep(reply.delay)
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            seen.finished = time.monotonic()
            with contextlib.suppress(OSError):  # the client gave up (timeouts)
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _no_ambient_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the keys and URLs they use; the developer's own never leak in."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        if name in os.environ:
            monkeypatch.delenv(name)


def model(url: str, backend: str = "openai_compatible", **options: Any) -> ModelSpec:
    chat = options.pop("chat", True)
    supports_schema = options.pop("supports_schema", None)
    return ModelSpec(
        name="m",
        backend=backend,  # type: ignore[arg-type]
        id="smollm2",
        chat=chat,
        supports_schema=supports_schema,
        settings={"base_url": url, **options},
    )


OPENAI_CACHE = Capabilities(prefix_reuse_min_tokens=1024, prefix_reuse_step_tokens=128)
"""What the `openai` kind declares of its prompt cache (the warm-up reads it)."""


def cached_model(url: str) -> ModelSpec:
    """An `openai` model whose capabilities say it caches prompts, as OpenAI does."""
    return model(url, "openai").model_copy(update={"capabilities": OPENAI_CACHE})


def ask(text: str, **fields: Any) -> GenerationRequest:
    return GenerationRequest(model="m", turns=[Turn(role="user", text=text)], **fields)


def generate(spec: ModelSpec, *requests: GenerationRequest) -> list[Generation]:
    """Send requests concurrently through one backend, then close it."""

    async def main() -> list[Generation]:
        backend = OpenAIBackend({spec.name: spec})
        try:
            return list(await asyncio.gather(*(backend.generate(r) for r in requests)))
        finally:
            await backend.aclose()

    return asyncio.run(main())


def failure(spec: ModelSpec, request: GenerationRequest) -> BackendError:
    with pytest.raises(BackendError) as caught:
        generate(spec, request)
    return caught.value


PERSON = json_schema(
    RecordT(name="Person", fields=[("name", Prim(name="str")), ("age", Prim(name="int"))])
)

# --- against a real server -----------------------------------------------------------


@pytest.mark.model
def test_chat_call(llama_server: str) -> None:
    prompt = "Reply with one word: what colour is the sky on a clear day?"
    first, again = generate(model(llama_server), ask(prompt, max_tokens=8), ask(prompt))
    assert first.text.strip()
    assert 0 < first.output_tokens <= 8 and first.input_tokens > 10
    assert first.finish_reason in {"stop", "length"} and first.seconds > 0
    # llama_cpp.server reuses the repeated prefix but does not report it (no
    # usage.prompt_tokens_details), so the backend says 0 rather than guessing.
    assert again.cached_tokens == 0 and again.input_tokens == first.input_tokens


@pytest.mark.model
def test_completion_call(llama_server: str) -> None:
    (result,) = generate(
        model(llama_server, chat=False),
        ask("The capital of France is", max_tokens=6, stop=["\n"]),
    )
    assert result.text.strip() and "\n" not in result.text
    assert 0 < result.output_tokens <= 6


@pytest.mark.model
def test_json_schema_call_validates(llama_server: str) -> None:
    request = ask(
        "Invent a person. Reply in JSON with a name and an age.",
        max_tokens=40,
        constraint=Constraint(json_schema=PERSON),
    )
    (result,) = generate(model(llama_server, supports_schema=True), request)
    value = json.loads(result.text)
    assert set(value) == {"name", "age"}
    assert isinstance(value["name"], str) and isinstance(value["age"], int)


@pytest.mark.model
def test_multi_output_program_runs(llama_server: str, tmp_path: Path) -> None:
    program = tmp_path / "two.llmflow"
    program.write_text(
        textwrap.dedent(f"""
        model srv = openai_compatible("smollm2", base_url="{llama_server}",
                                      supports_schema=true, price_in=0, price_out=0)

        record Body {{ legs: int }}

        fn describe(animal: str) -> sound: str, body: Body
        \"\"\"
        What sound does a {{{{animal}}}} make? One word.
        {{{{sound | max_tokens=8}}}}
        A {{{{animal}}}} that says {{{{sound}}}}: how many legs does it have? Answer in JSON.
        {{{{body | max_tokens=24}}}}
        \"\"\"

        flow main(animal: str) -> sound: str, legs: int {{
            sound, body = describe(animal)
            legs = body.legs
        }}
        """)
    )
    outputs = llmflow.run(program, {"animal": "cat"})
    assert isinstance(outputs["sound"], str) and outputs["sound"]
    assert isinstance(outputs["legs"], int)


@pytest.mark.model
def test_choices_are_sent_as_an_enum_and_decoded_to_one(
    llama_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enum output and a `choices=` output reach the server as a JSON-schema `enum`
    (llama-cpp-python's server takes it in its older json_object form and decodes only
    those strings), and the JSON string it answers is read as the choice."""
    exchanges: list[tuple[dict[str, Any], str]] = []
    real = openai_backend._create

    async def recording(client: Any, spec: ModelSpec, params: dict[str, Any]) -> Any:
        response = await real(client, spec, params)
        exchanges.append((params, response["choices"][0]["message"]["content"]))
        return response

    monkeypatch.setattr(openai_backend, "_create", recording)
    program = tmp_path / "pick.llmflow"
    program.write_text(
        textwrap.dedent(f"""
        model srv = openai_compatible("smollm2", base_url="{llama_server}",
                                      supports_schema=true, price_in=0, price_out=0)

        enum Mood {{ happy, sad }}

        fn pick(text: str, teams: list[str]) -> mood: Mood, team: str
        \"\"\"
        Message: {{{{text}}}}
        Mood: {{{{mood}}}}
        Team: {{{{team | choices=teams}}}}
        \"\"\"

        flow main(text: str, teams: list[str]) -> mood: Mood, team: str {{
            mood, team = pick(text, teams)
        }}
        """)
    )
    teams = ["billing desk", "sales"]
    outputs = llmflow.run(program, {"text": "My invoice is wrong!", "teams": teams})
    assert outputs["mood"] in {"happy", "sad"} and outputs["team"] in teams
    sent = [params["response_format"] for params, _ in exchanges]
    assert {"type": "json_object", "schema": {"type": "string", "enum": ["happy", "sad"]}} in sent
    assert {"type": "json_object", "schema": {"type": "string", "enum": teams}} in sent
    answered = [
        json.loads(text) for params, text in exchanges if "schema" in params["response_format"]
    ]
    assert answered == [outputs["mood"], outputs["team"]]  # JSON strings, decoded


@pytest.mark.model
def test_client_errors_are_final(llama_server: str) -> None:
    wrong_path = failure(model(llama_server.removesuffix("/v1") + "/nope/v1"), ask("hi"))
    assert (wrong_path.status, wrong_path.retryable) == (404, False)
    assert wrong_path.message == "model 'm': 404 Not Found"
    too_long = failure(model(llama_server), ask("word " * 2100, max_tokens=4))
    assert (too_long.status, too_long.retryable) == (400, False)
    assert "maximum context length is 2048 tokens" in too_long.message


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_refused_connection_names_the_url(host: str) -> None:
    """The error says where and why, never the SDK's bare "Connection error." or the
    ExceptionGroup of the addresses tried; after every retry it still does."""
    url = f"http://{host}:{closed_port()}/v1"
    error = failure(model(url), ask("hi"))
    assert error.retryable and error.status is None and not error.sent  # nothing billed
    assert error.message == (
        f"model 'm': cannot reach {url}: connection refused (is the server running, on this port?)"
    )

    async def through_the_gateway() -> None:
        backend = OpenAIBackend({"m": model(url)})
        gateway = Gateway(backend, {"m": model(url)}, policy=RetryPolicy(attempts=2, base=0.0))
        try:
            await gateway.generate(ask("hi"))
        finally:
            await gateway.aclose()

    with pytest.raises(RetriesExhausted) as caught:
        asyncio.run(through_the_gateway())
    assert str(caught.value) == f"m: gave up after 2 tries: {error.message}"


def test_tls_to_a_plain_http_server_names_the_url(scripted_server: ScriptedServer) -> None:
    url = scripted_server.url.replace("http://", "https://")
    error = failure(model(url), ask("hi"))
    assert error.message.startswith(f"model 'm': cannot reach {url}: TLS failed: ")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:99999/v1", "cannot reach http://127.0.0.1:99999/v1: "),
        ("ftp://127.0.0.1/v1", "cannot reach ftp://127.0.0.1/v1: "),
        ("not a url", "cannot reach not a url: "),
        ("http://[::1", "base_url 'http://[::1' is not usable: "),
        ("http://127.0.0.1:abc/v1", "base_url 'http://127.0.0.1:abc/v1' is not usable: "),
    ],
)
def test_an_address_that_can_never_work_fails_at_once_and_names_itself(
    url: str, reason: str
) -> None:
    error = failure(model(url), ask("hi"))
    assert error.message.startswith(f"model 'm': {reason}")
    assert not error.retryable
    assert "ExceptionGroup" not in error.message and "Connection error." not in error.message


# --- against a scripted server -------------------------------------------------------


def test_api_key_never_in_messages(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    monkeypatch.setenv("OTHER_KEY", "plain-secret-value-42")
    scripted_server.reply = lambda seen: Reply(  # the server echoes the key it got
        401, {"error": {"message": f"Incorrect API key provided: {seen.headers['authorization']}"}}
    )
    for spec in (
        model(scripted_server.url, "openai"),
        model(scripted_server.url, "openai_compatible", api_key_env="OTHER_KEY"),
    ):
        error = failure(spec, ask("hi"))
        assert (error.status, error.retryable) == (401, False)
        assert error.message == "model 'm': 401 Incorrect API key provided: Bearer [redacted]"
        assert PLANTED not in str(error) and "plain-secret-value-42" not in str(error)
    authorizations = {seen.headers["authorization"] for seen in scripted_server.seen}
    assert authorizations == {f"Bearer {PLANTED}", "Bearer plain-secret-value-42"}


@pytest.mark.parametrize(
    ("reply", "status", "retryable", "retry_after"),
    [
        (
            Reply(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "1500"}),
            429,
            True,
            1.5,
        ),
        (Reply(503, {"error": {"message": "busy"}}, {"Retry-After": "2"}), 503, True, 2.0),
        (Reply(408, {"error": {"message": "late"}}), 408, True, None),
        (Reply(422, {"detail": "bad field"}), 422, False, None),
        (Reply(200, b"{not json"), None, True, None),
        (Reply(200, {"choices": []}), None, True, None),
    ],
)
def test_failures_are_classified(
    scripted_server: ScriptedServer,
    reply: Reply,
    status: int | None,
    retryable: bool,
    retry_after: float | None,
) -> None:
    scripted_server.reply = lambda seen: reply
    error = failure(model(scripted_server.url), ask("hi"))
    assert (error.status, error.retryable, error.retry_after) == (status, retryable, retry_after)
    assert error.message.startswith("model 'm': ")


def test_a_key_cut_at_the_message_limit_leaks_no_prefix(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's message is cut at 500 characters; the key in it is masked first, so
    wherever the cut falls no part of the key is left."""
    key = "Zq8xK2"  # six characters, not shaped like an OpenAI key
    monkeypatch.setenv("SIX_KEY", key)
    spec = model(scripted_server.url, api_key_env="SIX_KEY")
    for at in range(490, 502):
        message = "x" * at + f"Bearer {key} " * 3
        scripted_server.reply = lambda seen, message=message: Reply(
            400, {"error": {"message": message}}
        )
        error = failure(spec, ask("hi"))
        assert not any(key[:n] in error.message for n in range(2, 7)), at
        assert len(error.message) <= len("model 'm': 400 ") + 500


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "NaN"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-Infinity"}, None),
        ({"retry-after": "1e999"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({"retry-after": "1e9"}, 1e9),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # the past: now
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, "future"),
        ({"retry-after": "Fri, 31 Dec 99999 23:59:59 GMT"}, None),
        ({"retry-after": "Mon, 99 Foo 2020 99:99:99 GMT"}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | str | None) -> None:
    wait = openai_backend._retry_after(headers)
    if seconds == "future":
        assert wait is not None and wait > 1e10
    else:
        assert wait == seconds


def test_a_429_that_asks_to_wait_too_long_says_so(scripted_server: ScriptedServer) -> None:
    scripted_server.reply = lambda seen: Reply(
        429, {"error": {"message": "rate limited"}}, {"Retry-After": "600"}
    )
    spec = model(scripted_server.url)

    async def run() -> None:
        gateway = Gateway(OpenAIBackend({"m": spec}), {"m": spec})
        try:
            await gateway.generate(ask("hi"))
        finally:
            await gateway.aclose()

    with pytest.raises(RetriesExhausted) as caught:
        asyncio.run(run())
    assert len(scripted_server.seen) == 1
    assert str(caught.value) == (
        "m: gave up after 1 try: the server asked to wait 600 s, more than the 120 s "
        "llmflow waits: model 'm': 429 rate limited"
    )


def test_a_429_with_a_nan_wait_is_retried_with_backoff(scripted_server: ScriptedServer) -> None:
    replies = [Reply(429, {"error": {"message": "slow"}}, {"Retry-After": "nan"}), chat_reply()]
    scripted_server.reply = lambda seen: replies.pop(0)
    spec = model(scripted_server.url)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def run() -> Generation:
        gateway = Gateway(OpenAIBackend({"m": spec}), {"m": spec}, sleep=sleep)
        try:
            return await gateway.generate(ask("hi"))
        finally:
            await gateway.aclose()

    answer = asyncio.run(run())
    assert answer.text == "ok" and answer.retries == 1
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= RetryPolicy().base


def test_a_key_echoed_by_the_server_reaches_no_output_and_no_file(
    scripted_server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server that puts the request's Authorization header in its answers and errors:
    `llmflow run` prints no key, and leaves none in its run folder or the cache."""
    from llmflow.cli import main

    key = "Zq8xK2"
    monkeypatch.setenv("SIX_KEY", key)

    def reply(seen: Seen) -> Reply:
        echoed = seen.headers["authorization"]
        if "fail" in json.dumps(seen.body):
            return Reply(400, {"error": {"message": "x" * 470 + f"bad key {echoed}"}})
        return chat_reply(f"you sent {echoed}")

    scripted_server.reply = reply
    program = tmp_path / "echo.llmflow"
    program.write_text(
        textwrap.dedent(f"""
        model srv = openai_compatible("m", base_url="{scripted_server.url}",
                                      api_key_env="SIX_KEY", price_in=0, price_out=0)

        fn ask(q: str) -> a: str
        \"\"\"Say {{{{q}}}}: {{{{a}}}}\"\"\"

        flow main(qs: list[str]) -> answers: list[str] {{
            answers = map q in qs: ask(q)
        }}
        """)
    )
    assert main(["--debug", "run", str(program), "-i", 'qs=["echo"]', "--json"]) == 0
    assert main(["run", str(program), "-i", 'qs=["echo", "fail"]']) == 1
    out, err = capsys.readouterr()
    assert "you sent Bearer [redacted]" in out and "bad key Bearer [redacted]" in err
    assert key not in out + err
    files = [p for p in Path(os.environ["LLMFLOW_HOME"]).rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"run.json", "journal.jsonl", "trace.jsonl"}
    for path in files:
        assert key.encode() not in path.read_bytes(), path


def test_timeout_is_retryable(scripted_server: ScriptedServer) -> None:
    scripted_server.reply = lambda seen: Reply(body=chat_reply().body, delay=1.0)
    error = failure(model(scripted_server.url, timeout=0.2), ask("hi"))
    assert error.retryable and "in 0.2s" in error.message


def test_group_warms_up_before_fanning_out(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    scripted_server.reply = lambda seen: Reply(
        body=chat_reply(prompt_tokens_details={"cached_tokens": 7}).body, delay=0.3
    )
    shared = WARM_MIN_TOKENS
    results = generate(
        cached_model(scripted_server.url),
        *(ask(f"q{i}", group="g1", shared_tokens=shared) for i in range(3)),
    )
    first, *rest = sorted(scripted_server.seen, key=lambda seen: seen.started)
    assert all(seen.started >= first.finished for seen in rest)
    assert rest[1].started < rest[0].finished  # the others went together
    assert [r.cached_tokens for r in results] == [7, 7, 7]
    assert {seen.body["prompt_cache_key"] for seen in scripted_server.seen} == {"llmflow-g1"}
    assert all("max_completion_tokens" in seen.body for seen in scripted_server.seen)


def test_a_group_with_a_short_shared_prefix_is_not_held_back(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    scripted_server.reply = lambda seen: Reply(body=chat_reply().body, delay=0.3)
    generate(
        cached_model(scripted_server.url),
        *(ask(f"q{i}", group="g1", shared_tokens=WARM_MIN_TOKENS - 1) for i in range(3)),
    )
    first, *rest = sorted(scripted_server.seen, key=lambda seen: seen.started)
    assert all(seen.started < first.finished for seen in rest)  # all went together
    assert {seen.body["prompt_cache_key"] for seen in scripted_server.seen} == {"llmflow-g1"}


def test_a_group_is_not_held_back_where_the_server_reuses_no_prefix(
    scripted_server: ScriptedServer,
) -> None:
    """The warm-up asks the model's capabilities: a server that declares no prefix reuse
    gains nothing from waiting for the first answer, however long the shared prefix."""
    scripted_server.reply = lambda seen: Reply(body=chat_reply().body, delay=0.3)
    never = model(scripted_server.url).model_copy(update={"capabilities": Capabilities()})
    long = 4 * WARM_MIN_TOKENS
    generate(never, *(ask(f"q{i}", group="g1", shared_tokens=long) for i in range(3)))
    first, *rest = sorted(scripted_server.seen, key=lambda seen: seen.started)
    assert all(seen.started < first.finished for seen in rest)


def test_request_parameters(scripted_server: ScriptedServer) -> None:
    scripted_server.reply = lambda seen: chat_reply("one|two END three", prompt_tokens_details=None)
    stops = ["a", "b", "c", "d", " END"]
    request = ask("hi", max_tokens=5, stop=stops, seed=3, temperature=0.5, group="g1")
    (result,) = generate(model(scripted_server.url), request)
    assert (result.text, result.finish_reason, result.cached_tokens) == ("one|two", "stop", 0)
    (body,) = [seen.body for seen in scripted_server.seen]
    assert body["stop"] == stops[:4] and "prompt_cache_key" not in body
    assert (body["max_tokens"], body["seed"], body["temperature"]) == (5, 3, 0.5)


def test_strict_schema() -> None:
    assert strict_schema(PERSON)
    assert not strict_schema({"type": "object", "properties": {"x": {}}, "required": ["x"]})
    assert not strict_schema({"type": "object", "properties": {"x": {"type": "string"}}})


def test_response_format_sent(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI wants an object root: a list or a choice is asked for inside a one-field
    object, and the answer comes back without it."""
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    answers = {"a": '{"name": "Ann", "age": 3}', "b": '{"value": ["x", "y"]}'}
    answers["c"] = '{"value": "say \\"no\\""}'
    scripted_server.reply = lambda seen: chat_reply(answers[seen.body["messages"][0]["content"]])
    spec = model(scripted_server.url, "openai", supports_schema=True)
    listing = {"type": "array", "items": {"type": "string"}}
    record, items, choice = generate(
        spec,
        ask("a", constraint=Constraint(json_schema=PERSON)),
        ask("b", constraint=Constraint(json_schema=listing)),
        ask("c", constraint=Constraint(choices=["yes", 'say "no"'])),
    )
    formats = {
        seen.body["messages"][0]["content"]: seen.body.get("response_format")
        for seen in scripted_server.seen
    }
    assert formats["a"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": PERSON, "strict": True},
    }
    wrapped = {"type": "object", "required": ["value"], "additionalProperties": False}
    assert formats["b"]["json_schema"]["schema"] == wrapped | {"properties": {"value": listing}}
    enum = {"type": "string", "enum": ["yes", 'say "no"']}
    assert formats["c"]["json_schema"] == {
        "name": "output",
        "schema": wrapped | {"properties": {"value": enum}},
        "strict": True,
    }
    assert (record.text, items.text, choice.text) == (answers["a"], '["x", "y"]', 'say "no"')


def test_choices_go_as_an_enum_to_compatible_servers(scripted_server: ScriptedServer) -> None:
    """A compatible server gets the `enum` at the root; the JSON string it answers is read
    as the choice. Without `supports_schema` nothing is sent and the text is the answer."""
    scripted_server.reply = lambda seen: chat_reply('"billing"')
    request = ask("team?", constraint=Constraint(choices=["billing", "sales"]))
    (answer,) = generate(model(scripted_server.url, supports_schema=True), request)
    (plain,) = generate(model(scripted_server.url), request)
    with_schema, without = (seen.body.get("response_format") for seen in scripted_server.seen)
    assert with_schema == {
        "type": "json_schema",
        "json_schema": {
            "name": "output",
            "schema": {"type": "string", "enum": ["billing", "sales"]},
            "strict": True,
        },
    }
    assert without is None
    assert (answer.text, plain.text) == ("billing", '"billing"')


def test_templates_lower_to_turns(scripted_server: ScriptedServer, tmp_path: Path) -> None:
    """Each output is an assistant reply; a completion model sees the filled-in text."""
    replies = iter(["Paris", "France", "Paris", "France"])
    scripted_server.reply = lambda seen: Reply(
        body={"choices": [{"index": 0, "text": next(replies), "finish_reason": "stop"}]}
        if "prompt" in seen.body
        else chat_reply(next(replies)).body
    )
    program = tmp_path / "p.llmflow"
    for chat in ("true", "false"):
        program.write_text(
            f'model srv = openai_compatible("x", base_url="{scripted_server.url}", chat={chat})\n'
            "fn f() -> city: str, country: str\n"
            '"""\nA city: {{city}}\nIts country: {{country}}\n"""\n'
            "flow main() -> city: str, country: str {\n    city, country = f()\n}\n"
        )
        assert llmflow.run(program) == {"city": "Paris", "country": "France"}
    chat_body, completion_body = scripted_server.seen[1].body, scripted_server.seen[3].body
    assert chat_body["messages"] == [
        {"role": "user", "content": "A city:"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "Its country:"},
    ]
    assert completion_body["prompt"] == "A city:Paris\nIts country:"


def test_router_checks_keys_and_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    models = {
        "gpt": ModelSpec(name="gpt", backend="openai", id="gpt-4o-mini"),
        "mine": ModelSpec(
            name="mine", backend="openai_compatible", id="x", settings={"api_key_env": "MINE"}
        ),
        "far": ModelSpec(name="far", backend="openai_compatible", id="x"),
    }
    router = Router(models)
    messages = {}
    for name in models:
        with pytest.raises(BackendError) as caught:
            router.check({name})
        messages[name] = caught.value.message
    assert "set the environment variable OPENAI_API_KEY" in messages["gpt"]
    assert "set the environment variable MINE" in messages["mine"]
    assert "base_url=" in messages["far"]
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    monkeypatch.setenv("MINE", "a-long-enough-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    router.check(set(models))


def test_a_refusal_is_reported(scripted_server: ScriptedServer) -> None:
    refusal = {"role": "assistant", "content": None, "refusal": "I cannot help with that."}
    body = chat_reply().body | {"choices": [{"index": 0, "message": refusal}]}
    scripted_server.reply = lambda seen: Reply(body=body)
    error = failure(model(scripted_server.url), ask("hi"))
    assert error.message == "model 'm' refused: I cannot help with that."
    assert not error.retryable


def test_clients_are_made_before_the_run(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Router.open` makes each hosted model's client up front: the calls make none."""
    made: list[str] = []
    real = openai_backend.AsyncOpenAI

    def counting(**options: Any) -> Any:
        made.append(str(options["base_url"]))
        return real(**options)

    monkeypatch.setattr(openai_backend, "AsyncOpenAI", counting)
    router = Router({"m": model(scripted_server.url)})
    router.open({"m"})
    assert made == [scripted_server.url]

    async def calls() -> list[Generation]:
        try:
            return list(await asyncio.gather(*(router.generate(ask(f"q{i}")) for i in range(3))))
        finally:
            await router.aclose()

    assert [g.text for g in asyncio.run(calls())] == ["ok"] * 3
    assert made == [scripted_server.url]


def test_plain_http_servers_get_a_client_without_certificates() -> None:
    """A server reached over http never uses TLS: its client loads no CA bundle (20-40 ms
    per client), and an https address it might reach anyway is not trusted."""
    client = openai_backend._plain_http_client("http://127.0.0.1:8000/v1")
    assert isinstance(client, openai.DefaultAsyncHttpxClient)
    asyncio.run(client.aclose())
    assert openai_backend._plain_http_client("https://api.openai.com/v1") is None
    assert openai_backend._plain_http_client(None) is None


# --- options from inputs, and answers cut off at max_tokens --------------------------


def _sized_program(tmp_path: Path, url: str, output: str) -> Path:
    program = tmp_path / "sized.llmflow"
    program.write_text(
        textwrap.dedent(f"""
        model srv = openai_compatible("m", base_url="{url}", price_in=0, price_out=0)

        record Body {{ legs: int }}

        fn describe(animal: str, n: int) -> {output}
        \"\"\"
        How many legs has a {{{{animal}}}}? {{{{body | max_tokens=n}}}}
        \"\"\"

        flow main(animal: str, n: int) -> legs: {output.split(": ")[1]} {{
            legs = describe(animal, n)
        }}
        """)
    )
    return program


def _cut(seen: Seen) -> Reply:
    """A JSON answer stopped at the token cap, as a server sends it."""
    reply = chat_reply('{"legs": ')
    reply.body["choices"][0]["finish_reason"] = "length"
    return reply


def test_max_tokens_from_an_input_is_sent(scripted_server: ScriptedServer, tmp_path: Path) -> None:
    scripted_server.reply = lambda seen: chat_reply('{"legs": 4}')
    program = _sized_program(tmp_path, scripted_server.url, "body: Body")
    outputs = llmflow.run(program, {"animal": "cat", "n": 37})
    assert outputs["legs"] == {"legs": 4}
    assert [s.body["max_tokens"] for s in scripted_server.seen] == [37]


def test_a_structured_answer_cut_off_at_max_tokens_says_to_raise_it(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    scripted_server.reply = _cut
    program = _sized_program(tmp_path, scripted_server.url, "body: Body")
    with pytest.raises(llmflow.errors.LLMFlowError) as caught:
        llmflow.run(program, {"animal": "cat", "n": 5})
    message = str(caught.value)
    assert "output 'body' (Body) was cut off at max_tokens=5 (finish reason: length)" in message
    assert "raise max_tokens" in message
    assert len(scripted_server.seen) == 1  # the same cap would cut it again: no retry


def test_an_input_out_of_an_options_range_fails_that_call_before_sending(
    scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    program = _sized_program(tmp_path, scripted_server.url, "body: Body")
    with pytest.raises(llmflow.errors.LLMFlowError) as caught:
        llmflow.run(program, {"animal": "cat", "n": 0})
    assert "max_tokens=n must be a positive integer, but 'n' is 0" in str(caught.value)
    assert "sized.llmflow:" in str(caught.value)  # at the call's position
    assert scripted_server.seen == []

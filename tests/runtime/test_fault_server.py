"""The fault-injecting OpenAI-compatible test server, seen through the real `openai` client:
answers, usage and prefix caching, service time, every fault, determinism, auth, the log."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx2
import openai
import pytest
from pydantic import BaseModel, Field, ValidationError

from llmflow.runtime.testing.server import (
    FAULTS,
    RateWindow,
    ServerConfig,
    ServerHandle,
    start_server,
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected(text: str) -> str:
    """The documented default answer, recomputed here on purpose."""
    return "ok:" + sha256(text)[:12]


def ask(
    server: ServerHandle,
    *contents: str,
    timeout: float = 5.0,
    api_key: str = "x",
    max_retries: int = 0,
    **kwargs: Any,
) -> list[Any]:
    """One chat request per content, all at once; each a ChatCompletion or the exception."""

    async def go() -> list[Any]:
        async with openai.AsyncOpenAI(
            base_url=server.url, api_key=api_key, max_retries=max_retries, timeout=timeout
        ) as client:
            calls = [
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": c}], **kwargs
                )
                for c in contents
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(go())


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    with start_server() as handle:
        yield handle


def test_chat_answer_usage_and_exact_shape(server: ServerHandle) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "sure"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
    ]
    response = httpx2.post(
        f"{server.url}/chat/completions", json={"model": "gpt-x", "messages": messages}
    )
    assert response.status_code == 200
    body = response.json()
    keys = ["id", "object", "created", "model", "choices", "usage", "system_fingerprint"]
    assert list(body) == keys
    assert body["object"] == "chat.completion" and body["model"] == "gpt-x"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": expected("hello"), "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    prompt = "system: Be brief.\nuser: first\nassistant: sure\nuser: hello\n"
    assert body["usage"] == {
        "prompt_tokens": math.ceil(len(prompt) / 4),
        "completion_tokens": 4,  # "ok:" + 12 hex digits = 15 characters
        "total_tokens": math.ceil(len(prompt) / 4) + 4,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    [reply] = ask(server, "hello again")
    assert reply.choices[0].message.content == expected("hello again")


def test_completions_and_configured_models() -> None:
    with start_server(models=["small", "large"]) as server:

        async def go() -> None:
            async with openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0) as c:
                completion = await c.completions.create(model="small", prompt="Once upon")
                assert completion.object == "text_completion"
                assert completion.choices[0].text == expected("Once upon")
                assert completion.usage is not None and completion.usage.prompt_tokens == 3
                assert [m.id async for m in c.models.list()] == ["small", "large"]
                with pytest.raises(openai.NotFoundError) as info:
                    await c.completions.create(model="huge", prompt="Once upon")
                assert info.value.code == "model_not_found"

        asyncio.run(go())


class Part(BaseModel):
    name: str
    count: int = Field(ge=10)
    weight: float


class Report(BaseModel):
    title: str = Field(max_length=5)
    kind: Literal["short", "long"]
    ok: bool
    parts: list[Part] = Field(min_length=2)
    note: str | None = None


def schema_format(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"name": model.__name__, "schema": model.model_json_schema(), "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def test_json_schema_answer_is_valid_and_deterministic(server: ServerHandle) -> None:
    [reply] = ask(server, "report", response_format=schema_format(Report))
    report = Report.model_validate_json(reply.choices[0].message.content)
    assert report.title == expected("report")[:5] and report.kind == "short" and report.ok
    assert report.parts == [Part(name=expected("report"), count=10, weight=1.5)] * 2


def test_max_tokens_and_stop(server: ServerHandle) -> None:
    answer = expected("cut")
    [short, stopped] = [
        ask(server, "cut", max_tokens=2)[0],
        ask(server, "cut", stop=["zz", answer[6:8]])[0],
    ]
    assert short.choices[0].message.content == answer[:8]
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    assert stopped.choices[0].message.content == answer[:6]
    assert stopped.choices[0].finish_reason == "stop"


def test_prefix_cache_counts_leading_blocks() -> None:
    with start_server(block_size=4, partition_cache_by_key=True) as server:
        text = "x" * 200  # prompt "user: " + 200 + "\n" = 207 characters, 52 tokens
        cached = [
            reply.usage.prompt_tokens_details.cached_tokens
            for prompt, key in [
                (text, "a"),
                (text, "a"),
                (text[:100] + "y" * 100, "a"),
                ("y" + text[1:], "a"),
                (text, "b"),
            ]  # fmt: skip
            for reply in ask(server, prompt, prompt_cache_key=key)
        ]
        # whole 16-character blocks before the last token: 51 // 4 = 12 blocks, 48 tokens
        assert cached == [0, 48, 24, 0, 0]
        assert [r["prompt_cache_key"] for r in server.log] == ["a"] * 4 + ["b"]
        assert [r["cached_tokens"] for r in server.log] == cached


def test_service_time_latency_prefill_decode_and_slots() -> None:
    with start_server(latency=0.2) as server:
        ask(server, "a", "b", "c", "d")
        log = server.log
        assert all(r["finish"] - r["arrival"] >= 0.19 for r in log)
        assert max(r["arrival"] for r in log) < min(r["finish"] for r in log)  # concurrent
    with start_server(latency=0.1, slots=1) as server:
        ask(server, "a", "b", "c")
        finishes = sorted(r["finish"] for r in server.log)
        assert all(later - earlier >= 0.09 for earlier, later in itertools.pairwise(finishes))
    with start_server(prefill=0.004, decode=0.05) as server:
        started = time.monotonic()
        [reply] = ask(server, "p" * 393)  # 100 uncached prompt tokens, 4 output tokens
        assert reply.usage.prompt_tokens == 100
        assert time.monotonic() - started >= 0.4 + 0.2 - 0.01


def test_rate_limit_says_when_to_retry() -> None:
    with start_server(rate_limit=1.0, retry_after=2.5) as server:
        [error] = ask(server, "hi")
        assert isinstance(error, openai.RateLimitError) and error.status_code == 429
        assert error.response.headers["retry-after"] == "3"
        assert error.response.headers["retry-after-ms"] == "2500"
        assert error.code == "rate_limit_exceeded"
    with start_server(fail_first=["rate_limit"], retry_after=0.2) as server:
        [reply] = ask(server, "hi", max_retries=1)  # the SDK waits as told, then succeeds
        assert reply.choices[0].message.content == expected("hi")
        first, second = server.log
        assert (first["status"], second["status"]) == (429, 200)
        assert second["arrival"] - first["finish"] >= 0.19


def test_over_the_rpm_limit_a_429_says_when_and_the_log_tells_it_from_an_injected_one() -> None:
    with start_server(rpm=3, window=30.0, fail_first=["rate_limit"]) as server:
        errors = ask(server, "a", "b", "c", "d", "e")
        assert all(isinstance(e, openai.RateLimitError) for e in errors)
        # 3 admitted, each prompt's first attempt being an injected 429; 2 over the limit
        faults = sorted(str(r["fault"]) for r in server.log)
        assert faults == ["over_limit"] * 2 + ["rate_limit"] * 3
        assert [r["status"] for r in server.log] == [429] * 5
        over = [e for e in errors if "Rate limit reached for m on requests per 30 s" in e.message]
        assert len(over) == 2
        assert all(e.code == "rate_limit_exceeded" and e.type == "requests" for e in over)
        assert all(29 <= int(e.response.headers["retry-after"]) <= 30 for e in over)
        assert all(int(e.response.headers["retry-after-ms"]) <= 30_000 for e in over)
    with start_server(rpm=2, window=30.0) as server:
        assert all(not isinstance(r, Exception) for r in ask(server, "a", "b"))
        [refused] = ask(server, "c")
        assert isinstance(refused, openai.RateLimitError)
        other = httpx2.post(
            f"{server.url}/completions", json={"model": "other", "prompt": "c"}
        )  # each model has its own window
        assert other.status_code == 200
        assert [r["fault"] for r in server.log][-2:] == ["over_limit", None]


def test_raw_429_body_and_headers_and_the_window_slides() -> None:
    with start_server(rpm=2, window=0.5) as server:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        url = f"{server.url}/chat/completions"
        assert [httpx2.post(url, json=body).status_code for _ in "ab"] == [200, 200]
        response = httpx2.post(url, json=body)
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        assert set(error) == {"message", "type", "param", "code"}
        wait = int(response.headers["retry-after-ms"]) / 1000
        assert 0 < wait <= 0.5 and response.headers["retry-after"] == "1"
        time.sleep(wait + 0.01)  # as told: the window has slid past the first request
        assert httpx2.post(url, json=body).status_code == 200
        statuses = [(r["status"], r["fault"]) for r in server.log]
        assert statuses == [(200, None)] * 2 + [(429, "over_limit"), (200, None)]
        assert [r["attempt"] for r in server.log] == [0, 1, None, 2]  # refused: no attempt


def test_an_over_limit_request_is_not_an_attempt_and_a_retrying_client_gets_through() -> None:
    with start_server(rpm=1, window=0.4, fail_first=["server_error"]) as server:
        [reply] = ask(server, "hi", max_retries=4)  # the SDK honours retry-after-ms
        assert reply.choices[0].message.content == expected("hi")
        faults = [r["fault"] for r in server.log]
        assert faults[0] == "server_error" and faults[-1] is None
        assert set(faults[1:-1]) <= {"over_limit"}
        admitted = [r for r in server.log if r["fault"] != "over_limit"]
        assert [r["attempt"] for r in admitted] == [0, 1]
        assert admitted[1]["arrival"] - admitted[0]["arrival"] > 0.4


def test_tpm_counts_prompt_and_max_tokens() -> None:
    # "user: hi\n" is 9 characters, 3 tokens; with max_tokens=5 a request costs 8 tokens
    with start_server(tpm=11, window=30.0) as server:
        [first] = ask(server, "hi", max_tokens=5)
        assert first.usage.prompt_tokens == 3
        [second] = ask(server, "hi", max_tokens=5)
        assert isinstance(second, openai.RateLimitError) and second.type == "tokens"
        assert "retry-after" in second.response.headers
        [small] = ask(server, "", max_tokens=1)  # "user: \n": 2 tokens + 1: 11 in all
        assert not isinstance(small, Exception)
    with start_server(tpm=10, rpm=100) as server:
        [huge] = ask(server, "hi", max_tokens=50)
        assert isinstance(huge, openai.RateLimitError)
        assert "Request too large" in huge.message and "retry-after" not in huge.response.headers


def cfg(**fields: Any) -> ServerConfig:
    return ServerConfig(**({"window": 10.0} | fields))


def test_rate_window_slides_rather_than_resetting() -> None:
    window, config = RateWindow(), cfg(rpm=2)
    assert window.admit(config, 0.0, 1) is None
    assert window.admit(config, 6.0, 1) is None
    assert window.admit(config, 7.0, 1) == ("requests", pytest.approx(3.0))  # 0.0 leaves at 10
    assert window.admit(config, 9.9, 1) is not None  # refused ones are not counted...
    assert window.admit(config, 10.0, 1) is None  # ...so at 10 the first has left
    assert window.admit(config, 12.0, 1) == ("requests", pytest.approx(4.0))  # 6.0 is still in
    assert window.admit(config, 16.0, 1) is None


def test_rate_window_tokens_wait_for_enough_to_leave() -> None:
    window, config = RateWindow(), cfg(tpm=10)
    assert window.admit(config, 0.0, 4) is None
    assert window.admit(config, 1.0, 4) is None
    assert window.admit(config, 2.0, 5) == ("tokens", pytest.approx(8.0))  # 4 free at 10
    assert window.admit(config, 2.0, 9) == ("tokens", pytest.approx(9.0))  # 8 free at 11
    assert window.admit(config, 2.0, 11) == ("tokens", math.inf)  # never
    assert window.admit(config, 2.0, 2) is None


@pytest.mark.parametrize(
    "fields",
    [{"rpm": 0}, {"rpm": -5}, {"rpm": 1.5}, {"rpm": True}, {"tpm": 0}, {"tpm": "10"}],
)
def test_bad_limits_are_refused(fields: dict[str, Any]) -> None:
    name = next(iter(fields))
    with pytest.raises(ValueError, match=f"{name} must be a whole number >= 1"):
        ServerConfig(**fields)


@pytest.mark.parametrize("window", [0, -1.0, math.inf, math.nan, "60", None])
def test_bad_windows_are_refused(window: Any) -> None:
    with pytest.raises(ValueError, match="window must be a"):
        ServerConfig(window=window)


def test_server_errors_and_unavailable() -> None:
    with start_server(fail_first=["server_error", "unavailable"]) as server:
        errors = [ask(server, "hi")[0] for _ in range(3)]
        assert [type(e) for e in errors[:2]] == [openai.InternalServerError] * 2
        assert [e.status_code for e in errors[:2]] == [500, 503]
        assert errors[2].choices[0].message.content == expected("hi")


def test_hang_makes_the_client_time_out_and_is_logged_when_it_leaves() -> None:
    with start_server(hang=1.0) as server:  # hang_seconds defaults to an hour
        [error] = ask(server, "hi", timeout=0.3)
        assert isinstance(error, openai.APITimeoutError)
        [record] = server.wait_for_log(1)
        assert record["fault"] == "hang" and record["status"] is None
        assert record["finish"] - record["arrival"] < 2


def test_drop_is_a_connection_error_not_a_timeout() -> None:
    with start_server(drop=1.0) as server:
        [error] = ask(server, "hi", timeout=5)
        assert isinstance(error, openai.APIConnectionError)
        assert not isinstance(error, openai.APITimeoutError)
        assert [(r["fault"], r["status"]) for r in server.log] == [("drop", None)]


def test_malformed_body_is_not_json() -> None:
    with start_server(malformed=1.0) as server:
        [error] = ask(server, "hi")
        assert isinstance(error, json.JSONDecodeError)  # what the SDK lets through
        raw = httpx2.post(f"{server.url}/chat/completions", json={"model": "m", "messages": []})
        assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            raw.json()


def test_invalid_output_breaks_the_schema() -> None:
    with start_server(invalid_output=1.0) as server:
        [wrong] = ask(server, "report", response_format=schema_format(Report))
        text = wrong.choices[0].message.content
        assert isinstance(json.loads(text), dict)  # valid JSON, wrong document
        with pytest.raises(ValidationError):
            Report.model_validate_json(text)
        [plain] = ask(server, "hi")
        assert plain.choices[0].message.content == ""
        as_string = {"name": "s", "schema": {"type": "string"}}
        [not_json] = ask(
            server, "hi", response_format={"type": "json_schema", "json_schema": as_string}
        )
        with pytest.raises(json.JSONDecodeError):
            json.loads(not_json.choices[0].message.content)


def test_fail_first_gives_each_prompt_every_fault_in_order() -> None:
    with start_server(fail_first=list(FAULTS)) as server:
        for prompt in ("one", "two"):
            outcomes = [ask(server, prompt, timeout=0.3)[0] for _ in range(len(FAULTS) + 1)]
            assert [type(o).__name__ for o in outcomes] == [
                "RateLimitError", "InternalServerError", "InternalServerError",
                "APITimeoutError", "APIConnectionError", "JSONDecodeError",
                "ChatCompletion", "ChatCompletion",
            ]  # fmt: skip
            assert outcomes[-2].choices[0].message.content == ""  # invalid_output, no schema
            assert outcomes[-1].choices[0].message.content == expected(prompt)
        log = server.wait_for_log(2 * (len(FAULTS) + 1))
        for prompt in ("one", "two"):
            mine = [r for r in log if r["prompt_sha256"] == sha256(f"user: {prompt}\n")]
            assert [r["fault"] for r in mine] == [*FAULTS, None]
            assert [r["attempt"] for r in mine] == list(range(len(FAULTS) + 1))


def test_random_faults_depend_on_seed_and_prompt_not_on_arrival_order() -> None:
    prompts = [f"prompt {i}" for i in range(60)]

    def faults(seed: int, order: list[str]) -> dict[str, str | None]:
        with start_server(seed=seed, rate_limit=0.3, server_error=0.2) as server:
            ask(server, *order)
            return {r["prompt_sha256"]: r["fault"] for r in server.log}

    first = faults(1, prompts)
    assert first == faults(1, prompts[::-1])
    assert first != faults(2, prompts)
    assert 15 <= sum(f is not None for f in first.values()) <= 45  # 50% of 60
    assert set(first.values()) == {None, "rate_limit", "server_error"}


def test_api_key_is_required_and_never_echoed() -> None:
    with start_server(api_key="s3cret-key") as server:
        [refused] = ask(server, "hi", api_key="wrong-key")
        assert isinstance(refused, openai.AuthenticationError) and refused.status_code == 401
        assert "s3cret" not in refused.response.text and "wrong-key" not in refused.response.text
        [accepted] = ask(server, "hi", api_key="s3cret-key")
        assert accepted.choices[0].message.content == expected("hi")
        assert [r["status"] for r in server.log] == [401, 200]
        assert "s3cret" not in json.dumps(server.log) and "wrong" not in json.dumps(server.log)


def test_stream_is_refused_openai_style(server: ServerHandle) -> None:
    [error] = ask(server, "hi", stream=True)
    assert isinstance(error, openai.BadRequestError) and error.param == "stream"


def test_keep_alive_and_jsonl_log_readable_while_running(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    with start_server(log_path=path) as server:

        async def sequential() -> None:
            async with openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0) as c:
                for text in ("a", "b", "c"):
                    await c.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": text}], temperature=0.5
                    )

        asyncio.run(sequential())
        on_disk = [json.loads(line) for line in path.read_text().splitlines()]
        assert on_disk == server.log and len(on_disk) == 3
        assert len({r["conn"] for r in on_disk}) == 1  # one connection, reused
        assert all(r["temperature"] == 0.5 and r["status"] == 200 for r in on_disk)


def test_update_changes_faults_between_phases(server: ServerHandle) -> None:
    with pytest.raises(ValueError):
        server.update(rate_limit=0.7, drop=0.7)
    server.update(server_error=1.0)
    assert isinstance(ask(server, "hi")[0], openai.InternalServerError)
    server.update(server_error=0.0)
    assert ask(server, "hi")[0].choices[0].message.content == expected("hi")


def test_custom_responder_and_its_failure() -> None:
    def responder(request: dict[str, Any]) -> str:
        if request["messages"][-1]["content"] == "boom":
            raise RuntimeError("boom")
        return request["model"].upper()

    with start_server(responder=responder) as server:
        [reply, failure] = ask(server, "hi", "boom")
        assert reply.choices[0].message.content == "M"
        assert isinstance(failure, openai.InternalServerError)


def test_garbage_gets_a_400_and_the_server_lives_on(server: ServerHandle) -> None:
    port = int(server.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    assert ask(server, "hi")[0].choices[0].message.content == expected("hi")


def test_cli_takes_a_rate_limit_and_refuses_a_bad_one(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "llmflow.runtime.testing.server"]
    bad = subprocess.run([*command, "--rpm", "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "rpm must be a whole number >= 1" in bad.stderr
    assert "Traceback" not in bad.stderr
    with subprocess.Popen(
        [*command, "--rpm", "2", "--window", "30"], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            url = process.stdout.readline().strip()
            body = {"model": "m", "prompt": "hi"}
            statuses = [httpx2.post(f"{url}/completions", json=body).status_code for _ in "abc"]
            assert statuses == [200, 200, 429]
        finally:
            process.terminate()
        assert process.wait(timeout=5) == 0


def test_cli_prints_its_url_and_logs(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    command = [sys.executable, "-m", "llmflow.runtime.testing.server", "--latency", "0.01"]
    with subprocess.Popen(
        [*command, "--fail-first", "server_error", "--log", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            body = {"model": "m", "prompt": "hi"}
            statuses = [httpx2.post(f"{url}/completions", json=body).status_code for _ in "ab"]
            assert statuses == [500, 200]
            assert [json.loads(line)["status"] for line in path.read_text().splitlines()] == [
                500,
                200,
            ]
        finally:
            process.terminate()
        assert process.wait(timeout=5) == 0

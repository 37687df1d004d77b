"""An OpenAI-compatible HTTP server for tests and benchmarks that misbehaves on request.

Why a real server: retries, rate-limit handling and resume-after-kill must be tested through
the HTTP client production uses (the `openai` SDK), against faults a mock cannot produce: a
dropped connection, a hang, a broken body. HTTP/1.1 is done by hand with `h11` on asyncio
streams, so each fault is exact. Everything is deterministic:

- Answer: `"ok:" + sha256(text).hexdigest()[:12]` where text is the last user message (chat)
  or the prompt (completions). With a `json_schema` response_format: a document built from
  the schema (`schema_example`), with that answer for strings.
- Tokens: one per 4 characters, `ceil(len(text) / 4)`. A chat prompt is counted (and cached,
  and hashed for the log) as the text `"".join(f"{role}: {content}\\n" for each message)`.
- Service time: `latency + prefill * uncached prompt tokens + decode * output tokens`.
- Faults: the first attempts of each (model, prompt) follow `fail_first`; after that a draw
  that depends only on (seed, model, prompt, attempt number), not on arrival order.
- Rate limit, as a provider enforces it: with `rpm` (and/or `tpm`) set, a request whose
  model already had `rpm` requests admitted in the last `window` seconds (or whose tokens,
  prompt + max_tokens as OpenAI charges them up front, would pass `tpm`) is refused before
  anything else happens to it: 429 with Retry-After (when enough of the window has slid
  by), logged with fault "over_limit" (an injected 429 is "rate_limit"). A refused
  request is not an attempt and uses none of the limit.
- Log: one record per request (`RECORD_FIELDS`), written before its reply is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import itertools
import json
import math
import signal
import sys
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Self, TextIO

import h11

__all__ = [
    "FAULTS", "OVER_LIMIT", "FaultServer", "PrefixCache", "RateWindow", "ServerConfig",
    "ServerHandle", "count_tokens", "default_answer", "schema_example", "start_server",
]  # fmt: skip

FAULTS = (
    "rate_limit", "server_error", "unavailable", "hang", "drop", "malformed", "invalid_output",
)  # fmt: skip
OVER_LIMIT = "over_limit"
"""The logged fault of a request refused by the declared rate limit (not in FAULTS: it is
not drawn, it is earned)."""
CHARS_PER_TOKEN = 4
CHAT, COMPLETIONS, MODELS = "/v1/chat/completions", "/v1/completions", "/v1/models"
RECORD_FIELDS = (
    "request_id", "conn", "arrival", "finish", "path", "model", "prompt_sha256", "prompt_tokens",
    "cached_tokens", "max_tokens", "output_tokens", "attempt", "fault", "status",
    "prompt_cache_key", "temperature", "seed",
)  # fmt: skip
Responder = Callable[[dict[str, Any]], str]


@dataclass
class ServerConfig:
    """How the server answers and misbehaves; fault rates are per-request probabilities.

    `port`, `slots`, `block_size`, `cache_blocks` and `log_path` are read once at start; the
    rest is read per request, so tests can change it between phases (`update`).
    """

    port: int = 0
    latency: float = 0.0  # fixed seconds per generation request
    prefill: float = 0.0  # seconds per uncached prompt token
    decode: float = 0.0  # seconds per output token
    slots: int | None = None  # requests served at once, the rest queue; None: no limit
    block_size: int = 16  # prefix-cache block, in tokens
    cache_blocks: int = 4096  # LRU bound of the prefix cache, in blocks (0: no cache)
    partition_cache_by_key: bool = False  # prompts share cached blocks only if same key
    seed: int = 0
    rate_limit: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 500
    unavailable: float = 0.0  # 503
    hang: float = 0.0  # answer only after hang_seconds
    drop: float = 0.0  # read the request, close the connection, no response
    malformed: float = 0.0  # 200 with a body cut in half (not JSON)
    invalid_output: float = 0.0  # 200, but the text breaks the schema (or is empty)
    fail_first: list[str] = field(default_factory=list)  # faults of attempts 0, 1, ...
    hang_seconds: float = 3600.0
    retry_after: float = 1.0  # seconds, sent as Retry-After (rounded up) and retry-after-ms
    rpm: int | None = None  # requests admitted per model per `window` seconds; None: no limit
    tpm: int | None = None  # tokens (prompt + max_tokens) per model per `window`; None: none
    window: float = 60.0  # seconds of the sliding rate-limit window
    api_key: str | None = field(default=None, repr=False)  # None: no authentication
    models: list[str] | None = None  # None: any model name is served
    log_path: str | Path | None = None  # JSONL, one record per request, flushed each
    responder: Responder | None = None  # request body -> answer text, replaces the default

    def __post_init__(self) -> None:
        rates = [getattr(self, name) for name in FAULTS]
        if not all(0 <= rate <= 1 for rate in rates) or sum(rates) > 1 + 1e-9:
            raise ValueError("fault rates must each be in [0, 1] and sum to at most 1")
        if unknown := sorted(set(self.fail_first) - set(FAULTS)):
            raise ValueError(f"unknown fault in fail_first: {', '.join(unknown)}")
        if self.block_size < 1 or self.cache_blocks < 0 or (self.slots or 1) < 1:
            raise ValueError("block_size and slots must be >= 1, cache_blocks >= 0")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1 (or None: no limit)")
        if isinstance(self.window, bool) or not isinstance(self.window, int | float):
            raise ValueError("window must be a number of seconds")
        if not 0 < self.window < math.inf:
            raise ValueError("window must be a positive, finite number of seconds")


def count_tokens(text: str) -> int:
    """One token per 4 characters, rounded up: crude, but anyone can recompute it."""
    return -(-len(text) // CHARS_PER_TOKEN)


def default_answer(text: str) -> str:
    """The answer to `text`: a function of the request, so tests know it in advance."""
    return "ok:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _deref(root: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow local references ("#/$defs/Name"), the only kind structured outputs use."""
    while "$ref" in schema:
        node: Any = root
        for part in filter(None, schema["$ref"].removeprefix("#").split("/")):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def schema_example(
    schema: dict[str, Any], text: str, root: dict[str, Any] | None = None, depth: int = 0
) -> Any:
    """A document valid for `schema`: strings `text`, integers 7, numbers 1.5, booleans true,
    enums their first member, arrays max(1, minItems) items, objects their required keys."""
    root = schema if root is None else root
    schema = _deref(root, schema)
    if "allOf" in schema:
        parts = [_deref(root, part) for part in schema["allOf"]]
        schema = {k: v for part in [*parts, schema] for k, v in part.items() if k != "allOf"}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return schema_example(schema[key][0], text, root, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "string":
        value = text.ljust(schema.get("minLength", 0), "_")
        return value[: schema["maxLength"]] if "maxLength" in schema else value
    if kind in ("integer", "number"):
        number: float = 7 if kind == "integer" else 1.5
        step = 1 if kind == "integer" else 0.5
        number = max(number, schema.get("minimum", -math.inf))
        number = max(number, schema.get("exclusiveMinimum", -math.inf) + step)
        number = min(number, schema.get("maximum", math.inf))
        return min(number, schema.get("exclusiveMaximum", math.inf) - step)
    if kind == "boolean":
        return True
    if kind == "array":  # one item, but none deep down so that recursive schemas end
        count = max(schema.get("minItems", 0), 1 if depth < 8 else 0)
        count = min(count, schema.get("maxItems", count))
        return [schema_example(schema.get("items", {}), text, root, depth + 1)] * count
    if kind == "object":
        props, required = schema.get("properties", {}), schema.get("required", [])
        return {k: schema_example(props.get(k, {}), text, root, depth + 1) for k in required}
    return None


def _invalid_answer(text: str, schema: dict[str, Any] | None) -> str:
    """A wrong answer: "" when no schema was asked, else the schema's document minus a
    required property if it has one (valid JSON, wrong document), else `text` (not JSON)."""
    if schema is None:
        return ""
    required = _deref(schema, schema).get("required")
    document = schema_example(schema, text)
    if isinstance(document, dict) and required:
        del document[required[0]]
        return json.dumps(document)
    return text


def _answer_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema the answer must follow, if any: json_object is an object with one string."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("json_schema", {}).get("schema", {})
    return _JSON_OBJECT if fmt.get("type") == "json_object" else None


_JSON_OBJECT = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


def _stop_and_limit(text: str, stop: Any, max_tokens: int | None) -> tuple[str, str]:
    """Apply `stop` (cut before the first stop string), then `max_tokens` ("length")."""
    stops = [stop] if isinstance(stop, str) else stop or []
    cuts = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    text = text[: min(cuts)] if cuts else text
    if max_tokens is not None and count_tokens(text) > max_tokens:
        return text[: max_tokens * CHARS_PER_TOKEN], "length"
    return text, "stop"


class PrefixCache:
    """Automatic prefix caching as vLLM does it: a prompt is split into blocks of
    `block_size` tokens, each identified by the hash of its text and of all blocks before it,
    so a block hits only if the same prefix was seen. Only full blocks before the last token
    are cached (that one must be computed). Least recently used blocks go first."""

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size, self.capacity = block_size, capacity
        self._blocks: OrderedDict[str, None] = OrderedDict()

    def admit(self, prompt: str, salt: str = "") -> int:
        """Cache the prompt's blocks; return its tokens that were cached before (leading)."""
        width, digest, hits = self.block_size * CHARS_PER_TOKEN, salt, 0
        for i in range(max(count_tokens(prompt) - 1, 0) // self.block_size):
            digest = _sha256(f"{digest}\0{prompt[i * width : (i + 1) * width]}")
            if hits == i and digest in self._blocks:
                hits += 1
            self._blocks[digest] = None
            self._blocks.move_to_end(digest)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hits * self.block_size


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers or [])


def _error(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> _Reply:
    """An error in OpenAI's shape, so the SDK raises its usual exception with this body."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _json(status, {"error": error})


class _Refused(Exception):
    """A request refused before generation; `reply` is the error to send."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.reply = _error(status, message, "invalid_request_error", code, param)


_FAULT_ERRORS = {
    "rate_limit": (429, "Rate limit reached (simulated).", "requests", "rate_limit_exceeded"),
    "server_error": (500, "The server had an error (simulated).", "server_error", None),
    "unavailable": (503, "The server is overloaded (simulated).", "server_error", None),
}


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: only the text ones count
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _prompt(path: str, body: dict[str, Any]) -> tuple[str, str]:
    """(the whole prompt as text, the text the answer is derived from)."""
    if path == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _Refused(400, "'messages' must be a list of objects.", None, "messages")
        turns = [(str(m.get("role")), _content_text(m.get("content"))) for m in messages]
        users = [text for role, text in turns if role == "user"]
        return "".join(f"{role}: {text}\n" for role, text in turns), users[-1] if users else ""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _Refused(400, "'prompt' must be a string.", None, "prompt")
    return prompt, prompt


class RateWindow:
    """What one model admitted in the last `window` seconds: a sliding log of (arrival,
    tokens), as providers count requests and tokens per minute."""

    def __init__(self) -> None:
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def admit(self, config: ServerConfig, now: float, tokens: int) -> tuple[str, float] | None:
        """Count the request in and return None; or, if a limit would be broken, return
        that limit ("requests" or "tokens") and the seconds until the request would fit
        (inf: never), without counting it."""
        while self._log and self._log[0][0] <= now - config.window:
            self._tokens -= self._log.popleft()[1]
        over: list[tuple[float, str]] = []
        if config.rpm is not None and len(self._log) >= config.rpm:
            over.append((self._log[len(self._log) - config.rpm][0] + config.window, "requests"))
        if config.tpm is not None and self._tokens + tokens > config.tpm:
            excess, free_at = self._tokens + tokens - config.tpm, math.inf
            for stamp, spent in self._log if tokens <= config.tpm else ():
                excess -= spent
                if excess <= 0:
                    free_at = stamp + config.window
                    break
            over.append((free_at, "tokens"))
        if over:
            free_at, which = max(over)
            return which, max(free_at - now, 0.001)
        self._log.append((now, tokens))
        self._tokens += tokens
        return None


def _over_limit(config: ServerConfig, model: str, which: str, wait: float, tokens: int) -> _Reply:
    """OpenAI's 429 for a rate limit: which limit, and when to retry (Retry-After)."""
    limit = config.rpm if which == "requests" else config.tpm
    if wait == math.inf:
        message = (
            f"Request too large for {model}: {tokens} tokens, over the limit of {limit} "
            f"tokens per {config.window:g} s."
        )
        return _error(429, message, which, "rate_limit_exceeded")
    message = (
        f"Rate limit reached for {model} on {which} per {config.window:g} s: limit {limit}. "
        f"Please try again in {wait:.3f}s."
    )
    reply = _error(429, message, which, "rate_limit_exceeded")
    reply.headers += [
        ("retry-after", str(math.ceil(wait))),
        ("retry-after-ms", str(math.ceil(wait * 1000))),
    ]
    return reply


def _choose_fault(config: ServerConfig, key: str, attempt: int) -> str | None:
    """`fail_first` for the first attempts, then a draw from (seed, key, attempt) only, so
    concurrent clients get the same faults whatever order their requests arrive in."""
    if attempt < len(config.fail_first):
        return config.fail_first[attempt]
    digest = hashlib.sha256(f"{config.seed}\0{key}\0{attempt}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    for name in FAULTS:
        draw -= getattr(config, name)
        if draw < 0:
            return name
    return None


class FaultServer:
    """The server on the running event loop (`async with FaultServer(config) as server`);
    `start_server` runs one in a background thread for synchronous callers."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.port = 0
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._cache = PrefixCache(self.config.block_size, self.config.cache_blocks)
        self._slots = asyncio.Semaphore(self.config.slots) if self.config.slots else None
        self._attempts: dict[str, int] = {}
        self._windows: defaultdict[str, RateWindow] = defaultdict(RateWindow)
        self._ids, self._conn_ids = itertools.count(1), itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._log_file: TextIO | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log(self) -> list[dict[str, Any]]:
        """A copy of the request records so far (safe to call from any thread)."""
        with self._lock:
            return list(self._records)

    def update(self, **changes: Any) -> ServerConfig:
        """Validate and swap in a changed config at once; requests that arrive after see it."""
        self.config = dataclasses.replace(self.config, **changes)
        return self.config

    async def start(self) -> None:
        if self.config.log_path is not None:
            self._log_file = open(self.config.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
        if self._log_file is not None:
            self._log_file.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One keep-alive connection: request after request until either side closes."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn, conn_id = h11.Connection(h11.SERVER), next(self._conn_ids)
        try:
            while (request := await self._read(conn, reader)) is not None:
                if not await self._exchange(conn, reader, writer, conn_id, *request):
                    break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:  # not HTTP: say so if we still can, then close
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                record = dict.fromkeys(RECORD_FIELDS) | {"conn": conn_id, "arrival": time.time()}
                reply = _error(exc.error_status_hint, str(exc), "invalid_request_error", None)
                with contextlib.suppress(ConnectionError, h11.LocalProtocolError):
                    self._send(conn, writer, reply, record)
        except (ConnectionError, asyncio.CancelledError):  # the client left, or we close
            pass  # (a cancellation let out would be reported by asyncio as an error)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request, bytes] | None:
        """The next whole request, or None when the client closed the connection."""
        request, body = None, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return request, bytes(body)
            else:
                return None

    async def _sleep(
        self, conn: h11.Connection, reader: asyncio.StreamReader, seconds: float
    ) -> bool:
        """Sleep, but stop early (False) if the client gives up, so its request is logged then
        rather than when the sleep ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            read = asyncio.ensure_future(reader.read(65536))
            try:
                done, _ = await asyncio.wait({read}, timeout=left)
            finally:
                read.cancel()  # a no-op once it is done
            if not done:
                await asyncio.wait({read})
                return True
            try:
                data = read.result()
            except ConnectionError:
                return False
            if not data:
                return False
            conn.receive_data(data)  # a pipelined request: h11 keeps it for the next cycle
        return True

    async def _exchange(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn_id: int,
        request: h11.Request,
        body: bytes,
    ) -> bool:
        """Answer one request and log it; False when the connection must end."""
        record = dict.fromkeys(RECORD_FIELDS)
        record.update(request_id=f"req-{next(self._ids):06d}", conn=conn_id, arrival=time.time())
        try:
            reply = await self._handle(self.config, conn, reader, request, body, record)
        except _Refused as exc:
            reply = exc.reply
        except Exception as exc:  # a failing responder (or a bug): a 500, as a real server
            reply = _error(500, f"test server error: {exc!r}", "server_error", None)
        if reply is None:
            self._record(record)
            writer.transport.abort()
            return False
        self._send(conn, writer, reply, record)
        await writer.drain()
        return True

    def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reply: _Reply,
        record: dict[str, Any],
    ) -> None:
        """Log the request as finished, then send the reply: whoever sees the reply (another
        thread or process) finds the request in the log."""
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(reply.body))),
            *([("x-request-id", record["request_id"])] if record["request_id"] else []),
            *reply.headers,
        ]
        reason = HTTPStatus(reply.status).phrase.encode()
        response = h11.Response(status_code=reply.status, headers=headers, reason=reason)
        data = conn.send(response) + conn.send(h11.Data(data=reply.body))
        data += conn.send(h11.EndOfMessage())
        record["status"] = reply.status
        self._record(record)
        writer.write(data)

    def _record(self, record: dict[str, Any]) -> None:
        record["finish"] = time.time()
        with self._lock:
            self._records.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()

    async def _handle(
        self,
        config: ServerConfig,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        request: h11.Request,
        raw: bytes,
        record: dict[str, Any],
    ) -> _Reply | None:
        """The reply to one request, or None for no reply (dropped, or the client left)."""
        path = record["path"] = request.target.decode("latin-1").partition("?")[0]
        _check_route(config, request, path)
        if path == MODELS:
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "llmflow"}
                for m in config.models or []
            ]
            return _json(200, {"object": "list", "data": data})
        body = _check_body(config, raw, record)
        prompt, source = _prompt(path, body)
        record.update(prompt_sha256=_sha256(prompt), prompt_tokens=count_tokens(prompt))
        if config.rpm is not None or config.tpm is not None:
            tokens = record["prompt_tokens"] + (record["max_tokens"] or 0)
            window = self._windows[str(body.get("model"))]
            if over := window.admit(config, record["arrival"], tokens):
                record["fault"] = OVER_LIMIT
                return _over_limit(config, str(body.get("model")), *over, tokens)
        key = f"{body.get('model')}\0{record['prompt_sha256']}"
        attempt = record["attempt"] = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        fault = record["fault"] = _choose_fault(config, key, attempt)
        if fault == "drop":
            return None
        if fault in _FAULT_ERRORS:
            reply = _error(*_FAULT_ERRORS[fault])
            if fault == "rate_limit":
                reply.headers += [
                    ("retry-after", str(math.ceil(config.retry_after))),
                    ("retry-after-ms", str(round(config.retry_after * 1000))),
                ]
            return reply
        if fault == "hang" and not await self._sleep(conn, reader, config.hang_seconds):
            return None
        text = _answer(config, body, source, invalid=fault == "invalid_output")
        text, finish = _stop_and_limit(text, body.get("stop"), record["max_tokens"])
        record["output_tokens"] = count_tokens(text)
        async with self._slots or contextlib.nullcontext():
            salt = str(body.get("prompt_cache_key")) if config.partition_cache_by_key else ""
            cached = record["cached_tokens"] = self._cache.admit(prompt, salt)
            prefill = config.prefill * (record["prompt_tokens"] - cached)
            service = config.latency + prefill + config.decode * record["output_tokens"]
            if not await self._sleep(conn, reader, service):
                return None
        reply = _json(200, _completion(path, record, text, finish))
        return _Reply(200, reply.body[: len(reply.body) // 2]) if fault == "malformed" else reply


def _check_route(config: ServerConfig, request: h11.Request, path: str) -> None:
    """Refuse a bad key (401, never echoing it), an unknown path (404), a wrong method (405)."""
    sent = dict(request.headers).get(b"authorization", b"")
    if config.api_key is not None and not hmac.compare_digest(
        sent, f"Bearer {config.api_key}".encode()
    ):
        raise _Refused(401, "Incorrect API key provided.", "invalid_api_key")
    if path not in (CHAT, COMPLETIONS, MODELS):
        raise _Refused(404, f"Unknown path: {path}", "unknown_url")
    if request.method != (b"GET" if path == MODELS else b"POST"):
        raise _Refused(405, f"Method {request.method.decode()} not allowed for {path}")


def _check_body(config: ServerConfig, raw: bytes, record: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON body, its loggable fields in `record`; refuse what is not served."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _Refused(400, f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _Refused(400, "The body must be a JSON object.")
    record.update({k: body.get(k) for k in ("model", "prompt_cache_key", "temperature", "seed")})
    max_tokens = record["max_tokens"] = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _Refused(400, "max_tokens must be a positive integer.", None, "max_tokens")
    if body.get("stream"):
        raise _Refused(400, "stream=true is not supported by this server.", None, "stream")
    if config.models is not None and body.get("model") not in config.models:
        message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
        raise _Refused(404, message, "model_not_found", "model")
    return body


def _answer(config: ServerConfig, body: dict[str, Any], source: str, invalid: bool) -> str:
    """The answer text before `stop` and `max_tokens`."""
    schema, text = _answer_schema(body), default_answer(source)
    if invalid:
        return _invalid_answer(text, schema)
    if config.responder is not None:
        return config.responder(body)
    return text if schema is None else json.dumps(schema_example(schema, text))


def _completion(path: str, record: dict[str, Any], text: str, finish: str) -> dict[str, Any]:
    """A non-streaming response in OpenAI's exact shape."""
    number = record["request_id"].removeprefix("req-")
    prompt, output = record["prompt_tokens"], record["output_tokens"]
    if path == CHAT:
        head = {"id": f"chatcmpl-{number}", "object": "chat.completion"}
        message = {"role": "assistant", "content": text, "refusal": None}
        choice: dict[str, Any] = {"index": 0, "message": message}
    else:
        head = {"id": f"cmpl-{number}", "object": "text_completion"}
        choice = {"index": 0, "text": text}
    return head | {
        "created": int(record["arrival"]),
        "model": record["model"],
        "choices": [choice | {"logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": record["cached_tokens"]},
        },
        "system_fingerprint": "llmflow-fault-server",
    }


class ServerHandle:
    """A FaultServer on its own event loop in a daemon thread, for sync tests and scripts."""

    def __init__(self, config: ServerConfig) -> None:
        self.server = FaultServer(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log(self) -> list[dict[str, Any]]:
        return self.server.log

    @property
    def config(self) -> ServerConfig:
        """The live config: set a field, or `update` several at once (validated)."""
        return self.server.config

    def update(self, **changes: Any) -> ServerConfig:
        return self.server.update(**changes)

    def wait_for_log(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The log once it has `count` records: a request is logged when its reply is sent,
        or when the server sees the client leave (after a client timeout)."""
        deadline = time.monotonic() + timeout
        while len(log := self.log) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(log)} of {count} requests logged after {timeout} s")
            time.sleep(0.01)
        return log

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result()
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(config: ServerConfig | None = None, **fields: Any) -> ServerHandle:
    """Start a server in a background thread: `with start_server(latency=0.2) as srv: ...`."""
    return ServerHandle(dataclasses.replace(config or ServerConfig(), **fields))


_FLAGS: dict[str, tuple[type, str]] = {
    "port": (int, "port on 127.0.0.1 (0: the OS picks one)"),
    "latency": (float, "fixed seconds of service time per request"),
    "prefill": (float, "seconds per uncached prompt token"),
    "decode": (float, "seconds per output token"),
    "slots": (int, "requests served at once, the rest queue (default: no limit)"),
    "block_size": (int, "prefix-cache block size in tokens"),
    "cache_blocks": (int, "prefix-cache capacity in blocks"),
    "seed": (int, "seed of the fault draws"),
    **{name: (float, f"fraction of requests that get the {name} fault") for name in FAULTS},
    "hang_seconds": (float, "how long a hang lasts"),
    "retry_after": (float, "seconds an injected 429 asks the client to wait"),
    "window": (float, "seconds of the rate-limit window (--rpm, --tpm)"),
}
_LIMIT_FLAGS = {
    "rpm": "requests admitted per model per window; over it: 429 (default: no limit)",
    "tpm": "tokens (prompt + max_tokens) per model per window (default: no limit)",
}


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; the URL is the first line on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m llmflow.runtime.testing.server",
        description="An OpenAI-compatible server on 127.0.0.1 that misbehaves on request.",
        epilog="example:\n  python -m llmflow.runtime.testing.server --latency 0.2 "
        "--rate-limit 0.05 --log calls.jsonl\n  python -m llmflow.runtime.testing.server "
        "--latency 0.2 --rpm 600 --log calls.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, (kind, help_) in _FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=getattr(ServerConfig, name), help=help_)
    add = parser.add_argument
    for name, help_ in _LIMIT_FLAGS.items():
        add(f"--{name}", type=int, help=help_)
    add("--fail-first", default="", help="comma-separated faults of each prompt's first attempts")
    add("--models", help="comma-separated model names served (default: any)")
    add("--api-key", help="require 'Authorization: Bearer KEY'")
    add("--partition-cache-by-key", action="store_true", help="cache per prompt_cache_key")
    parser.add_argument("--log", metavar="FILE", help="append a JSONL record per request")
    args = vars(parser.parse_args(argv))
    try:
        config = ServerConfig(
            **{name: args[name] for name in _FLAGS},
            fail_first=[f for f in args["fail_first"].split(",") if f],
            models=args["models"].split(",") if args["models"] else None,
            api_key=args["api_key"],
            partition_cache_by_key=args["partition_cache_by_key"],
            **{name: args[name] for name in _LIMIT_FLAGS},
            log_path=args["log"],
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve_forever(config))
    except OSError as exc:  # the port is taken, the log file cannot be opened
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_forever(config: ServerConfig) -> None:
    async with FaultServer(config) as server:
        print(server.url, flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        print(f"served {len(server.log)} requests", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

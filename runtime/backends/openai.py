"""The OpenAI-compatible backend: OpenAI itself, or any server that speaks its HTTP API
(vLLM, SGLang, llama.cpp's servers) through the `openai` SDK's `AsyncOpenAI`.

A `generate` call is exactly one HTTP request: retries, rate limits, the cache and the
budget live a layer above, which needs every failure as a `BackendError` that says
whether trying again can help. Prefix groups pay off through the provider's prompt
cache: when a group's calls share enough tokens (`prefix_reuse.worth_warming`: the
server reuses them, and there are at least WARM_MIN_TOKENS), the first request of the
group is sent alone and the rest wait for it and then fan out, so they find the prefix
cached.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import errno
import json
import math
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI

from llmflow.compiler.models import ModelSpec
from llmflow.compiler.prefix_reuse import worth_warming
from llmflow.runtime import secrets
from llmflow.runtime.backends.base import (
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
)

DEFAULT_TIMEOUT = 60.0
"""Seconds a request may take unless its model sets `timeout`."""

DEFAULT_KEY_ENV = "OPENAI_API_KEY"

PLACEHOLDER_KEY = "no-key"
"""Sent to an `openai_compatible` server when no key is set: self-hosted servers
usually need none, but the SDK refuses to start without one."""

MAX_STOP = 4
"""OpenAI takes at most four stop sequences; further ones are applied to the text here."""

_RETRYABLE = {408, 409, 429}
_MESSAGE_LIMIT = 500
"""Characters of a server's error message kept (some servers send tracebacks)."""

ClientKey = tuple[str | None, str | None]
"""(base URL, name of the key's environment variable): requests that can share a client."""


def key_env(spec: ModelSpec) -> str | None:
    """The variable that holds the model's key. An `openai_compatible` model whose program
    names its server gets $OPENAI_API_KEY only if it asks for it (api_key_env): an OpenAI
    key must not travel to a third party's address by default."""
    named = spec.settings.get("api_key_env")
    if named or spec.backend == "openai" or "base_url" not in spec.settings:
        return named or DEFAULT_KEY_ENV
    return None


def base_url(spec: ModelSpec) -> str | None:
    """The model's `base_url`, else $OPENAI_BASE_URL, else None (the SDK's default)."""
    return spec.settings.get("base_url") or os.environ.get("OPENAI_BASE_URL") or None


def check_model(spec: ModelSpec) -> None:
    """Fail before a run starts if a model cannot be reached: an `openai` model (or one
    that names `api_key_env`) without its key, an `openai_compatible` one without a URL."""
    variable = key_env(spec)
    named = "api_key_env" in spec.settings
    if variable and secrets.api_key(variable) is None and (spec.backend == "openai" or named):
        raise BackendError(
            f"model '{spec.name}' needs an API key: set the environment variable {variable}"
            + ("" if named else ' (or name another one with api_key_env="MY_KEY")')
        )
    if spec.backend == "openai_compatible" and base_url(spec) is None:
        raise BackendError(
            f"model '{spec.name}' needs the address of its server: "
            'base_url="http://host:port/v1" (or set OPENAI_BASE_URL)'
        )


def strict_schema(schema: dict[str, Any]) -> bool:
    """Whether OpenAI's strict mode accepts a schema: every object closed
    (additionalProperties false) with all its properties required, every value typed."""
    if "enum" in schema:
        return True
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return (
            schema.get("additionalProperties") is False
            and set(schema.get("required", [])) == set(properties)
            and all(strict_schema(p) for p in properties.values())
        )
    if kind == "array":
        return strict_schema(schema.get("items", {}))
    return kind in {"string", "integer", "number", "boolean", "null"}


class OpenAIBackend:
    """Serves every `openai` and `openai_compatible` model of a run."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self._models = models
        self._clients: dict[ClientKey, AsyncOpenAI] = {}
        self._warm: dict[tuple[str, str], asyncio.Event] = {}
        """Per (model, group): set once the group's first request has finished."""
        self._legacy_schema: set[ClientKey] = set()
        """Servers that reject `json_schema` response formats but take llama-cpp-python's
        `{"type": "json_object", "schema": ...}` (learnt on the first rejection)."""

    async def generate(self, request: GenerationRequest) -> Generation:
        spec = self._models.get(request.model)
        if spec is None:
            raise BackendError(f"no OpenAI-compatible model named '{request.model}'")
        if request.group is None or not worth_warming(spec, request.shared_tokens):
            return await self._send(spec, request)
        key = (spec.name, request.group)
        warm = self._warm.get(key)
        if warm is None:  # the group's first request goes alone
            warm = self._warm[key] = asyncio.Event()
            try:
                return await self._send(spec, request)
            finally:
                warm.set()
        await warm.wait()
        return await self._send(spec, request)

    def open(self, names: set[str]) -> None:
        """Create the clients of these models (one per address and key) ahead of use."""
        for name in sorted(names):
            self._client(self._models[name])

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def _client(self, spec: ModelSpec) -> tuple[AsyncOpenAI, ClientKey]:
        key = (base_url(spec), key_env(spec))
        if key not in self._clients:
            api_key = secrets.api_key(key[1]) if key[1] else None
            if api_key is None:
                check_model(spec)  # raises for models that need a key
            try:
                self._clients[key] = AsyncOpenAI(
                    api_key=api_key or PLACEHOLDER_KEY,
                    base_url=key[0],
                    max_retries=0,  # one attempt: the layer above retries with backoff
                    timeout=DEFAULT_TIMEOUT,
                    http_client=_plain_http_client(key[0]),
                )
            except Exception as error:  # httpx's InvalidURL: an address it cannot parse
                raise BackendError(
                    secrets.redact(
                        f"model '{spec.name}': base_url {key[0]!r} is not usable: {error}"
                    )
                ) from None
        return self._clients[key], key

    async def _send(self, spec: ModelSpec, request: GenerationRequest) -> Generation:
        client, key = self._client(spec)
        asked = shape(spec, request.constraint)
        params = _params(spec, request, asked, legacy_schema=key in self._legacy_schema)
        started = time.perf_counter()
        try:
            try:
                response = await _create(client, spec, params)
            except openai.APIStatusError as error:
                if not _schema_rejected(spec, params, error):
                    raise
                # This server only knows the older JSON mode: ask it that way from now on.
                self._legacy_schema.add(key)
                params = _params(spec, request, asked, legacy_schema=True)
                response = await _create(client, spec, params)
        except Exception as error:
            raise _backend_error(spec, error, _address(client, key), params["timeout"]) from None
        seconds = time.perf_counter() - started
        try:
            return _generation(spec, response, request.stop, seconds, asked)
        except (AttributeError, LookupError, TypeError, ValueError):
            raise BackendError(
                secrets.redact(
                    f"model '{spec.name}': malformed response from {_address(client, key)}"
                ),
                retryable=True,
            ) from None


def _plain_http_client(url: str | None) -> Any:
    """The HTTP client for a server reached over plain http (a self-hosted one): the SDK's
    own, but with a TLS context that loads no certificates, since none is ever used; the
    default one reads the system's whole CA bundle, 20-40 ms per client. Verification
    stays on, so an https address reached anyway (a redirect) fails rather than being
    trusted. None (the SDK's default client) for https."""
    if url is None or not url.lower().startswith("http://"):
        return None
    return openai.DefaultAsyncHttpxClient(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


async def _create(client: AsyncOpenAI, spec: ModelSpec, params: dict[str, Any]) -> Any:
    """One request, through the SDK's generic `post`: its transport, headers, timeouts
    and errors (`APIStatusError`, `APITimeoutError`, ...), without the typed methods'
    parameter transform and response models, about 0.6 ms of CPU per request that a
    fan-out of 32 calls pays one after another. The answer is read as plain JSON (a
    body that is not JSON raises ValueError: a malformed response)."""
    body = {name: value for name, value in params.items() if name != "timeout"}
    path = "/chat/completions" if spec.chat else "/completions"
    raw = await client.post(path, cast_to=bytes, body=body, options={"timeout": params["timeout"]})
    return json.loads(raw)


def _params(
    spec: ModelSpec, request: GenerationRequest, asked: Shape | None, legacy_schema: bool
) -> dict[str, Any]:
    """The request's keyword arguments for the SDK.

    Chat models get the turns as messages; completion models their concatenated text
    (the template filled in so far). `openai` chat models take the token limit as
    `max_completion_tokens` (reasoning models reject `max_tokens`); every other endpoint
    as `max_tokens`, the one name all compatible servers know.
    """
    hosted = spec.backend == "openai"
    params: dict[str, Any] = {
        "model": spec.id,
        "temperature": request.temperature,
        "timeout": float(spec.settings.get("timeout") or DEFAULT_TIMEOUT),
    }
    stops = [stop for stop in request.stop if stop][:MAX_STOP]
    if stops:
        params["stop"] = stops
    if request.seed is not None:
        params["seed"] = request.seed
    if not spec.chat:
        params["prompt"] = "".join(turn.text for turn in request.turns)
        params["max_tokens"] = request.max_tokens
        return params
    params["messages"] = [{"role": turn.role, "content": turn.text} for turn in request.turns]
    params["max_completion_tokens" if hosted else "max_tokens"] = request.max_tokens
    if hosted and request.group is not None:
        params["prompt_cache_key"] = f"llmflow-{request.group}"
    if asked is not None:
        if legacy_schema:
            params["response_format"] = {"type": "json_object", "schema": asked.schema}
        else:
            strict = strict_schema(asked.schema)
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": asked.schema, "strict": strict},
            }
    return params


@dataclass(frozen=True)
class Shape:
    """The JSON an answer is asked for: `schema` as sent; `wrapped`: inside a one-field
    object (OpenAI wants an object at the root); `choice`: a string `enum` made of the
    constraint's choices. `read` turns the answer back into the text the caller parses."""

    schema: dict[str, Any]
    wrapped: bool = False
    choice: bool = False

    def read(self, text: str) -> str:
        """A wrapped value unwrapped (as JSON), a choice without its JSON quotes. Text
        that is not the JSON asked for stays as it is, for the caller's validation."""
        if not (self.wrapped or self.choice):
            return text
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
            return text
        if self.wrapped:
            if not isinstance(value, dict) or WRAP not in value:
                return text
            value = value[WRAP]
        if self.choice:
            return value if isinstance(value, str) else text
        return json.dumps(value, ensure_ascii=False)


WRAP = "value"
"""The field a non-object schema is wrapped in for OpenAI."""


def shape(spec: ModelSpec, constraint: Constraint | None) -> Shape | None:
    """What to ask a model's server for, if it takes schemas: the constraint's JSON
    schema, or for choices (an enum's members, `choices=`) a string `enum` of them, so
    that the server decodes only those."""
    if constraint is None or not spec.supports_schema or not spec.chat:
        return None  # a completion request carries no response_format
    if constraint.choices:
        found = Shape({"type": "string", "enum": list(constraint.choices)}, choice=True)
    elif constraint.json_schema is not None:
        found = Shape(constraint.json_schema)
    else:
        return None
    if spec.backend != "openai" or found.schema.get("type") == "object":
        return found
    wrapper = {
        "type": "object",
        "properties": {WRAP: found.schema},
        "required": [WRAP],
        "additionalProperties": False,
    }
    return Shape(wrapper, wrapped=True, choice=found.choice)


def _schema_rejected(spec: ModelSpec, params: dict[str, Any], error: openai.APIStatusError) -> bool:
    """A compatible server refused the `json_schema` response format itself
    (llama-cpp-python's server answers 500 "Input should be 'text' or 'json_object'")."""
    response_format = params.get("response_format") or {}
    return (
        spec.backend == "openai_compatible"
        and response_format.get("type") == "json_schema"
        and error.status_code in {400, 422, 500}
        and "json_object" in _server_message(error)
    )


def _generation(
    spec: ModelSpec, response: Any, stop: list[str], seconds: float, asked: Shape | None
) -> Generation:
    """Read a response's JSON body; a part missing or of the wrong kind raises
    AttributeError, LookupError, TypeError or ValueError (the caller reports a malformed
    response)."""
    choice = response["choices"][0]
    if spec.chat:
        message = choice["message"]
        if message.get("content") is None and message.get("refusal"):
            refusal = secrets.redact(str(message["refusal"]))
            raise BackendError(f"model '{spec.name}' refused: {refusal}")
        text = message.get("content") or ""
    else:
        text = choice.get("text") or ""
    if not isinstance(text, str):
        raise TypeError("the generated text is not a string")
    if asked is not None:
        text = asked.read(text)
    finish_reason = choice.get("finish_reason")
    for sequence in stop[MAX_STOP:]:  # those OpenAI could not take
        if sequence and sequence in text:
            text, finish_reason = text[: text.index(sequence)], "stop"
    usage = response.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return Generation(
        text=text,
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_tokens=details.get("cached_tokens") or 0,
        seconds=seconds,
        finish_reason=finish_reason,
    )


def _address(client: AsyncOpenAI, key: ClientKey) -> str:
    """The server's address as the user wrote it, else the SDK's default."""
    return key[0] or str(client.base_url).removesuffix("/")


def _backend_error(spec: ModelSpec, error: Exception, address: str, timeout: float) -> BackendError:
    """Classify a failure: whether retrying may help, and a message without secrets."""
    name = f"model '{spec.name}'"
    status = retry_after = None
    sent = True
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        retryable = status in _RETRYABLE or status >= 500
        message = f"{name}: {status} {_server_message(error)}"
        retry_after = _retry_after(error.response.headers)
    elif isinstance(error, openai.APITimeoutError):
        retryable, message = True, f"{name}: no answer from {address} in {timeout:g}s"
    elif isinstance(error, openai.APIConnectionError | OSError | BaseExceptionGroup):
        reason, retryable, sent = _connection_problem(error)
        message = f"{name}: cannot reach {address}: {reason}"
    elif isinstance(error, openai.APIResponseValidationError | ValueError):  # bad JSON
        retryable, message = True, f"{name}: malformed response from {address}"
    else:
        retryable, message = False, f"{name}: {type(error).__name__}: {error}"
    return BackendError(
        secrets.redact(message),
        status=status,
        retryable=retryable,
        retry_after=retry_after,
        sent=sent,
    )


_CONNECTION_ERRORS = {
    errno.ECONNREFUSED: "connection refused (is the server running, on this port?)",
    errno.ECONNRESET: "the server closed the connection",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EHOSTUNREACH: "no route to the host",
    errno.ENETUNREACH: "the network is unreachable",
    errno.EADDRNOTAVAIL: "the address is not available",
}
_NEVER_CONNECTED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}
"""Errors before a connection exists: the request cannot have reached the server."""


def _connection_problem(error: BaseException) -> tuple[str, bool, bool]:
    """Why a connection failed, in words, whether trying again may help, and whether the
    request may have reached the server: the deepest cause that says something (the SDK's
    "Connection error." and httpx's "All connection attempts failed" wrap the operating
    system's reason; an exception group holds one reason per address tried)."""
    leaves = _root_causes(error)
    for leaf in leaves:
        if isinstance(leaf, socket.gaierror):
            return "the host name does not resolve", True, False
        if isinstance(leaf, OSError) and leaf.errno in _CONNECTION_ERRORS:
            return _CONNECTION_ERRORS[leaf.errno], True, leaf.errno not in _NEVER_CONNECTED
        if isinstance(leaf, ssl.SSLError):  # a certificate does not fix itself in seconds
            verify = isinstance(leaf, ssl.SSLCertVerificationError)
            return f"TLS failed: {leaf.reason or leaf}", not verify, False
    for leaf in leaves:
        if isinstance(leaf, ValueError | OverflowError) or _named(leaf, _BAD_ADDRESS):
            return str(leaf) or type(leaf).__name__, False, False  # can never work
    leaf = leaves[-1]
    text = str(leaf).strip()
    return (text if text else type(leaf).__name__), True, True


_BAD_ADDRESS = {"UnsupportedProtocol", "InvalidURL"}
"""The HTTP client's errors for an address that can never work (by name: the SDK has
used both httpx and its fork httpx2)."""


def _named(error: BaseException, names: set[str]) -> bool:
    return any(kind.__name__ in names for kind in type(error).__mro__)


def _root_causes(error: BaseException) -> list[BaseException]:
    """The innermost exceptions under `error`: along its causes, into exception groups."""
    leaves: list[BaseException] = []
    seen: set[int] = set()

    def walk(e: BaseException) -> None:
        while id(e) not in seen:
            seen.add(id(e))
            if isinstance(e, BaseExceptionGroup):
                for sub in e.exceptions:
                    walk(sub)
                return
            inner = e.__cause__ or e.__context__
            if inner is None:
                leaves.append(e)
                return
            e = inner

    walk(error)
    return leaves or [error]


def _server_message(error: openai.APIStatusError) -> str:
    """The server's own explanation (OpenAI's `error.message`, FastAPI's `detail`)."""
    body = error.body
    text: Any = None
    if isinstance(body, dict):
        text = body.get("message") or body.get("detail") or body.get("error")
    elif isinstance(body, str):
        text = body
    if not text:
        text = error.response.reason_phrase or error.message
    return secrets.clip(" ".join(str(text).split()), _MESSAGE_LIMIT)


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked to wait: `retry-after-ms` (OpenAI), else `Retry-After`
    (seconds or an HTTP date). A value that is no finite, non-negative number of seconds
    (`nan`, `inf`, `-5`, garbage) says nothing: the next header is read, else None (the
    retry loop's own backoff)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        seconds = _seconds(str(value), scale)
        if seconds is not None:
            return seconds
    return None


def _seconds(value: str, scale: float) -> float | None:
    try:
        seconds = float(value) / scale
    except ValueError:
        if scale != 1.0:
            return None
        try:
            date = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        if date.tzinfo is None:  # "-0000": HTTP dates are in GMT
            date = date.replace(tzinfo=datetime.UTC)
        try:
            seconds = max(date.timestamp() - time.time(), 0.0)
        except (OverflowError, OSError, ValueError):
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None

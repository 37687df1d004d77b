"""API keys: read from the environment only, and masked wherever text leaves the process.

Every key a run reads is registered here; `redact` replaces each registered key (and
anything that looks like an OpenAI-style key) in a text before it is printed, logged,
traced, journaled or raised. The CLI redacts everything it writes, --debug tracebacks
included, so a key cannot leak through a message a library built from a request or
response. Text is always redacted before it is cut (`clip`): a key cut in half is no
longer the key, and its first half would get through.

Which values are masked, and how:
- a key llmflow reads (`api_key`): whatever its length. From `MIN_ANYWHERE` characters on
  it is masked wherever it occurs; a shorter one (1-3 characters: no secret, but someone
  may have set it) only where it stands alone, not inside a longer word or number, since
  masking every "a" or "1" would make every message unreadable;
- the values of other variables whose names say they hold a secret (`*_KEY`, `*_TOKEN`,
  `*_SECRET`, `*_PASSWORD`, and the headers in OTEL_EXPORTER_OTLP_HEADERS), read at
  start-up by the CLI only to mask them, from `MIN_SCANNED` characters on (shorter ones
  are flags like `1` or `true`);
- each also as it appears escaped in JSON and percent-encoded in a URL.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse

MASK = "[redacted]"

MIN_ANYWHERE = 4
"""Keys at least this long are masked inside other text too; shorter ones only alone."""

MIN_SCANNED = 8
"""Secret-named variables llmflow does not use are masked from this length on."""

_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_KEY_LIKE = r"(?<![A-Za-z])sk-[A-Za-z0-9_\-*]{8,}|sk-(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{8,}"
"""The shape of OpenAI keys (also the partially masked `sk-abc***xyz` its errors echo):
after anything but a letter, or inside a word when it holds a digit (`gsk-…`, a key typed
against a word; not `task-checklist`)."""

_known: set[str] = set()
"""Every registered value, in each of its forms."""
_sent: set[str] = set()
"""The keys llmflow reads to send (a server can echo only these)."""
_keys: re.Pattern[str] | None = None
"""The keys llmflow sends."""
_pattern = re.compile(_KEY_LIKE)
"""Every registered value, and anything shaped like a key."""


def register(value: str | None, sent: bool = False) -> None:
    """Remember a secret so `redact` masks it (see the module's rules for short ones);
    `sent`: a key llmflow sends to a server, which `mask_keys` masks in answers too."""
    if not value:
        return
    forms = {value, value.strip(), json.dumps(value)[1:-1], urllib.parse.quote(value, safe="")}
    forms.discard("")
    if forms <= _known and (not sent or forms <= _sent):
        return
    _known.update(forms)
    if sent:
        _sent.update(forms)
    global _keys, _pattern
    _keys = re.compile(_alternatives(_sent)) if _sent else None
    _pattern = re.compile(f"{_alternatives(_known)}|{_KEY_LIKE}")


def _alternatives(values: set[str]) -> str:
    return "|".join(
        re.escape(s)
        if len(s) >= MIN_ANYWHERE
        else rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])"
        for s in sorted(values, key=len, reverse=True)  # the longest first: a key in a key
    )


def api_key(variable: str) -> str | None:
    """The key in an environment variable, registered for redaction."""
    value = os.environ.get(variable)
    register(value, sent=True)
    return value


def register_environment(keys: tuple[str, ...] = ("OPENAI_API_KEY",)) -> None:
    """Register the keys llmflow reads by default (`keys`, at any length) and the values
    of other variables named like secrets (the CLI does at start-up, so that even a
    message printed before any model is set up is masked)."""
    for variable in keys:
        api_key(variable)
    for name, value in os.environ.items():
        if name == "OTEL_EXPORTER_OTLP_HEADERS":
            for pair in value.split(","):
                header = urllib.parse.unquote(pair.partition("=")[2]).strip()
                if len(header) >= MIN_SCANNED:
                    register(header)
        elif _SECRET_NAME.search(name) and len(value.strip()) >= MIN_SCANNED:
            register(value)


_URL_PASSWORD = re.compile(r"(://[^/\s:@\"']{1,200}:)(?!\**@)[^@\s/\"']{1,200}@")
"""The password of a URL (`http://user:PASSWORD@host`), unless already masked with `*`."""


def redact(text: str) -> str:
    """The text with every registered key, anything shaped like one and URL passwords
    masked."""
    if not text:
        return text
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", _pattern.sub(MASK, text))


def mask_keys(text: str) -> str:
    """The text with every key llmflow sends masked: for what a model answers, which may
    well mention `sk-learn-…` or words that happen to be some variable's value, but has no
    business holding a key we sent (a server echoing the request's headers), and which
    goes to the journal, the cache and the run's outputs."""
    return _keys.sub(MASK, text) if _keys is not None and text else text


def clip(text: str, limit: int) -> str:
    """At most `limit` characters of the text, redacted before it is cut."""
    text = redact(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"

"""API keys: read from the environment only, and masked wherever text leaves the process.

Every key a run reads is registered here; `redact` replaces each registered key (and
anything that looks like an OpenAI-style key) in a text before it is printed, logged,
traced or raised. The CLI redacts everything it writes, --debug tracebacks included, so
a key cannot leak through a message a library built from a request or response.
"""

from __future__ import annotations

import os
import re

MASK = "[redacted]"
_known: set[str] = set()
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{8,})")
"""The shape of OpenAI keys (also the partially masked `sk-abc***xyz` its errors echo)."""


def register(value: str | None) -> None:
    """Remember a secret so `redact` masks it; short values would mask ordinary words."""
    if value and len(value) >= 8:
        _known.add(value)


def api_key(variable: str) -> str | None:
    """The key in an environment variable, registered for redaction."""
    value = os.environ.get(variable)
    register(value)
    return value


def redact(text: str) -> str:
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return _KEY_LIKE.sub(MASK, text)

"""Constraints as llama.cpp grammars, so a model can only sample what the type allows."""

from __future__ import annotations

import json
import logging

from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmflow.runtime.backends.base import Constraint

logger = logging.getLogger(__name__)

MAX_OUTPUT_DIGITS = 18
"""Digits an `int` output may have: every such number fits an int64, and a small model
that would write digits until max_tokens (`3400000111111111…` for "3+4?") must stop."""

_PATTERN_GRAMMARS = {
    "int": f'root ::= "-"? [0-9]{{1,{MAX_OUTPUT_DIGITS}}}',
    "float": (
        f'root ::= "-"? [0-9]{{1,{MAX_OUTPUT_DIGITS}}} ("." [0-9]{{1,{MAX_OUTPUT_DIGITS}}})? '
        "([eE] [-+]? [0-9]{1,3})?"
    ),
    "bool": 'root ::= "true" | "false"',
}

_GBNF_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _gbnf_literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    escaped = "".join(
        _GBNF_ESCAPES.get(char)
        or (f"\\x{ord(char):02x}" if ord(char) < 0x20 or ord(char) == 0x7F else char)
        for char in text
    )
    return f'"{escaped}"'


def _grammar_source(constraint: Constraint) -> str | None:
    """The GBNF grammar enforcing a constraint, or None if it cannot be enforced."""
    if constraint.choices:
        return "root ::= " + " | ".join(map(_gbnf_literal, constraint.choices))
    if constraint.json_schema is not None:
        try:
            return json_schema_to_gbnf(json.dumps(constraint.json_schema))
        except Exception as error:  # the converter raises many kinds on odd schemas
            # Not enforcing is allowed: the caller validates every result.
            logger.debug("JSON schema not enforced: %s", error)
            return None
    if constraint.pattern is not None:
        return _PATTERN_GRAMMARS[constraint.pattern]
    if constraint.max_chars is not None:
        return f"root ::= [^\\x00]{{0,{constraint.max_chars}}}"
    return None

"""Token-level text builtins (`count_tokens`, `chunk_tokens`, `truncate_tokens`): counted
with a real model's tokenizer, not guessed from characters, because a context window and
`max_tokens` are budgets in that model's tokens.

The tokenizer is an embedded model's vocabulary, loaded alone (llama.cpp `vocab_only`:
about 0.2 s, no weights), once per process. The builtins take the model as a constant
string (an embedded model id, `default`, or `assigned`, which the optimizer's
`choose_tokenizers` pass binds to the model the result's readers run on), so they stay
plain functions of their arguments: the checker types them, the optimizer computes them
at plan time from known inputs, and the scheduler at run time, all through
`builtins.evaluate`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Any

from llmflow.compiler.models import DEFAULT_MODEL_ID, LOCAL_MODELS

_LOCK = threading.Lock()
_VOCABS: dict[str, Any] = {}
_BOUNDARIES = ("\n\n", "\n", ". ", " ")
ASSIGNED = "assigned"
"""The `model` the builtins take when the program names none: the tokenizer of the model
the calls reading the result run on, bound by the optimizer (`choose_tokenizers`); the
default model's where nothing is bound (`-O0`)."""
MAX_CHARS_PER_TOKEN = 32
"""A window of this many characters per token always holds `size` tokens of text (a token
of a real vocabulary is rarely longer than 16 characters)."""


def _close() -> None:
    """Free the vocabularies before the interpreter tears llama_cpp's module down (its
    `__del__` would then call freed functions and print a traceback)."""
    with _LOCK:
        for llm in _VOCABS.values():
            llm.close()
        _VOCABS.clear()


atexit.register(_close)


def _vocab(model: str) -> Any:
    """The vocabulary-only Llama of an embedded model, loaded once."""
    model_id = DEFAULT_MODEL_ID if model in ("default", ASSIGNED) else model
    if model_id not in LOCAL_MODELS:
        raise ValueError(
            f"no tokenizer for '{model}': name an embedded model "
            f"({', '.join(['assigned', 'default', *LOCAL_MODELS])})"
        )
    with _LOCK:
        if model_id not in _VOCABS:
            try:
                from llama_cpp import Llama

                from llmflow.runtime.backends.local.files import find_model_file
            except ImportError as err:
                raise ValueError(f"the embedded models are not installed ({err})") from None
            path = find_model_file(model_id)
            with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                _VOCABS[model_id] = Llama(model_path=str(path), vocab_only=True, verbose=False)
        return _VOCABS[model_id]


def tokenize(text: str, model: str = ASSIGNED) -> list[int]:
    """The tokens of `text` on `model` (no beginning-of-text token)."""
    if not text:
        return []
    return list(_vocab(model).tokenize(text.encode("utf-8"), add_bos=False, special=False))


def _prefix_chars(text: str, tokens: list[int], model: str) -> int:
    """How many characters of `text` the first `tokens` spell (a token that ends inside
    a character counts that character out)."""
    spelled = _vocab(model).detokenize(tokens).decode("utf-8", errors="ignore")
    spelled = spelled.removeprefix(" ") if not text.startswith(" ") else spelled
    return min(len(spelled), len(text))


def count_tokens(text: str, model: str = ASSIGNED) -> int:
    """How many tokens `text` is on an embedded model's tokenizer (`model`: an embedded
    model id, `default`, or `assigned`: the default model's when nothing bound it), without
    a beginning-of-text token."""
    return len(tokenize(text, model))


def truncate_tokens(text: str, size: int, model: str = ASSIGNED) -> str:
    """The longest start of `text` of at most `size` tokens, cut at a word boundary
    where one lies in its second half."""
    if size < 0:
        raise ValueError("the token budget cannot be negative")
    window = text[: size * MAX_CHARS_PER_TOKEN + 1]
    tokens = tokenize(window, model)
    if len(tokens) <= size and len(window) == len(text):
        return text
    return _fit(text, size, model, tokens[:size])


def _fit(text: str, size: int, model: str, tokens: list[int]) -> str:
    """The start of `text` its first `size` tokens spell, cut back to a boundary and
    shortened until it tokenizes to at most `size` tokens on its own."""
    end = _prefix_chars(text, tokens, model)
    for sep in _BOUNDARIES:
        cut = text.rfind(sep, 0, end + 1)
        if cut > end // 2:
            end = cut + (1 if sep == ". " else 0)
            break
    piece = text[:end].rstrip()
    while piece and count_tokens(piece, model) > size:
        piece = piece[: max(0, len(piece) - max(1, len(piece) // 20))].rstrip()
    return piece


def chunk_tokens(text: str, size: int, overlap: int = 0, model: str = ASSIGNED) -> list[str]:
    """Cut text into pieces of at most `size` tokens, at paragraph, line, sentence or
    word boundaries where possible; consecutive pieces share about `overlap` tokens."""
    from llmflow.stdlib.builtins import MAX_ITEMS, LimitError

    if size <= 0:
        raise ValueError("chunk size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than the chunk size")
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        piece = truncate_tokens(rest, size, model)
        if not piece:  # one unsplittable run longer than the budget: cut inside it
            head = rest[: size * MAX_CHARS_PER_TOKEN]
            piece = rest[: max(1, _prefix_chars(head, tokenize(head, model)[:size], model))]
        pieces.append(piece)
        if len(pieces) > MAX_ITEMS:
            raise LimitError(f"chunk_tokens() would make more than {MAX_ITEMS:,} pieces")
        if len(piece) >= len(rest):
            break
        step = len(piece)
        if overlap:
            back = tokenize(piece, model)[-overlap:]
            shared = len(_vocab(model).detokenize(back).decode("utf-8", errors="ignore"))
            start = piece.find(" ", max(0, len(piece) - shared))
            step = start + 1 if 0 < start < len(piece) - 1 else step
        rest = rest[step:].strip()
    return pieces

"""How many tokens a text is, before any tokenizer has seen it: a typical count for the
optimizer's plans, a high-side one for rate limits (erring there costs a 429 and a
retry), and a bound that no tokenizer exceeds for the budget (erring there costs money).

The bound is one token per UTF-8 byte. Byte-level BPE (GPT-2, tiktoken's cl100k and
o200k, Llama 3, Qwen, Mistral's Tekken) turns text into byte strings of one byte or
more, so it never makes more tokens than the text has bytes; SentencePiece with byte
fallback (Llama 2, Mistral v1, Gemma) makes a piece or one token per byte for every
character, plus at most a word-boundary piece at the start (`TEXT_OVERHEAD`). Nothing
tighter holds for ASCII: a digit is a token in Llama 2 and SmolLM2, and so is each
character of a hash or of a run of punctuation in most vocabularies. SmolLM2 makes 380
tokens of 180 CJK characters (540 bytes), 200 of 200 digits and 697 of 200 random
characters (721 bytes), where 3 characters a token (the old bound) allowed 60 to 67.
For English prose the bound is about four times the real count; the budget gets the
difference back when the answer reports its usage, so the margin only costs at the end.

Chat templates add tokens of their own: role markers around every turn (`TURN_OVERHEAD`:
ChatML and Llama 3 use 5, OpenAI 4) and, once per request, the beginning-of-text token,
the assistant's reply header and the default system prompt some templates insert when
none is given (Qwen 2.5: ~20 tokens, Llama 3.1's date header: ~30): `REQUEST_OVERHEAD`.
"""

from __future__ import annotations

from collections.abc import Iterable

ASCII_CHARS_PER_TOKEN = 4.0
"""English text and code in current BPE vocabularies: about 4 characters a token."""
OTHER_BYTES_PER_TOKEN = 3.0
"""Other scripts: about a token per CJK character (3 UTF-8 bytes), two Cyrillic or Greek
letters (2 bytes each) a token, an emoji (4 bytes) a token or two."""
HIGH_ASCII_CHARS_PER_TOKEN = 3.0
HIGH_OTHER_BYTES_PER_TOKEN = 2.0
"""The high side of the same: code and numbers run nearer 3 characters a token, CJK up
to 1.5 tokens a character in older vocabularies (cl100k)."""
TEXT_OVERHEAD = 1
TURN_OVERHEAD = 8
REQUEST_OVERHEAD = 64


def utf8_bytes(text: str) -> int:
    """The text's length in UTF-8 (a lone surrogate counts its 3 bytes)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def typical(text: str) -> float:
    """About how many tokens current vocabularies make of `text` (an estimate, not a bound)."""
    return _estimate(text, ASCII_CHARS_PER_TOKEN, OTHER_BYTES_PER_TOKEN)


def high(text: str) -> float:
    """About how many tokens `text` is, on the high side for current vocabularies."""
    return _estimate(text, HIGH_ASCII_CHARS_PER_TOKEN, HIGH_OTHER_BYTES_PER_TOKEN)


def prompt_high(turns: Iterable[str]) -> int:
    """A request's prompt tokens on the high side, role markers included."""
    return sum(int(high(text)) + TURN_OVERHEAD for text in turns)


def at_most(text: str) -> int:
    """The most tokens any byte-level or byte-fallback tokenizer makes of `text`."""
    return utf8_bytes(text) + TEXT_OVERHEAD


def prompt_at_most(turns: Iterable[str]) -> int:
    """The most tokens a request of these turns can be, chat template included."""
    return REQUEST_OVERHEAD + sum(at_most(text) + TURN_OVERHEAD for text in turns)


def _estimate(text: str, ascii_chars_per_token: float, other_bytes_per_token: float) -> float:
    if text.isascii():
        return len(text) / ascii_chars_per_token
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = utf8_bytes(text) - ascii_chars
    return ascii_chars / ascii_chars_per_token + other / other_bytes_per_token

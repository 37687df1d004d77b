"""The run journal reads back whatever a crash (or someone else) left: every line that is
not a whole entry is skipped and counted, and what is appended afterwards stays whole."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmflow.runtime.backends.base import Generation
from llmflow.runtime.journal import Journal, read_journal
from llmflow.runtime.store import MAX_LINE, StoreError

FIRST = Generation(text="first", input_tokens=3, output_tokens=1)
WIDE = Generation(text="é日🙂 — wide characters ✓", output_tokens=7, finish_reason="stop")
LATER = Generation(text="appended after the cut")


def line(key: str, generation: Generation) -> bytes:
    entry = {"key": key, "generation": generation.model_dump(mode="json")}
    return (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")


def test_entries_come_back_in_order_per_key(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    for key, generation in [("a", FIRST), ("b", WIDE), ("a", LATER)]:
        journal.record(key, generation)
    journal.close()
    assert path.stat().st_mode & 0o777 == 0o600
    resumed = Journal(path)
    assert resumed.unreadable == 0 and resumed.replayable == 3
    assert [resumed.take("a"), resumed.take("a"), resumed.take("a")] == [FIRST, LATER, None]
    assert resumed.take("b") == WIDE
    resumed.close()


def test_a_cut_at_every_byte_of_a_multibyte_line_loses_only_that_line(tmp_path: Path) -> None:
    whole = line("a", FIRST) + line("b", WIDE)
    start = len(line("a", FIRST))
    assert len(line("b", WIDE)) >= len(line("b", WIDE).decode()) + 10  # multi-byte characters
    for cut in range(start, len(whole) + 1):
        path = tmp_path / f"cut{cut}.jsonl"
        path.write_bytes(whole[:cut])
        complete = cut >= len(whole) - 1  # all but the newline is still a whole entry
        torn = 0 if complete or cut == start else 1
        journal = Journal(path)
        assert journal.unreadable == torn, cut
        assert journal.take("a") == FIRST
        assert journal.take("b") == (WIDE if complete else None), cut
        journal.record("c", LATER)  # must not glue onto a torn last line
        journal.close()
        entries, unreadable = read_journal(path)
        expected = [("a", FIRST), *([("b", WIDE)] if complete else []), ("c", LATER)]
        assert (entries, unreadable) == (expected, torn), cut


WRONG_GENERATION = {"key": "x", "generation": {"text": "a", "input_tokens": "3"}}

BAD_LINES = {
    "garbage": b"garbage",
    "a number": b"123",
    "another object": b'{"a": 1}',
    "a list": b"[1, 2]",
    "null": b"null",
    "a key that is not a string": b'{"key": 5, "generation": {"text": "a"}}',
    "no generation": b'{"key": "x"}',
    "a generation of the wrong type": json.dumps(WRONG_GENERATION).encode(),
    "a generation without text": b'{"key": "x", "generation": {"output_tokens": 1}}',
    "a boolean for a count": b'{"key": "x", "generation": {"text": "a", "retries": true}}',
    "NUL bytes": b"\x00" * 300,
    "NULs then JSON": b"\x00\x00" + line("x", FIRST).rstrip(b"\n"),
    "not UTF-8": b'{"key": "x", "generation": {"text": "\xff\xfe"}}',
    "a lone surrogate byte sequence": b'{"key": "x", "generation": {"text": "\xed\xa0\x80"}}',
    "deep nesting": b"[" * 200_000,
    "a 10,000-digit number": b"1" * 10_000,
    "a carriage return only": b"\r",
}


@pytest.mark.parametrize("bad", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_line_that_is_not_an_entry_is_skipped_and_counted(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(line("a", FIRST) + bad + b"\n" + line("b", WIDE) + b"\n\n")
    journal = Journal(path)
    assert journal.unreadable == (0 if bad == b"\r" else 1)
    assert (journal.take("a"), journal.take("b"), journal.take("x")) == (FIRST, WIDE, None)
    journal.close()


def test_every_bad_line_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"".join(bad + b"\n" for bad in BAD_LINES.values()) + line("a", FIRST))
    entries, unreadable = read_journal(path)
    assert entries == [("a", FIRST)] and unreadable == len(BAD_LINES) - 1  # "\r" is blank


@pytest.mark.parametrize("ending", [b"\n", b""], ids=["ended", "cut"])
def test_a_huge_line_is_skipped_without_reading_it_whole(tmp_path: Path, ending: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    huge = b'{"key": "h", "generation": {"text": "' + b"x" * MAX_LINE + b'"}}'
    path.write_bytes(line("a", FIRST) + huge + ending)
    started = time.monotonic()
    journal = Journal(path)
    assert journal.unreadable == 1 and journal.take("a") == FIRST and journal.take("h") is None
    journal.record("b", WIDE)
    journal.close()
    assert read_journal(path) == ([("a", FIRST), ("b", WIDE)], 1)
    assert time.monotonic() - started < 30


def test_a_nul_filled_tail_then_new_appends(tmp_path: Path) -> None:
    # What some filesystems leave after a power cut: the file's tail reads back as zeros.
    path = tmp_path / "journal.jsonl"
    path.write_bytes(line("a", FIRST) + b"\x00" * 4096)
    journal = Journal(path)
    journal.record("b", WIDE)
    journal.close()
    assert read_journal(path) == ([("a", FIRST), ("b", WIDE)], 1)


def test_answers_with_lone_surrogates_are_written_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    odd = Generation(text="half an emoji: \ud83d, and 日本")
    journal = Journal(path)
    journal.record("k", odd)
    journal.close()
    path.read_bytes().decode("utf-8")  # still UTF-8
    assert read_journal(path) == ([("k", odd)], 0)


def test_an_existing_journal_is_made_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(line("a", FIRST))
    path.chmod(0o644)
    Journal(path).close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_missing_journal_is_empty(tmp_path: Path) -> None:
    assert read_journal(tmp_path / "journal.jsonl") == ([], 0)


def test_a_directory_or_a_link_in_its_place_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "journal.jsonl"
    folder.mkdir()
    with pytest.raises(StoreError, match=f"{folder} is a directory, not a file"):
        read_journal(folder)
    with pytest.raises(StoreError, match=f"{folder} is a directory, not a file"):
        Journal(folder)
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    link = tmp_path / "linked.jsonl"
    link.symlink_to(target)
    with pytest.raises(StoreError, match=f"{link} is a symbolic link"):
        Journal(link)
    assert target.read_text() == "keep me\n"


def test_a_row_takes_back_its_own_answers_only(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.record("a", FIRST, row=1)
    journal.record("b", WIDE, row="r2")
    journal.record("c", LATER, row=1)
    journal.record("d", LATER)
    journal.close()
    with path.open("a") as out:  # a row id of no usable type: the answer stays, unowned
        out.write(json.dumps({"key": "e", "generation": FIRST.model_dump(), "row": [1]}) + "\n")
    resumed = Journal(path)
    assert resumed.unreadable == 0
    assert resumed.take_row(1) == [("a", FIRST), ("c", LATER)]
    assert resumed.take_row(1) == [] and resumed.take_row("1") == []
    assert resumed.take("b") == WIDE and resumed.take_row("r2") == []  # taken already
    assert (resumed.take("d"), resumed.take("e")) == (LATER, FIRST)
    resumed.close()

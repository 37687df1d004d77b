"""A dataset's rows, read lazily: each row becomes the inputs of one run of the flow.

JSON lines (one object per line) or CSV with a header; a file or standard input. A row's
fields are the flow's inputs (`mapping` renames: input → column; other fields are
ignored, so a labeled dataset reads as is), `constants` are given to every row. A row
that cannot be used (not JSON, not an object, a missing or mistyped input) is a `Row`
with a `problem`, which the executor records as that row's error: one bad line does not
stop ten thousand good ones. A problem with the whole source (not readable, a CSV without
a header, two rows with one id) stops the run: `RowsError`, naming file and line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from llmflow.compiler.ir import Plan
from llmflow.compiler.types import Prim
from llmflow.errors import InputError, LLMFlowError
from llmflow.runtime.calls import RowId
from llmflow.runtime.inputs import bind_inputs, quoted_name, value_from_text
from llmflow.runtime.secrets import clip
from llmflow.runtime.values import InvalidValue

MAX_ROW_BYTES = 16 * 2**20
"""Longest row (a JSON line or a CSV record): as much as one `-i NAME=@FILE` input."""

Format = Literal["jsonl", "csv"]
STDIN = "-"


class RowsError(LLMFlowError):
    """The rows cannot be read on (the message names file and line): the run stops, and
    what it computed so far is kept."""


@dataclass(frozen=True)
class Row:
    id: RowId
    line: int
    """Where the row starts in its source (1-based)."""
    inputs: dict[str, Any]
    """The flow's inputs, checked and with defaults (empty if `problem`)."""
    digest: str
    """A hash of the inputs, or of the raw line for a problem row: a resumed run tells
    a changed row from the one it ran."""
    problem: str | None = None


def source_format(source: str | Path, fmt: Format | None = None) -> Format:
    """The format asked for, else the file's extension's (`.csv`, `.tsv` are CSV),
    else JSON lines (standard input too)."""
    if fmt is not None:
        return fmt
    return "csv" if str(source).lower().endswith((".csv", ".tsv")) else "jsonl"


def read_rows(
    source: str | Path,
    plan: Plan,
    *,
    fmt: Format | None = None,
    id_column: str | None = None,
    mapping: Mapping[str, str] | None = None,
    constants: Mapping[str, Any] | None = None,
) -> Iterator[Row]:
    """The rows of a file (`-`: standard input), one at a time, each bound to the flow.
    `id_column`: the field holding each row's id (a string or an integer, unique);
    without one a row's id is its line number."""
    shown = "<stdin>" if str(source) == STDIN else str(source)
    kind = source_format(source, fmt)
    with _open(source, shown) as stream:
        records = _jsonl(stream) if kind == "jsonl" else _csv(stream, shown, source)
        yield from bind_rows(
            plan,
            records,
            id_column=id_column,
            mapping=mapping,
            constants=constants,
            text=kind == "csv",
            shown=shown,
        )


def bind_rows(
    plan: Plan,
    records: Iterable[tuple[int, dict[str, Any], str | None]],
    *,
    id_column: str | None = None,
    mapping: Mapping[str, str] | None = None,
    constants: Mapping[str, Any] | None = None,
    text: bool = False,
    shown: str | None = None,
) -> Iterator[Row]:
    """Rows from (line, fields, problem) records. `text`: the fields are text (CSV
    cells) to read as each input's type, an empty cell being no value. `shown`: the
    file's name, which a problem starts with (`rows.jsonl:7: …`; else `row 7: …`)."""
    mapping = dict(mapping or {})
    constants = dict(constants or {})
    known = {spec.name for spec in plan.inputs}
    for name in mapping:
        if name not in known:
            raise RowsError(
                f"--map {quoted_name(name)[1:-1]}=…: the flow has no input {quoted_name(name)} "
                f"(inputs: {', '.join(sorted(known)) or 'none'})"
            )
    columns = {name: mapping.get(name, name) for name in known if name not in constants}
    types = {spec.name: spec.type for spec in plan.inputs}
    seen: dict[RowId, int] = {}
    for line, fields, problem in records:
        row_id: RowId = line
        if problem is None and id_column is not None:
            row_id, problem = _row_id(fields, id_column)
            if problem is not None:
                row_id = line
        where = f"{shown}:{line}" if shown else f"row {line}"
        if row_id in seen and problem is None:
            raise RowsError(
                f"{where}: id {json.dumps(row_id)} is also the id of line "
                f"{seen[row_id]}: ids ({id_column}) must be unique"
            )
        seen[row_id] = line
        if problem is not None:
            yield Row(row_id, line, {}, _digest(fields), f"{where}: {problem}")
            continue
        values = dict(constants)
        given: dict[str, str] = {}
        for name, column in columns.items():
            if column not in fields:
                continue  # a default fills it, or bind_inputs reports it missing
            value = fields[column]
            if text and value == "" and types[name] != Prim(name="str"):
                continue  # an empty cell: the input's default, or missing
            if text:
                try:
                    value = value_from_text(f"column {quoted_name(column)}", types[name], value)
                except InvalidValue as err:
                    given[name] = str(err)
                    continue
            values[name] = value
        try:
            inputs = bind_inputs(plan, values, given=given)
        except InputError as err:
            missing = [n for n in err.problems if n in columns and columns[n] not in fields]
            hint = f" (columns: {', '.join(_clipped(fields))})" if missing else ""
            problem = "; ".join(err.problems.values()) + hint
            yield Row(row_id, line, {}, _digest(fields), f"{where}: {problem}")
            continue
        yield Row(row_id, line, inputs, _digest(inputs))


def _row_id(fields: dict[str, Any], column: str) -> tuple[RowId, str | None]:
    if column not in fields:
        return 0, f"no id: the row has no field {quoted_name(column)}"
    value = fields[column]
    if isinstance(value, bool) or not isinstance(value, str | int):
        return 0, f"its id {quoted_name(column)} is not a string or an integer"
    if isinstance(value, str) and not value:
        return 0, f"its id {quoted_name(column)} is empty"
    return value, None


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _clipped(fields: dict[str, Any]) -> list[str]:
    names = [quoted_name(name, 30) for name in list(fields)[:12]]
    return names + (["…"] if len(fields) > 12 else [])


class _open:
    """A binary stream over the source: a regular file or a pipe given as `-`; never a
    FIFO or device named as a file (it could block forever), never a directory."""

    def __init__(self, source: str | Path, shown: str) -> None:
        self.source, self.shown = source, shown
        self.stream: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if str(self.source) == STDIN:
            return sys.stdin.buffer
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.source, flags)
        except OSError as err:
            raise RowsError(f"cannot read {self.shown}: {err.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise RowsError(f"{self.shown} is {what}: --inputs reads a file, or - for stdin")
        os.set_blocking(fd, True)
        self.stream = os.fdopen(fd, "rb")
        return self.stream

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.close()


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, problem) per line; a line too long or not UTF-8 is a problem
    (the rest of a long line is skipped unread). A UTF-8 BOM at the start is dropped."""
    number = 0
    while True:
        raw = stream.readline(MAX_ROW_BYTES + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
            while (rest := stream.readline(2**20)) and not rest.endswith(b"\n"):
                pass
            yield number, None, f"the line is longer than {MAX_ROW_BYTES // 2**20} MiB"
            continue
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as err:
            yield (
                number,
                None,
                f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})",
            )


def _jsonl(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    for number, text, problem in _lines(stream):
        if problem is not None:
            yield number, {"line": number}, problem
            continue
        assert text is not None
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            what = clip(text.strip(), 40)
            yield number, {"text": text}, f"not JSON at column {err.colno} ({err.msg}) in {what!r}"
            continue
        except (ValueError, RecursionError) as err:  # huge integers, deep nesting
            yield number, {"text": text}, f"not a row: {clip(str(err), 80)}"
            continue
        if not isinstance(value, dict):
            yield number, {"text": text}, f"a row is a JSON object, not {_json_kind(value)}"
            continue
        yield number, value, None


def _csv(
    stream: IO[bytes], shown: str, source: str | Path
) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    csv.field_size_limit(MAX_ROW_BYTES)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    dialect = "excel-tab" if str(source).lower().endswith(".tsv") else "excel"
    reader = csv.reader(text, dialect)
    try:
        header = next(reader, None)
        if header is None:
            return
        if len(set(header)) != len(header):
            twice = sorted({name for name in header if header.count(name) > 1})
            raise RowsError(f"{shown}:1: the header names {', '.join(twice)} twice")
        while True:
            line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield line, {"line": line}, f"not a CSV record: {err}"
                continue
            if not record:
                continue
            if len(record) != len(header):
                yield (
                    line,
                    dict(zip(header, record, strict=False)),
                    (f"{len(record)} fields where the header has {len(header)}"),
                )
                continue
            yield line, dict(zip(header, record, strict=True)), None
    except UnicodeDecodeError as err:
        raise RowsError(
            f"{shown}:{reader.line_num + 1}: not UTF-8 text (byte 0x{err.object[err.start]:02x})"
        ) from None
    finally:
        text.detach()


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}[type(value)]

"""A dataset's rows, read lazily: each row becomes the inputs of one run of the flow.

JSON lines (one object per line) or CSV with a header; a file or standard input. A row's
fields are the flow's inputs (`mapping` renames: input → column; other fields are
ignored, so a labeled dataset reads as is), `constants` are given to every row. A row
that cannot be used (not JSON, not an object, not UTF-8, too long, a missing or mistyped
input, no usable id) is a `Row` with a `problem`, which the executor records as that row's
error: one bad line does not stop ten thousand good ones. Such a row without an id of its
own is `"line N"` (`"row N"` from Python), which no other row's id can be taken for. A
problem with the whole source (not readable, a bad CSV header, a CSV record too long to
tell where the next starts, two rows with one id) stops the run: `RowsError`, naming file
and line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from llmflow.compiler.ir import Plan
from llmflow.compiler.types import OptionalT, Prim
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
    shown = shown_name(source)
    yield from bind_rows(
        plan,
        read_records(source, fmt=fmt),
        id_column=id_column,
        mapping=mapping,
        constants=constants,
        text=source_format(source, fmt) == "csv",
        shown=shown,
    )


Record = tuple[int, dict[str, Any], str | None]
"""A row as read, before it is bound to a flow: (line, fields, problem)."""


def shown_name(source: str | Path) -> str:
    """The source as messages name it."""
    return "<stdin>" if str(source) == STDIN else str(source)


def read_records(source: str | Path, *, fmt: Format | None = None) -> Iterator[Record]:
    """The records of a file (`-`: standard input), one at a time, with every field
    (a labeled dataset's expected values too): what `bind_rows` binds to a flow."""
    shown = shown_name(source)
    with _open(source, shown) as stream:
        if source_format(source, fmt) == "jsonl":
            yield from _jsonl(stream)
        else:
            yield from _csv(stream, shown, source)


def count_rows(
    source: str | Path, *, fmt: Format | None = None, limit: int | None = None
) -> int | None:
    """About how many rows a file holds (its non-blank lines; CSV: its records, less the
    header), at most `limit`, for a progress bar: None if it cannot be read (reading the
    rows says why). Opened as `read_rows` opens it (a FIFO never blocks), each line read
    bounded, so it costs a pass over the file and no memory."""
    if str(source) == STDIN:
        return None
    count = 0
    try:
        with _open(source, str(source)) as stream:
            if source_format(source, fmt) == "csv":
                reader = csv.reader(_CsvLines(stream, str(source)), _dialect(source))
                next(reader, None)  # the header
                for record in reader:
                    count += bool(record)
                    if limit is not None and count >= limit:
                        break
            else:
                while raw := _read_line(stream)[0]:
                    count += bool(raw.strip())
                    if limit is not None and count >= limit:
                        break
    except (RowsError, csv.Error):
        return None
    return min(count, limit) if limit is not None else count


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
    for name in [*mapping, *constants]:
        if name not in known:
            what = f"--map {quoted_name(name)[1:-1]}=…" if name in mapping else "a constant input"
            raise RowsError(
                f"{what}: the flow has no input {quoted_name(name)} "
                f"(inputs: {', '.join(sorted(known)) or 'none'})"
            )
    columns = {name: mapping.get(name, name) for name in known if name not in constants}
    types = {spec.name: spec.type for spec in plan.inputs}
    optional = {
        spec.name for spec in plan.inputs if spec.required and isinstance(spec.type, OptionalT)
    }
    """`T?` inputs without a default: a row without the column (or with an empty cell)
    gives them none, as a JSON null would."""
    seen: dict[RowId, int] = {}
    """Declared ids → their line (line-number ids cannot repeat: nothing kept for them)."""
    for line, fields, problem in records:
        row_id: RowId = line
        where = f"{shown}:{line}" if shown else f"row {line}"
        if id_column is not None:
            if problem is None:
                row_id, problem = _row_id(fields, id_column)
            if problem is not None:
                row_id = f"{'line' if shown else 'row'} {line}"  # never another row's id
            if row_id in seen:
                raise RowsError(
                    f"{where}: id {clip(json.dumps(row_id, ensure_ascii=False), 60)} is "
                    f"also the id of line {seen[row_id]}: ids ({id_column}) must be unique"
                )
            seen[row_id] = line
        if problem is not None:
            yield Row(row_id, line, {}, _digest(fields), f"{where}: {problem}")
            continue
        values = dict(constants)
        given: dict[str, str] = {}
        for name, column in columns.items():
            if column not in fields:
                if name in optional:
                    values[name] = None
                continue  # a default fills it, or bind_inputs reports it missing
            value = fields[column]
            if text and value == "" and types[name] != Prim(name="str"):
                if name in optional:
                    values[name] = None
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
            if sys.stdin is None or not hasattr(sys.stdin, "buffer"):
                raise RowsError("--inputs -: there is no standard input to read (it is closed)")
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


def _size(count: int) -> str:
    return f"{count // 2**20} MiB" if count >= 2**20 else f"{count} bytes"


def _read_line(stream: IO[bytes]) -> tuple[bytes, bool]:
    """The next line, at most MAX_ROW_BYTES of it (whether it was longer: the rest is
    skipped unread, in bounded pieces). A UTF-8 BOM is the caller's to drop."""
    raw = stream.readline(MAX_ROW_BYTES + 1)
    if len(raw) <= MAX_ROW_BYTES or raw.endswith(b"\n"):
        return raw, False
    while (rest := stream.readline(2**20)) and not rest.endswith(b"\n"):
        pass
    return raw, True


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, problem) per line; a line too long or not UTF-8 is a problem
    (the rest of a long line is skipped unread). A UTF-8 BOM at the start is dropped."""
    number = 0
    while True:
        raw, long = _read_line(stream)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        if long:
            yield number, None, f"the line is longer than {_size(MAX_ROW_BYTES)}"
            continue
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as err:
            yield number, None, _not_utf8(raw, err)


def _not_utf8(raw: bytes, err: UnicodeDecodeError, line: int | None = None) -> str:
    at = f"line {line} " if line is not None else ""
    return f"not UTF-8 text (byte 0x{raw[err.start]:02x} at {at}column {err.start + 1})"


def _jsonl(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    for number, text, problem in _lines(stream):
        if problem is not None:
            yield number, {"line": number}, problem
            continue
        assert text is not None
        if not text.strip():
            continue
        try:
            value = json.loads(text.rstrip("\r\n"))  # else a cut line's error is on "line 2"
        except json.JSONDecodeError as err:
            what = clip(text.strip(), 40)
            yield (
                number,
                {"text": text},
                f"not JSON at column {err.pos + 1} ({err.msg}) in {what!r}",
            )
            continue
        except (ValueError, RecursionError) as err:  # huge integers, deep nesting
            yield number, {"text": text}, f"not a row: {clip(str(err), 80)}"
            continue
        if not isinstance(value, dict):
            yield number, {"text": text}, f"a row is a JSON object, not {_json_kind(value)}"
            continue
        yield number, value, None


class _CsvLines:
    """The physical lines of a CSV file for `csv.reader`, decoded one at a time (so a
    byte that is not UTF-8 is found on its own line, and spoils only its record), each
    record held to MAX_ROW_BYTES. A record too long is the end: past it, where a record
    starts cannot be told (a quoted field may hold newlines), so it is a RowsError."""

    def __init__(self, stream: IO[bytes], shown: str) -> None:
        if csv.field_size_limit() < MAX_ROW_BYTES:  # the records are bounded, not fields
            csv.field_size_limit(MAX_ROW_BYTES)
        self.stream, self.shown = stream, shown
        self.number = 0
        self.start = 1
        """Where the record being read starts."""
        self.size = 0
        self.problem: str | None = None
        """The record's first undecodable byte."""

    def next_record(self) -> None:
        self.start, self.size, self.problem = self.number + 1, 0, None

    def __iter__(self) -> Iterator[str]:
        while True:
            raw, long = _read_line(self.stream)
            if not raw:
                return
            self.number += 1
            if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[3:]
            self.size += len(raw)
            if long or self.size > MAX_ROW_BYTES:
                raise RowsError(
                    f"{self.shown}:{self.start}: a CSV record longer than "
                    f"{_size(MAX_ROW_BYTES)} (an unclosed quote?): the rows after it "
                    "cannot be told apart"
                )
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                self.problem = self.problem or _not_utf8(raw, err, self.number)
                yield raw.decode("utf-8", "replace")


def _csv(
    stream: IO[bytes], shown: str, source: str | Path
) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    lines = _CsvLines(stream, shown)
    reader = csv.reader(lines, _dialect(source))
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise RowsError(f"{shown}:1: the header is not a CSV record: {err}") from None
    if header is None:
        return
    if lines.problem is not None:
        raise RowsError(f"{shown}:1: the header is {lines.problem}")
    if len(set(header)) != len(header):
        twice = sorted(name for name, count in Counter(header).items() if count > 1)
        names = ", ".join(quoted_name(name, 30) for name in twice)
        raise RowsError(f"{shown}:1: the header names {names} twice")
    while True:
        lines.next_record()
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield lines.start, {"line": lines.start}, f"not a CSV record: {err}"
            continue
        line = lines.start
        if lines.problem is not None:
            yield line, {"line": line}, lines.problem
        elif not record:
            continue
        elif len(record) != len(header):
            fields = dict(zip(header, record, strict=False))
            yield line, fields, f"{len(record)} fields where the header has {len(header)}"
        else:
            yield line, dict(zip(header, record, strict=True)), None


def _dialect(source: str | Path) -> str:
    return "excel-tab" if str(source).lower().endswith(".tsv") else "excel"


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}[type(value)]

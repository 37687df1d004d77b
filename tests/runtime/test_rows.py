"""A dataset's rows (`runtime.rows`): good, bad, cut, huge and hostile files, JSON lines
and CSV, each row bound to the flow's inputs; a bad row is a row with a problem that
names its file and line, a bad source is a RowsError; rows are read lazily."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmflow.cli import main
from llmflow.compiler.ir import Plan
from llmflow.runtime import rows as rows_module
from llmflow.runtime.rows import Row, RowsError, bind_rows, count_rows, read_rows

PROGRAM = """
model m = scripted("x", reply="ok")

enum Color { red, green }

fn f(name: str) -> out: str
\"\"\"Hi {{name}}: {{out}}\"\"\"

flow main(name: str, n: int = 3, tags: list[str] = [], color: Color = Color.red,
          ratio: float = 0.5, flag: bool = false) -> out: str {
    out = f(name)
}
"""

DEFAULTS = {"n": 3, "tags": [], "color": "red", "ratio": 0.5, "flag": False}


@pytest.fixture
def plan(
    compile_source: Callable[..., Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Plan:
    monkeypatch.chdir(tmp_path)  # problems name files as given: `rows.jsonl:2: …`
    return compile_source(PROGRAM)


def put(tmp_path: Path, name: str, data: bytes | str) -> Path:
    """The file, named relative to the test's folder (its working directory)."""
    (tmp_path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(name)


def jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def read(path: Path | str, plan: Plan, **options: Any) -> list[Row]:
    return list(read_rows(path, plan, **options))


def problems(rows: list[Row]) -> dict[int, str]:
    return {row.line: row.problem for row in rows if row.problem is not None}


# JSON lines


def test_typed_values_defaults_and_extra_fields(tmp_path: Path, plan: Plan) -> None:
    path = put(
        tmp_path,
        "rows.jsonl",
        jsonl(
            {"name": "Ada", "n": 7, "tags": ["a", "b"], "color": "green", "ratio": 1, "flag": True},
            {"name": "Bob", "label": "spam", "n_other": 1},  # a labeled dataset reads as is
        ),
    )
    first, second = read(path, plan)
    assert first == Row(
        1,
        1,
        {"name": "Ada", "n": 7, "tags": ["a", "b"], "color": "green", "ratio": 1, "flag": True},
        first.digest,
    )
    assert second.inputs == {"name": "Bob", **DEFAULTS} and second.problem is None
    assert (second.id, second.line) == (2, 2)
    assert first.digest != second.digest


def test_blank_lines_are_skipped_and_lines_keep_their_numbers(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.jsonl", '\n{"name": "a"}\n   \n\r\n{"name": "b"}\r\n')
    assert [(r.id, r.line, r.inputs["name"]) for r in read(path, plan)] == [
        (2, 2, "a"),
        (5, 5, "b"),
    ]


def test_a_utf8_bom_is_dropped(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.jsonl", b'\xef\xbb\xbf{"name": "\xc3\xa9"}\n')
    (row,) = read(path, plan)
    assert row.problem is None and row.inputs["name"] == "é"


def test_the_digest_follows_the_inputs_not_the_spelling(tmp_path: Path, plan: Plan) -> None:
    a = put(tmp_path, "a.jsonl", jsonl({"name": "Ada", "n": 3, "x": 1}))
    b = put(tmp_path, "b.jsonl", '{ "x": 2,  "name":"Ada" }\n')
    c = put(tmp_path, "c.jsonl", jsonl({"name": "Ada", "n": 4}))
    assert read(a, plan)[0].digest == read(b, plan)[0].digest != read(c, plan)[0].digest


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "not JSON at column 2"),
        ('{"name": "a"', "not JSON at column 13"),  # cut short
        ("[1, 2]", "a row is a JSON object, not a list"),
        ('"text"', "a row is a JSON object, not a string"),
        ("null", "a row is a JSON object, not null"),
        ("42", "a row is a JSON object, not a number"),
        ('{"name": 1}', "input 'name' expects str"),
        ('{"name": "a", "n": "3"}', "input 'n' expects int"),
        ('{"name": "a", "color": "blue"}', "input 'color' expects Color"),
        ('{"name": "a", "n": NaN}', "input 'n' expects int"),
        ('{"name": "a", "ratio": NaN}', "input 'ratio' expects float"),
        ('{"name": "\\ud800"}', "lone surrogate"),
        ('{"nom": "a"}', "missing input 'name' (str) (columns: 'nom')"),
        ('{"name": "a", "n": ' + "9" * 5000 + "}", "not a row: Exceeds the limit"),
        ("[" * 100_000 + "]" * 100_000, "not a row: maximum recursion depth"),
        ('{"name": ' + "[" * 500 + "]" * 500 + "}", "input 'name' expects str"),
        ('{"name": "a", "tags": ' + "[" * 900 + "]" * 900 + "}", "input 'tags' expects list[str]"),
    ],
)
def test_a_bad_line_is_a_row_with_its_problem_and_the_next_line_is_read(
    tmp_path: Path, plan: Plan, line: str, expected: str
) -> None:
    path = put(tmp_path, "rows.jsonl", jsonl({"name": "ok"}, line, {"name": "after"}))
    first, bad, after = read(path, plan)
    assert bad.problem is not None and bad.problem.startswith("rows.jsonl:2: ")
    assert expected in bad.problem, bad.problem
    assert len(bad.problem) < 300  # a huge line is clipped in its message
    assert (bad.id, bad.line, bad.inputs) == (2, 2, {})
    assert first.problem is None and after.problem is None and after.id == 3


def test_bytes_that_are_not_utf8_are_a_problem_naming_the_byte(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.jsonl", b'{"name": "a"}\n{"name": "\xff"}\n{"name": "b"}\n')
    rows = read(path, plan)
    assert problems(rows) == {2: "rows.jsonl:2: not UTF-8 text (byte 0xff at column 11)"}
    assert [r.inputs.get("name") for r in rows] == ["a", None, "b"]


def test_a_line_over_the_limit_is_a_problem_and_is_not_kept(
    tmp_path: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rows_module, "MAX_ROW_BYTES", 64)
    long = json.dumps({"name": "x" * 10_000})
    exact = json.dumps({"name": "y" * 51})  # 63 bytes + newline: at the limit
    assert len(exact) + 1 == 64
    path = put(tmp_path, "rows.jsonl", jsonl({"name": "a"}, long, exact, long))
    rows = read(path, plan)
    assert problems(rows) == {
        2: "rows.jsonl:2: the line is longer than 64 bytes",
        4: "rows.jsonl:4: the line is longer than 64 bytes",
    }
    assert rows[2].inputs["name"] == "y" * 51 and rows[2].line == 3
    assert len(rows) == 4


def test_a_last_line_without_newline_is_read(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.jsonl", '{"name": "a"}\n{"name": "b"}')
    assert [r.inputs["name"] for r in read(path, plan)] == ["a", "b"]


# Mapping, constants, ids


def test_mapping_renames_and_constants_win_over_columns(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.jsonl", jsonl({"who": "Ada", "name": "not me", "n": 9}))
    (row,) = read(path, plan, mapping={"name": "who"}, constants={"n": 1})
    assert row.inputs == {**DEFAULTS, "name": "Ada", "n": 1}


def test_a_mapped_column_that_is_missing_names_the_columns(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.jsonl", jsonl({"name": "Ada"}))
    (row,) = read(path, plan, mapping={"name": "who"})
    assert row.problem == "rows.jsonl:1: missing input 'name' (str) (columns: 'name')"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"mapping": {"nmae": "who"}}, "--map nmae=…: the flow has no input 'nmae' (inputs: "),
        ({"constants": {"nn": 1}}, "a constant input: the flow has no input 'nn'"),
    ],
)
def test_an_unknown_input_name_stops_before_any_row(
    tmp_path: Path, plan: Plan, options: dict[str, Any], expected: str
) -> None:
    path = put(tmp_path, "rows.jsonl", jsonl({"name": "Ada"}))
    with pytest.raises(RowsError) as caught:
        read(path, plan, **options)
    assert str(caught.value).startswith(expected)


def test_declared_ids_strings_and_integers_are_distinct(tmp_path: Path, plan: Plan) -> None:
    path = put(
        tmp_path,
        "rows.jsonl",
        jsonl({"id": "7", "name": "a"}, {"id": 7, "name": "b"}, {"id": "é-1", "name": "c"}),
    )
    assert [r.id for r in read(path, plan, id_column="id")] == ["7", 7, "é-1"]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"name": "a"}, "no id: the row has no field 'id'"),
        ({"id": True, "name": "a"}, "its id 'id' is not a string or an integer"),
        ({"id": 1.5, "name": "a"}, "its id 'id' is not a string or an integer"),
        ({"id": None, "name": "a"}, "its id 'id' is not a string or an integer"),
        ({"id": [1], "name": "a"}, "its id 'id' is not a string or an integer"),
        ({"id": "", "name": "a"}, "its id 'id' is empty"),
    ],
)
def test_a_row_without_a_usable_id_is_a_problem_with_an_id_no_row_can_have(
    tmp_path: Path, plan: Plan, row: dict[str, Any], expected: str
) -> None:
    # Ids 1..3 are taken by the other rows: a line-number id would collide with them.
    path = put(tmp_path, "rows.jsonl", jsonl({"id": 3, "name": "x"}, row, {"id": 1, "name": "y"}))
    first, bad, last = read(path, plan, id_column="id")
    assert bad.problem == f"rows.jsonl:2: {expected}"
    assert bad.id == "line 2" and bad.line == 2
    assert (first.id, last.id) == (3, 1)


def test_a_bad_line_under_declared_ids_does_not_take_a_line_number_id(
    tmp_path: Path, plan: Plan
) -> None:
    path = put(tmp_path, "rows.jsonl", jsonl({"id": 2, "name": "x"}, "{cut"))
    assert [r.id for r in read(path, plan, id_column="id")] == [2, "line 2"]


def test_a_duplicate_id_stops_the_rows_naming_both_lines(tmp_path: Path, plan: Plan) -> None:
    path = put(
        tmp_path,
        "rows.jsonl",
        jsonl({"id": "k1", "name": "a"}, {"id": "k2", "name": "b"}, {"id": "k1", "nom": "c"}),
    )
    rows = read_rows(path, plan, id_column="id")
    assert [next(rows).id, next(rows).id] == ["k1", "k2"]  # rows before it are yielded
    with pytest.raises(RowsError) as caught:
        next(rows)
    assert str(caught.value) == (
        'rows.jsonl:3: id "k1" is also the id of line 1: ids (id) must be unique'
    )


def test_a_huge_duplicate_id_is_clipped_in_the_message(tmp_path: Path, plan: Plan) -> None:
    big = "k" * 100_000
    path = put(tmp_path, "rows.jsonl", jsonl({"id": big, "name": "a"}, {"id": big, "name": "b"}))
    with pytest.raises(RowsError) as caught:
        read(path, plan, id_column="id")
    assert "also the id of line 1" in str(caught.value) and len(str(caught.value)) < 200


def test_bind_rows_without_a_file_name_says_row(plan: Plan) -> None:
    (row,) = bind_rows(plan, [(4, {"nom": "x"}, None)])
    assert row.problem is not None and row.problem.startswith("row 4: missing input 'name'")
    records = [(1, {"k": 2, "name": "a"}, None), (2, {"name": "b"}, None)]
    assert [r.id for r in bind_rows(plan, records, id_column="k")] == [2, "row 2"]


# CSV


def test_csv_cells_are_read_per_input_type(tmp_path: Path, plan: Plan) -> None:
    path = put(
        tmp_path,
        "rows.csv",
        'name,n,tags,color,ratio,flag\n007,12,"[""a"", ""b""]",green,2.5,true\n',
    )
    (row,) = read(path, plan)
    assert row.problem is None
    assert row.inputs == {
        "name": "007",  # str as is, not JSON
        "n": 12,
        "tags": ["a", "b"],
        "color": "green",
        "ratio": 2.5,
        "flag": True,
    }


def test_csv_empty_cells_are_defaults_and_an_empty_str_is_empty(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.csv", "name,n,tags,color\n,,,\n")
    (row,) = read(path, plan)
    assert row.inputs == {"name": "", **DEFAULTS}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("a,x,[]", "column 'n' expects int: 'x' is not an integer"),
        ("a,1,b", "column 'tags' expects list[str] written as JSON"),
        ("a,1", "2 fields where the header has 3"),
        ("a,1,[],extra", "4 fields where the header has 3"),
        ('a,"1.5",[]', "input 'n' expects int"),
    ],
)
def test_a_bad_csv_record_is_a_problem_and_the_next_is_read(
    tmp_path: Path, plan: Plan, record: str, expected: str
) -> None:
    path = put(tmp_path, "rows.csv", f"name,n,tags\nok,1,[]\n{record}\nafter,2,[]\n")
    rows = read(path, plan)
    assert [r.line for r in rows] == [2, 3, 4]
    bad = rows[1]
    assert bad.problem is not None and bad.problem.startswith("rows.csv:3: ")
    assert expected in bad.problem, bad.problem
    assert rows[2].inputs["name"] == "after" and rows[2].problem is None


def test_csv_quoted_newlines_keep_line_numbers_right(tmp_path: Path, plan: Plan) -> None:
    path = put(
        tmp_path,
        "rows.csv",
        'name,n\r\n"two\r\nlines",1\r\n\r\n"three\nlines\nhere",2\nlast,x\n',
    )
    rows = read(path, plan)
    assert [(r.line, r.inputs.get("name")) for r in rows] == [
        (2, "two\r\nlines"),
        (5, "three\nlines\nhere"),
        (8, None),
    ]
    assert problems(rows)[8].startswith("rows.csv:8: column 'n' expects int")


def test_tsv_is_tab_separated_and_ids_are_text(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.tsv", "key\tname\tn\n7\ta,b\t2\n08\tc\t3\n")
    rows = read(path, plan, id_column="key")
    assert [(r.id, r.inputs["name"], r.inputs["n"]) for r in rows] == [
        ("7", "a,b", 2),
        ("08", "c", 3),
    ]


def test_csv_with_a_bom_a_map_and_an_id_column(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "people.csv", b"\xef\xbb\xbfkey,who\nk1,Ada\n,Bob\nk1,Cy\n")
    rows = read_rows(path, plan, id_column="key", mapping={"name": "who"})
    first = next(rows)
    assert (first.id, first.inputs["name"]) == ("k1", "Ada")
    second = next(rows)
    assert (second.id, second.problem) == ("line 3", "people.csv:3: its id 'key' is empty")
    with pytest.raises(RowsError, match='people.csv:4: id "k1" is also the id of line 2'):
        next(rows)


def test_csv_header_problems_stop_the_rows(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.csv", "name,n,name\na,1,b\n")
    with pytest.raises(RowsError, match="rows.csv:1: the header names 'name' twice"):
        read(path, plan)
    path = put(tmp_path, "rows.csv", b"na\xffme\na\n")
    with pytest.raises(RowsError, match=r"rows.csv:1: the header is not UTF-8 text \(byte 0xff"):
        read(path, plan)


def test_a_wide_header_with_names_twice_is_refused_at_once(tmp_path: Path, plan: Plan) -> None:
    names = [f"c{i}" for i in range(200_000)]
    path = put(tmp_path, "rows.csv", ",".join([*names, "c7", "c9"]) + "\n")
    err = _without_blocking(lambda: read(path, plan))  # not a count per name
    assert isinstance(err, RowsError)
    assert str(err) == "rows.csv:1: the header names 'c7', 'c9' twice"


def test_an_empty_csv_or_one_with_only_a_header_has_no_rows(tmp_path: Path, plan: Plan) -> None:
    assert read(put(tmp_path, "a.csv", ""), plan) == []
    assert read(put(tmp_path, "b.csv", "name,n\n"), plan) == []
    assert read(put(tmp_path, "c.jsonl", ""), plan) == []


def test_a_non_utf8_byte_in_csv_spoils_only_its_record_found_on_its_line(
    tmp_path: Path, plan: Plan
) -> None:
    # Far past the first read buffer: the problem is where the byte is, and every
    # row before and after it is read.
    good = "".join(f"r{i},{i}\n" for i in range(3000))
    data = b"name,n\n" + good.encode() + b'"multi\nline \xe9",1\n' + b"after,2\n"
    rows = read(put(tmp_path, "rows.csv", data), plan)
    assert len(rows) == 3002
    assert problems(rows) == {
        3002: "rows.csv:3002: not UTF-8 text (byte 0xe9 at line 3003 column 6)"
    }
    assert rows[-1].inputs["name"] == "after" and rows[-1].line == 3004


def test_a_csv_record_over_the_limit_stops_the_rows_unread(
    tmp_path: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past an unclosed quote, where a record starts cannot be told: no guessing.
    monkeypatch.setattr(rows_module, "MAX_ROW_BYTES", 64)
    path = put(tmp_path, "rows.csv", 'name,n\nok,1\n"open,1\n' + "a,1\n" * 30 + "b,2\n")
    rows = read_rows(path, plan)
    assert next(rows).inputs["name"] == "ok"
    with pytest.raises(RowsError) as caught:
        next(rows)
    assert str(caught.value).startswith("rows.csv:3: a CSV record longer than 64 bytes")
    path = put(tmp_path, "rows.csv", "name,n\n" + "x" * 10_000 + ",1\n")
    with pytest.raises(RowsError, match="rows.csv:2: a CSV record longer than 64 bytes"):
        read(path, plan)


def test_format_can_be_forced(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.txt", "name,n\nAda,1\n")
    assert read(path, plan, fmt="csv")[0].inputs["name"] == "Ada"
    assert read(path, plan)[0].problem is not None  # JSON lines by default


# Sources


def test_standard_input(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(jsonl({"name": "a"}, "{x").encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    rows = read("-", plan)
    assert [r.inputs.get("name") for r in rows] == ["a", None]
    assert problems(rows)[2].startswith("<stdin>:2: not JSON")
    assert not stdin.closed  # not ours to close


def test_a_closed_standard_input_is_refused(
    program: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", None)  # as Python sets it when fd 0 is closed
    assert main(["run", "prog.llmflow", "-q", "--inputs", "-"]) == 1
    err = capsys.readouterr().err
    assert "--inputs -: there is no standard input to read" in err and "Traceback" not in err


def _without_blocking(action: Callable[[], object]) -> BaseException | None:
    """What `action` raised, failing the test if it blocks (a FIFO open would)."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as err:
            caught.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "blocked"
    return caught[0] if caught else None


def test_a_directory_a_fifo_or_a_missing_file_is_refused(tmp_path: Path, plan: Plan) -> None:
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    for source, expected in [
        (fifo, f"{fifo} is not a regular file: --inputs reads a file, or - for stdin"),
        (tmp_path, f"{tmp_path} is a directory: --inputs reads a file, or - for stdin"),
        (tmp_path / "no.jsonl", f"cannot read {tmp_path / 'no.jsonl'}: No such file"),
    ]:
        err = _without_blocking(lambda source=source: read(source, plan))
        assert isinstance(err, RowsError) and str(err).startswith(expected), err


# Laziness and memory


def test_rows_are_read_as_they_are_taken(tmp_path: Path, plan: Plan) -> None:
    path = put(tmp_path, "rows.jsonl", jsonl({"name": "first"}))
    rows = read_rows(path, plan)
    assert next(rows).inputs["name"] == "first"
    with path.open("a") as file:  # written only after the first row was taken
        file.write(jsonl(*({"name": f"r{i}"} for i in range(2, 100_001))))
    second = next(rows)
    assert (second.line, second.inputs["name"]) == (2, "r2")
    rows.close()


def test_the_first_row_of_a_big_file_costs_what_a_row_costs(tmp_path: Path, plan: Plan) -> None:
    row = {"name": "x" * 100}
    path = put(tmp_path, "rows.jsonl", jsonl(*([row] * 100_000)))  # 12 MiB
    assert path.stat().st_size > 10 * 2**20
    for fmt in ("jsonl", "csv"):
        source = path if fmt == "jsonl" else put(tmp_path, "rows.csv", "name\n" + "x\n" * 100_000)
        tracemalloc.start()
        try:
            rows = read_rows(source, plan, fmt=fmt)  # type: ignore[arg-type]
            assert next(rows).problem is None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2**20, (fmt, peak)
        rows.close()


def _consume(rows: Iterator[Row], count: int) -> None:
    for _ in range(count):
        assert next(rows).problem is None


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_memory_does_not_grow_with_rows_consumed(tmp_path: Path, plan: Plan, fmt: str) -> None:
    count = 10_000
    if fmt == "jsonl":
        path = put(tmp_path, "rows.jsonl", jsonl(*({"name": f"row {i}"} for i in range(count))))
    else:
        path = put(tmp_path, "rows.csv", "name,n\n" + "".join(f"r{i},{i}\n" for i in range(count)))
    rows = read_rows(path, plan)
    tracemalloc.start()
    try:
        _consume(rows, 1_000)
        early, _ = tracemalloc.get_traced_memory()
        _consume(rows, count - 1_001)
        late, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        rows.close()
    assert late - early < 64 * 1024, (early, late)


# Through the CLI: no traceback


@pytest.fixture
def program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return put(tmp_path, "prog.llmflow", PROGRAM)


@pytest.mark.parametrize(
    ("name", "data", "options", "expected"),
    [
        ("missing.jsonl", None, [], "error: cannot read missing.jsonl: No such file or directory"),
        ("dup.jsonl", jsonl({"k": 1, "name": "a"}, {"k": 1, "name": "b"}), ["--id", "k"],
         "error: dup.jsonl:2: id 1 is also the id of line 1: ids (k) must be unique"),
        ("h.csv", "name,name\n", [], "error: h.csv:1: the header names 'name' twice"),
        ("m.jsonl", jsonl({"name": "a"}), ["--map", "nom=name"],
         "error: --map nom=…: the flow has no input 'nom'"),
    ],
)  # fmt: skip
def test_a_bad_source_through_the_cli_is_one_clear_error(
    program: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    data: str | None,
    options: list[str],
    expected: str,
) -> None:
    if data is not None:
        put(program.parent, name, data)
    assert main(["run", "prog.llmflow", "-q", "--inputs", name, *options]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err


def test_a_duplicate_csv_id_through_the_cli_leaves_no_traceback(program: Path) -> None:
    # In a process of its own: what a dying generator prints comes when it is collected.
    put(program.parent, "dup.csv", "k,name\n1,a\n1,b\n")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from llmflow.cli import main; sys.exit(main())"]
        + ["run", "prog.llmflow", "-q", "--inputs", "dup.csv", "--id", "k", "--output", "o.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert 'dup.csv:3: id "1" is also the id of line 2' in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_a_row_without_an_id_and_a_row_whose_id_is_its_line_resume_apart(
    program: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(program.parent, "rows.jsonl", jsonl({"k": 2, "name": "a"}, {"name": "b"}))
    args = ["run", "prog.llmflow", "-q", "--inputs", "rows.jsonl", "--id", "k"]
    args += ["--output", "out.jsonl"]
    assert main(args) == 1  # the row without an id failed
    out = program.parent / "out.jsonl"
    written = {(r := json.loads(text))["id"]: r["error"] for text in out.read_text().splitlines()}
    assert written == {2: None, "line 2": "rows.jsonl:2: no id: the row has no field 'k'"}
    capsys.readouterr()
    assert main(args) == 1  # resumes: both rows are held, neither runs again
    err = capsys.readouterr().err
    assert "twice" not in err and "1 row failed" in err, err
    assert len(out.read_text().splitlines()) == 2


def test_count_rows_counts_what_read_rows_reads_and_never_blocks(
    tmp_path: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines_ = put(tmp_path, "rows.jsonl", jsonl({"name": "a"}, "", "{bad", {"name": "c"}))
    records = put(tmp_path, "rows.csv", 'name\n"two\nlines"\n\nb\nc\n')
    assert count_rows(lines_) == len(read(lines_, plan)) == 3
    assert count_rows(records) == len(read(records, plan)) == 3
    assert count_rows(records, limit=2) == count_rows(lines_, limit=2) == 2
    assert count_rows(put(tmp_path, "empty.csv", "")) == 0
    assert count_rows("-") is None  # stdin is read once, by the run
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    counted: list[int | None] = []
    assert _without_blocking(lambda: counted.append(count_rows(fifo))) is None
    assert counted == [None]
    assert count_rows(tmp_path) is None and count_rows(tmp_path / "missing.jsonl") is None
    monkeypatch.setattr(rows_module, "MAX_ROW_BYTES", 64)
    assert count_rows(put(tmp_path, "long.csv", 'name\n"open\n' + "x\n" * 100)) is None
    assert count_rows(put(tmp_path, "long.jsonl", "x" * 1000 + "\n{}\n")) == 2


OPTIONAL = """
model m = scripted("x", reply="ok")
enum Color { red, green }
fn f(name: str) -> out: str
\"\"\"Hi {{name}}: {{out}}\"\"\"
flow main(name: str, nickname: str?, age: int?, color: Color? = Color.red) -> out: str {
    out = f(name)
}
"""


def test_a_missing_optional_column_or_empty_cell_is_none(
    tmp_path: Path, compile_source: Callable[..., Plan], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plan = compile_source(OPTIONAL)
    rows = read(put(tmp_path, "rows.jsonl", jsonl({"name": "a"}, {"name": "b", "age": 3})), plan)
    assert [r.inputs for r in rows] == [
        {"name": "a", "nickname": None, "age": None, "color": "red"},  # a default still wins
        {"name": "b", "nickname": None, "age": 3, "color": "red"},
    ]
    path = put(tmp_path, "rows.csv", "name,nickname,age\na,,\nb,Bo,4\nc,42,x\n")
    rows = read(path, plan)
    assert [r.inputs for r in rows[:2]] == [
        {"name": "a", "nickname": None, "age": None, "color": "red"},
        {"name": "b", "nickname": "Bo", "age": 4, "color": "red"},  # the text, for a str?
    ]
    assert (
        rows[2].problem == "rows.csv:4: column 'age' expects int?: 'x' is not an integer (or null)"
    )

"""The results file of a dataset run (`runtime.results`): one JSON line per row, read
back on resume. A torn last line is dropped and truncated; any other line that is not a
result is refused with its line and column; an id is held once; `retry_failed` rewrites
the file without its failed rows in one rename, keeping its mode and its symbolic link."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmflow.cli import main
from llmflow.runtime import results as results_module
from llmflow.runtime.batch import RowResult
from llmflow.runtime.calls import RowId
from llmflow.runtime.results import ResultsFile
from llmflow.runtime.store import StoreError


def result(row_id: RowId, error: str | None = None, **outputs: Any) -> RowResult:
    return RowResult(row_id, 1, f"d-{row_id}", outputs or {"out": f"answer {row_id}"}, error)


def line(row_id: RowId, error: str | None = None) -> str:
    return json.dumps(result(row_id, error).to_json()) + "\n"


def opened(path: Path, warnings: list[str] | None = None) -> ResultsFile:
    return ResultsFile(path, warn=(warnings.append if warnings is not None else lambda _: None))


def ids(path: Path) -> list[RowId]:
    return [json.loads(text)["id"] for text in path.read_text().splitlines() if text.strip()]


def test_lines_written_are_read_back_as_done_and_failed(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with_file = opened(path)
    assert path.exists() and with_file.rows == 0
    for r in [result(1), result(2, "rows.jsonl:2: missing input 'name'"), result("k")]:
        with_file.write(r)
    assert with_file.written == 3
    with_file.close()
    with_file.close()  # twice is fine
    again = opened(path)
    assert (set(again.done), set(again.failed)) == ({"1", '"k"'}, {"2"})
    assert again.has(1) and again.has("k") and again.has(2) and not again.has(3)
    assert again.digest(2) == "d-2" and again.digest(3) is None
    assert again.rows == 3 and again.written == 0
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "id": 1,
        "outputs": {"out": "answer 1"},
        "error": None,
        "stats": {
            "calls": 0,
            "input_tokens": 0,
            "cached_tokens": 0,
            "output_tokens": 0,
            "dollars": 0,
            "seconds": 0,
        },
        "digest": "d-1",
    }
    again.close()


def test_ids_7_and_the_string_7_are_two_rows(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(line(7) + line("7"))
    with_file = opened(path)
    assert with_file.rows == 2 and with_file.has(7) and with_file.has("7")
    assert not with_file.has("07")
    with_file.close()


def test_an_empty_file_and_blank_lines_hold_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("")
    assert opened(path).rows == 0
    path.write_text("\n" + line(1) + "  \n\r\n" + line(2) + "\n\n")
    with_file = opened(path)
    assert with_file.rows == 2
    with_file.write(result(3))
    with_file.close()
    assert ids(path) == [1, 2, 3]


def test_a_torn_last_line_is_dropped_and_the_next_write_takes_its_place(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    whole = line(1) + line(2)
    path.write_text(whole + line(3)[:25])
    warnings: list[str] = []
    with_file = opened(path, warnings)
    assert warnings == [
        f"{path}:3: the last line is cut short (a crash?): dropped, its row runs again"
    ]
    assert path.read_text() == whole  # truncated at once
    assert with_file.rows == 2 and not with_file.has(3)
    with_file.write(result(3))
    with_file.close()
    assert path.read_text() == whole + line(3)


def test_a_last_line_without_its_newline_is_torn_even_if_it_reads_whole(tmp_path: Path) -> None:
    # A write cut just before its newline looks like this; the docstring says so.
    assert "even one that reads as a whole" in (results_module.__doc__ or "")
    path = tmp_path / "out.jsonl"
    path.write_text(line(1) + line(2).rstrip("\n"))
    warnings: list[str] = []
    with_file = opened(path, warnings)
    assert with_file.rows == 1 and not with_file.has(2) and len(warnings) == 1
    with_file.close()
    assert path.read_text() == line(1)


def test_a_torn_line_after_blank_lines_is_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(line(1) + "\n\n" + '{"id": 2, "outp')
    with_file = opened(path)
    assert with_file.rows == 1
    with_file.close()
    assert path.read_text() == line(1) + "\n\n"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("{not json}\n", "2:2: not a result line of llmflow (not JSON: Expecting property name"),
        ('{"id": 2, "outputs": {}, "error": null,}\n', "2:40: not a result line of llmflow"),
        ("[1, 2]\n", "2:1: not a result line of llmflow (not a JSON object)"),
        ('{"outputs": {}, "error": null}\n', '2:1: not a result line of llmflow (no "id"'),
        ('{"id": true, "outputs": {}, "error": null}\n', '(no "id" that is a string'),
        ('{"id": 1.5, "outputs": {}, "error": null}\n', '(no "id" that is a string'),
        ('{"id": 2, "error": null}\n', '(no "outputs" object)'),
        ('{"id": 2, "outputs": {}}\n', '(no "error" that is null or a string)'),
        ('{"id": 2, "outputs": {}, "error": 1}\n', '(no "error" that is null or a string)'),
        (b'{"id": 2, "outputs": {"a": "\xff"}, "error": null}\n', "2:29: not a result line"),
        ("\x00\x00\x00\n", "2:1: not a result line of llmflow (not JSON"),
    ],
)
def test_a_line_that_is_not_a_result_is_refused_with_line_and_column(
    tmp_path: Path, text: str | bytes, where: str
) -> None:
    path = tmp_path / "out.jsonl"
    data = text if isinstance(text, bytes) else text.encode()
    for tail in (line(3).encode(), b""):  # in the middle, and as a whole last line
        before = line(1).encode() + data + tail
        path.write_bytes(before)
        with pytest.raises(StoreError) as caught:
            opened(path)
        message = str(caught.value)
        assert message.startswith(f"{path}:"), message
        assert where in message, message
        assert "fix or remove it, or write to another --output" in message
        assert path.read_bytes() == before  # nothing dropped


def test_a_row_in_the_file_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(line(1) + line("a") + line("a", "failed"))
    with pytest.raises(StoreError) as caught:
        opened(path)
    assert str(caught.value) == (
        f'{path}:3:1: row "a" is in the file twice; keep one line per row, or write to '
        "another --output"
    )


def test_writing_a_row_the_file_held_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(line(1, "boom"))
    with_file = opened(path)
    with pytest.raises(StoreError, match="row 1 is written already"):
        with_file.write(result(1))
    with_file.close()
    assert opened(path).rows == 1  # still a file that opens


def test_rows_a_run_writes_are_counted_not_remembered(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with_file = opened(path)
    for i in range(1, 101):
        with_file.write(result(i, "boom" if i % 10 == 0 else None))
    assert with_file.rows == 100 and with_file.failed_rows == 10
    assert with_file.done == {} and with_file.failed == {}  # memory flat in rows written
    with_file.close()
    assert len(opened(path).done) == 90


def test_retry_failed_drops_failed_rows_in_one_rename_keeping_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(line(1) + line(2, "boom") + "\n" + line(3) + line(4, "boom"))
    os.chmod(path, 0o640)
    before = os.stat(path)
    reader = path.open()  # a reader of the old file keeps the old file
    with_file = opened(path)
    with_file.retry_failed()
    after = os.stat(path)
    assert ids(path) == [1, 3] and with_file.rows == 2 and not with_file.has(2)
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert after.st_ino != before.st_ino  # replaced, not rewritten in place
    assert len(reader.read().splitlines()) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary left
    with_file.write(result(2))
    with_file.write(result(4))
    with_file.close()
    assert ids(path) == [1, 3, 2, 4]
    assert set(opened(path).done) == {"1", "2", "3", "4"}


def test_retry_failed_without_failures_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(line(1))
    before = os.stat(path).st_ino
    with_file = opened(path)
    with_file.retry_failed()
    assert os.stat(path).st_ino == before
    with_file.close()


def test_retry_failed_comes_before_any_row_is_written(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(line(1) + line(2, "boom"))
    with_file = opened(path)
    with_file.write(result(3))
    with pytest.raises(StoreError, match="before rows are written"):
        with_file.retry_failed()
    with_file.close()
    assert ids(path) == [1, 2, 3]


def test_retry_failed_through_a_symbolic_link_rewrites_its_target(tmp_path: Path) -> None:
    target = tmp_path / "data" / "out.jsonl"
    target.parent.mkdir()
    target.write_text(line(1) + line(2, "boom"))
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with_file = opened(link)
    with_file.retry_failed()
    with_file.write(result(2))
    with_file.close()
    assert link.is_symlink() and link.resolve() == target
    assert ids(target) == [1, 2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]


def _without_blocking(action: Callable[[], object]) -> BaseException | None:
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


def test_a_directory_or_a_fifo_as_output_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    for path, expected in [
        (tmp_path, f"--output {tmp_path} is a directory, not a file"),
        (fifo, f"--output {fifo} is not a regular file (resuming needs to read it)"),
        (tmp_path / "no" / "out.jsonl", f"cannot write {tmp_path / 'no' / 'out.jsonl'}: No such"),
    ]:
        err = _without_blocking(lambda path=path: opened(path))
        assert isinstance(err, StoreError) and str(err).startswith(expected), err


def test_a_row_too_long_to_read_back_is_written_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "MAX_LINE", 2**20)
    path = tmp_path / "out.jsonl"
    with_file = opened(path)
    with_file.write(result(1, out="x" * 2**21))
    with_file.write(result(2))
    with_file.close()
    again = opened(path)
    assert set(again.failed) == {"1"} and set(again.done) == {"2"}
    first = json.loads(path.read_text().splitlines()[0])
    assert first["outputs"] == {} and first["digest"] == "d-1"
    assert first["error"] == (
        "the row's outputs take 2 MiB, more than a results line holds (1 MiB)"
    )


def test_a_line_longer_than_the_limit_is_refused_or_if_torn_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "MAX_LINE", 2**20)
    path = tmp_path / "out.jsonl"
    huge = line(2).replace('"answer 2"', json.dumps("y" * 3 * 2**20))
    path.write_text(line(1) + huge + line(3))
    with pytest.raises(StoreError, match=rf"{path}:2:1: not a result line of llmflow \(longer"):
        opened(path)
    path.write_text(line(1) + huge)  # a whole last line too
    with pytest.raises(StoreError, match=rf"{path}:2:1: .*longer than 1 MiB"):
        opened(path)
    path.write_text(line(1) + huge[: 2 * 2**20])  # torn: dropped, as any torn line
    warnings: list[str] = []
    with_file = opened(path, warnings)
    assert with_file.rows == 1 and warnings[0].startswith(f"{path}:2: the last line is cut")
    with_file.write(result(2))
    with_file.close()
    assert ids(path) == [1, 2]


def test_line_numbers_after_a_long_line_stay_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "MAX_LINE", 2**20)
    path = tmp_path / "out.jsonl"
    long_ok = line(1).replace('"answer 1"', json.dumps("y" * (2**20 - 200)))
    path.write_text(long_ok + line(2) + "oops\n")
    with pytest.raises(StoreError, match=rf"{path}:3:1: "):
        opened(path)


def test_a_bad_output_file_through_the_cli_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.llmflow").write_text(
        'model m = scripted("x", reply="ok")\n\n'
        "fn f(name: str) -> out: str\n"
        '"""Hi {{name}}: {{out}}"""\n\n'
        "flow main(name: str) -> out: str {\n    out = f(name)\n}\n"
    )
    (tmp_path / "rows.jsonl").write_text('{"name": "a"}\n')
    (tmp_path / "out.jsonl").write_text(line(1) + "garbage\n" + line(2))
    args = ["run", "prog.llmflow", "-q", "--inputs", "rows.jsonl", "--output", "out.jsonl"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "out.jsonl:2:1: not a result line of llmflow" in err and "Traceback" not in err


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from llmflow.runtime.batch import RowResult
from llmflow.runtime.results import ResultsFile
from llmflow.runtime.store import StoreError

path = Path(sys.argv[1])
results = ResultsFile(path)
results.write(RowResult(1, 1, "d", {"out": "small"}))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, resource.RLIM_INFINITY))
try:
    results.write(RowResult(2, 1, "d", {"out": "x" * 10_000}))  # 100 bytes of it fit
except StoreError as err:
    print(err)
results.close()
"""


def test_a_write_that_fails_part_way_leaves_no_part_line(tmp_path: Path) -> None:
    # A real partial write: the file size limit lets the first 100 bytes through.
    path = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.startswith(f"cannot write {path}: File too large"), done
    assert ids(path) == [1] and path.read_text().endswith("\n")

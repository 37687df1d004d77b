"""Loading programs: only program text is read, and what is not is a clear error that
never quotes the file (a FIFO, a device, /proc, a binary, a huge or mis-encoded file)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow.compiler import check_file
from llmflow.compiler.diagnostics import Diagnostic
from llmflow.compiler.modules import (
    MAX_SOURCE_BYTES,
    UnreadableSource,
    decode_source,
    load_program,
    read_source,
)
from llmflow.errors import CompileError

PROGRAM = "flow main(x: str) -> y: str {\n    y = upper(x)\n}\n"


def errors(path: Path) -> list[Diagnostic]:
    with pytest.raises(CompileError) as info:
        check_file(path)
    return info.value.diagnostics


def rendered(path: Path) -> str:
    with pytest.raises(CompileError) as info:
        check_file(path)
    return info.value.render()


def why(data: bytes) -> str:
    with pytest.raises(UnreadableSource) as info:
        decode_source(data)
    return str(info.value)


# ---- what a file's bytes may be ------------------------------------------------------------


def test_a_utf8_byte_order_mark_is_dropped_and_positions_stay_right(tmp_path: Path) -> None:
    path = tmp_path / "bom.llmflow"
    path.write_bytes(b"\xef\xbb\xbf" + PROGRAM.replace("upper", "uper").encode())
    assert read_source(path) == PROGRAM.replace("upper", "uper")
    [diag] = errors(path)
    assert (diag.span.line, diag.span.col) == (2, 9)  # the BOM takes no column
    assert "\ufeff" not in rendered(path)


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (PROGRAM.encode("utf-16"), "UTF-16"),
        (PROGRAM.encode("utf-16-be"), None),
        (b"\xff\xfe\x00\x00" + PROGRAM.encode("utf-32-le"), "UTF-32"),
        (b"\x00\x00\xfe\xff" + PROGRAM.encode("utf-32-be"), "UTF-32"),
    ],
)
def test_utf16_and_utf32_are_errors_that_say_so(data: bytes, encoding: str | None) -> None:
    message = why(data)
    if encoding:
        assert message == (
            f"not UTF-8 text: it starts with a {encoding} byte order mark; save it as UTF-8"
        )
    else:  # without a byte order mark: the NUL bytes give it away
        assert message == "not a text file: a NUL byte at byte offset 0"


def test_invalid_utf8_names_the_first_bad_byte_with_its_offset_line_and_column() -> None:
    data = 'flow main() -> y: str {\n    y = "é'.encode() + b"\xff\xfe" + b'"\n}\n'
    offset = data.index(b"\xff")
    assert why(data) == (
        f"not UTF-8 text: byte 0xff at byte offset {offset} (line 2, column 11) is invalid; "
        "save it as UTF-8"
    )


@pytest.mark.parametrize("cut", range(1, 4))
def test_a_file_cut_inside_a_character_is_not_utf8(cut: int) -> None:
    data = PROGRAM.encode() + "😀".encode()[:cut]
    assert why(data).startswith(f"not UTF-8 text: byte 0xf0 at byte offset {len(PROGRAM)} ")


def test_a_binary_file_is_not_a_text_file() -> None:
    assert why(b"\x7fELF\x02\x01\x01\x00\x00") == "not a text file: a NUL byte at byte offset 7"


# ---- what a path may be --------------------------------------------------------------------


def test_the_main_file_unreadable_is_a_file_error_without_position(tmp_path: Path) -> None:
    (tmp_path / "dir.llmflow").mkdir()
    for name, message in [
        ("dir.llmflow", "not a file: it is a directory"),
        ("missing.llmflow", "no such file"),
    ]:
        [diag] = errors(tmp_path / name)
        assert (diag.kind, diag.message, diag.span, diag.file) == (
            "file",
            message,
            None,
            str(tmp_path / name),
        )
        assert rendered(tmp_path / name) == f"{tmp_path / name}: error: {message}\n"


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.llmflow"
    with path.open("wb") as file:  # sparse: nothing is written
        file.truncate(MAX_SOURCE_BYTES + 1)
    [diag] = errors(path)
    assert diag.message == (
        f"too big: {MAX_SOURCE_BYTES + 1:,} bytes; a program is at most "
        f"{MAX_SOURCE_BYTES:,} bytes (8 MiB)"
    )
    path.write_bytes(b"#" * MAX_SOURCE_BYTES)  # at the limit: read
    assert read_source(path) == "#" * MAX_SOURCE_BYTES


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_not_read(tmp_path: Path) -> None:
    with pytest.raises(UnreadableSource, match="not a regular file"):
        read_source("/dev/zero")
    (tmp_path / "zero.llmflow").symlink_to("/dev/zero")
    with pytest.raises(UnreadableSource, match="not a regular file"):
        read_source(tmp_path / "zero.llmflow")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_neither_blocks_check_nor_stops_it(tmp_path: Path) -> None:
    """In a child process with a time bound: a blocking open would hang forever."""
    os.mkfifo(tmp_path / "fifo.llmflow")
    (tmp_path / "uses.llmflow").write_text('import "fifo.llmflow"\n' + PROGRAM)
    (tmp_path / "good.llmflow").write_text(PROGRAM)
    code = "import sys; from llmflow.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["check", "fifo.llmflow", "uses.llmflow", "good.llmflow"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        "fifo.llmflow: error: not a regular file: a FIFO, socket or device could block or never end"
    )
    assert "uses.llmflow:1:1: error: cannot import 'fifo.llmflow': not a regular file" in (
        done.stderr
    )
    assert done.stderr.endswith("3 files checked: 2 errors\n")


# ---- what import reads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["/proc/self/environ", "/etc/passwd", "data.json", "lib.llmflow.bak", "lib"]
)
def test_import_reads_only_llmflow_files(
    target: str, write: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFLOW_TEST_ENV_MARKER", "visible-only-in-the-environment")
    write("data.json", '{"SHELL": "not a program"}')
    main = write("main.llmflow", f'import "{target}"\n' + PROGRAM)
    [diag] = errors(main)
    assert diag.kind == "import"
    assert diag.message == f"cannot import '{target}': import reads only .llmflow files"
    assert (diag.span.line, diag.span.col) == (1, 1)
    text = rendered(main)
    assert "visible-only-in-the-environment" not in text
    assert "not a program" not in text


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_an_llmflow_name_for_proc_environ_is_never_echoed(
    write: Callable[[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFLOW_TEST_ENV_MARKER", "visible-only-in-the-environment")
    (tmp_path / "env.llmflow").symlink_to("/proc/self/environ")
    main = write("main.llmflow", 'import "env.llmflow"\n' + PROGRAM)
    [diag] = errors(main)
    assert diag.message.startswith("cannot import 'env.llmflow': not a text file: a NUL byte")
    assert "visible-only-in-the-environment" not in rendered(main)
    # as the main file too
    [diag] = errors(tmp_path / "env.llmflow")
    assert diag.message.startswith("not a text file")


def test_an_imported_file_that_is_not_a_program_is_an_error_at_its_import(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    (tmp_path / "bin.llmflow").write_bytes(b"secret-bytes\xff\x00\x01")
    (tmp_path / "latin1.llmflow").write_bytes("fn caf\xe9".encode("latin-1"))
    (tmp_path / "folder.llmflow").mkdir()
    main = write(
        "main.llmflow",
        'import "bin.llmflow"\nimport "latin1.llmflow"\nimport "folder.llmflow"\n'
        'import "gone.llmflow"\n' + PROGRAM,
    )
    got = [(d.span.line, d.message) for d in errors(main)]
    assert got == [
        (1, "cannot import 'bin.llmflow': not a text file: a NUL byte at byte offset 13"),
        (
            2,
            "cannot import 'latin1.llmflow': not UTF-8 text: byte 0xe9 at byte offset 6 "
            "(line 1, column 7) is invalid; save it as UTF-8",
        ),
        (3, "cannot import 'folder.llmflow': not a file: it is a directory"),
        (4, "cannot find 'gone.llmflow'"),
    ]
    assert "secret-bytes" not in rendered(main)


def test_a_good_import_still_loads_once(write: Callable[[str, str], Path]) -> None:
    write(
        "lib/a.llmflow", 'import "../main.llmflow"\nfn helper(x: str) -> y: str\n"""{{x}}{{y}}"""\n'
    )
    main = write("main.llmflow", 'import "lib/a.llmflow"\nimport "./lib/a.llmflow"\n' + PROGRAM)
    program, diags = load_program(main)
    assert diags == []
    assert sorted(program.modules) == sorted(
        [str(main), os.path.join(str(main.parent), "lib/a.llmflow")]
    )


def test_a_path_too_long_for_the_file_system_is_an_error_at_the_import_or_extern(
    write: Callable[[str, str], Path],
) -> None:
    long = "x" * 5000
    main = write(
        "main.llmflow",
        f'import "{long}.llmflow"\nextern fn f(text: str) -> int = "{"a" * 300}:f"\n' + PROGRAM,
    )
    text = rendered(main)
    assert "main.llmflow:1:1: error: cannot import 'xxxxxxxx" in text
    assert "File name too long" in text and "main.llmflow:2:33: error: cannot import" in text
    assert "internal error" not in text and max(map(len, text.split("\n"))) < 1000


def test_a_newline_in_an_import_path_stays_on_the_message_line(
    write: Callable[[str, str], Path],
) -> None:
    main = write("main.llmflow", 'import "a\\nb.llmflow"\n' + PROGRAM)
    lines = rendered(main).rstrip("\n").split("\n")
    assert lines[0] == f"{main}:1:1: error: cannot find 'a'…"
    assert all(line.startswith((str(main), " ", "1 |")) for line in lines)
    assert lines[-1].endswith(
        "looked for " + str(main.parent / "a\\nb.llmflow").replace("\n", "\\n")
    )

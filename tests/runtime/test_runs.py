"""Run folders: owner-only, never shared by two runs, `last` only once a record is written,
and a record that is not one is an error naming the file."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from llmflow.runtime.runs import RunDir, ensure_home
from llmflow.runtime.store import StoreError

META: dict[str, Any] = {
    "program": "/tmp/p.llmflow",
    "flow": "main",
    "inputs": {"q": "hi"},
    "models": ["mini"],
    "started": 1764600000.5,
    "status": "running",
}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_missing_home_is_created_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "home"
    run = RunDir.create(home)
    assert mode(home) == 0o700 and mode(home / "runs") == 0o700 and mode(run.path) == 0o700
    run.write_meta(META)
    assert mode(run.meta_path) == 0o600
    assert [p.name for p in run.path.iterdir()] == ["run.json"]  # no temporary file left


def test_an_existing_home_keeps_its_mode_and_our_folders_are_tightened(tmp_path: Path) -> None:
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(0o755)
    (home / "runs").mkdir()
    (home / "runs").chmod(0o755)
    run = RunDir.create(home)
    assert mode(home) == 0o755
    assert mode(home / "runs") == 0o700 and mode(run.path) == 0o700


def test_a_home_that_is_a_file_is_an_error_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("")
    with pytest.raises(StoreError, match=f"{home} is not a folder"):
        RunDir.create(home)
    with pytest.raises(StoreError, match=f"{home} is not a folder"):
        ensure_home(home)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "runs").write_text("")
    with pytest.raises(StoreError, match="runs is not a folder"):
        RunDir.create(tmp_path / "other")


def test_runs_made_in_a_tight_loop_never_share_a_folder(tmp_path: Path) -> None:
    made = [RunDir.create(tmp_path).path for _ in range(400)]
    assert len(set(made)) == 400
    assert len(list((tmp_path / "runs").iterdir())) == 400


def test_runs_made_in_threads_never_share_a_folder(tmp_path: Path) -> None:
    made: list[Path] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        for _ in range(60):
            path = RunDir.create(tmp_path).path
            with lock:
                made.append(path)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == len(set(made)) == 480
    assert len(list((tmp_path / "runs").iterdir())) == 480


def test_last_is_the_latest_run_with_a_record(tmp_path: Path) -> None:
    older = RunDir.create(tmp_path)
    older.write_meta(META)
    (tmp_path / "runs" / "29991231-235959-ffff").mkdir()  # a run still being set up
    (tmp_path / "runs" / "29991231-235959-zzzz").write_text("")  # not a folder
    assert RunDir.find("last", tmp_path).path == older.path
    assert RunDir.find(older.id, tmp_path).path == older.path
    assert RunDir.find(str(older.path), tmp_path).path == older.path


def test_last_tells_runs_of_the_same_second_apart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for suffix, started in [("ffff", 10.0), ("0000", 30.0), ("8888", 20.0)]:
        (runs / f"20261201-120000-{suffix}").mkdir()
        RunDir(runs / f"20261201-120000-{suffix}").write_meta({**META, "started": started})
    assert RunDir.find("last", tmp_path).id == "20261201-120000-0000"


def test_no_run_names_the_recent_ones(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no run 'last'"):
        RunDir.find("last", tmp_path)
    run = RunDir.create(tmp_path)
    run.write_meta(META)
    with pytest.raises(StoreError, match=f"no run 'nope' in .*; recent runs: {run.id}"):
        RunDir.find("nope", tmp_path)


def test_a_record_round_trips_even_with_odd_text(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    meta = {**META, "outputs": {"a": "half an emoji \ud83d, 日本"}, "budget": 0.5}
    run.write_meta(meta)
    run.meta_path.read_bytes().decode("utf-8")
    assert run.read_meta() == meta
    run.write_meta({**meta, "status": "done"})
    assert run.read_meta()["status"] == "done"


BAD_RECORDS: dict[str, tuple[bytes, str]] = {
    "garbage": (b"garbage", r"run\.json:1:1: not a run record: not JSON"),
    "cut short": (json.dumps(META).encode()[:40], "not a run record: not JSON"),
    "not UTF-8": (b'{"program": "\xff"}', r"not a run record: not UTF-8 \(byte 13\)"),
    "empty": (b"", "not a run record: not JSON"),
    "a list": (b"[]", "not a run record: expected a JSON object"),
    "a field missing": (
        json.dumps({k: v for k, v in META.items() if k != "inputs"}).encode(),
        "'inputs' is missing",
    ),
    "inputs of the wrong type": (
        json.dumps({**META, "inputs": "q=hi"}).encode(),
        "'inputs' should be an object, not a string",
    ),
    "a start that is not a time": (
        json.dumps({**META, "started": "yesterday"}).encode(),
        r"'started' should be a time \(seconds\), not a string",
    ),
    "a boolean program": (
        json.dumps({**META, "program": True}).encode(),
        "'program' should be a path, not a boolean",
    ),
    "models that are not names": (
        json.dumps({**META, "models": [1]}).encode(),
        "'models' should be a list of names",
    ),
    "an unknown status": (
        json.dumps({**META, "status": "sleeping"}).encode(),
        "'status' should be one of running, stopped, done, failed",
    ),
    "outputs of the wrong type": (
        json.dumps({**META, "outputs": [1]}).encode(),
        "'outputs' should be an object, not a list",
    ),
    "deep nesting": (b"[" * 100_000, "not a run record"),
}


@pytest.mark.parametrize(("data", "message"), BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_record_that_is_not_one_is_an_error_naming_the_file(
    tmp_path: Path, data: bytes, message: str
) -> None:
    run = RunDir.create(tmp_path)
    run.meta_path.write_bytes(data)
    with pytest.raises(StoreError, match=message) as caught:
        run.read_meta()
    assert str(caught.value).startswith(str(run.meta_path))
    assert RunDir.find("last", tmp_path).path == run.path  # found, then refused: not skipped


def test_a_directory_in_place_of_the_record_is_an_error_naming_it(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    run.meta_path.mkdir()
    with pytest.raises(StoreError, match=f"{run.meta_path} is a directory"):
        RunDir.find("last", tmp_path).read_meta()
    with pytest.raises(StoreError, match=f"cannot write {run.meta_path}"):
        run.write_meta(META)
    assert [p.name for p in run.path.iterdir()] == ["run.json"]


def test_a_run_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    """A second `--resume` of a run that is still going would send every call again."""
    run = RunDir.create(tmp_path)
    run.lock()
    other = RunDir(run.path)
    with pytest.raises(StoreError, match=f"run {run.id} is still running in another process"):
        other.lock()
    run.unlock()
    other.lock()
    other.unlock()
    assert (run.path / "lock").stat().st_mode & 0o777 == 0o600

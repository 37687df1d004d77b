"""The response cache: JSON answers by key, nothing else read back (a crafted pickle runs
nothing), bad entries are misses, and a cache that cannot be used never stops a run."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pickle
import re
import shutil
import sqlite3
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmflow.runtime.backends.base import Generation
from llmflow.runtime.cache import ResponseCache

ANSWER = Generation(text="héllo 日本", input_tokens=5, output_tokens=2, finish_reason="stop")


class Reports(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


def cache_at(directory: Path) -> tuple[ResponseCache, Reports]:
    reports = Reports()
    return ResponseCache(directory, reports), reports


def test_answers_are_kept_across_instances_in_owner_only_files(tmp_path: Path) -> None:
    cache, reports = cache_at(tmp_path / "cache")
    assert cache.get("k") is None
    cache.put("k", ANSWER)
    cache.put("lone", Generation(text="\ud83d half an emoji"))
    assert cache.get("k") == ANSWER
    files = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "cache").iterdir()}
    assert files == {"cache.db": 0o600, "cache.db-wal": 0o600, "cache.db-shm": 0o600}
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    cache.close()
    again, _ = cache_at(tmp_path / "cache")
    assert again.get("k") == ANSWER
    assert again.get("lone") == Generation(text="\ud83d half an emoji")
    again.close()
    assert reports == []


def test_existing_files_are_tightened(tmp_path: Path) -> None:
    cache, _ = cache_at(tmp_path / "cache")
    cache.put("k", ANSWER)
    cache.close()
    directory = tmp_path / "cache"
    directory.chmod(0o755)
    (directory / "cache.db").chmod(0o644)
    (directory / "cache.db-wal").write_bytes(b"")
    (directory / "cache.db-wal").chmod(0o666)
    cache, reports = cache_at(directory)
    assert cache.get("k") == ANSWER and reports == []
    cache.close()
    assert directory.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in directory.iterdir())


class _Plant:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return pathlib.Path.touch, (str(self.marker),)  # type: ignore[return-value]


def test_a_crafted_pickle_runs_nothing_and_is_a_miss(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Plant(control)))
    assert control.exists()  # the payload does run when unpickled

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Plant(marker), protocol=pickle.HIGHEST_PROTOCOL)
    directory = tmp_path / "cache"
    directory.mkdir()
    db = sqlite3.connect(directory / "cache.db")
    # diskcache's layout, as an older llmflow (or an attacker) wrote it: mode 4 = pickle,
    # for the key, the value, and the settings.
    db.execute(
        "CREATE TABLE Cache (rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, store_time REAL,"
        " expire_time REAL, access_time REAL, access_count INTEGER DEFAULT 0, tag BLOB,"
        " size INTEGER DEFAULT 0, mode INTEGER DEFAULT 0, filename TEXT, value BLOB)"
    )
    db.execute(
        "INSERT INTO Cache (key, raw, store_time, access_time, mode, value) VALUES (?, 0, 0, 0,"
        " 4, ?)",
        (payload, payload),
    )
    json_key = zlib.compress(json.dumps("k").encode(), 1)  # JSONDisk's form of the key "k"
    db.execute(
        "INSERT INTO Cache (key, raw, store_time, access_time, mode, value) VALUES (?, 1, 0, 0,"
        " 4, ?)",
        (json_key, payload),
    )
    db.execute("CREATE TABLE Settings (key TEXT NOT NULL UNIQUE, value)")
    db.execute("INSERT INTO Settings VALUES ('disk_pickle_protocol', ?)", (payload,))
    # And in our own table, as a blob and as text.
    db.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, answer TEXT)")
    db.execute("INSERT INTO answers VALUES ('blob', ?)", (payload,))
    db.execute("INSERT INTO answers VALUES ('text', ?)", (payload.decode("latin-1"),))
    db.commit()
    db.close()

    cache, reports = cache_at(directory)
    for key in ("k", "blob", "text", payload.decode("latin-1")):
        assert cache.get(key) is None
    cache.put("k", ANSWER)
    assert cache.get("k") == ANSWER
    cache.close()
    assert not marker.exists()
    assert reports == []


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        '{"text": "cut sh',
        "[1, 2]",
        "123",
        "null",
        '{"text": 5}',
        '{"text": "a", "input_tokens": "3"}',
        '{"text": "a", "source": "elsewhere"}',
        "[" * 100_000,
        "1" * 10_000,
        b'{"text": "bytes"}',
        42,
        None,
    ],
)
def test_an_entry_that_is_not_an_answer_is_a_miss(tmp_path: Path, stored: object) -> None:
    cache, reports = cache_at(tmp_path / "cache")
    cache.put("k", ANSWER)
    cache.close()
    db = sqlite3.connect(tmp_path / "cache" / "cache.db")
    db.execute("UPDATE answers SET answer = ? WHERE key = 'k'", (stored,))
    db.commit()
    db.close()
    cache, reports = cache_at(tmp_path / "cache")
    assert cache.get("k") is None
    cache.put("k", ANSWER)  # the fresh answer replaces it
    assert cache.get("k") == ANSWER
    cache.close()
    assert reports == []


def _garbage(directory: Path) -> None:
    (directory / "cache.db").write_bytes(b"this is not a database\n" * 100)


def _truncated(directory: Path) -> None:
    cache, _ = cache_at(directory)
    for i in range(200):
        cache.put(f"k{i}", Generation(text="x" * 500))
    cache.close()
    db = directory / "cache.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])


def _directory(directory: Path) -> None:
    (directory / "cache.db").mkdir()


def _link(directory: Path) -> None:
    (directory / "cache.db").symlink_to(directory.parent / "elsewhere.db")


def _wrong_table(directory: Path) -> None:
    db = sqlite3.connect(directory / "cache.db")
    db.execute("CREATE TABLE answers (something TEXT)")
    db.close()


@pytest.mark.parametrize("damage", [_garbage, _truncated, _directory, _link, _wrong_table])
def test_an_unusable_cache_is_reported_once_and_bypassed(tmp_path: Path, damage) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    damage(directory)
    cache, reports = cache_at(directory)
    for i in range(5):
        assert cache.get(f"k{i}") is None
        cache.put(f"k{i}", ANSWER)
    cache.close()
    cache.close()
    assert len(reports) == 1
    assert f"{directory / 'cache.db'}" in reports[0] and "running without it" in reports[0]
    assert not (tmp_path / "elsewhere.db").exists()  # a link is not followed


def test_a_cache_folder_that_is_a_file_is_bypassed(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a folder")
    cache, reports = cache_at(tmp_path / "cache")
    assert cache.get("k") is None
    cache.put("k", ANSWER)
    assert reports == [
        f"response cache unusable, running without it: {tmp_path / 'cache'} is not a folder"
    ]


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """The folder and its files cannot be written, even by root (who ignores modes: then
    the immutable attribute, where the machine lets us set it)."""
    paths = [directory, *directory.iterdir()]
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", *map(str, paths)]).returncode != 0:
        subprocess.run([chattr or "true", "-i", *map(str, paths)])
        pytest.skip("running as root, and chattr +i is not available to make a folder read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, paths)], check=True)


def test_a_read_only_cache_is_bypassed(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    cache, _ = cache_at(directory)
    cache.put("k", ANSWER)
    cache.close()
    for side in directory.glob("cache.db-*"):
        side.unlink()
    with read_only(directory):
        cache, reports = cache_at(directory)
        cache.get("k")
        cache.put("k2", ANSWER)
        cache.close()
    assert len(reports) == 1 and "running without it" in reports[0], reports


def test_without_a_reporter_the_problem_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    _garbage(tmp_path / "cache")
    with pytest.warns(RuntimeWarning, match="response cache unusable"):
        cache = ResponseCache(tmp_path / "cache")
    assert cache.get("k") is None


def test_no_module_of_llmflow_can_unpickle() -> None:
    root = Path(__file__).parents[2]
    sources = [
        p for d in ("llmflow", "compiler", "runtime", "stdlib") for p in (root / d).rglob("*.py")
    ]
    assert len(sources) > 20
    unpicklers = re.compile(
        r"^\s*(import|from)\s+(pickle|_pickle|cPickle|marshal|shelve|dill|cloudpickle|joblib|"
        r"diskcache|yaml)\b",
        re.MULTILINE,
    )
    found = [
        f"{p.relative_to(root)}: {m.group(0).strip()}"
        for p in sources
        for m in unpicklers.finditer(p.read_text(encoding="utf-8"))
    ]
    assert found == []

import logging
import os
import re
import stat
import subprocess
import sys
import time

import pytest

from lggseg.core import atomic
from lggseg.core.atomic import atomic_path, staged_dir, write_bytes, write_json, write_text


def test_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "out" / "a.json"
    write_json(target, {"x": 1})
    old_umask = os.umask(0o022)
    try:
        write_text(target, "new\n")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_staged_dir_keeps_old_folder_on_failure(tmp_path):
    target = tmp_path / "processed"
    with staged_dir(target) as staging:
        (staging / "ok.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with staged_dir(target) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["ok.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]
    assert stat.S_IMODE(target.stat().st_mode) & 0o055  # readable by others, not mkdtemp's 0700


def test_failed_replace_removes_temp_file_and_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "table.csv"
    out.write_bytes(b"old,good\n")

    def broken_replace(source, target):
        raise OSError(f"cannot replace {target}")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="table.csv"):
        write_bytes(out, b"new")
    assert out.read_bytes() == b"old,good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the PID names no process any more
    return child.pid


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def _age(path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def test_writers_name_their_temporary_files_with_their_pid(tmp_path):
    pid = os.getpid()
    with atomic_path(tmp_path / "last.pt") as tmp:
        assert re.fullmatch(rf"\.last\.pt\.{pid}\.[0-9a-f]{{12}}\.tmp", tmp.name)
    with staged_dir(tmp_path / "processed") as staging:
        assert re.fullmatch(rf"\.processed\.staging\.{pid}\.[0-9a-f]{{12}}", staging.name)


def test_next_writer_removes_only_stale_leftovers_of_its_own_target(tmp_path, live_pid, caplog):
    dead = _dead_pid()
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    stale = [tmp_path / f".last.pt.{dead}.0123456789ab.tmp", tmp_path / ".last.pt.abcd_123.tmp"]
    live = [tmp_path / f".last.pt.{live_pid}.0123456789ab.tmp", tmp_path / ".last.pt.abcd_456.tmp"]
    others = [
        tmp_path / f".best.pt.{dead}.0123456789ab.tmp",  # another target's
        tmp_path / f".last.pt.x.{dead}.0123456789ab.tmp",  # target 'last.pt.x'
        tmp_path / f"last.pt.{dead}.0123456789ab.tmp",  # not hidden: not ours
        tmp_path / ".last.pt.bak",
    ]
    for path in stale + live + others:
        path.write_bytes(b"")
    _age(stale[1], 2 * atomic.LEGACY_STALE_AFTER_S)  # a pre-PID name, old enough to be abandoned
    _age(others[-1], 2 * atomic.LEGACY_STALE_AFTER_S)

    with caplog.at_level(logging.INFO, logger="lggseg.core.atomic"):
        write_bytes(target, b"new")

    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [target, *live, *others])
    assert all(f"removed stale {path}" in caplog.text for path in stale)


def test_next_staged_dir_removes_a_killed_writers_staging_folder(tmp_path, live_pid):
    dead = _dead_pid()
    target = tmp_path / "kaggle_3m"
    stale = tmp_path / f".kaggle_3m.staging.{dead}.0123456789ab"
    live = tmp_path / f".kaggle_3m.staging.{live_pid}.0123456789ab"
    legacy_recent = tmp_path / ".kaggle_3m.staging.k2j4_x9q"  # could be a writer of an earlier version
    other = tmp_path / f".processed.staging.{dead}.0123456789ab"
    for folder in (stale, live, legacy_recent, other):
        (folder / "TCGA_CS_0000_20000101").mkdir(parents=True)

    with staged_dir(target) as staging:
        (staging / "data.csv").write_text("Patient\n")

    kept = ["kaggle_3m", live.name, legacy_recent.name, other.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert atomic.remove_stale(tmp_path / "processed") == [other]


def test_backup_of_a_swap_killed_half_way_is_put_back(tmp_path):
    dead = _dead_pid()
    target = tmp_path / "processed"
    backup = tmp_path / f".processed.old.{dead}"
    backup.mkdir()
    (backup / "manifest.json").write_text("{}")
    assert atomic.remove_stale(target) == [backup]  # killed between the two renames: the old folder returns
    assert (target / "manifest.json").read_text() == "{}" and not backup.exists()

    backup.mkdir()
    assert atomic.remove_stale(target) == [backup]  # killed after the swap: the backup is garbage
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]


def test_remove_stale_in_a_missing_folder_does_nothing(tmp_path):
    assert atomic.remove_stale(tmp_path / "absent" / "x.json") == []

import os
import stat

import pytest

from lggseg import atomic
from lggseg.atomic import staged_dir, write_bytes, write_json, write_text


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

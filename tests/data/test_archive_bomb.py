"""Archives that would unpack to far more than they look: refused on their declared sizes before anything is
extracted, with one line naming the archive, the member and the numbers; the previous data set survives.

`download` takes a data set as a .zip (local, or what the Kaggle client saved) or as a folder: both are here."""

from __future__ import annotations

import shutil
import uuid
import zipfile
from pathlib import Path

import pytest

from conftest import PARAMS
from filesystems import small_filesystem
from lggseg import cli
from lggseg.core.diskspace import DiskSpaceError
from lggseg.data.acquire import MAX_ARCHIVE_RATIO, MEMBER_LIMITS, DataSourceError, install_local
from lggseg.data.synthetic import write_kaggle_zip

PATIENT = "TCGA_CS_0001_20000101"
MiB = 1 << 20


@pytest.fixture
def old_data_set(tmp_path, synthetic_tree) -> Path:
    """A small installed data set (one patient) at tmp_path/raw/kaggle_3m, to check that it survives."""
    source = tmp_path / "one-patient" / "kaggle_3m"
    source.mkdir(parents=True)
    shutil.copy(synthetic_tree / "data.csv", source)
    first = sorted(p for p in synthetic_tree.iterdir() if p.is_dir())[0]
    shutil.copytree(first, source / first.name)
    return install_local(source, tmp_path / "raw" / "kaggle_3m")


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_zeros(zf: zipfile.ZipFile, name: str, n_bytes: int, compress_type=zipfile.ZIP_DEFLATED) -> None:
    """A member of `n_bytes` zeros, streamed: the archive stays small, and so does the test's memory."""
    info = zipfile.ZipInfo(name)
    info.compress_type = compress_type
    chunk = bytes(MiB)
    with zf.open(info, "w", force_zip64=True) as member:
        for start in range(0, n_bytes, MiB):
            member.write(chunk[: min(MiB, n_bytes - start)])


def _bomb(tmp_path: Path, name: str, n_bytes: int, compress_type=zipfile.ZIP_DEFLATED) -> Path:
    """A Kaggle-looking archive whose member `name` (under kaggle_3m/) is `n_bytes` of zeros."""
    archive = tmp_path / f"bomb-{uuid.uuid4().hex[:6]}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if name != "data.csv":
            zf.writestr("kaggle_3m/data.csv", "Patient,age\nTCGA_CS_0001,50\n")
        zf.writestr(f"kaggle_3m/{PATIENT}/{PATIENT}_1.tif", b"II*\0" + bytes(range(256)) * 100)
        _write_zeros(zf, f"kaggle_3m/{name}", n_bytes, compress_type)
    return archive


def _refused(archive: Path, target: Path) -> str:
    before = _tree_bytes(target)
    with pytest.raises(DataSourceError) as err:
        install_local(archive, target)
    message = str(err.value)
    assert "\n" not in message and str(archive) in message
    assert _tree_bytes(target) == before  # the previous data set, byte for byte
    assert [p.name for p in target.parent.iterdir()] == ["kaggle_3m"]  # no staging folder left
    return message


@pytest.mark.parametrize("name, kind, n_bytes", [
    (f"{PATIENT}/{PATIENT}_2.tif", "slice image", 64 * MiB),  # the 3 GiB member of the report, smaller
    (f"{PATIENT}/{PATIENT}_2_mask.tif", "mask", 64 * MiB),
    ("data.csv", "data.csv", 8 * MiB),
    ("README.md", "other file", 40 * MiB),
])
def test_a_member_larger_than_its_kind_may_be_is_refused_before_extraction(tmp_path, old_data_set, name, kind,
                                                                          n_bytes):
    archive = _bomb(tmp_path, name, n_bytes)
    assert archive.stat().st_size < n_bytes / 100  # a bomb: small archive, huge member
    message = _refused(archive, old_data_set)
    limit = MEMBER_LIMITS[kind][0]
    assert f"kaggle_3m/{name} unpacks to {n_bytes // MiB}.0 MiB ({n_bytes} bytes)" in message
    assert f"more than the {limit // MiB}.0 MiB a {kind} may have" in message


@pytest.mark.parametrize("name, kind, n_bytes, compress_type", [
    (f"{PATIENT}/{PATIENT}_2.tif", "slice image", MiB, zipfile.ZIP_DEFLATED),  # under the size limit, ~1000:1
    (f"{PATIENT}/{PATIENT}_2_mask.tif", "mask", MiB + MiB // 2, zipfile.ZIP_BZIP2),  # bzip2 goes far past deflate
    ("data.csv", "data.csv", MiB - 1, zipfile.ZIP_DEFLATED),
])
def test_a_member_compressed_beyond_its_kind_is_refused(tmp_path, old_data_set, name, kind, n_bytes, compress_type):
    message = _refused(_bomb(tmp_path, name, n_bytes, compress_type), old_data_set)
    assert f"kaggle_3m/{name} is compressed " in message
    assert f"more than the {MEMBER_LIMITS[kind][1]}:1 a {kind} may have" in message


def test_many_members_each_within_limits_but_a_bomb_as_a_whole_are_refused(tmp_path, old_data_set):
    archive = tmp_path / "masks.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("kaggle_3m/data.csv", "Patient\nTCGA_CS_0001\n")
        for n in range(1, 41):  # all-zero masks only: each ~1000:1, which a mask may be
            _write_zeros(zf, f"kaggle_3m/{PATIENT}/{PATIENT}_{n}_mask.tif", MiB)
    message = _refused(archive, old_data_set)
    assert "its 41 files unpack to 40.0 MiB from" in message and f"more than the {MAX_ARCHIVE_RATIO}:1" in message


def test_real_slices_and_masks_pass_at_the_strongest_deflate(tmp_path, real_sample):
    """Real masks compress 80-360x (mostly zeros), images 1.3-16x: none may trip a limit."""
    archive = tmp_path / "real-level9.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(real_sample.rglob("*")):
            if path.is_file():
                zf.write(path, "lgg-mri-segmentation/kaggle_3m/" + str(path.relative_to(real_sample)))
    tree = install_local(archive, tmp_path / "raw" / "kaggle_3m")
    assert _tree_bytes(tree) == _tree_bytes(real_sample)


def test_a_member_that_holds_more_than_it_declares_is_stopped(tmp_path, old_data_set):
    """The declared sizes are what the checks trust: a member that gives more is not written beyond them."""
    member = f"kaggle_3m/{PATIENT}/{PATIENT}_2.tif"
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("kaggle_3m/data.csv", "Patient\nTCGA_CS_0001\n")
        zf.writestr(member, bytes(4 * MiB))
    lie = 100_000  # half a slice image: under every limit, and the archive's ratio with it
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        local_size = zf.getinfo(member).header_offset + 22  # uncompressed size in the local header
    central_size = data.rindex(b"PK\x01\x02") + 24  # ... and in the central directory (the member is last)
    for offset in (local_size, central_size):
        assert int.from_bytes(data[offset: offset + 4], "little") == 4 * MiB
        data[offset: offset + 4] = lie.to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo(member).file_size == lie
    message = _refused(archive, old_data_set)
    assert member in message


def test_an_archive_larger_than_the_free_space_is_refused_before_extraction(tmp_path, synthetic_tree):
    archive = write_kaggle_zip(synthetic_tree, tmp_path / "lgg-mri-segmentation.zip")  # ~45 MB unpacked
    with small_filesystem(tmp_path / "small", "8m") as small:
        old = install_local(_one_patient(tmp_path, synthetic_tree), small / "raw" / "kaggle_3m")
        before = _tree_bytes(old)
        with pytest.raises(DiskSpaceError) as err:
            install_local(archive, old)
        message = str(err.value)
        assert message.startswith(f"not enough space for the {len(_tree_bytes(synthetic_tree))} files of the "
                                  f"archive {archive}: needs ")
        assert f"in {small / 'raw'}, which has " in message and "\n" not in message
        assert _tree_bytes(old) == before and [p.name for p in old.parent.iterdir()] == ["kaggle_3m"]


def test_a_folder_larger_than_the_free_space_is_refused_before_copying(tmp_path, synthetic_tree):
    with small_filesystem(tmp_path / "small", "8m") as small:
        with pytest.raises(DiskSpaceError, match=rf"^not enough space for a copy of {synthetic_tree}: needs "):
            install_local(synthetic_tree, small / "raw" / "kaggle_3m")
        assert list((small / "raw").iterdir()) == []


def _one_patient(tmp_path: Path, synthetic_tree: Path) -> Path:
    source = tmp_path / "one" / "kaggle_3m"
    source.mkdir(parents=True)
    shutil.copy(synthetic_tree / "data.csv", source)
    first = sorted(p for p in synthetic_tree.iterdir() if p.is_dir())[0]
    for path in sorted(first.iterdir())[:6]:  # 3 slices: small enough for the 8 MB filesystem
        (source / first.name).mkdir(exist_ok=True)
        shutil.copy(path, source / first.name)
    return source


def test_a_bomb_is_one_line_at_the_cli(tmp_path, capsys):
    archive = _bomb(tmp_path, f"{PATIENT}/{PATIENT}_2.tif", 64 * MiB)
    code = cli.main(["download", "--params", str(PARAMS), "--root", str(tmp_path / "project"),
                     "--set", "data.source=local", "--set", f"data.local_path={archive}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"lggseg download: error: the archive {archive} looks like a zip bomb: ")
    assert list((tmp_path / "project" / "data" / "raw").iterdir()) == []

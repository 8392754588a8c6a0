import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest

from conftest import PARAMS, tiny_config
from lggseg import cli, pipeline
from lggseg.core.config import DataConfig
from lggseg.core.paths import Paths
from lggseg.data.acquire import DataSourceError, acquire, install_local, resolve_source
from lggseg.data.synthetic import write_kaggle_zip


def _patients(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_synthetic_source_writes_layout_atomically(tmp_path):
    paths = Paths.at(tmp_path)
    pipeline.download(tiny_config("data.synthetic.patients=4"), paths)
    assert len(_patients(paths.dataset)) == 4 and (paths.dataset / "data.csv").is_file()
    assert [p.name for p in paths.raw.iterdir()] == ["kaggle_3m"]  # no staging leftovers


def test_local_folder_and_zip_give_the_same_tree(tmp_path, synthetic_tree):
    from_folder = install_local(synthetic_tree.parent, tmp_path / "a" / "kaggle_3m")
    archive = write_kaggle_zip(synthetic_tree, tmp_path / "lgg.zip")
    from_zip = install_local(archive, tmp_path / "b" / "kaggle_3m")
    files_a = sorted(str(p.relative_to(from_folder)) for p in from_folder.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(from_zip)) for p in from_zip.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 100
    assert not (from_zip / "lgg-mri-segmentation").exists()  # one copy taken, not both


def test_local_real_sample_folder_and_zip(tmp_path, real_sample):
    tree = install_local(real_sample, tmp_path / "folder" / "kaggle_3m")
    assert len(_patients(tree)) == 5
    archive = tmp_path / "real.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in real_sample.rglob("*"):
            if f.is_file():
                zf.write(f, "kaggle_3m/" + str(f.relative_to(real_sample)))
    tree = install_local(archive, tmp_path / "zip" / "kaggle_3m")
    assert len(_patients(tree)) == 5 and (tree / "data.csv").is_file()


def _zip_with(tmp_path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("kaggle_3m/data.csv", "Patient\n")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, data)
    return archive


@pytest.mark.parametrize(
    "name, symlink, message",
    [
        ("kaggle_3m/../../escape.txt", False, "leaves the target folder"),
        ("/etc/evil.txt", False, "absolute path"),
        ("kaggle_3m/TCGA_CS_0000_20000101/link", True, "symbolic link"),
    ],
)
def test_unsafe_archive_entries_are_refused_and_old_data_survives(tmp_path, synthetic_tree, name, symlink, message):
    target = tmp_path / "raw" / "kaggle_3m"
    install_local(synthetic_tree, target)
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(DataSourceError, match=message):
        install_local(_zip_with(tmp_path, name, symlink=symlink), target)
    assert sorted(p.name for p in target.iterdir()) == before
    assert not (tmp_path / "escape.txt").exists()
    assert [p.name for p in target.parent.iterdir()] == ["kaggle_3m"]


def test_archive_without_dataset_is_rejected_without_partial_output(tmp_path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("something/else.txt", "hi")
    target = tmp_path / "raw" / "kaggle_3m"
    with pytest.raises(DataSourceError, match="no kaggle_3m/ folder"):
        install_local(archive, target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_zeroed_archive_leaves_nothing_behind(tmp_path, synthetic_tree):
    archive = write_kaggle_zip(synthetic_tree, tmp_path / "lgg.zip")
    broken = tmp_path / "broken.zip"
    data = archive.read_bytes()
    broken.write_bytes(data[:1000] + b"\0" * (len(data) - 1000))  # right size, nothing after the first member
    target = tmp_path / "raw" / "kaggle_3m"
    with pytest.raises(DataSourceError, match=rf"^the archive {re.escape(str(broken))} is damaged \(truncated"):
        install_local(broken, target)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == []


@pytest.fixture(scope="module")
def kaggle_zip(tmp_path_factory, synthetic_tree) -> Path:
    """The synthetic data set zipped the way Kaggle serves it (read-only: copy before damaging)."""
    return write_kaggle_zip(synthetic_tree, tmp_path_factory.mktemp("kaggle-zip") / "lgg-mri-segmentation.zip")


def _member_data_span(archive: Path, member: str) -> tuple[int, int]:
    """Byte range of `member`'s compressed data inside `archive`."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    with open(archive, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
    start = info.header_offset + 30 + name_length + extra_length
    return start, start + info.compress_size


def _first_image_member(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return next(n for n in zf.namelist() if n.startswith("kaggle_3m/SYNTH_") and n.endswith("_1.tif"))


def _damage(kaggle_zip: Path, out: Path, how: str) -> tuple[Path, str]:
    """A copy of `kaggle_zip` damaged `how`; returns it and the message part that names the damage."""
    data = bytearray(kaggle_zip.read_bytes())
    member = _first_image_member(kaggle_zip)
    start, end = _member_data_span(kaggle_zip, member)
    middle = (start + end) // 2
    if how == "crc":  # one flipped byte decompresses to wrong bytes
        data[middle] ^= 0xFF
        expected = f"{member}: bad CRC-32"
    elif how == "deflate":  # the first block header names the reserved block type 3: no valid stream
        data[start] = 0xFF
        expected = f"{member}: corrupt compressed data"
    elif how == "truncated":  # an interrupted download: the end, with the archive's directory, is missing
        data = data[: len(data) // 2]
        expected = "truncated: no end-of-archive record"
    else:  # an interrupted download that wrote nothing
        data = bytearray()
        expected = "empty file"
    out.write_bytes(bytes(data))
    return out, expected


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["crc", "deflate", "truncated", "empty"])
def test_damaged_archive_is_named_and_old_data_set_survives(tmp_path, kaggle_zip, how):
    paths = Paths.at(tmp_path / "project")
    pipeline.download(tiny_config("data.source=local", f"data.local_path={kaggle_zip}"), paths)
    before = _tree_bytes(paths.dataset)
    broken, expected = _damage(kaggle_zip, tmp_path / "downloaded.zip", how)

    with pytest.raises(DataSourceError) as err:
        pipeline.download(tiny_config("data.source=local", f"data.local_path={broken}"), paths)
    assert str(err.value) == f"the archive {broken} is damaged ({expected}); download it again"
    assert _tree_bytes(paths.dataset) == before
    assert [p.name for p in paths.raw.iterdir()] == ["kaggle_3m"]  # no staging folder left


def test_damaged_archive_is_one_line_at_the_cli(tmp_path, kaggle_zip, capsys):
    broken, expected = _damage(kaggle_zip, tmp_path / "lgg.zip", "crc")
    code = cli.main(["download", "--params", str(PARAMS), "--root", str(tmp_path / "project"),
                     "--set", "data.source=local", "--set", f"data.local_path={broken}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert lines[-1] == f"lggseg download: error: the archive {broken} is damaged ({expected}); download it again"
    assert "Traceback" not in "\n".join(lines)
    assert list((tmp_path / "project" / "data" / "raw").iterdir()) == []


@pytest.mark.parametrize("missing, message", [
    ("data.csv", "kaggle_3m/data.csv is missing"),
    ("SYNTH_*", "no TCGA_* (or SYNTH_*) patient folders in kaggle_3m/; not an LGG data set"),
])
def test_incomplete_archive_names_the_archive_not_the_staging_folder(tmp_path, synthetic_tree, missing, message):
    tree = tmp_path / "incomplete" / "kaggle_3m"
    shutil.copytree(synthetic_tree, tree)
    for path in tree.glob(missing):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    archive = write_kaggle_zip(tree, tmp_path / "lgg.zip")
    paths = Paths.at(tmp_path / "project")
    with pytest.raises(DataSourceError) as err:
        pipeline.download(tiny_config("data.source=local", f"data.local_path={archive}"), paths)
    assert str(err.value) == f"the archive {archive}: {message}"
    assert not paths.dataset.exists() and list(paths.raw.iterdir()) == []


def test_incomplete_folder_names_the_folder(tmp_path, synthetic_tree):
    tree = tmp_path / "copy" / "kaggle_3m"
    shutil.copytree(synthetic_tree, tree)
    (tree / "data.csv").unlink()
    with pytest.raises(DataSourceError) as err:
        install_local(tree.parent, tmp_path / "raw" / "kaggle_3m")
    assert str(err.value) == f"{tree}: data.csv is missing"


def test_a_file_that_is_no_archive_is_named_as_such(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an archive")
    with pytest.raises(DataSourceError, match="notes.txt: neither a folder nor a .zip archive"):
        install_local(notes, tmp_path / "raw" / "kaggle_3m")


def test_missing_local_path_lists_ways_out(tmp_path):
    with pytest.raises(DataSourceError, match=r"does not exist.*\n.*Ways out") as err:
        install_local(tmp_path / "missing.zip", tmp_path / "raw" / "kaggle_3m")
    assert "make demo" in str(err.value)


def test_kaggle_without_credentials_fails_fast_with_ways_out(tmp_path, monkeypatch):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    cfg = DataConfig(source="kaggle")
    with pytest.raises(DataSourceError) as err:
        acquire(cfg, tmp_path / "raw" / "kaggle_3m", tmp_path / "raw" / "lgg.zip")
    text = str(err.value)
    assert "No Kaggle credentials" in text and "data.local_path" in text and "make demo" in text
    assert not (tmp_path / "raw" / "kaggle_3m").exists()


def test_kaggle_unreachable_fails_with_message_and_no_secret(tmp_path, monkeypatch):
    secret = "s3cr3t-kaggle-key-value"
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", secret)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kcfg"))
    with pytest.raises(DataSourceError) as err:
        acquire(DataConfig(source="kaggle"), tmp_path / "raw" / "kaggle_3m", tmp_path / "raw" / "lgg.zip")
    assert "Ways out" in str(err.value) and secret not in str(err.value)
    assert not (tmp_path / "raw" / "kaggle_3m").exists()


def test_auto_prefers_a_local_archive(tmp_path):
    archive = tmp_path / "lgg-mri-segmentation.zip"
    assert resolve_source(DataConfig(source="auto"), archive) == "kaggle"
    archive.write_bytes(b"")
    assert resolve_source(DataConfig(source="auto"), archive) == "local"
    assert resolve_source(DataConfig(source="auto", local_path="x.zip"), tmp_path / "none.zip") == "local"

import zipfile
from pathlib import Path

import pytest

from lggseg import pipeline
from lggseg.config import DataConfig
from lggseg.data.acquire import DataSourceError, acquire, install_local, resolve_source
from lggseg.data.synthetic import write_kaggle_zip
from lggseg.paths import Paths

from conftest import tiny_config


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


def test_truncated_archive_leaves_nothing_behind(tmp_path, synthetic_tree):
    archive = write_kaggle_zip(synthetic_tree, tmp_path / "lgg.zip")
    broken = tmp_path / "broken.zip"
    data = archive.read_bytes()
    # keep the central directory but cut file data in the middle: entries fail their CRC/reads
    broken.write_bytes(data[:1000] + b"\0" * (len(data) - 1000))
    target = tmp_path / "raw" / "kaggle_3m"
    with pytest.raises((DataSourceError, zipfile.BadZipFile, OSError)):
        install_local(broken, target)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == []


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

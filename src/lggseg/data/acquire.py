"""Getting the raw data set into `data/raw/kaggle_3m/`: from Kaggle, a local archive or folder, or synthetic.

Every path ends the same way: the tree is assembled in a staging folder, checked, then renamed into
place, so an interrupted or failed run never leaves a half data set that `index` would take for whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from lggseg.core.atomic import staged_dir
from lggseg.core.config import DataConfig
from lggseg.core.diskspace import DiskSpaceError, block_size, is_disk_full, on_disk, require_free_space, size_text
from lggseg.data import synthetic
from lggseg.data.layout import detect_layout, is_patient_folder_name
from lggseg.data.provenance import SYNTHETIC, recorded_source, write_source_record

log = logging.getLogger(__name__)

DATASET_DIRNAME = "kaggle_3m"
WAYS_OUT = (
    "Ways out:\n"
    "  1. Kaggle credentials: export KAGGLE_API_TOKEN=... (or KAGGLE_USERNAME and KAGGLE_KEY), "
    "or put kaggle.json / access_token in ~/.kaggle/;\n"
    "  2. a manual download: save the archive as data/raw/lgg-mri-segmentation.zip, or set "
    "data.local_path to the .zip or to a folder that contains kaggle_3m/ (data.source: local);\n"
    "  3. no account at all: `make demo` runs the whole pipeline on synthetic data (data.source: synthetic)."
)


# What one archive may unpack to, checked on its declared sizes before anything is extracted. Kaggle's
# archive (738 MB, ~1 GB per copy of the tree) passes with a wide margin: slice images are 203,102 bytes
# (deflate 1.3-16x over 2,800 real slices), masks 65,746 bytes (deflate 80-360x: mostly zeros), data.csv
# 5.5 KB for 110 patients. A zip bomb needs a far higher ratio (deflate reaches ~1,030:1 on zeros) or size.
MAX_ARCHIVE_MEMBERS = 100_000
MAX_ARCHIVE_RATIO = 50  # the extracted part as a whole, unpacked : compressed
MEMBER_LIMITS = {  # kind: (most unpacked bytes, highest unpacked : compressed ratio)
    "slice image": (2 << 20, 200),
    "mask": (2 << 20, 1100),  # above deflate's ceiling: an all-zero mask must pass
    "data.csv": (1 << 20, 200),
    "other file": (16 << 20, 200),
}
EXTRACT_CHUNK_BYTES = 1 << 20


class DataSourceError(RuntimeError):
    """The data set could not be obtained; the message says why and what to do."""


def acquire(cfg: DataConfig, dataset_dir: Path, default_archive: Path) -> Path:
    """Fill `dataset_dir` (…/kaggle_3m) from the source named by `cfg.source`; return it."""
    source = resolve_source(cfg, default_archive)
    log.info("data source: %s", source)
    if source == "synthetic":
        syn = cfg.synthetic
        with staged_dir(dataset_dir) as staging:
            generated = synthetic.generate_dataset(
                staging, patients=syn.patients, slices_min=syn.slices_min,
                slices_max=syn.slices_max, seed=syn.seed,
            )
            _move_contents(generated, staging)
            check_dataset_tree(staging, origin="the synthetic data set")
    elif source == "local":
        local = Path(cfg.local_path) if cfg.local_path else default_archive
        install_local(local, dataset_dir)
    else:
        download_kaggle(cfg.kaggle_dataset, dataset_dir)
    if source != SYNTHETIC and recorded_source(dataset_dir) is None:  # a copied synthetic tree stays synthetic
        write_source_record(dataset_dir, source)
    return dataset_dir


def resolve_source(cfg: DataConfig, default_archive: Path) -> str:
    """`auto` means: a local archive when one is configured or present, else Kaggle."""
    if cfg.source != "auto":
        return cfg.source
    if cfg.local_path or default_archive.exists():
        return "local"
    return "kaggle"


def install_local(local: Path, dataset_dir: Path) -> Path:
    """Install from a Kaggle .zip or from a folder that contains (or is) kaggle_3m/."""
    if not local.exists():
        raise DataSourceError(f"data.local_path does not exist: {local}\n{WAYS_OUT}")
    with staged_dir(dataset_dir) as staging:
        if local.is_dir():
            source_tree = find_dataset_tree(local)
            require_free_space(dataset_dir.parent, _tree_on_disk(source_tree, dataset_dir.parent),
                               f"a copy of {source_tree}")
            shutil.copytree(source_tree, staging, dirs_exist_ok=True, symlinks=False, copy_function=_copy_file)
            check_dataset_tree(staging, origin=str(source_tree))
        elif _is_zip_archive(local):
            inner = extract_dataset_zip(local, staging)
            check_dataset_tree(staging, origin=f"the archive {local}", inner=inner)
        else:
            raise DataSourceError(f"{local}: neither a folder nor a .zip archive")
    return dataset_dir


def _tree_on_disk(tree: Path, destination: Path) -> int:
    block = block_size(destination)
    return on_disk((p.stat().st_size for p in tree.rglob("*") if p.is_file()), block)


def _copy_file(source: str, destination: str) -> str:
    """shutil.copy2 that stops the copy at a full disk (copytree would go on and list every later file)."""
    try:
        return shutil.copy2(source, destination)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskSpaceError(f"No space left on device writing {destination}", Path(destination)) from None
        raise


def _is_zip_archive(path: Path) -> bool:
    """A zip by its name, its directory or its first bytes: a damaged one counts too, so it is reported as damaged."""
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


def find_dataset_tree(folder: Path) -> Path:
    """The kaggle_3m folder inside `folder` (or `folder` itself); the archive's second copy is ignored."""
    if own_layout(folder):
        return folder  # your own data: images/ + masks/, or NIfTI cases (lggseg.data.dataset_layouts)
    for candidate in (folder, folder / DATASET_DIRNAME, folder / "lgg-mri-segmentation" / DATASET_DIRNAME):
        if candidate.name == DATASET_DIRNAME and candidate.is_dir():
            return candidate
    if any(p.is_dir() and is_patient_folder_name(p.name) for p in folder.iterdir()):
        return folder  # a renamed copy of kaggle_3m (e.g. the shared real sample)
    raise DataSourceError(f"{folder}: no {DATASET_DIRNAME}/ folder with TCGA_* (or SYNTH_*) patient folders inside, "
                          "nor images/ + masks/, nor dataset.json + imagesTr/ + labelsTr/ (docs/own-data.md)")


def extract_dataset_zip(archive: Path, target: Path) -> str:
    """Extract one copy of kaggle_3m/ from `archive` into `target`, refusing unsafe entries and damaged data.

    Returns the extracted folder's path inside the archive, e.g. 'kaggle_3m/'."""
    with _open_archive(archive) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARCHIVE_MEMBERS:
            raise DataSourceError(f"the archive {archive} has {len(infos)} entries, more than the "
                                  f"{MAX_ARCHIVE_MEMBERS} a data set may have; refusing it")
        for info in infos:
            _check_member(archive, info)
        prefix = _dataset_prefix(archive, [PurePosixPath(i.filename) for i in infos])
        members = [i for i in infos if not i.is_dir() and PurePosixPath(i.filename).parts[: len(prefix)] == prefix]
        check_declared_sizes(archive, members, target.parent)
        for info in members:
            relative = PurePosixPath(*PurePosixPath(info.filename).parts[len(prefix):])
            destination = target.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                _extract_member(archive, zf, info, destination)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                raise DataSourceError(_damaged(archive, f"{info.filename}: {_member_problem(exc)}")) from None
    log.info("extracted %d files from %s", len(members), archive)
    return "/".join(prefix) + "/"


def member_kind(name: str) -> str:
    """Which of MEMBER_LIMITS applies to an archive member, by its file name."""
    base = PurePosixPath(name).name
    if base.endswith("_mask.tif"):
        return "mask"
    if base.endswith(".tif"):
        return "slice image"
    return "data.csv" if base == "data.csv" else "other file"


def _ratio(info: zipfile.ZipInfo) -> float:
    return info.file_size / max(info.compress_size, 1)


def check_declared_sizes(archive: Path, members: list[zipfile.ZipInfo], destination: Path) -> None:
    """Refuse a zip bomb before extracting: each member's declared size and compression ratio against the
    limits of its kind, the whole against MAX_ARCHIVE_RATIO and against the free space at `destination`."""
    bomb = f"the archive {archive} looks like a zip bomb"
    for info in members:
        kind = member_kind(info.filename)
        most_bytes, highest_ratio = MEMBER_LIMITS[kind]
        if info.file_size > most_bytes:
            raise DataSourceError(f"{bomb}: {info.filename} unpacks to {size_text(info.file_size)} "
                                  f"({info.file_size} bytes), more than the {size_text(most_bytes)} a {kind} may have; "
                                  "refusing it")
        if _ratio(info) > highest_ratio:
            raise DataSourceError(f"{bomb}: {info.filename} is compressed {_ratio(info):.0f}:1 "
                                  f"({size_text(info.file_size)} from {size_text(info.compress_size)}), more than "
                                  f"the {highest_ratio}:1 a {kind} may have; refusing it")
    unpacked = sum(i.file_size for i in members)
    packed = sum(i.compress_size for i in members)
    if unpacked / max(packed, 1) > MAX_ARCHIVE_RATIO:
        raise DataSourceError(f"{bomb}: its {len(members)} files unpack to {size_text(unpacked)} from "
                              f"{size_text(packed)} ({unpacked / max(packed, 1):.0f}:1), more than the "
                              f"{MAX_ARCHIVE_RATIO}:1 a data set may have; refusing it")
    require_free_space(destination, on_disk((i.file_size for i in members), block_size(destination)),
                       f"the {len(members)} files of the archive {archive}")


def _extract_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path) -> None:
    """Copy one member in chunks, stopping as soon as it gives more bytes than it declared (the declared
    sizes are what the checks above and the free-space estimate trusted)."""
    written = 0
    with zf.open(info) as source, open(destination, "wb") as out:
        while chunk := source.read(EXTRACT_CHUNK_BYTES):
            written += len(chunk)
            if written > info.file_size:
                raise DataSourceError(f"the archive {archive}: {info.filename} unpacks to more than its declared "
                                      f"{info.file_size} bytes; refusing it (damaged or crafted)")
            out.write(chunk)


def _open_archive(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        if archive.stat().st_size == 0:
            problem = "empty file"
        elif str(exc) == "File is not a zip file":  # no end-of-archive record: cut short, or not a zip at all
            problem = "truncated: no end-of-archive record"
        else:
            problem = _sentence_case(str(exc))
        raise DataSourceError(_damaged(archive, problem)) from None


def _damaged(archive: Path, problem: str) -> str:
    return f"the archive {archive} is damaged ({problem}); download it again"


def _member_problem(exc: BaseException) -> str:
    """Why one member could not be read, in a few words (zipfile's own messages repeat the member name)."""
    if isinstance(exc, zipfile.BadZipFile) and str(exc).startswith("Bad CRC-32"):
        return "bad CRC-32"
    if isinstance(exc, EOFError):
        return "truncated"
    if isinstance(exc, zlib.error):
        return "corrupt compressed data"
    if isinstance(exc, NotImplementedError):
        return "unsupported compression method"
    return _sentence_case(str(exc))


def _sentence_case(text: str) -> str:
    return text[:1].lower() + text[1:]


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or path.is_absolute():
        raise DataSourceError(f"{archive}: refusing absolute path in archive: {name!r}")
    if ".." in path.parts or "\\" in name:
        raise DataSourceError(f"{archive}: refusing path that leaves the target folder: {name!r}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DataSourceError(f"{archive}: refusing symbolic link in archive: {name!r}")


def _dataset_prefix(archive: Path, names: list[PurePosixPath]) -> tuple[str, ...]:
    """The shortest folder path that ends in kaggle_3m (Kaggle's zip holds two copies)."""
    prefixes = {
        n.parts[: i + 1] for n in names for i, part in enumerate(n.parts[:-1]) if part == DATASET_DIRNAME
    }
    if not prefixes:
        raise DataSourceError(f"{archive}: no {DATASET_DIRNAME}/ folder inside the archive")
    return min(prefixes, key=lambda p: (len(p), p))


def check_dataset_tree(tree: Path, origin: str | None = None, inner: str = "") -> None:
    """The cheap structural check before a tree is renamed into place (full validation is `index`).

    `origin` names the tree in messages (the archive or folder the user gave, never the staging folder);
    `inner` is the tree's path inside an archive, e.g. 'kaggle_3m/'."""
    where = origin or str(tree)
    layout = own_layout(tree)
    if layout:
        needed = ("images", "masks") if layout == "slices" else ("dataset.json", "imagesTr", "labelsTr")
        missing = [name for name in needed if not (tree / name).exists()]
        if missing:
            raise DataSourceError(f"{where}: {', '.join(missing)} missing for the {layout} layout")
        return
    patients = [p for p in tree.iterdir() if p.is_dir() and is_patient_folder_name(p.name)]
    if not patients:
        raise DataSourceError(f"{where}: no TCGA_* (or SYNTH_*) patient folders{f' in {inner}' if inner else ''}; "
                              "not an LGG data set")
    if not (tree / "data.csv").is_file():
        raise DataSourceError(f"{where}: {inner}data.csv is missing")


def own_layout(tree: Path) -> str | None:
    """'slices' or 'nifti' when `tree` holds your own data in one of those layouts, else None."""
    layout = detect_layout(tree)
    return None if layout == "kaggle" else layout


def _move_contents(source: Path, target: Path) -> None:
    if source == target:
        return
    for entry in list(source.iterdir()):
        os.replace(entry, target / entry.name)
    source.rmdir()


def kaggle_credentials_present() -> bool:
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def download_kaggle(dataset: str, dataset_dir: Path) -> Path:
    """Download the archive through the official client, then install it like a local one."""
    if not kaggle_credentials_present():
        raise DataSourceError(f"No Kaggle credentials found; cannot download {dataset}.\n{WAYS_OUT}")
    # `import kaggle` authenticates at import time and prints a banner; the extended API does neither.
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as exc:  # authenticate() exits the interpreter on bad credentials
        raise DataSourceError(f"Kaggle authentication failed ({type(exc).__name__}).\n{WAYS_OUT}") from None
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=dataset_dir.parent) as tmp:
        try:
            api.dataset_download_files(dataset, path=tmp, unzip=False, quiet=False)
        except (Exception, SystemExit) as exc:
            # the message may echo request details; keep only the type so no credential can leak
            raise DataSourceError(
                f"Downloading {dataset} from Kaggle failed ({type(exc).__name__}); "
                f"no network, or the data set is not accessible with these credentials.\n{WAYS_OUT}"
            ) from None
        archives = sorted(Path(tmp).glob("*.zip"))
        if not archives:
            raise DataSourceError(f"Kaggle returned no .zip archive for {dataset}")
        install_local(archives[0], dataset_dir)
    return dataset_dir

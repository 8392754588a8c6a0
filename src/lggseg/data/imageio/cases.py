"""Which reader a path needs, and how NIfTI files are grouped into cases and channels.

NIfTI files of one case, by name (case-insensitive, before `.nii.gz` / `.nii`):
- `<case>_flair` (also BraTS 2023's `_t2f`): FLAIR; `<case>_t1` / `_t1w` / `_t1n`: pre-contrast;
  `<case>_t1ce` / `_t1gd` / `_t1c`: post-contrast; `_t2` / `_t2w` and other names are not used;
- nnU-Net's `<case>_0000`, `_0001`, ...: the channels a `dataset.json` beside (or one folder up) names in
  `channel_names` (or MSD's `modality`); without one, a lone `_0000` is FLAIR;
- `<case>_seg` / `<case>_mask`: the ground truth (every label > 0 is lesion, unless lesion labels are given);
  in nnU-Net's `imagesTr/`, `../labelsTr/<case>.nii.gz`;
- any other single file: a FLAIR volume.

The NIfTI-cases training layout is nnU-Net v2's / the Medical Segmentation Decathlon's raw layout:
`dataset.json`, `imagesTr/<case>_0000.nii.gz ...` (or one 4-D `imagesTr/<case>.nii.gz`, MSD) and
`labelsTr/<case>.nii.gz`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lggseg.data.imageio import nifti
from lggseg.data.imageio.base import ImageFormatError, Volume

IGNORED_SUFFIXES = ("t2", "t2w")
TRUTH_SUFFIXES = ("seg", "mask")
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
SUFFIX_RE = re.compile(r"^(?P<case>.+)_(?P<suffix>[a-z0-9]+)$", re.IGNORECASE)


@dataclass
class NiftiCase:
    """One case's files: role -> file (or one 4-D file with volume -> role), and the ground truth if any."""

    case: str
    channels: dict[str, Path]
    truth: Path | None = None
    four_d: Path | None = None
    four_d_roles: dict[int, str] | None = None

    def read(self, lesion_labels: list[int] | None = None) -> Volume:
        return nifti.read_case(self.case, self.channels, self.truth, lesion_labels, self.four_d, self.four_d_roles)

    @property
    def files(self) -> list[Path]:
        images = list(self.channels.values()) or ([self.four_d] if self.four_d else [])
        return images + ([self.truth] if self.truth else [])


def role_of_channel_name(name: str) -> str | None:
    """dataset.json's channel name -> the data set's role (None: not used)."""
    lowered = re.sub(r"[^a-z0-9+]", "", name.lower())
    if "flair" in lowered or lowered == "t2f":
        return "FLAIR"
    if lowered in ("t1ce", "t1gd", "t1c", "t1post", "postcontrast", "t1wgd", "t1wce", "t1+c", "gd"):
        return "post-contrast"
    if lowered in ("t1", "t1w", "t1n", "t1pre", "precontrast", "native"):
        return "pre-contrast"
    return None


def channel_roles(dataset_json: Path | None) -> dict[int, str]:
    """Channel index -> role from dataset.json (`channel_names`, nnU-Net v2; `modality`, MSD)."""
    if dataset_json is None:
        return {}
    try:
        record = json.loads(dataset_json.read_text())
    except (OSError, ValueError) as exc:
        raise ImageFormatError(f"{dataset_json}: cannot read it ({exc})") from None
    names = record.get("channel_names") or record.get("modality") if isinstance(record, dict) else None
    if not isinstance(names, dict) or not names:
        raise ImageFormatError(f"{dataset_json}: no 'channel_names' (or 'modality') naming the image channels")
    roles = {}
    for key, name in names.items():
        role = role_of_channel_name(str(name))
        if role is not None:
            roles[int(key)] = role
    if "FLAIR" not in roles.values():
        raise ImageFormatError(f"{dataset_json}: none of its channels {dict(names)} is FLAIR, which lggseg's models need")
    return roles


def find_dataset_json(folder: Path) -> Path | None:
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def nifti_cases_in(folder: Path) -> list[NiftiCase]:
    """The cases of a folder of NIfTI files (see the module's naming rules); [] if it holds none."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and nifti.is_nifti_name(p))
    if not files:
        return []
    dataset_json = find_dataset_json(Path(folder))
    roles = channel_roles(dataset_json) if dataset_json else {}
    cases: dict[str, NiftiCase] = {}
    for path in files:
        stem = nifti.stem(path)
        channel, suffix = CHANNEL_RE.match(stem), SUFFIX_RE.match(stem)
        if channel:
            name, index = channel["case"], int(channel["channel"])
            role = roles.get(index) if roles else ("FLAIR" if index == 0 else None)
            if role is None and not roles:
                raise ImageFormatError(f"{path}: channel {index} of {name}, but no dataset.json beside it names the "
                                       "channels (with one, `channel_names` says which is FLAIR)")
            _add(cases, name, role, path)
        elif suffix and (role := role_of_channel_name(suffix["suffix"])) is not None:
            _add(cases, suffix["case"], role, path)
        elif suffix and suffix["suffix"].lower() in TRUTH_SUFFIXES:
            case = cases.setdefault(suffix["case"], NiftiCase(suffix["case"], {}))
            case.truth = path
        elif suffix and suffix["suffix"].lower() in IGNORED_SUFFIXES:
            continue
        else:
            _add(cases, stem, "FLAIR", path)
    labels = Path(folder).parent / "labelsTr"  # nnU-Net's imagesTr/: the truth is in labelsTr/<case>.nii.gz
    for case in cases.values():
        if case.truth is None and Path(folder).name == "imagesTr" and (labels / f"{case.case}.nii.gz").is_file():
            case.truth = labels / f"{case.case}.nii.gz"
        if "FLAIR" not in case.channels:
            raise ImageFormatError(f"{folder}: case {case.case} has no FLAIR image (files "
                                   f"{', '.join(p.name for p in case.files)}); name it <case>_flair.nii.gz")
    return [cases[name] for name in sorted(cases)]


def _add(cases: dict[str, NiftiCase], name: str, role: str | None, path: Path) -> None:
    case = cases.setdefault(name, NiftiCase(name, {}))
    if role is None:
        return
    if role in case.channels:
        raise ImageFormatError(f"{path}: a second {role} image for case {name} (also {case.channels[role].name})")
    case.channels[role] = path


def single_file_case(path: Path) -> NiftiCase:
    """One NIfTI file given as INPUT: its case by the naming rules (a `_seg` beside it is the truth)."""
    cases = [c for c in nifti_cases_in(path.parent) if path in c.channels.values()]
    if not cases:
        raise ImageFormatError(f"{path}: not an image lggseg reads (a mask, or a channel it does not use, e.g. T2)")
    return cases[0]


def training_cases(root: Path) -> list[NiftiCase]:
    """The cases of the NIfTI-cases layout at `root` (dataset.json + imagesTr/ + labelsTr/), labels required."""
    dataset_json, images, labels = root / "dataset.json", root / "imagesTr", root / "labelsTr"
    for needed in (dataset_json, images, labels):
        if not needed.exists():
            raise ImageFormatError(f"{root}: no {needed.name} (the NIfTI-cases layout is dataset.json, imagesTr/ "
                                   "and labelsTr/)")
    roles = channel_roles(dataset_json)
    cases = []
    label_files = sorted(p for p in labels.iterdir() if nifti.is_nifti_name(p))
    if not label_files:
        raise ImageFormatError(f"{labels}: no .nii.gz label files")
    for label in label_files:
        name = nifti.stem(label)
        channels = {role: images / f"{name}_{index:04d}.nii.gz" for index, role in roles.items()}
        four_d = images / f"{name}.nii.gz"
        if all(p.is_file() for p in channels.values()):
            cases.append(NiftiCase(name, channels, label))
        elif four_d.is_file():
            cases.append(NiftiCase(name, {}, label, four_d=four_d, four_d_roles=roles))
        else:
            missing = [p.name for p in channels.values() if not p.is_file()]
            raise ImageFormatError(f"{label}: no image for case {name} in {images} (missing {', '.join(missing)})")
    cased = {c.case for c in cases}
    orphans = sorted(p.name for p in images.iterdir() if nifti.is_nifti_name(p) and _case_of(p) not in cased)
    if orphans:
        raise ImageFormatError(f"{images}: image(s) without a label in labelsTr/: {', '.join(orphans[:5])}")
    return cases


def _case_of(path: Path) -> str:
    stem = nifti.stem(path)
    channel = CHANNEL_RE.match(stem)
    return channel["case"] if channel else stem

"""Where a data set came from, as the tree itself records it, and what a model was trained on.

The download stage (and `lggseg synth`) leave SOURCE_RECORD at the root of the tree they write: the
resolved data source (`synthetic`, `kaggle` or `local`, never `auto`). Preprocess copies it into its
manifest, training into every checkpoint (`training_data`), and `lggseg predict` reads it from the
scans it is given, so a model trained on synthetic data is never applied to real scans without a word.
"""

from __future__ import annotations

import json
from pathlib import Path

from lggseg.core.atomic import write_json

SOURCE_RECORD = "DATA_SOURCE.json"
SYNTHETIC = "synthetic"
NOT_RECORDED = "not recorded"
FINGERPRINT_CHARS = 12  # the data fingerprint as shown: enough to tell two data sets apart at a glance
TREE_LEVELS = 3  # a slice file, its patient folder, the data set folder: where a record can lie above an input


def write_source_record(tree: Path, source: str, **details: object) -> Path:
    """SOURCE_RECORD in `tree`: {"data_source": source, **details}."""
    return write_json(Path(tree) / SOURCE_RECORD, {"data_source": source, **details})


def recorded_source(tree: Path) -> str | None:
    """The data source `tree`'s SOURCE_RECORD names; None when it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(tree) / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    source = record.get("data_source") if isinstance(record, dict) else None
    return source if isinstance(source, str) else None


def input_source(input_path: Path) -> str | None:
    """The data source recorded for the scans at `input_path` (a slice, a patient folder or a data set
    folder): the nearest SOURCE_RECORD in it or the folders above it, up to the data set folder."""
    folder = Path(input_path).resolve()
    folder = folder if folder.is_dir() else folder.parent
    for candidate in [folder, *folder.parents][:TREE_LEVELS]:
        source = recorded_source(candidate)
        if source is not None:
            return source
    return None


def training_data(manifest: dict) -> dict:
    """What a model trained on data/processed was trained on (`trained_on` in its checkpoint), from the
    preprocess manifest: data source, patients and slices per split, the data fingerprint, input size and channels."""
    splits = manifest["splits"]
    return {
        "data_source": str(manifest.get("data_source", NOT_RECORDED)),
        "patients": {name: int(splits[name]["patients"]) if name in splits else None for name in ("train", "val", "test")},
        "slices": {name: int(splits[name]["slices"]) for name in ("train", "val")},
        "data_fingerprint": str(manifest["fingerprint"]),
        "input_size": int(manifest["size"]),
        "channels": str(manifest["channels"]),
    }


def data_source_of(trained_on: dict | None) -> str:
    """The data source a model was trained on (`trained_on` of its checkpoint; None: an older lggseg's)."""
    return str((trained_on or {}).get("data_source", NOT_RECORDED))


def registered_name(kind: str, trained_on: dict | None) -> str:
    """The registry name of a model of `kind` (`unet`, `fpn`, `segmentation` for the champion): models trained on
    synthetic data (the demo's) are `lgg-synthetic-<kind>`, so no real run's `lgg-segmentation@champion` is ever one."""
    return f"lgg-{SYNTHETIC}-{kind}" if data_source_of(trained_on) == SYNTHETIC else f"lgg-{kind}"


def describe_training_data(trained_on: dict | None) -> str:
    """`synthetic data: 17 train / 3 val / 4 test patients, 374 + 66 slices, 64 px, fingerprint 1a2b3c4d5e6f`."""
    if not trained_on:
        return "not recorded (a model from an older lggseg)"
    patients, slices = trained_on["patients"], trained_on["slices"]
    test = f" / {patients['test']} test" if patients.get("test") is not None else ""
    return (f"{trained_on['data_source']} data: {patients['train']} train / {patients['val']} val{test} patients, "
            f"{slices['train']} + {slices['val']} slices, {trained_on['input_size']} px {trained_on['channels']}, "
            f"fingerprint {str(trained_on['data_fingerprint'])[:FINGERPRINT_CHARS]}")


def provenance_warnings(trained_on: dict | None, input_source: str | None) -> list[str]:
    """What a user must read before trusting the masks: a model trained on synthetic data applied to scans that are
    not (or not recorded as) synthetic."""
    if not trained_on or trained_on.get("data_source") != SYNTHETIC or input_source == SYNTHETIC:
        return []
    scans = f"scans recorded as {input_source} data" if input_source else "scans with no synthetic-data record"
    return [f"This model was trained on SYNTHETIC data only ({describe_training_data(trained_on)}) and is applied "
            f"to {scans}: it has never seen a real MRI and its masks and Dice say nothing about real tumours. "
            "Use a model trained on the real data set (dvc repro with data.source kaggle or local)."]


def provenance_tags(trained_on: dict | None) -> dict[str, str]:
    """What a registered version records of its training data, as registry tags the MLflow UI lists."""
    if not trained_on:
        return {"data_source": NOT_RECORDED}
    patients, slices = trained_on["patients"], trained_on["slices"]
    return {"data_source": str(trained_on["data_source"]), "data_fingerprint": str(trained_on["data_fingerprint"]),
            "input_size": str(trained_on["input_size"]), "channels": str(trained_on["channels"]),
            **{f"{split}_patients": str(patients[split]) for split in ("train", "val", "test")
               if patients.get(split) is not None},
            **{f"{split}_slices": str(slices[split]) for split in ("train", "val")},
            "trained_on": describe_training_data(trained_on)}

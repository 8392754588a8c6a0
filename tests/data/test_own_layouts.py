"""Your own data: the `images/` + `masks/` layout and the NIfTI-cases layout give the same slices.csv rows and
the same processed arrays as the Kaggle layout; their files are validated as strictly, each problem named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.data import synthetic_layouts
from lggseg.data.dataset_layouts import index_dataset
from lggseg.data.imageio import nifti
from lggseg.data.layout import DatasetError

COHORT = dict(patients=5, slices_min=6, slices_max=8, seed=11)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("layouts")
    return {layout: synthetic_layouts.generate_layout(out, layout, **COHORT) for layout in ("kaggle", "slices", "nifti")}


def prepared(root: Path, tree: Path, *settings: str) -> Paths:
    paths = Paths.at(root)
    cfg = tiny_config("data.source=local", f"data.local_path={tree}", *settings)
    for stage in (pipeline.download, pipeline.index, pipeline.split, pipeline.preprocess):
        stage(cfg, paths)
    return paths


def processed_by_slice(paths: Paths) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    found = {}
    for split in ("train", "val", "test"):
        images = np.load(paths.processed / split / "images.npy")
        masks = np.load(paths.processed / split / "masks.npy")
        for i, row in pd.read_csv(paths.processed / split / "slices.csv").iterrows():
            found[(row["patient_id"], int(row["slice"]))] = (images[i], masks[i])
    return found


def test_the_slices_layout_gives_the_kaggle_layouts_arrays(layouts, tmp_path):
    kaggle = processed_by_slice(prepared(tmp_path / "k", layouts["kaggle"]))
    paths = prepared(tmp_path / "s", layouts["slices"])
    own = processed_by_slice(paths)
    assert set(own) == set(kaggle) and len(own) == sum(1 for _ in (layouts["slices"] / "images").iterdir())
    assert all(np.array_equal(own[k][0], kaggle[k][0]) and np.array_equal(own[k][1], kaggle[k][1]) for k in own)
    splits = json.loads(paths.splits_json.read_text())
    # each patient in one split
    assert sorted(sum((splits[s] for s in ("train", "val", "test")), [])) == sorted({p for p, _ in own})
    assert json.loads((paths.processed / "manifest.json").read_text())["layout"] == "slices"


def test_the_nifti_layout_gives_each_case_its_axial_slices(layouts, tmp_path):
    paths = prepared(tmp_path / "n", layouts["nifti"])
    slices = pd.read_csv(paths.slices_csv)
    kaggle = index_dataset(layouts["kaggle"], tiny_config().data)[0]
    # the same slices with the same tumour pixels: inferior slice first, as the tif numbering
    columns = ["patient_id", "slice", "tumor_pixels"]
    assert slices[columns].equals(kaggle[columns].reset_index(drop=True))
    own = processed_by_slice(paths)
    kaggle_arrays = processed_by_slice(prepared(tmp_path / "k", layouts["kaggle"]))
    # masks identical; images are each volume's min-max stretch of the same voxels (the synthetic tifs are not
    # stretched to 255, the real data set's are), so they agree up to that linear rescale
    assert all(np.array_equal(own[k][1], kaggle_arrays[k][1]) for k in own)
    for key in list(own)[:5]:
        a, b = own[key][0].astype(float).ravel(), kaggle_arrays[key][0].astype(float).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.99


def test_slices_take_their_patient_from_a_csv(layouts, tmp_path):
    tree = Path(shutil.copytree(layouts["slices"], tmp_path / "own"))
    names = sorted(p.name for p in (tree / "images").iterdir())
    for index, name in enumerate(names):  # renamed to names that say nothing of the patient
        (tree / "images" / name).rename(tree / "images" / f"img{index:04d}.png")
        (tree / "masks" / name).rename(tree / "masks" / f"img{index:04d}_mask.png")
    pd.DataFrame({"image": [f"img{i:04d}.png" for i in range(len(names))],
                  "patient": [n.rsplit("_", 1)[0] for n in names],
                  "slice": [n.rsplit("_", 1)[1].split(".")[0] for n in names]}).to_csv(tree / "patients.csv", index=False)
    slices, _ = index_dataset(tree, tiny_config("data.slices.patients_csv=patients.csv").data)
    assert slices["patient_id"].nunique() == COHORT["patients"] and len(slices) == len(names)
    with pytest.raises(DatasetError, match=r"images/img0000.png: the name does not match data.slices.patient_pattern"):
        index_dataset(tree, tiny_config().data)


@pytest.mark.parametrize("damage, kind, named", [
    ("mask_missing", "image_without_mask", "images/{case}_1.png"),
    ("mask_other_size", "bad_mask", "masks/{case}_1.png"),
    ("mask_not_binary", "bad_mask_values", "masks/{case}_1.png"),
    ("not_an_image", "bad_image", "images/{case}_1.png"),
    ("stray_mask", "mask_without_image", "masks/stray_3.png"),
])
def test_a_bad_slice_file_is_named_and_dropped_when_not_strict(layouts, tmp_path, damage, kind, named):
    tree = Path(shutil.copytree(layouts["slices"], tmp_path / "own"))
    case = sorted(p.name for p in (tree / "images").iterdir())[0].rsplit("_", 1)[0]
    image, mask = tree / "images" / f"{case}_1.png", tree / "masks" / f"{case}_1.png"
    if damage == "mask_missing":
        mask.unlink()
    elif damage == "mask_other_size":
        Image.fromarray(np.zeros((100, 80), np.uint8)).save(mask)
    elif damage == "mask_not_binary":
        Image.fromarray(np.full((256, 256), 7, np.uint8)).save(mask)
    elif damage == "not_an_image":
        image.write_bytes(b"not a png at all")
    else:
        Image.fromarray(np.zeros((256, 256), np.uint8)).save(tree / "masks" / "stray_3.png")
    with pytest.raises(DatasetError, match=kind) as error:
        index_dataset(tree, tiny_config().data)
    assert named.format(case=case) in str(error.value)
    slices, dropped = index_dataset(tree, tiny_config("data.index.strict=false").data)
    assert named.format(case=case) in set(dropped["path"])
    assert named.format(case=case) not in set(slices["image_path"]) | set(slices["mask_path"])


def test_a_multi_label_mask_counts_only_the_lesion_labels(layouts, tmp_path):
    tree = Path(shutil.copytree(layouts["nifti"], tmp_path / "own"))
    label = sorted((tree / "labelsTr").iterdir())[0]
    image = nib.load(label)
    labels = np.asarray(image.dataobj).astype(np.uint8)
    labels[labels == 1] = 4  # BraTS-like: enhancing tumour 4, and an edema ring 2 around it
    labels[(labels == 0) & (np.roll(labels, 3, axis=0) == 4)] = 2
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), label)
    case = nifti.stem(label)
    every = index_dataset(tree, tiny_config().data)[0]
    only_4 = index_dataset(tree, tiny_config("data.nifti.lesion_labels=[4]").data)[0]
    mine = lambda t: int(t[t["patient_id"] == case]["tumor_pixels"].sum())  # noqa: E731
    assert mine(every) == int((labels > 0).sum()) > mine(only_4) == int((labels == 4).sum())
    assert mine(only_4) == int(only_4["tumor_pixels"].sum())  # the other cases have no label 4: no tumour
    with pytest.raises(DatasetError, match=r"no voxel of any case has a label of data.nifti.lesion_labels \[7\]"):
        index_dataset(tree, tiny_config("data.nifti.lesion_labels=[7]").data)


def test_a_nifti_case_without_its_image_is_named(layouts, tmp_path):
    tree = Path(shutil.copytree(layouts["nifti"], tmp_path / "own"))
    first = sorted((tree / "imagesTr").iterdir())[0]
    first.unlink()
    with pytest.raises(DatasetError, match=f"no image for case .* \\(missing {first.name}\\)"):
        index_dataset(tree, tiny_config().data)


def test_a_layout_that_is_not_there_is_refused(layouts):
    with pytest.raises(DatasetError, match="data.layout is nifti, but the folder has no dataset.json"):
        index_dataset(layouts["slices"], tiny_config("data.layout=nifti").data)

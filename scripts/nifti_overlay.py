"""Draw a NIfTI mask over its scan from the two files alone (nibabel + matplotlib, no lggseg code), as a
viewer would overlay them: the mask's voxels on the scan's voxels, no transform. For docs/predict-nifti.png:

    python scripts/nifti_overlay.py SCAN.nii.gz MASK.nii.gz OUT.png [--title TEXT]

Refuses a mask whose shape or affine differs from the scan's (it would not overlay without a transform)."""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan")
    parser.add_argument("mask")
    parser.add_argument("out")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    scan, mask = nib.load(args.scan), nib.load(args.mask)
    if scan.shape != mask.shape or not np.allclose(scan.affine, mask.affine, atol=1e-4):
        print(f"{args.mask}: shape {mask.shape} / affine differ from {args.scan} {scan.shape}", file=sys.stderr)
        return 1
    canonical = nib.as_closest_canonical(scan)  # RAS+ display, the same for both files
    image = np.asarray(canonical.dataobj, dtype=float)
    labels = np.asarray(nib.as_closest_canonical(mask).dataobj) > 0
    centre = [int(round(c)) for c in np.argwhere(labels).mean(axis=0)] if labels.any() else [s // 2 for s in image.shape]
    zooms = canonical.header.get_zooms()[:3]
    views = [("axial", image[:, :, centre[2]], labels[:, :, centre[2]], zooms[1] / zooms[0]),
             ("coronal", image[:, centre[1], :], labels[:, centre[1], :], zooms[2] / zooms[0]),
             ("sagittal", image[centre[0], :, :], labels[centre[0], :, :], zooms[2] / zooms[1])]
    figure, axes = plt.subplots(1, 3, figsize=(11, 4.2), facecolor="black")
    for axis, (name, plane, overlay, aspect) in zip(axes, views):
        axis.imshow(plane.T, cmap="gray", origin="lower", aspect=aspect)
        axis.imshow(np.ma.masked_where(~overlay.T, overlay.T), cmap="autumn", alpha=0.45, origin="lower",
                    aspect=aspect, interpolation="nearest")
        axis.contour(overlay.T, levels=[0.5], colors="yellow", linewidths=0.8, origin="lower")
        axis.set_title(name, color="white", fontsize=10)
        axis.axis("off")
    stored = "".join(nib.aff2axcodes(scan.affine))
    figure.suptitle(args.title or f"{args.mask} over {args.scan}", color="white", fontsize=10)
    figure.text(0.5, 0.02, f"scan voxels stored {stored}, {' x '.join(map(str, scan.shape))}; mask: same grid and "
                "affine, drawn without any transform (displayed RAS: anterior up, the patient's right on the right)",
                color="#bbbbbb", ha="center", fontsize=8)
    figure.savefig(args.out, dpi=110, facecolor="black", bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())

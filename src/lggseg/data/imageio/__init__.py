"""The one place that knows each image format (modelled on nnU-Net v2's `imageio`).

A case is read into a `Volume`: an array (slices, H, W, 3) uint8 in the orientation and the intensity
scale of the data set's tif slices (axial; rows anterior to posterior, columns patient right to left,
slices inferior to superior; each channel stretched to 0-255 per volume; channels pre-contrast, FLAIR,
post-contrast), an optional binary mask of the same shape (slices, H, W), and `Geometry`, what the array
lost: the input's voxel order and affine, the spacing, the files, the DICOM identifiers. A writer takes a
mask in the array's order and the same geometry and writes it back in the input's own voxel grid.

- `base`: Volume, Geometry, the reorientation and the intensity scaling shared by every format;
- `nifti`: NIfTI files (`.nii`, `.nii.gz`) through nibabel, and the NIfTI mask writer;
- `dicom`: DICOM series through pydicom (the mask is written as NIfTI in the series' geometry);
- `slices`: 2-D slice files (tif, png) of the `images/` + `masks/` layout;
- `cases`: which reader a path needs (`reader_for`), and the NIfTI-cases layout (imagesTr/ + labelsTr/).
"""

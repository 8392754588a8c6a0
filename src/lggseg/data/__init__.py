"""Data acquisition, layout index, split, preprocessing and datasets."""

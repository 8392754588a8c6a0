"""lggseg: lower-grade glioma segmentation pipeline."""
__version__ = "0.1.0"

"""lggseg: lower-grade glioma segmentation pipeline."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lggseg")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

"""Where every pipeline file lives, relative to the project root (the DVC outs in dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> Paths:
        return cls(Path(root).resolve())

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def dataset(self) -> Path:
        """The extracted data set: patient folders plus data.csv (DVC out of `download`)."""
        return self.raw / "kaggle_3m"

    @property
    def default_archive(self) -> Path:
        """Where `data.source: auto` looks for a manually downloaded Kaggle archive."""
        return self.raw / "lgg-mri-segmentation.zip"

    @property
    def interim(self) -> Path:
        return self.root / "data" / "interim"

    @property
    def slices_csv(self) -> Path:
        return self.interim / "slices.csv"

    @property
    def dropped_csv(self) -> Path:
        return self.interim / "dropped.csv"

    @property
    def splits_json(self) -> Path:
        return self.interim / "splits.json"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    def processed_split(self, split: str) -> Path:
        return self.processed / split

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def split_summary(self) -> Path:
        return self.reports / "split_summary.json"

    def model_dir(self, arch: str) -> Path:
        return self.root / "models" / arch

    @property
    def arch_reports(self) -> Path:
        """Per-architecture reports (train and evaluate outs); the comparison lies beside, not inside, so
        `compare` can depend on this folder and declare its own outputs."""
        return self.reports / "arch"

    def report_dir(self, arch: str) -> Path:
        return self.arch_reports / arch

    @property
    def locks(self) -> Path:
        """Per-architecture locks (lggseg.core.locks); ignored by git, outside every DVC out."""
        return self.root / ".lggseg" / "locks"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

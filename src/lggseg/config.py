"""Typed configuration: `params.yaml` (+ `--set key=value` overrides) -> validated dataclasses.

No other module reads `params.yaml`; stages receive a `Config` and pass plain values on.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from lggseg import model_names


class ConfigError(ValueError):
    """A parameter is missing, unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class SyntheticConfig:
    patients: int = 24
    slices_min: int = 20
    slices_max: int = 40
    seed: int = 42


@dataclass(frozen=True)
class IndexConfig:
    strict: bool = True


@dataclass(frozen=True)
class DataConfig:
    source: Literal["auto", "kaggle", "local", "synthetic"] = "auto"
    local_path: str | None = None
    kaggle_dataset: str = "mateuszbuda/lgg-mri-segmentation"
    index: IndexConfig = field(default_factory=IndexConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    tumor_bins: int = 3
    folds: int = 1
    fold: int = 0


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 256
    channels: Literal["all", "flair"] = "all"

    @property
    def in_channels(self) -> int:
        return 3 if self.channels == "all" else 1


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    hflip_p: float = 0.5
    affine_p: float = 0.5
    shift_limit: float = 0.0625
    scale_limit: float = 0.1
    rotate_limit: float = 15.0
    brightness_contrast_p: float = 0.3
    brightness_limit: float = 0.1
    contrast_limit: float = 0.1
    elastic_p: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    architectures: tuple[str, ...] = ("unet", "fpn")
    encoder: str = "resnet34"
    encoder_weights: str | None = "imagenet"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 25
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    loss: Literal["bce", "dice", "bce_dice"] = "bce"
    scheduler: Literal["none", "cosine", "plateau"] = "none"
    early_stopping_patience: int = 0
    device: str = "auto"
    num_workers: int = 2
    seed: int = 42
    resume: bool = False
    threshold: float = 0.5


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: float = 0.5
    largest_component: bool = True
    batch_size: int = 32
    figures_patients: int = 3


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "lggseg"
    tracking_uri: str | None = None
    register: bool = True


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain (nested) dict, e.g. for logging."""
        return dataclasses.asdict(getattr(self, name))

    def flat(self, sections: Sequence[str] | None = None) -> dict[str, Any]:
        """`{"train.lr": 1e-4, ...}` for the given sections (all when None)."""
        names = sections or [f.name for f in dataclasses.fields(self)]
        return {k: v for name in names for k, v in _flatten(self.section(name), name).items()}


def _flatten(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def load_config(params_path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Config:
    """Read params.yaml, apply `key.sub=value` overrides (values parsed as YAML), validate."""
    path = Path(params_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw, source=str(path))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict in place; the value is parsed as YAML (`null`, `3`, `[a, b]`)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected key=value, e.g. train.epochs=2")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def config_from_dict(raw: Mapping[str, Any], source: str = "params") -> Config:
    return validate(_build(Config, raw, prefix="", source=source))


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys under {where}: {', '.join(sorted(known))}"
        )
    values = {}
    for name in known & set(raw):
        values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}", source)
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch is a programming error
        raise ConfigError(f"{source}: {where}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.", source=source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{source}: {key} must be a non-empty list; got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: {key} must be a non-empty string; got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {hint}")  # pragma: no cover


def validate(cfg: Config) -> Config:
    """Cross-field checks that a type alone cannot express."""
    s = cfg.split
    for key, frac in (("split.val_fraction", s.val_fraction), ("split.test_fraction", s.test_fraction)):
        if not 0 <= frac < 1:
            raise ConfigError(f"{key} must be in [0, 1); got {frac}")
    if s.val_fraction + s.test_fraction >= 1:
        raise ConfigError("split.val_fraction + split.test_fraction must be below 1")
    if s.folds < 1 or not 0 <= s.fold < s.folds:
        raise ConfigError(f"split.fold must be in [0, split.folds); got fold={s.fold}, folds={s.folds}")
    if s.tumor_bins < 1:
        raise ConfigError("split.tumor_bins must be >= 1")
    syn = cfg.data.synthetic
    if syn.patients < 1 or not 1 <= syn.slices_min <= syn.slices_max:
        raise ConfigError("data.synthetic: need patients >= 1 and 1 <= slices_min <= slices_max")
    if cfg.preprocess.size < 16 or cfg.preprocess.size % 32:
        raise ConfigError(f"preprocess.size must be a multiple of 32 (encoders downsample by 32); got {cfg.preprocess.size}")
    _check_model_names(cfg.model)
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0 or t.num_workers < 0 or t.early_stopping_patience < 0:
        raise ConfigError("train: epochs, batch_size >= 1, lr > 0, num_workers and early_stopping_patience >= 0")
    for key, p in (("train.threshold", t.threshold), ("evaluate.threshold", cfg.evaluate.threshold)):
        if not 0 < p < 1:
            raise ConfigError(f"{key} must be in (0, 1); got {p}")
    return cfg


def _check_model_names(model: ModelConfig) -> None:
    duplicates = sorted({a for a in model.architectures if model.architectures.count(a) > 1})
    if duplicates:
        raise ConfigError(f"model.architectures lists {', '.join(duplicates)} more than once")
    archs, encoder_unknown = model_names.unknown_names(model.architectures, model.encoder)
    if archs:
        raise ConfigError(f"model.architectures: unknown architecture(s) {', '.join(archs)}; "
                          f"valid: {', '.join(model_names.ARCHITECTURES)}")
    if encoder_unknown:
        raise ConfigError(f"model.encoder: unknown encoder {model.encoder!r}; e.g. resnet18, resnet34, "
                          "efficientnet-b0, mobilenet_v2, or any timm encoder as tu-<name>")

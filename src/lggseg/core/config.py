"""Typed configuration: `params.yaml` (+ `--set key=value` overrides) -> validated dataclasses.

No other module reads `params.yaml`; stages receive a `Config` and pass plain values on.
Each numeric field declares its allowed values next to it (`Annotated[int, Range(ge=1)]`); they are
checked at load, before any work, and every message reads `<key> must be <rule>; got <value>`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, get_args

import yaml

from lggseg.core import model_names
from lggseg.core.redaction import credentials_in

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A parameter is missing, unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class Range:
    """The values a numeric param may take, declared on its field: `epochs: Annotated[int, Range(ge=1)]`."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    why: str = ""  # appended to the rule in the message, e.g. "(encoders downsample by 32)"

    def broken_rule(self, value: float) -> str | None:
        """The rule `value` breaks ("in [0, 1]", "a multiple of 32"), None when it is allowed."""
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)):
            return self.bounds()
        if self.multiple_of and value % self.multiple_of:
            return f"a multiple of {self.multiple_of}" + (f" ({self.why})" if self.why else "")
        return None

    def bounds(self) -> str:
        """`>= 1`, `> 0`, `in [0, 1]`, `in (0, 1)`, ..."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            return f"in {'[' if self.ge is not None else '('}{low}, {high}{']' if self.le is not None else ')'}"
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {low}"
        if high is not None:
            return f"{'<=' if self.le is not None else '<'} {high}"
        return "any number"


# the ranges shared by several params
AtLeastOne = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]  # numpy's legacy seeding takes 32 bits
Probability = Annotated[float, Range(ge=0, le=1)]
Threshold = Annotated[float, Range(gt=0, lt=1)]  # probability cut-off: 0 or 1 would make every pixel one class
Precision = Literal["auto", "fp32", "bf16"]  # inference: evaluate.precision, `lggseg predict --precision`
PRECISIONS: tuple[str, ...] = get_args(Precision)
TrainPrecision = Literal["auto", "fp32", "bf16", "fp16"]  # train.precision: fp16 adds the GradScaler
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
Fraction = Annotated[float, Range(ge=0, lt=1)]  # of the patients; something must be left for train


@dataclass(frozen=True)
class SyntheticConfig:
    patients: AtLeastOne = 24
    slices_min: AtLeastOne = 20  # <= slices_max, checked in validate()
    slices_max: AtLeastOne = 40
    seed: Seed = 42


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
    val_fraction: Fraction = 0.15  # val + test < 1, checked in validate()
    test_fraction: Fraction = 0.15
    seed: Seed = 42
    tumor_bins: AtLeastOne = 3
    folds: AtLeastOne = 1
    fold: NonNegativeInt = 0  # < folds, checked in validate()


@dataclass(frozen=True)
class PreprocessConfig:
    size: Annotated[int, Range(ge=32, multiple_of=32, why="encoders downsample by 32")] = 256
    channels: Literal["all", "flair"] = "all"

    @property
    def in_channels(self) -> int:
        return 3 if self.channels == "all" else 1


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    hflip_p: Probability = 0.5
    affine_p: Probability = 0.5
    shift_limit: Annotated[float, Range(ge=0, le=1)] = 0.0625  # fraction of the image size
    scale_limit: Annotated[float, Range(ge=0, lt=1)] = 0.1  # zoom in [1 - limit, 1 + limit]; 1 would shrink to 0
    rotate_limit: Annotated[float, Range(ge=0, le=180)] = 15.0  # degrees
    brightness_contrast_p: Probability = 0.3
    brightness_limit: Annotated[float, Range(ge=0, le=1)] = 0.1
    contrast_limit: Annotated[float, Range(ge=0, le=1)] = 0.1
    elastic_p: Probability = 0.0


@dataclass(frozen=True)
class ModelConfig:
    architectures: tuple[str, ...] = ("unet", "fpn")
    encoder: str = "resnet34"
    encoder_weights: str | None = "imagenet"


@dataclass(frozen=True)
class TrainConfig:
    epochs: AtLeastOne = 25
    batch_size: AtLeastOne = 16
    lr: Annotated[float, Range(gt=0)] = 1e-4
    weight_decay: Annotated[float, Range(ge=0)] = 0.0
    loss: Literal["bce", "dice", "bce_dice"] = "bce"
    scheduler: Literal["none", "cosine", "onecycle", "plateau"] = "none"
    tumor_fraction: Annotated[float, Range(gt=0, lt=1)] | None = None  # share of tumour slices drawn; None = each slice once
    early_stopping_patience: NonNegativeInt = 0  # 0 = off
    device: str = "auto"
    num_workers: NonNegativeInt = 2
    seed: Seed = 42
    resume: bool = False
    threshold: Threshold = 0.5
    # the runtime (lggseg.model.devices); `auto` picks per device, every choice also runs on CPU
    precision: TrainPrecision = "auto"  # autocast dtype: auto = bf16 on GPUs (fp16 without bf16) and CPUs with native bf16
    memory_format: MemoryFormat = "auto"  # auto = channels_last except on MPS
    pin_memory: Literal["auto", True, False] = "auto"  # pinned loader memory + non-blocking copies; auto = on CUDA
    compile: bool = False  # torch.compile the training forward
    nproc: AtLeastOne | Literal["auto"] = "auto"  # processes (DDP under torchrun); auto = one per visible GPU


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: Threshold = 0.5
    largest_component: bool = True
    batch_size: AtLeastOne = 32
    figures_patients: Annotated[int, Range(ge=0, le=3)] = 3  # best, median, worst
    precision: Precision = "auto"  # auto: bf16 on GPUs and on CPUs with native bf16
    tta: bool = False  # average the predictions of each slice and its left-right mirror


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "lggseg"
    tracking_uri: str | None = None
    register: bool = True
    # the longest a command waits for a tracking server (http/https) that stops answering, retries included
    server_timeout_s: Annotated[int, Range(ge=5, le=3600)] = 30


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
        return {k: v for name in names for k, v in flatten_params(self.section(name), name).items()}


def flatten_params(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-4}}` -> `{"train.lr": 1e-4}` (tuples become lists)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, dotted))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def param_text(value: Any) -> str:
    """A param value as params.yaml and `-S key=value` spell it: `null`, `true`, `[unet, fpn]`, `0.001`."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping, at any depth: plain YAML keeps
    the last one silently (a second `train:` section would replace the whole first one)."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._key_paths = _key_paths(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: overriding merged keys is the point
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):  # the safe constructor refuses it with its own message
                continue
            line = key_node.start_mark.line + 1
            if key in first_lines:
                where = getattr(self, "_key_paths", {}).get(id(node), "")
                raise ConfigError(f"{self.name}: key {where}{key} is given twice (lines {first_lines[key]} and {line}); "
                                  "YAML would silently keep only the second: keep one")
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _key_paths(node: yaml.Node, prefix: str = "") -> dict[int, str]:
    """`{id(mapping node): "train."}`: the dotted path of every mapping, to name a duplicate key in full."""
    paths = {id(node): prefix} if isinstance(node, yaml.MappingNode) else {}
    children = node.value if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) else []
    for child in children:
        if isinstance(child, tuple):  # a mapping's (key, value) pair
            key, value = child
            if isinstance(key, yaml.ScalarNode):
                paths.update(_key_paths(value, f"{prefix}{key.value}."))
        else:
            paths.update(_key_paths(child, prefix))
    return paths


def read_yaml(text: str, source: str) -> Any:
    """YAML text -> Python values, with duplicate keys refused; a syntax error is one line naming `source`
    and the line and column."""
    try:
        return yaml.load(text, Loader=_named_loader(source))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = ": ".join(part for part in (exc.context, exc.problem) if part)  # "while parsing ...: expected ..."
        raise ConfigError(f"{source}{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None


def _named_loader(source: str) -> type[ParamsLoader]:
    """A ParamsLoader whose marks name `source` instead of `<unicode string>`."""
    class Named(ParamsLoader):
        def __init__(self, stream: str):
            super().__init__(stream)
            self.name = source
    return Named


def read_params_file(path: Path) -> dict[str, Any]:
    """params.yaml as a dict of sections; an empty file (or one with only comments) warns that every value is
    a default, since a file emptied by mistake would otherwise run the defaults silently."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): params.yaml must be UTF-8 YAML") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file: {exc.strerror or exc}") from None
    raw = read_yaml(text, str(path))
    if raw is None or raw == {}:
        log.warning("%s holds no params: every value is a default (see params.yaml in the repository for them)", path)
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw


def load_config(params_path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Config:
    """Read params.yaml, apply `key.sub=value` overrides (values parsed as YAML), validate."""
    path = Path(params_path)
    raw = read_params_file(path)
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw, source=str(path))


def committed_config(root: str | Path, rev: str = "HEAD") -> Config | None:
    """params.yaml as committed at `rev` in the git repository `root`; None when there is none to read
    (not a git checkout, no such file, or params of an older layout)."""
    try:
        text = subprocess.run(["git", "show", f"{rev}:params.yaml"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=30).stdout
        return config_from_dict(read_yaml(text, f"params.yaml@{rev}") or {}, source=f"params.yaml@{rev}")
    except (OSError, subprocess.SubprocessError, ConfigError):
        return None


def changed_params(cfg: Config, base: Config) -> dict[str, Any]:
    """`{"train.lr": 0.001, ...}`: every param whose value in `cfg` differs from `base`."""
    before = base.flat()
    return {k: v for k, v in cfg.flat().items() if before.get(k) != v}


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
    node[parts[-1]] = read_yaml(text, f"override {override!r}") if text.strip() else None


def config_from_dict(raw: Mapping[str, Any], source: str = "params") -> Config:
    cfg = validate(_build(Config, raw, prefix="", source=source))
    refuse_credentials(cfg, source)
    return cfg


def refuse_credentials(cfg: Config, source: str) -> None:
    """No param may hold a credential: params are copied into dvc.lock, MLflow params and tags and
    `dvc exp` commits, and params.yaml itself is committed to git. MLflow reads the credentials from the
    environment instead."""
    for key, value in cfg.flat().items():
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str) and (kind := credentials_in(text)):
                raise ConfigError(
                    f"{source}: {key} holds a credential ({kind}); params are copied into dvc.lock, MLflow and git, "
                    "so give the URI without it and export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                    "(or MLFLOW_TRACKING_TOKEN), which MLflow reads from the environment")


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    known = [f.name for f in dataclasses.fields(cls)]  # in field order: the first bad key is always the same
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys under {where}: {', '.join(sorted(known))}"
        )
    values = {}
    for name in (n for n in known if n in raw):
        values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}", source)
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch is a programming error
        raise ConfigError(f"{source}: {where}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        coerced = _coerce(args[0], value, key, source)
        for rule in (r.broken_rule(coerced) for r in args[1:] if isinstance(r, Range)):
            if rule:
                shown = coerced if isinstance(value, str) else value  # as written, unless a string such as "1e3"
                raise ConfigError(f"{source}: {key} must be {rule}; got {shown!r}")
        return coerced
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.", source=source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, key, source)
        rules = []
        for alternative in inner:  # `int | Literal["auto"]`: the first that takes the value
            try:
                return _coerce(alternative, value, key, source)
            except ConfigError as exc:
                rules.append(str(exc).partition(f"{key} must be ")[2].rpartition("; got")[0])
        raise ConfigError(f"{source}: {key} must be {' or '.join(rules)}; got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(param_text, args))}; got {value!r}")
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
        return _coerce_float(value, key, source)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: {key} must be a non-empty string; got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {hint}")  # pragma: no cover


def _coerce_float(value: Any, key: str, source: str) -> float:
    """A finite float from a YAML number or a string that `float()` reads: YAML 1.1 (PyYAML) reads `1e3`
    as a string, while `dvc exp run -S train.lr=1e3` and most people mean the number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{source}: {key} must be a number; got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{source}: {key} must be a number; got {value!r}") from None
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise ConfigError(f"{source}: {key} must be a finite number; got {shown}")
    return number


def ranges(cls: type = Config, prefix: str = "") -> dict[str, Range]:
    """`{"train.epochs": Range(ge=1), ...}`: the declared range of every numeric param."""
    found: dict[str, Range] = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if dataclasses.is_dataclass(hint):
            found.update(ranges(hint, f"{prefix}{name}."))
        elif typing.get_origin(hint) is Annotated:
            found.update({f"{prefix}{name}": r for r in typing.get_args(hint)[1:] if isinstance(r, Range)})
    return found


def validate(cfg: Config) -> Config:
    """Cross-field checks that a single field's type and range cannot express (those are checked in `_coerce`)."""
    s = cfg.split
    if s.val_fraction + s.test_fraction >= 1:
        raise ConfigError("split.val_fraction + split.test_fraction must be < 1 (patients are left for train); "
                          f"got {s.val_fraction} + {s.test_fraction}")
    if s.fold >= s.folds:
        raise ConfigError(f"split.fold must be < split.folds (folds count from 0); got fold={s.fold}, folds={s.folds}")
    syn = cfg.data.synthetic
    if syn.slices_min > syn.slices_max:
        raise ConfigError("data.synthetic.slices_min must be <= data.synthetic.slices_max; "
                          f"got slices_min={syn.slices_min}, slices_max={syn.slices_max}")
    _check_model_names(cfg.model)
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

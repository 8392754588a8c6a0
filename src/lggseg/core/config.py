"""Typed configuration: `params.yaml` (+ `--set key=value` overrides) -> a validated, immutable `Config`.

No other module reads `params.yaml`; stages receive a `Config` and pass plain values on.
One pydantic model per params section: each field declares its type, its range (`Field(ge=1)`) or its
choices (`Literal[...]`) next to it, and the rules between fields are the sections' model validators.
Everything is checked at load, before any work: no unknown key, no silent coercion (`"3"` is not 3, `1` is
not `true`), and pydantic's errors become one `ConfigError` line, `<key> must be <rule>; got <value>`.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Interval, Le, Lt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from lggseg.core import model_names
from lggseg.core.redaction import credentials_in

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A parameter is missing, unknown or has a bad value; the message names the key."""


def _refused(rule: str, shown: str | None = None) -> PydanticCustomError:
    """A value that breaks `rule` ("a number"); `shown` replaces the value in the message."""
    return PydanticCustomError("param_rule", rule, {"shown": shown} if shown is not None else None)


def _finite_number(value: Any) -> Any:
    """A YAML number, or a string that `float()` reads: YAML 1.1 (PyYAML) reads `1e3` as a string, while
    `dvc exp run -S train.lr=1e3` and most people mean the number. Booleans are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _refused("a number")
    try:
        number = float(value)
    except ValueError:
        raise _refused("a number") from None
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise _refused("a finite number", repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}...")
    return number


def _non_empty_list(value: Any) -> Any:
    """`model.architectures=unet` means `[unet]`."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise _refused("a non-empty list")
    return tuple(value)


# the types and ranges shared by several params
Number = Annotated[float, BeforeValidator(_finite_number)]
Text = Annotated[str, Field(min_length=1)]
AtLeastOne = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy's legacy seeding takes 32 bits
Probability = Annotated[Number, Field(ge=0, le=1)]
Threshold = Annotated[Number, Field(gt=0, lt=1)]  # probability cut-off: 0 or 1 would make every pixel one class
Precision = Literal["auto", "fp32", "bf16"]  # inference: evaluate.precision, `lggseg predict --precision`
PRECISIONS: tuple[str, ...] = get_args(Precision)
TrainPrecision = Literal["auto", "fp32", "bf16", "fp16"]  # train.precision: fp16 adds the GradScaler
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
Fraction = Annotated[Number, Field(ge=0, lt=1)]  # of the patients; something must be left for train


class Section(BaseModel):
    """A params section: typed fields, unknown keys refused, immutable, no coercion between types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SyntheticConfig(Section):
    patients: AtLeastOne = 24
    slices_min: AtLeastOne = 20
    slices_max: AtLeastOne = 40
    seed: Seed = 42

    @model_validator(mode="after")
    def _slices_min_at_most_max(self) -> SyntheticConfig:
        if self.slices_min > self.slices_max:
            raise ValueError("data.synthetic.slices_min must be <= data.synthetic.slices_max; "
                             f"got slices_min={self.slices_min}, slices_max={self.slices_max}")
        return self


class IndexConfig(Section):
    strict: bool = True


class SlicesLayoutConfig(Section):
    """data.layout slices: `images/` + `masks/` of 2-D slices; which patient each slice belongs to."""

    patient_pattern: Text = r"^(?P<patient>.+)_(?P<slice>\d+)$"
    patients_csv: Text | None = None

    @model_validator(mode="after")
    def _pattern_names_patient_and_slice(self) -> SlicesLayoutConfig:
        try:
            groups = re.compile(self.patient_pattern).groupindex
        except re.error as exc:
            raise ValueError(f"data.slices.patient_pattern is not a regular expression: {exc}") from None
        if not {"patient", "slice"} <= set(groups):
            raise ValueError("data.slices.patient_pattern must name the groups (?P<patient>...) and (?P<slice>...); "
                             f"got {self.patient_pattern!r}")
        return self


class NiftiLayoutConfig(Section):
    """data.layout nifti: which labels of labelsTr/ are the lesion (null: every label > 0)."""

    lesion_labels: list[int] | None = None

    @model_validator(mode="after")
    def _labels_are_lesion_values(self) -> NiftiLayoutConfig:
        if self.lesion_labels is not None and (not self.lesion_labels or min(self.lesion_labels) < 1):
            raise ValueError("data.nifti.lesion_labels must be a non-empty list of labels >= 1 (0 is background), "
                             f"or null for every label > 0; got {self.lesion_labels}")
        return self


class DataConfig(Section):
    source: Literal["auto", "kaggle", "local", "synthetic"] = "auto"
    local_path: Text | None = None
    kaggle_dataset: Text = "mateuszbuda/lgg-mri-segmentation"
    layout: Literal["auto", "kaggle", "slices", "nifti"] = "auto"
    slices: SlicesLayoutConfig = SlicesLayoutConfig()
    nifti: NiftiLayoutConfig = NiftiLayoutConfig()
    index: IndexConfig = IndexConfig()
    synthetic: SyntheticConfig = SyntheticConfig()


class SplitConfig(Section):
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    seed: Seed = 42
    tumor_bins: AtLeastOne = 3
    folds: AtLeastOne = 1
    fold: NonNegativeInt = 0

    @model_validator(mode="after")
    def _patients_left_for_train(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("split.val_fraction + split.test_fraction must be < 1 (patients are left for train); "
                             f"got {self.val_fraction} + {self.test_fraction}")
        return self

    @model_validator(mode="after")
    def _fold_among_folds(self) -> SplitConfig:
        if self.fold >= self.folds:
            raise ValueError("split.fold must be < split.folds (folds count from 0); "
                             f"got fold={self.fold}, folds={self.folds}")
        return self


class PreprocessConfig(Section):
    size: Annotated[int, Field(ge=32, multiple_of=32, description="encoders downsample by 32")] = 256
    channels: Literal["all", "flair"] = "all"

    @property
    def in_channels(self) -> int:
        return 3 if self.channels == "all" else 1


class AugmentConfig(Section):
    enabled: bool = True
    hflip_p: Probability = 0.5
    affine_p: Probability = 0.5
    shift_limit: Annotated[Number, Field(ge=0, le=1)] = 0.0625  # fraction of the image size
    scale_limit: Annotated[Number, Field(ge=0, lt=1)] = 0.1  # zoom in [1 - limit, 1 + limit]; 1 would shrink to 0
    rotate_limit: Annotated[Number, Field(ge=0, le=180)] = 15.0  # degrees
    brightness_contrast_p: Probability = 0.3
    brightness_limit: Annotated[Number, Field(ge=0, le=1)] = 0.1
    contrast_limit: Annotated[Number, Field(ge=0, le=1)] = 0.1
    elastic_p: Probability = 0.0


class ModelConfig(Section):
    architectures: Annotated[tuple[Text, ...], BeforeValidator(_non_empty_list)] = ("unet", "fpn")
    encoder: Text = "resnet34"
    encoder_weights: Text | None = "imagenet"

    @model_validator(mode="after")
    def _names_known_to_smp(self) -> ModelConfig:
        """Checked without importing torch (lggseg.core.model_names): a typo fails at once."""
        duplicates = sorted({a for a in self.architectures if self.architectures.count(a) > 1})
        if duplicates:
            raise ValueError(f"model.architectures lists {', '.join(duplicates)} more than once")
        archs, encoder_unknown = model_names.unknown_names(self.architectures, self.encoder)
        if archs:
            raise ValueError(f"model.architectures: unknown architecture(s) {', '.join(archs)}; "
                             f"valid: {', '.join(model_names.ARCHITECTURES)}")
        if encoder_unknown:
            raise ValueError(f"model.encoder: unknown encoder {self.encoder!r}; e.g. resnet18, resnet34, "
                             "efficientnet-b0, mobilenet_v2, or any timm encoder as tu-<name>")
        return self


class TrainConfig(Section):
    epochs: AtLeastOne = 25
    batch_size: AtLeastOne = 16
    lr: Annotated[Number, Field(gt=0)] = 1e-4
    weight_decay: Annotated[Number, Field(ge=0)] = 0.0
    loss: Literal["bce", "dice", "bce_dice"] = "bce"
    scheduler: Literal["none", "cosine", "onecycle", "plateau"] = "none"
    tumor_fraction: Annotated[Number, Field(gt=0, lt=1)] | None = None  # share of tumour slices drawn; None = each slice once
    early_stopping_patience: NonNegativeInt = 0  # 0 = off
    device: Text = "auto"
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


class EvaluateConfig(Section):
    threshold: Threshold = 0.5
    largest_component: bool = True
    batch_size: AtLeastOne = 32
    figures_patients: Annotated[int, Field(ge=0, le=3)] = 3  # best, median, worst
    precision: Precision = "auto"  # auto: bf16 on GPUs and on CPUs with native bf16
    tta: bool = False  # average the predictions of each slice and its left-right mirror


with warnings.catch_warnings():  # `register` also names ABCMeta.register, which instances never see
    warnings.filterwarnings("ignore", 'Field name "register" in "MlflowConfig" shadows', UserWarning)

    class MlflowConfig(Section):
        experiment: Text = "lggseg"
        tracking_uri: Text | None = None
        register: bool = True
        # the longest a command waits for a tracking server (http/https) that stops answering, retries included
        server_timeout_s: Annotated[int, Field(ge=5, le=3600)] = 30


class Config(Section):
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain (nested) dict, e.g. for logging."""
        section: Section = getattr(self, name)
        return section.model_dump()

    def flat(self, sections: Sequence[str] | None = None) -> dict[str, Any]:
        """`{"train.lr": 1e-4, ...}` for the given sections (all when None)."""
        names = sections or list(type(self).model_fields)
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
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_problem(exc.errors(include_url=False))}") from None
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


def _first_problem(errors: list[ErrorDetails]) -> str:
    """pydantic's errors as one line: unknown keys first (all of one section), else the first bad value in
    field order, the same on every run."""
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        parent = min((e["loc"] for e in unknown), key=len)[:-1]  # the outermost section with an unknown key
        where, field = _locate(parent)
        section = field.annotation if field else Config
        prefix = f"{where}." if where else ""
        names = sorted(f"{prefix}{e['loc'][-1]}" for e in unknown if e["loc"][:-1] == parent)
        valid = sorted(section.model_fields) if _is_section(section) else []
        return f"unknown key(s) {', '.join(names)}; valid keys under {where or 'top level'}: {', '.join(valid)}"
    first = next((e for e in errors if e["type"] != "value_error"), errors[0])  # bad values before bad pairs
    if first["type"] == "value_error":  # a model validator's rule between fields: its message names the keys
        return str(first["ctx"]["error"])
    key, field = _locate(first["loc"])
    alternatives = [e for e in errors if _locate(e["loc"])[0] == key]  # `int | Literal["auto"]`: one per branch
    rules = " or ".join(_rule(e, field) for e in alternatives)
    value = first["input"]
    if first["type"] in _BOUND_ERRORS and isinstance(value, str):
        value = float(value)  # `1e3` out of range: shown as the number it reads as
    shown = first.get("ctx", {}).get("shown") or repr(value)
    return f"{key or 'top level'} must be {rules}; got {shown}"


_TYPE_RULES = {
    "bool_type": "true or false", "int_type": "an integer", "string_type": "a non-empty string",
    "string_too_short": "a non-empty string", "model_type": "a mapping",
}
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _rule(error: ErrorDetails, field: FieldInfo | None) -> str:
    """The rule a value breaks, as the messages spell it: `>= 1`, `in [0, 1)`, `one of auto, fp32`."""
    kind = error["type"]
    if kind in _BOUND_ERRORS and field and (interval := _interval(field)):
        return _bounds(interval)
    if kind == "multiple_of":
        why = f" ({field.description})" if field and field.description else ""
        return f"a multiple of {error.get('ctx', {})['multiple_of']}{why}"
    if kind == "literal_error" and field:
        return f"one of {', '.join(param_text(choice) for choice in _choices(field))}"
    if kind == "param_rule":
        return error["msg"]
    return _TYPE_RULES.get(kind, error["msg"])


def _locate(loc: tuple[int | str, ...]) -> tuple[str, FieldInfo | None]:
    """pydantic's error location -> (`"model.architectures[1]"`, the field); the tags pydantic adds for the
    branches of a union (`constrained-int`) name no key."""
    key, field = "", None
    section: type[Section] | None = Config
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif section is not None and part in section.model_fields:
            field = section.model_fields[part]
            key = f"{key}.{part}" if key else part
            section = field.annotation if _is_section(field.annotation) else None
    return key, field


def _is_section(annotation: Any) -> typing.TypeGuard[type[Section]]:
    return isinstance(annotation, type) and issubclass(annotation, Section)


def _alternatives(field: FieldInfo) -> list[Any]:
    """The types a field takes: `int | Literal["auto"]` -> both, anything else -> itself."""
    if get_origin(field.annotation) in (typing.Union, types.UnionType):
        return list(get_args(field.annotation))
    return [field.annotation]


def _choices(field: FieldInfo) -> list[Any]:
    return [choice for kind in _alternatives(field) if get_origin(kind) is Literal for choice in get_args(kind)]


def _interval(field: FieldInfo) -> Interval | None:
    """The bounds declared on a field, on itself or on a branch of its union (`int >= 1 | "auto"`)."""
    declared = list(field.metadata)
    for kind in _alternatives(field):
        if get_origin(kind) is Annotated:
            declared += [m for extra in get_args(kind)[1:] if isinstance(extra, FieldInfo) for m in extra.metadata]
    bounds = {type(m).__name__.lower(): m for m in declared if isinstance(m, (Ge, Gt, Le, Lt))}
    return Interval(**{name: getattr(m, name) for name, m in bounds.items()}) if bounds else None


def _bounds(interval: Interval) -> str:
    """`>= 1`, `> 0`, `in [0, 1]`, `in (0, 1)`, ..."""
    low = interval.ge if interval.ge is not None else interval.gt
    high = interval.le if interval.le is not None else interval.lt
    if low is not None and high is not None:
        return f"in {'[' if interval.ge is not None else '('}{low}, {high}{']' if interval.le is not None else ')'}"
    if low is not None:
        return f"{'>=' if interval.ge is not None else '>'} {low}"
    return f"{'<=' if interval.le is not None else '<'} {high}"


def ranges(section: type[Section] = Config, prefix: str = "") -> dict[str, Interval]:
    """`{"train.epochs": Interval(ge=1), ...}`: the declared bounds of every numeric param."""
    found: dict[str, Interval] = {}
    for name, field in section.model_fields.items():
        if _is_section(field.annotation):
            found.update(ranges(field.annotation, f"{prefix}{name}."))
        elif interval := _interval(field):
            found[f"{prefix}{name}"] = interval
    return found

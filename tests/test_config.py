import subprocess
import sys

import pytest

from conftest import PARAMS, committed_params_text, tiny_config
from lggseg.core.config import Config, ConfigError, load_config, ranges


def test_repo_params_load_with_documented_defaults():
    cfg = load_config(PARAMS)
    assert cfg.data.source == "auto"
    assert cfg.model.architectures == ("unet", "fpn")
    assert cfg.train.epochs == 25 and cfg.train.batch_size == 16 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.loss == "bce" and cfg.model.encoder == "resnet34" and cfg.model.encoder_weights == "imagenet"
    assert cfg.split.val_fraction == cfg.split.test_fraction == pytest.approx(0.15)
    assert cfg.preprocess.size == 256 and cfg.preprocess.in_channels == 3


def test_overrides_parse_yaml_values():
    cfg = tiny_config("model.encoder_weights=null", "model.architectures=[unet, deeplabv3plus]", "preprocess.channels=flair")
    assert cfg.model.encoder_weights is None
    assert cfg.model.architectures == ("unet", "deeplabv3plus")
    assert cfg.preprocess.in_channels == 1


# At least one bad value for every leaf key of params.yaml, with the message it must give
# (after the source prefix): `<key> must be <rule>; got <value>`. test_bad_values_table_covers_every_param
# fails when a param is added without a row here.
BAD_VALUES = [
    ("data.source=ftp", "data.source must be one of auto, kaggle, local, synthetic; got 'ftp'"),
    ("data.local_path=3", "data.local_path must be a non-empty string; got 3"),
    ("data.kaggle_dataset=''", "data.kaggle_dataset must be a non-empty string; got ''"),
    ("data.layout=zip", "data.layout must be one of auto, kaggle, slices, nifti; got 'zip'"),
    ("data.slices.patient_pattern='^(?P<patient>.+)$'",
     "data.slices.patient_pattern must name the groups (?P<patient>...) and (?P<slice>...)"),
    ("data.slices.patients_csv=''", "data.slices.patients_csv must be a non-empty string; got ''"),
    ("data.nifti.lesion_labels=[0]", "data.nifti.lesion_labels must be a non-empty list of labels >= 1 (0 is "
     "background), or null for every label > 0; got [0]"),
    ("data.index.strict=maybe", "data.index.strict must be true or false; got 'maybe'"),
    ("data.synthetic.patients=0", "data.synthetic.patients must be >= 1; got 0"),
    ("data.synthetic.slices_min=0", "data.synthetic.slices_min must be >= 1; got 0"),
    ("data.synthetic.slices_min=30",  # TINY has slices_max=22
     "data.synthetic.slices_min must be <= data.synthetic.slices_max; got slices_min=30, slices_max=22"),
    ("data.synthetic.slices_max=-1", "data.synthetic.slices_max must be >= 1; got -1"),
    ("data.synthetic.slices_max=10",
     "data.synthetic.slices_min must be <= data.synthetic.slices_max; got slices_min=20, slices_max=10"),
    ("data.synthetic.seed=-1", "data.synthetic.seed must be in [0, 4294967295]; got -1"),
    ("data.synthetic.seed=4294967296", "data.synthetic.seed must be in [0, 4294967295]; got 4294967296"),
    ("split.val_fraction=1", "split.val_fraction must be in [0, 1); got 1"),
    ("split.val_fraction=-0.1", "split.val_fraction must be in [0, 1); got -0.1"),
    ("split.test_fraction=0.9",
     "split.val_fraction + split.test_fraction must be < 1 (patients are left for train); got 0.15 + 0.9"),
    ("split.test_fraction=.inf", "split.test_fraction must be a finite number; got inf"),
    ("split.seed=x", "split.seed must be an integer; got 'x'"),
    ("split.tumor_bins=0", "split.tumor_bins must be >= 1; got 0"),
    ("split.folds=0", "split.folds must be >= 1; got 0"),
    ("split.fold=-1", "split.fold must be >= 0; got -1"),
    ("split.fold=5", "split.fold must be < split.folds (folds count from 0); got fold=5, folds=1"),
    ("preprocess.size=100", "preprocess.size must be a multiple of 32 (encoders downsample by 32); got 100"),
    ("preprocess.size=0", "preprocess.size must be >= 32; got 0"),
    ("preprocess.channels=rgb", "preprocess.channels must be one of all, flair; got 'rgb'"),
    ("augment.enabled=2", "augment.enabled must be true or false; got 2"),
    ("augment.hflip_p=5.0", "augment.hflip_p must be in [0, 1]; got 5.0"),
    ("augment.affine_p=-0.1", "augment.affine_p must be in [0, 1]; got -0.1"),
    ("augment.shift_limit=1.5", "augment.shift_limit must be in [0, 1]; got 1.5"),
    ("augment.scale_limit=1", "augment.scale_limit must be in [0, 1); got 1"),
    ("augment.rotate_limit=181", "augment.rotate_limit must be in [0, 180]; got 181"),
    ("augment.rotate_limit=-15", "augment.rotate_limit must be in [0, 180]; got -15"),
    ("augment.brightness_contrast_p=1.01", "augment.brightness_contrast_p must be in [0, 1]; got 1.01"),
    ("augment.brightness_limit=2", "augment.brightness_limit must be in [0, 1]; got 2"),
    ("augment.contrast_limit=-0.5", "augment.contrast_limit must be in [0, 1]; got -0.5"),
    ("augment.elastic_p=.nan", "augment.elastic_p must be a finite number; got nan"),
    ("model.architectures=[]", "model.architectures must be a non-empty list; got []"),
    ("model.architectures=[unet, foo]", "model.architectures: unknown architecture(s) foo; valid: deeplabv3"),
    ("model.encoder=resnet99", "model.encoder: unknown encoder 'resnet99'"),
    ("model.encoder_weights=3", "model.encoder_weights must be a non-empty string; got 3"),
    ("train.epochs=0", "train.epochs must be >= 1; got 0"),
    ("train.epochs=many", "train.epochs must be an integer; got 'many'"),
    ("train.batch_size=0", "train.batch_size must be >= 1; got 0"),
    ("train.lr=0", "train.lr must be > 0; got 0"),
    ("train.lr=-1e-3", "train.lr must be > 0; got -0.001"),
    ("train.lr=.nan", "train.lr must be a finite number; got nan"),
    ("train.lr=fast", "train.lr must be a number; got 'fast'"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0; got -1"),
    ("train.loss=focal", "train.loss must be one of bce, dice, bce_dice; got 'focal'"),
    ("train.scheduler=step", "train.scheduler must be one of none, cosine, onecycle, plateau; got 'step'"),
    ("train.tumor_fraction=1", "train.tumor_fraction must be in (0, 1); got 1"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience must be >= 0; got -1"),
    ("train.device=''", "train.device must be a non-empty string; got ''"),
    ("train.num_workers=-1", "train.num_workers must be >= 0; got -1"),
    ("train.seed=-1", "train.seed must be in [0, 4294967295]; got -1"),
    ("train.resume=1", "train.resume must be true or false; got 1"),
    ("train.threshold=0", "train.threshold must be in (0, 1); got 0"),
    ("train.threshold=1", "train.threshold must be in (0, 1); got 1"),
    ("train.precision=fp8", "train.precision must be one of auto, fp32, bf16, fp16; got 'fp8'"),
    ("train.memory_format=nhwc", "train.memory_format must be one of auto, channels_last, contiguous; got 'nhwc'"),
    ("train.pin_memory=sometimes", "train.pin_memory must be one of auto, true, false; got 'sometimes'"),
    ("train.compile=auto", "train.compile must be true or false; got 'auto'"),
    ("train.nproc=0", "train.nproc must be >= 1 or one of auto; got 0"),
    ("train.nproc=all", "train.nproc must be an integer or one of auto; got 'all'"),
    ("evaluate.threshold=1.5", "evaluate.threshold must be in (0, 1); got 1.5"),
    ("evaluate.largest_component=null", "evaluate.largest_component must be true or false; got None"),
    ("evaluate.batch_size=0", "evaluate.batch_size must be >= 1; got 0"),
    ("evaluate.figures_patients=4", "evaluate.figures_patients must be in [0, 3]; got 4"),
    ("evaluate.figures_patients=-1", "evaluate.figures_patients must be in [0, 3]; got -1"),
    ("evaluate.precision=fp16", "evaluate.precision must be one of auto, fp32, bf16; got 'fp16'"),
    ("evaluate.tta=2", "evaluate.tta must be true or false; got 2"),
    ("mlflow.experiment=''", "mlflow.experiment must be a non-empty string; got ''"),
    ("mlflow.tracking_uri=[a]", "mlflow.tracking_uri must be a non-empty string; got ['a']"),
    ("mlflow.tracking_uri=http://alice:pw@host:5000",  # params reach dvc.lock, MLflow and git
     "mlflow.tracking_uri holds a credential (user info (user:password@) in a URI); "),
    ("mlflow.tracking_uri=postgresql://db/mlflow?password=pw",
     "mlflow.tracking_uri holds a credential (a secret in a query string or keyword"),
    ("mlflow.register=maybe", "mlflow.register must be true or false; got 'maybe'"),
    ("mlflow.server_timeout_s=0", "mlflow.server_timeout_s must be in [5, 3600]; got 0"),
    ("mlflow.server_timeout_s=2.5", "mlflow.server_timeout_s must be an integer; got 2.5"),
]


def test_bad_values_table_covers_every_param():
    covered = {override.partition("=")[0] for override, _ in BAD_VALUES}
    assert covered == set(Config().flat()), "add a row to BAD_VALUES for each new param (and drop gone ones)"


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_is_refused_naming_key_and_value(override, message):
    with pytest.raises(ConfigError) as caught:
        tiny_config(override)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_numeric_param_declares_a_range():
    numeric = {k for k, v in Config().flat().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numeric_or_not_set = {"train.tumor_fraction", "train.nproc"}  # default null / auto
    assert numeric | numeric_or_not_set == set(ranges())


@pytest.mark.parametrize("key, bound", [(k, b) for k, r in ranges().items() for b in (r.ge, r.le) if b is not None])
def test_inclusive_bounds_are_accepted(key, bound):
    extra = ["data.synthetic.slices_min=1"] if key == "data.synthetic.slices_max" else []  # keep min <= max
    cfg = tiny_config(*extra, f"{key}={bound}")
    assert cfg.flat()[key] == bound


def test_first_bad_key_in_field_order_is_reported():
    """Several bad values: the message is the same on every run (not set order)."""
    with pytest.raises(ConfigError, match=r"train\.epochs must be >= 1; got 0"):
        tiny_config("train.lr=0", "evaluate.batch_size=0", "train.epochs=0")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train\.epocs; valid keys under train: "):
        tiny_config("train.epocs=3")


@pytest.mark.parametrize("text, value", [("1e3", 1000.0), ("1e-3", 0.001), ("'2.5E-4'", 2.5e-4), ("1", 1.0)])
def test_floats_accept_exponent_notation_in_overrides(text, value):
    """PyYAML reads `1e3` (no dot) as a string; `dvc exp run -S train.lr=1e3` means the number."""
    lr = tiny_config(f"train.lr={text}").train.lr
    assert lr == pytest.approx(value) and type(lr) is float


def test_floats_accept_exponent_notation_in_params_file(tmp_path):
    text = committed_params_text()
    assert "lr: 1.0e-4" in text and "rotate_limit: 15 " in text
    params = tmp_path / "params.yaml"
    params.write_text(text.replace("lr: 1.0e-4", "lr: 1e-3").replace("rotate_limit: 15 ", "rotate_limit: 1.5e1 "))
    cfg = load_config(params)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.augment.rotate_limit == pytest.approx(15.0)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "nan", "inf", "-Infinity", "1e400", "9" * 400])
def test_floats_must_be_finite(text):
    with pytest.raises(ConfigError, match=r"train\.lr must be a finite number; got "):
        tiny_config(f"train.lr={text}")


@pytest.mark.parametrize("text", ["2.5", "2.0", "1e3", "'3'", "true"])
def test_ints_stay_strict(text):
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer; got "):
        tiny_config(f"train.epochs={text}")


PARAMS_WITH_DUPLICATES = [
    # a second `train:` section silently replaced the first (batch_size 4 -> 16, loss dice -> bce)
    ("train:\n  batch_size: 4\n  loss: dice\n\nmlflow:\n  register: false\ntrain:\n  batch_size: 16\n",
     "key train is given twice (lines 1 and 7)"),
    ("train:\n  batch_size: 4\n  loss: dice\n  batch_size: 16\n", "key train.batch_size is given twice (lines 2 and 4)"),
    ("data:\n  synthetic:\n    seed: 1\n    patients: 3\n    seed: 2\n",
     "key data.synthetic.seed is given twice (lines 3 and 5)"),
    ("model:\n  architectures: [unet]\n  encoder: resnet18\n  'encoder': resnet34\n",
     "key model.encoder is given twice (lines 3 and 4)"),
    ("train: {epochs: 1, epochs: 2}\n", "key train.epochs is given twice (lines 1 and 1)"),
]


@pytest.mark.parametrize("text, message", PARAMS_WITH_DUPLICATES, ids=[m.split(" is")[0] for _, m in PARAMS_WITH_DUPLICATES])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, text, message):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(params)
    assert str(caught.value).startswith(f"{params}: {message}") and "\n" not in str(caught.value)


def test_a_key_given_twice_in_an_override_value_is_refused():
    with pytest.raises(ConfigError, match=r"override 'train=\{epochs: 1, epochs: 2\}': key epochs is given twice"):
        tiny_config("train={epochs: 1, epochs: 2}")


def test_yaml_merge_keys_may_override_what_they_merge(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train: &base\n  epochs: 3\n  lr: 0.01\nevaluate:\n  batch_size: 8\n")
    assert load_config(params).train.epochs == 3
    params.write_text("split: &s {seed: 1, folds: 1}\ntrain:\n  <<: {epochs: 3, seed: 1}\n  epochs: 5\n")
    assert load_config(params).train.epochs == 5


@pytest.mark.parametrize("text", ["", "# every param commented out\n#train:\n#  epochs: 3\n", "{}\n", "---\n"])
def test_an_empty_params_file_warns_that_every_value_is_a_default(tmp_path, text):
    """Through the CLI: the warning is a line on stderr that names the file, and the defaults are used."""
    params = tmp_path / "params.yaml"
    params.write_text(text)
    code = f"from lggseg.cli import main; main(['split', '--params', {str(params)!r}, '--root', {str(tmp_path)!r}])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    warning = [line for line in result.stderr.splitlines() if "every value is a default" in line]
    assert len(warning) == 1 and str(params) in warning[0] and warning[0].startswith("WARNING"), result.stderr


@pytest.mark.parametrize("text, message", [
    ("train:\n\tepochs: 3\n", "line 2, column 1: not valid YAML: while scanning for the next token: "
                               "found character '\\t' that cannot start any token"),
    ("train: [unet\n", "line 2, column 1: not valid YAML: while parsing a flow sequence: expected ',' or ']', but got"),
    ("train:\n  epochs: 3\n---\nsplit: {}\n", "line 3, column 1: not valid YAML: expected a single document"),
    ("- train\n", ": expected a mapping of sections at the top level, got list"),
])
def test_a_params_file_that_is_not_valid_yaml_is_one_line_with_the_line_number(tmp_path, text, message):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(params)
    assert str(caught.value).startswith(f"{params}") and message in str(caught.value) and "\n" not in str(caught.value)


def test_a_params_file_that_is_not_utf8_or_not_a_file_is_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes(b"train:\n  loss: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not UTF-8 text \(byte 15\)"):
        load_config(params)
    with pytest.raises(ConfigError, match=r"cannot read the params file: Is a directory"):
        load_config(tmp_path)


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="expected key=value"):
        tiny_config("train.epochs")


def test_flat_params_cover_sections():
    flat = Config().flat(["train", "model"])
    assert flat["train.lr"] == pytest.approx(1e-4)
    assert flat["model.architectures"] == ["unet", "fpn"]
    assert not any(k.startswith("data.") for k in flat)


def test_listed_model_names_are_the_installed_smp_names():
    from lggseg.core import model_names

    architectures, encoders = model_names.installed_names()
    assert set(model_names.ARCHITECTURES) == architectures
    assert set(model_names.ENCODERS) == encoders


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.architectures=[unet, foo]", "model.architectures: unknown architecture.*foo.*valid: deeplabv3"),
        ("model.architectures=[unet, unet]", "model.architectures lists unet more than once"),
        ("model.encoder=resnet99", "model.encoder: unknown encoder 'resnet99'"),
    ],
)
def test_model_names_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(override)


def test_timm_encoders_pass_the_name_check():
    assert tiny_config("model.encoder=tu-resnet18").model.encoder == "tu-resnet18"


def test_bad_model_names_fail_before_torch_is_imported(tmp_path):
    """The CLI refuses a typo in under a second: neither torch nor smp is imported to check names."""
    code = (
        "import sys\n"
        "from lggseg.cli import main\n"
        f"rc = main(['train', '--arch', 'unet', '--params', {str(PARAMS)!r}, '--root', {str(tmp_path)!r}, "
        "'--set', 'model.encoder=resnet99'])\n"
        "assert rc == 1, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "model.encoder: unknown encoder 'resnet99'" in result.stderr


def test_arch_outside_model_architectures_is_refused(tmp_path, capsys):
    from lggseg.cli import main

    code = main(["train", "--arch", "unet", "--params", str(PARAMS), "--root", str(tmp_path),
                 "--set", "model.architectures=[fpn]"])
    assert code == 1
    assert "--arch unet is not in model.architectures (fpn)" in capsys.readouterr().err

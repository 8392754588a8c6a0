"""The `lggseg` command: one subcommand per pipeline stage, plus `synth`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Keep imports quiet and offline: albumentations phones PyPI on import otherwise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # keep stage logs to what matters
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from lggseg import __version__, pipeline
from lggseg.core import stop_signals  # noqa: E402
from lggseg.core.config import ConfigError, load_config  # noqa: E402
from lggseg.core.diskspace import is_disk_full, no_space_left_text  # noqa: E402
from lggseg.core.paths import Paths  # noqa: E402
from lggseg.core.redaction import redact, redact_everything_printed  # noqa: E402
from lggseg.core.stop_signals import stop_signals_as_interrupts  # noqa: E402

STAGES = {
    "download": "get the raw data set into data/raw/kaggle_3m (data.source: auto|kaggle|local|synthetic)",
    "index": "index and validate the slices -> data/interim/slices.csv",
    "split": "patient-wise train/val/test split -> data/interim/splits.json",
    "preprocess": "resize and store uint8 arrays per split -> data/processed/",
    "train": "train one architecture -> models/<arch>/",
    "evaluate": "evaluate one architecture on the test patients -> reports/arch/<arch>/",
    "compare": "compare all architectures, register the champion -> reports/comparison.md",
    "check-champion": "reload the champion's checkpoint and check it reproduces its recorded test Dice (CI)",
}
PER_ARCH = {"train", "evaluate"}


class RedactingParser(argparse.ArgumentParser):
    """argparse repeats a bad argument in its error (`unrecognized arguments: --set ...=http://u:pw@...`)."""

    def error(self, message: str):
        super().error(redact(message))


def build_parser() -> argparse.ArgumentParser:
    parser = RedactingParser(prog="lggseg", description="Lower-grade glioma segmentation pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"lggseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param, e.g. --set train.epochs=2 (repeatable)")
        p.add_argument("--root", default=".", help="project root holding data/, models/, reports/ (default: .)")
        if name in PER_ARCH:
            p.add_argument("--arch", required=True, help="architecture name from model.architectures, e.g. unet")
    exps = sub.add_parser("exps", help="DVC experiments at terminal width: headline Dice per architecture, changed params")
    exps.add_argument("--root", default=".", help="the DVC project (default: .)")
    exps.add_argument("--width", type=int, default=None,
                      help="columns the table may take (default: COLUMNS, else the terminal's width, else 80)")
    _add_predict(sub)
    link = sub.add_parser("mlflow-link", help="links into an MLflow UI that open each lggseg experiment's runs "
                                              "sorted by test per-patient Dice, Dice columns shown")
    link.add_argument("--ui", default="http://127.0.0.1:5000", help="the UI's address (default: `make mlflow-ui`'s)")
    link.add_argument("--root", default=".", help="project root whose mlruns/ the UI serves (default: .)")
    link.add_argument("--params", default="params.yaml", help="read for mlflow.tracking_uri when present")
    cv = sub.add_parser("cv", help="cross-validation over every patient: one DVC experiment per fold, queued and "
                                   "run by `dvc queue`, out-of-fold report in reports/cv/")
    cv.add_argument("--folds", type=int, default=5, help="patient folds (default 5)")
    cv.add_argument("--jobs", type=int, default=1, help="folds run in parallel by `dvc queue start -j` (default 1)")
    cv.add_argument("--name", default=None, help="experiment group name (default cv<folds>): folds are <name>-fold<i>")
    cv.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a param for every fold, as `dvc exp run -S` takes it (repeatable)")
    cv.add_argument("--report-only", action="store_true", help="only collect finished folds into reports/cv/")
    cv.add_argument("--root", default=".", help="the DVC project (default: .)")
    cv.add_argument("--params", default="params.yaml", help="params file, to check the settings first")
    synth = sub.add_parser("synth", help="write a synthetic LGG data set (Kaggle, images/ + masks/, NIfTI or DICOM)")
    synth.add_argument("out", type=Path, help="output folder (kaggle_3m/, or synthetic_<layout>/, is created inside)")
    synth.add_argument("--patients", type=int, default=24)
    synth.add_argument("--slices-min", type=int, default=20)
    synth.add_argument("--slices-max", type=int, default=40)
    synth.add_argument("--seed", type=int, default=42)
    synth.add_argument("--zip", type=Path, default=None, help="also write a Kaggle-style .zip archive here")
    synth.add_argument("--layout", default="kaggle", choices=("kaggle", "slices", "nifti", "dicom"),
                       help="kaggle (kaggle_3m/), slices (images/ + masks/ png), nifti (nnU-Net raw: dataset.json, "
                            "imagesTr/, labelsTr/) or dicom (a study folder per patient); see docs/own-data.md")
    return parser


def _add_predict(sub) -> None:
    from lggseg.core.config import PRECISIONS

    text = ("segment new scans with a registered or local model: masks, report.json and report.html per patient "
            "(a research tool, not a diagnostic device)")
    p = sub.add_parser("predict", help=text, description=text)
    p.add_argument("input", type=Path, help="a slice .tif, a patient folder (<case>_<n>.tif, masks optional), a "
                                            "folder of patient folders (e.g. kaggle_3m/), a NIfTI file (.nii, "
                                            ".nii.gz), a folder of NIfTI cases (<case>_flair.nii.gz ...), or a "
                                            "DICOM folder (docs/predict.md)")
    p.add_argument("--model", default="models:/lgg-segmentation@champion",
                   help="models:/<name>@<alias>, models:/<name>/<version>, or a local models/<arch>/ folder "
                        "(default: models:/lgg-segmentation@champion)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: predictions/<input name>)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--probabilities", action="store_true",
                   help="also write float32 probability maps (_prob.tif, or _prob.nii.gz for NIfTI/DICOM input)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu) | cpu | cuda | cuda:1 | mps")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32")
    p.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: 8 CPU, 32 GPU)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("DX", "DY", "DZ"),
                   help="tif slices: voxel size in mm (pixel x, pixel y, slice), to report the volume in mm^3 "
                        "(NIfTI and DICOM give their own)")
    p.add_argument("--series", default=None, help="DICOM input: the FLAIR series (SeriesInstanceUID, SeriesNumber or "
                                                  "words of its description); default: the one that says FLAIR")
    p.add_argument("--root", default=".", help="project root whose mlruns/ holds the registry (default: .)")
    p.add_argument("--params", default="params.yaml", help="read for mlflow.tracking_uri when present")


def _predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from lggseg.core.config import MlflowConfig
    from lggseg.prediction.predict import default_output_name, predict

    mlflow = load_config(args.params).mlflow if Path(args.params).is_file() else MlflowConfig()
    out = args.out or Path("predictions") / default_output_name(args.input)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    summary = predict(args.input, out, args.model, root=Path(args.root), mlflow=mlflow, overwrite=args.overwrite,
                      probabilities=args.probabilities, device=args.device, precision=args.precision,
                      batch_size=args.batch_size, spacing=tuple(args.spacing) if args.spacing else None,
                      series=args.series)
    for row in summary.itertuples():
        dice = "" if pd.isna(row.dice) else f", Dice {row.dice:.3f}"
        print(f"{row.case}: {row.tumor_positive_slices} of {row.slices} slices with tumor, "
              f"{row.volume_voxels} voxels{dice} -> {out / row.report}")
    if len(summary) > 1:
        print(f"{len(summary)} patients: {out / 'index.html'}, {out / 'summary.csv'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # credentials (a tracking URI's password, KAGGLE_KEY, ...) never reach a traceback, a log line or a warning
    redact_everything_printed()
    # SIGTERM (CI cancel, `timeout`, schedulers, `docker stop`) and SIGHUP stop a command as Ctrl-C does
    with stop_signals_as_interrupts():
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # a warning per HTTP retry of MLflow's: when the server stays away, its one-line error says it all
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # MLflow logs a database error with its whole traceback before raising it; lggseg reports it in one line
    if not args.verbose:
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # tifffile warns about each damaged tag of a damaged file; lggseg names the file in one line instead
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    try:
        if args.command == "synth":
            return _synth(args)
        if args.command == "exps":
            return _exps(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "cv":
            return _cv(args)
        if args.command == "mlflow-link":
            return _mlflow_link(args)
        cfg = load_config(args.params, args.overrides)
        paths = Paths.at(args.root)
        stage = getattr(pipeline, args.command.replace("-", "_"))
        if args.command == "train":  # its own command line, to relaunch under torchrun (train.nproc)
            stage(cfg, paths, args.arch, list(sys.argv[1:] if argv is None else argv))
        elif args.command in PER_ARCH:
            stage(cfg, paths, args.arch)
        else:
            stage(cfg, paths)
    except KeyboardInterrupt as exc:
        # Ctrl-C, SIGTERM, SIGHUP: one line (the stage says where it stopped), the shell's code 128 + signal
        # (130, 143, 129). Under torchrun one process speaks: the launcher of `lggseg train`'s own launch
        # (LGGSEG_TORCHRUN set in its workers), else rank 0
        if os.environ.get("RANK", "0") == "0" and os.environ.get("LGGSEG_TORCHRUN") != "1":
            print(redact(f"lggseg {args.command}: {exc or 'interrupted'}"), file=sys.stderr)
        return stop_signals.exit_code(exc)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        # errors are raised where found, with the file or key named; reported once, here
        if args.verbose:
            raise
        print(redact(f"lggseg {args.command}: error: {exc}"), file=sys.stderr)
        return 1
    except Exception as exc:
        # a full disk met where no writer of ours turned it into a DiskSpaceError (a library's own files,
        # MLflow's sqlite store): still one line, naming the file and what is left
        if args.verbose or not is_disk_full(exc):
            raise
        where = getattr(args, "out", None) or getattr(args, "root", None)  # when the error names no file
        print(redact(f"lggseg {args.command}: error: {no_space_left_text(exc, where)}"), file=sys.stderr)
        return 1
    return 0


def _mlflow_link(args: argparse.Namespace) -> int:
    from lggseg.core.config import MlflowConfig
    from lggseg.tracking.store import RUNS_VIEW_NAME, MlflowStore, TrackingError

    mlflow = load_config(args.params).mlflow if Path(args.params).is_file() else MlflowConfig()
    try:
        links = MlflowStore(mlflow, Path(args.root), read_only=True).ui_links(args.ui)
    except TrackingError as error:  # no store yet, or a server that does not answer: the UI still opens
        print(f"MLflow UI: {args.ui} (no links: {error})")
        return 0
    if not links:
        print(f"MLflow UI: {args.ui} (no lggseg experiment in the store yet: run `make demo` or `dvc repro`)")
    else:
        print(f"MLflow UI: {args.ui}; each experiment's runs sorted by test per-patient Dice "
              f"(view {RUNS_VIEW_NAME!r}):")
    for name, url in links.items():
        print(f"  {name}: {url}")
    return 0


def _cv(args: argparse.Namespace) -> int:
    from lggseg.evaluation.cross_validation import run_cross_validation

    result = run_cross_validation(Path(args.root).resolve(), Path(args.params), args.name or f"cv{args.folds}",
                                  args.folds, args.jobs, args.overrides, report_only=args.report_only)
    for row in result["summary"].to_dict("records"):
        low, high = row["dice_patient_mean_ci_low"], row["dice_patient_mean_ci_high"]
        interval = "" if low is None else f" (95% CI {low:.3f}-{high:.3f})"
        print(f"{row['architecture']}: out-of-fold per-patient Dice {row['dice_patient_mean']:.4f}{interval}, "
              f"median {row['dice_patient_median']:.4f}, {row['n_patients']} patients")
    for paired in result["paired"]:
        print(paired["verdict"].replace("**", ""))
    print(f"report: {result['out_dir'] / 'summary.md'}; MLflow parent run {result['run_id']}")
    return 0


def _exps(args: argparse.Namespace) -> int:
    from lggseg.tracking.experiments import dvc_experiments, experiments_table, format_experiments, terminal_width

    table = experiments_table(dvc_experiments(Path(args.root)))
    print(format_experiments(table, args.width or terminal_width()))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from lggseg.data import synthetic, synthetic_layouts

    if args.zip and args.layout != "kaggle":
        raise ValueError(f"--zip writes the Kaggle archive: it goes with --layout kaggle, not {args.layout}")
    tree = synthetic_layouts.generate_layout(args.out, args.layout, patients=args.patients, slices_min=args.slices_min,
                                     slices_max=args.slices_max, seed=args.seed)
    print(f"wrote {tree}")
    if args.zip:
        print(f"wrote {synthetic.write_kaggle_zip(tree, args.zip)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cross-validation over every patient, run by DVC's own queue (`lggseg cv`, `make cv`).

One DVC experiment per fold (`split.folds: K`, `split.fold: i`, named `<group>-fold<i>`) is queued with
`dvc exp run --queue` and run by `dvc queue start`: the whole pipeline, each in its own copy, its stages
cached as usual. Fold i's test split is the i-th patient fold, so every patient is predicted exactly once by
a model that never saw it. The report reads each fold experiment's `reports/arch/<arch>/per_patient.csv`
from its commit, pools these out-of-fold Dice values over all patients, and writes `reports/cv/`
(markdown, CSV, one figure) plus a parent MLflow run with the fold runs nested under it.

CV measures the recipe; it registers nothing (`mlflow.register=false` per fold): the champion still comes
from the main pipeline's train/val/test split.
"""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lggseg.core.atomic import staged_dir
from lggseg.core.config import Config
from lggseg.core.stop_signals import StopRequested, signal_name, stop_signal_of
from lggseg.evaluation.intervals import mean_interval, median_interval, paired_comparison
from lggseg.tracking.experiments import dvc_experiments, run_dvc

FOLD_SETTINGS = ("mlflow.register=false",)  # CV measures; the registry's champion is the main pipeline's


class CrossValidationError(RuntimeError):
    """A fold failed, or the folds do not cover every patient exactly once; the message says which."""


def fold_names(group: str, folds: int) -> list[str]:
    return [f"{group}-fold{i}" for i in range(folds)]


def queue_folds(root: Path, group: str, folds: int, settings: Sequence[str] = ()) -> list[str]:
    """Queue one experiment per fold; a fold experiment of the same name is replaced."""
    names = fold_names(group, folds)
    for i, name in enumerate(names):
        run_dvc(["exp", "remove", name], root, check=False)  # a rerun replaces the group's folds
        overrides = [f"split.folds={folds}", f"split.fold={i}", *FOLD_SETTINGS, *settings]
        run_dvc(["exp", "run", "--queue", "--name", name, *[a for o in overrides for a in ("-S", o)]], root)
    return names


def run_queue(root: Path, names: Sequence[str], jobs: int, poll: float = 5.0) -> None:
    """`dvc queue start -j jobs`, then wait until none of `names` is queued or running."""
    run_dvc(["queue", "start", "-j", str(jobs)], root)
    idle_since = time.monotonic()
    while True:
        status, workers = queue_status(root)
        mine = {n: s for n, s in status.items() if n in names}
        if not any(s in ("Queued", "Running") for s in mine.values()):
            break
        if workers or "Running" in mine.values():
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 180:  # queued, yet no worker and nothing running for 3 minutes
            raise CrossValidationError(f"folds {', '.join(n for n in names if mine.get(n) == 'Queued')} are queued but "
                                       "no `dvc queue` worker runs them; see .dvc/tmp/exps/celery/*.out, then "
                                       "`dvc queue start` and `lggseg cv --report-only` when they are done")
        time.sleep(poll)
    failed = [n for n in names if mine.get(n) not in ("Success", None)]
    if failed:
        raise CrossValidationError(f"fold experiment(s) {', '.join(failed)} did not succeed "
                                   f"({', '.join(mine[n] for n in failed)}); see `dvc queue logs <name>`")


def queue_status(root: Path) -> tuple[dict[str, str], int]:
    """({experiment name: Queued | Running | Success | Failed}, active workers) from `dvc queue status`."""
    status, workers = {}, 0
    for line in run_dvc(["queue", "status"], root).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] in ("Queued", "Running", "Success", "Failed"):
            status[parts[1]] = parts[-1]
        if line.startswith("Worker status:"):
            workers = int(line.split(":")[1].split()[0])
    return status, workers


@dataclass
class FoldResult:
    name: str
    fold: int
    rev: str
    per_patient: dict[str, pd.DataFrame]  # arch -> that fold's per_patient.csv (its test patients)
    all_patients: list[str]


def collect_folds(root: Path, names: Sequence[str], architectures: Sequence[str]) -> list[FoldResult]:
    """Each fold experiment's per-patient test table per architecture, read from its commit."""
    import dvc.api

    revs = _experiment_revs(root)
    missing = [n for n in names if n not in revs]
    if missing:
        raise CrossValidationError(f"no DVC experiment named {', '.join(missing)} in {root} (run `lggseg cv` first)")
    results = []
    for fold, name in enumerate(names):
        splits = pd.read_json(io.StringIO(dvc.api.read("data/interim/splits.json", repo=str(root), rev=revs[name])),
                              typ="series")
        tables = {}
        for arch in architectures:
            path = f"reports/arch/{arch}/per_patient.csv"
            try:
                text = dvc.api.read(path, repo=str(root), rev=revs[name])
            except Exception as exc:  # dvc raises its own FileMissingError/PathMissingError
                raise CrossValidationError(f"{name}: {path} is missing ({exc})") from None
            tables[arch] = pd.read_csv(io.StringIO(text), dtype={"patient_id": str})
        everyone = sorted(p for fold_patients in splits["fold_patients"] for p in fold_patients)
        results.append(FoldResult(name, fold, revs[name], tables, everyone))
    return results


def _experiment_revs(root: Path) -> dict[str, str]:
    revs = {}
    for baseline in dvc_experiments(root):
        for experiment in baseline.get("experiments") or []:
            rev = (experiment.get("revs") or [{}])[0].get("rev")
            if experiment.get("name") and rev:
                revs[experiment["name"]] = rev
    return revs


def out_of_fold(results: Sequence[FoldResult]) -> pd.DataFrame:
    """One row per patient and architecture: patient_id, institution, fold, architecture, dice (+ dice_lcc).
    Every patient of the data set must be a test patient of exactly one fold."""
    everyone = results[0].all_patients
    if any(r.all_patients != everyone for r in results):
        raise CrossValidationError("the fold experiments were split from different data (their patients differ)")
    rows = []
    for r in results:
        for arch, table in r.per_patient.items():
            rows.append(table.assign(fold=r.fold, architecture=arch, experiment=r.name))
    oof = pd.concat(rows, ignore_index=True)
    for arch, table in oof.groupby("architecture"):
        counts = table["patient_id"].value_counts()
        twice = sorted(counts[counts > 1].index)
        absent = sorted(set(everyone) - set(counts.index))
        if twice or absent:
            raise CrossValidationError(f"{arch}: out-of-fold predictions must cover every patient once; "
                                       f"twice: {twice[:5] or 'none'}, never: {absent[:5] or 'none'}")
    columns = ["patient_id", "institution", "fold", "experiment", "architecture", "dice"]
    columns += [c for c in ("dice_lcc", "true_pixels", "pred_pixels") if c in oof.columns]
    return oof[columns].sort_values(["architecture", "patient_id"], ignore_index=True)


def summarize(oof: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(per architecture: patients, mean/median with 95% intervals, Q1/Q3/IQR, min; per architecture and
    institution: patients, mean, median; paired comparisons of the architectures on all patients)."""
    rows = []
    for arch, table in oof.groupby("architecture", sort=False):
        dice = table["dice"].to_numpy(dtype=float)
        mean_ci, median_ci = mean_interval(dice), median_interval(dice)
        q1, q3 = pd.Series(dice).quantile([0.25, 0.75]).tolist()
        rows.append({"architecture": arch, "n_patients": len(dice), "dice_patient_mean": dice.mean(),
                     "dice_patient_mean_ci_low": mean_ci[0] if mean_ci else None,
                     "dice_patient_mean_ci_high": mean_ci[1] if mean_ci else None,
                     "dice_patient_median": float(pd.Series(dice).median()),
                     "dice_patient_median_ci_low": median_ci[0] if median_ci else None,
                     "dice_patient_median_ci_high": median_ci[1] if median_ci else None,
                     "dice_patient_q1": q1, "dice_patient_q3": q3, "dice_patient_iqr": q3 - q1,
                     "dice_patient_min": dice.min()})
    summary = pd.DataFrame(rows)
    institutions = (oof.groupby(["architecture", "institution"], sort=True)["dice"]
                    .agg(n_patients="size", dice_patient_mean="mean", dice_patient_median="median").reset_index())
    archs = list(summary["architecture"])
    dice = {a: oof[oof["architecture"] == a].set_index("patient_id")["dice"] for a in archs}
    paired = [paired_comparison(dice[a], dice[b], a, b, patients="all patients, out of fold")
              for i, a in enumerate(archs) for b in archs[i + 1:]]
    return summary, institutions, paired


def report_markdown(group: str, folds: int, summary: pd.DataFrame, institutions: pd.DataFrame,
                    paired: Sequence[dict], settings: Sequence[str]) -> str:
    def pct(v) -> str:
        return "n/a" if v is None or pd.isna(v) else f"{100 * v:.1f}"

    def with_ci(row, key) -> str:
        low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
        return pct(row[key]) + ("" if low is None or pd.isna(low) else f" [{pct(low)}, {pct(high)}]")

    lines = [f"# Cross-validation `{group}`: {folds} patient folds, out-of-fold per-patient Dice", "",
             f"Every patient was predicted exactly once, by the model of the fold that held it out (fold "
             f"experiments `{group}-fold0` ... `{group}-fold{folds - 1}`; `dvc exp show` lists them). "
             "Per-patient Dice is the 3-D volume Dice of all of a patient's slices, in percent; brackets are 95% "
             "bootstrap intervals over patients (BCa, 2000 resamples, seeded).", "",
             "| architecture | patients | mean (%) | median (%) | Q1 (%) | Q3 (%) | IQR (%) | min (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary.to_dict("records"):
        lines.append(f"| {row['architecture']} | {row['n_patients']} | {with_ci(row, 'dice_patient_mean')} | "
                     f"{with_ci(row, 'dice_patient_median')} | {pct(row['dice_patient_q1'])} | "
                     f"{pct(row['dice_patient_q3'])} | {pct(row['dice_patient_iqr'])} | {pct(row['dice_patient_min'])} |")
    lines += ["", "Per institution (the TCGA site code in the patient id):", "",
              "| architecture | institution | patients | mean (%) | median (%) |", "|---|---|---|---|---|"]
    for row in institutions.to_dict("records"):
        lines.append(f"| {row['architecture']} | {row['institution']} | {row['n_patients']} | "
                     f"{pct(row['dice_patient_mean'])} | {pct(row['dice_patient_median'])} |")
    if paired:
        lines += ["", "## Is the difference real? (all patients, paired)", "", *[f"- {p['verdict']}" for p in paired]]
    lines += ["", "![Out-of-fold per-patient Dice](dice_per_patient.png)", "",
              "Cross-validation measures the recipe; it registers no model. The registered champion comes from "
              "the main pipeline (train/val/test split, chosen on val).",
              "", "Settings of every fold: " + (", ".join(f"`{s}`" for s in settings) or "params.yaml as committed"), ""]
    return "\n".join(lines)


def write_report(out_dir: Path, group: str, folds: int, oof: pd.DataFrame, settings: Sequence[str]) -> dict:
    """reports/cv/: summary.md, summary.csv, institutions.csv, per_patient.csv, dice_per_patient.png, as a whole."""
    from lggseg.evaluation.figures.dice import plot_cross_validation

    summary, institutions, paired = summarize(oof)
    with staged_dir(out_dir) as staging:
        (staging / "summary.md").write_text(report_markdown(group, folds, summary, institutions, paired, settings))
        summary.to_csv(staging / "summary.csv", index=False)
        institutions.to_csv(staging / "institutions.csv", index=False)
        oof.to_csv(staging / "per_patient.csv", index=False)
        pd.DataFrame(paired).to_csv(staging / "paired.csv", index=False)
        plot_cross_validation(oof, summary, staging / "dice_per_patient.png",
                              title=f"Cross-validation {group}: out-of-fold per-patient Dice ({folds} folds)")
    return {"summary": summary, "institutions": institutions, "paired": paired}


def log_to_mlflow(cfg: Config, root: Path, group: str, folds: int, out_dir: Path, summary: pd.DataFrame,
                  settings: Sequence[str]) -> str:
    """A parent run `cross-validation <group>` with the out-of-fold numbers and reports/cv/; every fold's
    runs (tagged dvc_exp_name = <group>-fold<i>) nested under it and tagged cv_group / cv_fold."""
    from lggseg.tracking.runs import Tracker

    tracker = Tracker(cfg.mlflow, root)
    tags = {"stage": "cv", "cv_group": group, "mlflow.note.content":
            f"{folds}-fold cross-validation over every patient: out-of-fold per-patient Dice (reports/cv/)."}
    run_id = tracker.start_run(f"cross-validation {group}", {"cv.folds": folds, "cv.settings": " ".join(settings)}, tags)
    metrics = {}
    for row in summary.to_dict("records"):
        for key in ("dice_patient_mean", "dice_patient_mean_ci_low", "dice_patient_mean_ci_high", "dice_patient_median"):
            if row[key] is not None and not pd.isna(row[key]):
                metrics[f"oof/{row['architecture']}_{key}"] = float(row[key])  # a section `oof` in MLflow's UI
    tracker.log_metrics(run_id, metrics)
    try:
        tracker.log_artifacts(run_id, sorted(out_dir.iterdir()), artifact_path="cv")
        client = tracker.client
        for fold, name in enumerate(fold_names(group, folds)):
            for run in client.search_runs([tracker.experiment_id], filter_string=f"tags.dvc_exp_name = '{name}'"):
                tracker.set_tags(run.info.run_id, {"mlflow.parentRunId": run_id, "cv_group": group, "cv_fold": str(fold)})
    except KeyboardInterrupt as exc:
        tracker.end_run(run_id, status="KILLED")  # not left RUNNING; `lggseg cv --report-only` logs a new one
        raise StopRequested(stop_signal_of(exc), f"stopped while logging the report to MLflow (run {run_id} marked "
                                                 f"KILLED); reports/cv/ is written: `lggseg cv --name {group} "
                                                 "--report-only` logs it again") from None
    tracker.end_run(run_id)
    return run_id


def _stopped_message(exc: BaseException, group: str) -> str:
    """Where `lggseg cv` stood when a stop signal came: the queue's workers are processes of their own and go on."""
    signum = stop_signal_of(exc)
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal_name(signum)}"
    return (f"{how} while queuing or waiting for the folds of {group}: folds already queued go on in the DVC "
            "queue (see `dvc queue status`; stop them with `dvc queue kill <name>`); reports/cv/ is unchanged. When "
            f"they are done, `lggseg cv --name {group} --report-only` writes the report; `lggseg cv` again re-queues "
            "them all")


def run_cross_validation(root: Path, params: Path, group: str, folds: int, jobs: int, settings: Sequence[str],
                         report_only: bool = False) -> dict:
    """Queue and run the folds (unless report_only), then write reports/cv/ and the MLflow parent run."""
    from lggseg.core.config import load_config

    if folds < 2:
        raise CrossValidationError(f"--folds {folds}: cross-validation needs at least 2 folds")
    cfg = load_config(params, [*settings, f"split.folds={folds}", "split.fold=0"])  # checked before any work
    names = fold_names(group, folds)
    if not report_only:
        try:
            queue_folds(root, group, folds, settings)
            print(f"queued {', '.join(names)}; running them with `dvc queue start -j {jobs}` "
                  "(progress: `dvc queue status`, output: `dvc queue logs <name>`)", flush=True)
            run_queue(root, names, jobs)
        except KeyboardInterrupt as exc:
            raise StopRequested(stop_signal_of(exc), _stopped_message(exc, group)) from None
    oof = out_of_fold(collect_folds(root, names, cfg.model.architectures))
    out_dir = root / "reports" / "cv"
    written = write_report(out_dir, group, folds, oof, settings)
    written["run_id"] = log_to_mlflow(cfg, root, group, folds, out_dir, written["summary"], settings)
    written["out_dir"] = out_dir
    return written

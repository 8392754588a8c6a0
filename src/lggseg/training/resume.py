"""What a resumed run must match, and what last.pt carries to continue it: the settings that shape a run
(all of RESUME_SECTIONS but RESUME_MAY_CHANGE), the model spec and the planned schedule are checked; the
optimizer, the schedule and every random state (torch, loader, augmentation) are restored."""

from __future__ import annotations

import logging

import torch

from lggseg.core.config import Config, param_text
from lggseg.model import distributed
from lggseg.model.checkpoint import load_checkpoint
from lggseg.model.distributed import Group
from lggseg.model.networks import ModelSpec

log = logging.getLogger(__name__)

# What shapes a run: these sections of params (which data and patients, its preprocessing, the augmentation, the
# model, the optimisation), plus the data/processed fingerprint and the number of processes. last.pt records
# them; train.resume=true refuses to continue under any other value, except for the keys below.
RESUME_SECTIONS = ("data", "split", "preprocess", "augment", "model", "train")
RESUME_MAY_CHANGE = frozenset({
    "train.resume",
    "train.epochs",  # continue for more (or fewer) epochs; not when the schedule is planned over them (cosine, onecycle)
    "train.early_stopping_patience",  # when to stop, not what is learned
    # where and how fast it runs, not what it computes (train.processes, the resolved count, must match)
    "train.device", "train.num_workers", "train.pin_memory", "train.compile", "train.memory_format", "train.nproc",
    "model.architectures",  # the list for the pipeline; the architecture trained is checked through the model spec
})


class ResumeMismatch(ValueError):
    """train.resume=true with settings that differ from what last.pt was trained with."""


def run_settings(cfg: Config, manifest: dict, group: Group = distributed.SINGLE) -> dict:
    """What shapes this run, as last.pt records it: `{"train.lr": 0.0001, ..., "data.fingerprint": ...}`."""
    return {**cfg.flat(RESUME_SECTIONS), "data.fingerprint": str(manifest["fingerprint"]),
            "train.processes": group.world_size}


def load_resumable(last_path, spec: ModelSpec, settings: dict, arch: str) -> tuple[torch.nn.Module, dict]:
    """The model and the whole checkpoint at `last_path`, once its settings and model spec are this run's
    (ResumeMismatch otherwise); logs the changes that were allowed."""
    model, checkpoint = load_checkpoint(last_path)
    allowed = check_resumable(checkpoint.get("settings"), settings, last_path)
    if checkpoint["spec"] != spec.to_dict():  # what a last.pt without recorded settings can still be checked by
        raise ResumeMismatch(f"{last_path} was trained with {checkpoint['spec']}, not {spec.to_dict()}; "
                             "set train.resume: false to start over")
    log.info("resuming %s at epoch %d%s", arch, checkpoint["state"]["epoch"] + 1,
             f"; changed on resume (allowed): {_changes_text(allowed)}" if allowed else "")
    return model, checkpoint


def check_resumable(recorded: dict | None, now: dict, last_path) -> dict[str, tuple]:
    """Refuse (ResumeMismatch, one line naming every key with its old and new value) a resume whose settings
    differ from what last.pt was trained with, but for RESUME_MAY_CHANGE; returns those allowed changes."""
    if recorded is None:
        log.warning("%s was written before lggseg recorded the settings of a run: only its model is checked "
                    "against the params now", last_path)
        return {}
    changed = {k: (recorded[k], v) for k, v in now.items() if k in recorded and recorded[k] != v}
    refused = {k: change for k, change in changed.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        back = " ".join(f"--set {k}={param_text(old)}" for k, (old, _) in refused.items() if not k.startswith(
            ("data.fingerprint", "train.processes")))
        raise ResumeMismatch(
            f"{last_path} was trained with other settings, and resuming would mix two runs: {_changes_text(refused)}. "
            "Put the old value(s) back" + (f" ({back})" if back else "") + ", or set train.resume: false to start over")
    return {k: change for k, change in changed.items() if k in RESUME_MAY_CHANGE}


def _changes_text(changes: dict[str, tuple]) -> str:
    """`preprocess.size 32 -> 64, train.lr 0.0001 -> 0.01`; the data fingerprint names data/processed."""
    names = {"data.fingerprint": "data/processed (fingerprint)", "train.processes": "processes (train.nproc)"}
    return ", ".join(f"{names.get(k, k)} {param_text(old)} -> {param_text(new)}" for k, (old, new) in changes.items())



def resume_state(optimizer: torch.optim.Optimizer, scheduler, generator: torch.Generator, transform) -> dict:
    """What last.pt holds, beside the model and the TrainingState, to continue as if never stopped."""
    return dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler is not None else None,
                torch_rng=torch.get_rng_state(), loader_rng=generator.get_state(),
                augmentation_rng=_augmentation_rng(transform))


def restore(checkpoint: dict, optimizer: torch.optim.Optimizer, scheduler, generator: torch.Generator, transform,
            last_path) -> None:
    """Put back what resume_state saved; a schedule planned over another run length is refused."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler"):
        _check_resumable_schedule(checkpoint["scheduler"], scheduler, last_path)
        scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["torch_rng"])
    generator.set_state(checkpoint["loader_rng"])
    _set_augmentation_rng(transform, checkpoint.get("augmentation_rng"))


def _check_resumable_schedule(saved: dict, scheduler, last_path) -> None:
    """One-cycle and cosine schedules are planned over the whole run (onecycle in batches, cosine in epochs):
    they cannot stretch to more epochs or batches (loading the state would keep the old plan silently)."""
    for key, name, unit in (("total_steps", "onecycle", "steps"), ("T_max", "cosine", "epochs")):
        planned, now = saved.get(key), getattr(scheduler, key, None)
        if planned is not None and now is not None and planned != now:
            raise ResumeMismatch(f"{last_path} was trained with train.scheduler={name} planned over {planned} {unit}, "
                                 f"now {now}: resume with the train.epochs, batch size and data it started with, or "
                                 "set train.resume: false to start over")


def _augmentation_rng(transform) -> list[dict] | None:
    """The augmentation's random state: albumentations gives the pipeline and each transform in it a
    numpy and a python generator of their own."""
    if transform is None:
        return None
    return [{"numpy": t.random_generator.bit_generator.state, "python": t.py_random.getstate()}
            for t in (transform, *transform.transforms)]


def _set_augmentation_rng(transform, states: list[dict] | None) -> None:
    if transform is None or states is None:
        return
    for t, state in zip((transform, *transform.transforms), states, strict=True):
        t.random_generator.bit_generator.state = state["numpy"]
        t.py_random.setstate(state["python"])


"""Training on more than one process: DistributedDataParallel under torchrun (NCCL on GPUs, gloo on CPU).

`train.nproc` > 1 (or `auto` with several GPUs visible) makes `lggseg train` relaunch itself under
`torchrun --standalone --nproc_per_node N`; `torchrun ... -m lggseg.cli train ...` by hand works too.
Rank 0 alone writes checkpoints, the history and the one MLflow run; validation is sharded over the ranks
and its per-slice counts are gathered, so the per-patient Dice is exactly a single process's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

LAUNCHED_BY_LGGSEG = "LGGSEG_TORCHRUN"  # set for the workers of `lggseg train`'s own launch


@dataclass(frozen=True)
class Group:
    """This process's place in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Group()


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ)


def processes(nproc: int | str, device: str) -> int:
    """How many processes `train.nproc` asks for: `auto` = one per visible GPU (1 without CUDA, or when
    train.device names one GPU)."""
    if nproc != "auto":
        return int(nproc)
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return 1
    return max(1, torch.cuda.device_count())


def launch(nproc: int, cli_args: Sequence[str]) -> None:
    """Run `lggseg <cli_args>` as `nproc` workers, as `torchrun --standalone --nproc_per_node N` does (its own
    argument parser and launcher, in this process), and wait; a failed worker raises RuntimeError."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from lggseg.core.stop_signals import StopRequested

    torchrun = ["--standalone", f"--nproc_per_node={nproc}", "-m", "lggseg.cli", *cli_args]
    print(f"training with {nproc} processes: torchrun {' '.join(torchrun)}", flush=True)
    saved = {k: os.environ.get(k) for k in (LAUNCHED_BY_LGGSEG, "OMP_NUM_THREADS")}
    os.environ[LAUNCHED_BY_LGGSEG] = "1"  # the workers inherit it: the launcher holds the lock, prints the summary
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        run(get_args_parser().parse_args(torchrun))
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        raise RuntimeError(f"torchrun with {nproc} processes failed (worker exit code {', '.join(map(str, codes))}); "
                           "each worker's error is above") from None
    except SignalException as exc:
        # torchrun's agent catches SIGTERM/SIGINT/SIGHUP itself, sends it on to the workers (rank 0 marks the run
        # KILLED, last.pt keeps the last completed epoch) and kills what is left after its shutdown timeout
        raise StopRequested(exc.sigval, f"training with {nproc} processes stopped by {exc.sigval.name} (sent on to "
                                        "the workers); resume with train.resume=true") from None
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def start(device: torch.device) -> Group:
    """Join the torchrun job (a no-op outside torchrun): NCCL on CUDA, gloo elsewhere."""
    if not under_torchrun():
        return SINGLE
    group = Group(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group(backend=backend)
    if device.type == "cpu":  # share the cores (torchrun by hand sets OMP_NUM_THREADS=1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // group.world_size))
    return group


def stop(group: Group) -> None:
    if group.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: Sequence[float], group: Group, device: torch.device) -> list[float]:
    """Sum numbers over the ranks (float64; the identity for a single process)."""
    if not group.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(value: Any, group: Group) -> list[Any]:
    """Every rank's `value`, in rank order (picklable objects, e.g. a DataFrame)."""
    if not group.distributed:
        return [value]
    gathered: list[Any] = [None] * group.world_size
    dist.all_gather_object(gathered, value)
    return gathered


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... in order: every item once over all ranks. torch's
    DistributedSampler pads the shards to equal length with repeated items, which would count some val
    slices twice."""

    def __init__(self, length: int, group: Group):
        self.indices = range(group.rank, length, group.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

"""One writer per architecture: train and evaluate of `<arch>` hold its lock for the whole stage.

`dvc repro` has a repository lock of its own; direct `lggseg train` / `lggseg evaluate` calls (two
terminals, a script and a user) need this one. The lock is `filelock`'s (an OS file lock, released
when the process dies, even on kill -9); a small owner file beside it says who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from lggseg.core.atomic import write_json
from lggseg.core.paths import Paths


class BusyError(RuntimeError):
    """Another live process holds the lock."""


@contextlib.contextmanager
def architecture_lock(paths: Paths, arch: str, doing: str) -> Iterator[None]:
    """Hold `<root>/.lggseg/locks/<arch>.lock` while `doing` ("trained", "evaluated") models/<arch>;
    fail at once, naming the holder, when another process has it."""
    lock_path = paths.locks / f"{arch}.lock"
    owner_path = lock_path.with_suffix(".owner.json")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BusyError(f"{paths.model_dir(arch).relative_to(paths.root)} is being {_owner(owner_path)}; "
                        "wait for it to finish or stop it") from None
    try:
        write_json(owner_path, {"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "doing": doing,
                                "command": " ".join(sys.argv)[:300]})
        yield
    finally:
        owner_path.unlink(missing_ok=True)
        lock.release()


def _owner(owner_path: Path) -> str:
    try:
        owner = json.loads(owner_path.read_text())
        return f"{owner['doing']} by process {owner['pid']} since {owner['since']} ({owner['command']})"
    except (OSError, ValueError, KeyError):
        return "used by another process"

"""Atomic writes: a reader sees the old file or the new one, never half of either.

Every temporary name carries the writer's process ID, so the next writer of the same target can tell
what a killed run (kill -9, power loss) left behind from what a live one is still writing:

    .<name>.<pid>.<12 hex>.tmp       a file being written (atomic_path)
    .<name>.staging.<pid>.<12 hex>   a folder being assembled (staged_dir)
    .<name>.old.<pid>                the previous folder, during the swap (replace_dir)

`atomic_path` and `staged_dir` call `remove_stale` for their target first, so each stage cleans up
after its killed predecessor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from lggseg.core.diskspace import DiskSpaceError, free_bytes, is_disk_full, no_space_error, tree_bytes

log = logging.getLogger(__name__)

LEGACY_STALE_AFTER_S = 3600
"""Temporary names without a PID (written before PIDs were part of the name) count as stale after this age."""


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds.

    The file gets the permissions a plain open() would give (the umask applies)."""
    target = Path(target)
    free_at_start = free_bytes(target.parent)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        os.replace(tmp, target)
    except Exception as exc:
        if isinstance(exc, DiskSpaceError) or not is_disk_full(exc):
            raise
        tmp.unlink(missing_ok=True)  # give the space back at once
        raise no_space_error(target, free_at_start) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json(target: Path, data: Any) -> Path:
    """Strict JSON (RFC 8259), as every parser reads it: NaN and +-inf, which json.dumps would write as the
    non-standard NaN / Infinity, are written as null (a number the run does not have, e.g. a detection AUC
    on a test split of one class); readers that need a number turn null back into NaN."""
    text = json.dumps(_finite_or_null(data), indent=2, sort_keys=False, allow_nan=False, default=_json_default)
    return write_text(target, text + "\n")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(target: Path, frame: pd.DataFrame) -> Path:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(target)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; on success it replaces `target` as a whole.

    On failure the staging folder is removed and an existing `target` is left untouched.
    """
    target = Path(target)
    free_at_start = free_bytes(target.parent)
    staging = target.with_name(f".{target.name}.staging.{os.getpid()}.{secrets.token_hex(6)}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        staging.mkdir(mode=0o777)  # the umask applies: the result reads like any folder
        yield staging
        replace_dir(staging, target)
    except Exception as exc:
        # a full disk inside the staging folder is reported as the target's (the staging name means nothing
        # to a user); a DiskSpaceError about another path (a check before writing) passes as it is
        if not is_disk_full(exc) or (isinstance(exc, DiskSpaceError) and not exc.path.is_relative_to(staging)):
            raise
        written = tree_bytes(staging)
        shutil.rmtree(staging, ignore_errors=True)
        raise no_space_error(target, free_at_start, written) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Swap folder `new` into place as `target`; the old `target` is kept until the swap succeeded."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old.{os.getpid()}")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(target, backup)
    try:
        os.replace(new, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files and folders that writers of `target` left beside it and no longer own.

    Only names of the patterns above for this very target, and only when the process named in them is
    gone (names without a PID: when older than LEGACY_STALE_AFTER_S). A backup of a folder swap that was
    killed half-way is put back as `target` when `target` is missing, so the old version survives.
    Returns the paths removed or restored."""
    target = Path(target)
    patterns = _leftover_patterns(target.name)
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(f".{target.name}.")]
    except FileNotFoundError:
        return []
    handled = []
    for entry in entries:
        kind, pid = _match_leftover(patterns, entry.name)
        if kind is None:
            continue
        path = Path(entry.path)
        if pid is not None:
            if _process_alive(pid):
                continue
            owner = f"process {pid}, no longer running"
        else:
            if not _older_than(path, LEGACY_STALE_AFTER_S):
                continue
            owner = f"an unnamed process, more than {LEGACY_STALE_AFTER_S // 60} minutes ago"
        if kind == "backup" and not os.path.lexists(target):
            os.replace(path, target)
            log.warning("restored %s from %s (left by %s during a folder swap)", target, path.name, owner)
        else:
            _remove(path)
            if os.path.lexists(path):
                log.warning("could not remove stale %s (left by %s)", path, owner)
                continue
            log.info("removed stale %s (left by %s)", path, owner)
        handled.append(path)
    return handled


def _leftover_patterns(name: str) -> dict[str, re.Pattern]:
    n = re.escape(name)
    return {
        "tmp": re.compile(rf"\.{n}\.(?P<pid>\d+)\.[0-9a-f]{{12}}\.tmp"),
        "staging": re.compile(rf"\.{n}\.staging\.(?P<pid>\d+)\.[0-9a-f]{{12}}"),
        "backup": re.compile(rf"\.{n}\.old\.(?P<pid>\d+)"),
        # tempfile.mkstemp / mkdtemp names of earlier versions: 8 characters, no PID
        "legacy_tmp": re.compile(rf"\.{n}\.[a-z0-9_]{{8}}\.tmp"),
        "legacy_staging": re.compile(rf"\.{n}\.staging\.[a-z0-9_]{{8}}"),
    }


def _match_leftover(patterns: dict[str, re.Pattern], filename: str) -> tuple[str | None, int | None]:
    for kind, pattern in patterns.items():
        match = pattern.fullmatch(filename)
        if match:
            pid = match.groupdict().get("pid")
            return kind, None if pid is None else int(pid)
    return None, None


def _process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would terminate the process: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:  # larger than any PID
        return False
    return True


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

"""Free space: checked before a stage writes what it can size up front, and a full disk reported as one line.

Two ways a stage meets a full disk, both raised as `DiskSpaceError` (a RuntimeError, so the CLI prints it
as one line and exits 1):
- `require_free_space`: before writing, when the stage knows what it will need (an archive's declared sizes,
  the preprocessed arrays): "not enough space ...: needs X, has Y free";
- `no_space_error`: when a write fails with ENOSPC / EDQUOT (or a library that wraps it: torch.save, sqlite):
  "No space left on device writing <target> ...: had X free when it began".
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
FULL_MESSAGES = ("no space left on device", "database or disk is full", "disk quota exceeded")
"""How libraries that wrap the OSError say it (sqlite via MLflow, shutil.Error's strings)."""
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
"""numpy's tofile (under tifffile.imwrite) on a full disk: an OSError without errno."""

SPACE_MARGIN_BYTES = 4 << 20
SPACE_MARGIN_FRACTION = 0.02
"""Kept free beyond a writer's own estimate: directory entries, filesystem metadata, other writers."""


class DiskSpaceError(RuntimeError):
    """A stage cannot write `path`: the disk is full, or would be. The message says how much was needed or free."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = Path(path)


def size_text(n_bytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def existing_parent(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (where a folder about to be created will live)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    return shutil.disk_usage(existing_parent(path)).free


def block_size(path: Path) -> int:
    try:
        return os.statvfs(existing_parent(path)).f_frsize or 4096
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return 4096


def on_disk(sizes, block: int) -> int:
    """What files of these byte sizes occupy: each takes whole blocks."""
    return sum(-(-int(size) // block) * block for size in sizes)


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise DiskSpaceError before writing `what` (needed bytes) into `folder` when its filesystem lacks the
    space plus a margin."""
    free = free_bytes(folder)
    margin = SPACE_MARGIN_BYTES + int(SPACE_MARGIN_FRACTION * needed)
    if free < needed + margin:
        raise DiskSpaceError(
            f"not enough space for {what}: needs {size_text(needed)} (+ {size_text(margin)} margin) in "
            f"{existing_parent(folder)}, which has {size_text(free)} free; free some space or use another disk",
            folder,
        )


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library wrapped it (torch.save keeps the OSError as __context__)."""
    seen = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskSpaceError):
            return True
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        if any(message in str(exc).lower() for message in FULL_MESSAGES):
            return True
        if isinstance(exc, OSError) and SHORT_WRITE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def no_space_error(target: Path, free_at_start: int | None, written: int | None = None) -> DiskSpaceError:
    """The one-line error for a write of `target` that ran out of space (its temporary files already removed)."""
    had = f"; it had {size_text(free_at_start)} free when the write began" if free_at_start is not None else ""
    wrote = f" and {size_text(written)} were written before it filled" if written else ""
    return DiskSpaceError(
        f"No space left on device writing {target} (filesystem of {existing_parent(Path(target).parent)}"
        f"{had}{wrote}); nothing was replaced: free some space or use another disk, then run again",
        target,
    )


def no_space_left_text(exc: BaseException, where: Path | None = None) -> str:
    """One line for a full-disk error raised by code that is not ours: the file it names (else `where`, the
    folder the command writes to) and the free space left there."""
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.filename):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        path, writing = Path(cause.filename), f"writing {cause.filename}"
    elif where is not None:
        path, writing = Path(where), f"writing under {Path(where).absolute()}"
    else:
        return f"No space left on device ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
    return f"No space left on device {writing} ({size_text(free_bytes(path))} free on its filesystem now)"


def tree_bytes(folder: Path) -> int:
    """Bytes in the files under `folder` (0 when it is gone)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total

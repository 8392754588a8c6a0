"""A real size-limited filesystem for disk-full tests: a tmpfs mounted for the duration of a block.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped with the reason."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """`folder` as a fresh tmpfs of `size` (e.g. '8m') until the block ends; always unmounted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs ({exc})")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs at {folder} (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def fill(folder: Path, leave_bytes: int) -> Path:
    """A ballast file in `folder` that leaves about `leave_bytes` free on its filesystem."""
    ballast = Path(folder) / "ballast"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(ballast, "wb") as file:
        os.posix_fallocate(file.fileno(), 0, max(free - leave_bytes, 0))
    return ballast

"""Shared fixtures of the reliability tests: a tiny tmpfs when the machine lets us mount one."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs at ``where`` (e.g. ``size=256k`` or ``ro``); skip the test if we cannot."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot simulate a full or read-only file system")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not permitted'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path) -> Iterator[Path]:
    """A 256 KiB file system: saving anything bigger fails with ENOSPC."""
    with mounted_tmpfs(tmp_path / "full", "size=256k") as where:
        yield where


@pytest.fixture
def read_only_dir(tmp_path) -> Iterator[Path]:
    """A folder on a read-only mount (chmod does not stop root)."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as where:
        yield where

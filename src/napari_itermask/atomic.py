"""Atomic file writes: a hidden temporary file in the target folder, then a rename.

A failure never leaves a partial file under the final name, and what is written gets the mode
a plain ``open`` would give it (0666 minus the umask), not ``mkstemp``'s 0600. Used for label
maps and sidecars (``export``), model bundles (``models.bundle``), settings and lesion tables.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError

__all__ = ["atomic_write_bytes", "temp_file_in", "usual_mode"]


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and racy in threads)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(file: int | str | Path) -> None:
    """Give a ``mkstemp`` file (0600; a descriptor or a path) the mode a plain ``open`` would:
    0666 minus the umask, so exported label maps and models are readable by whoever may read
    the folder."""
    mode = 0o666 & ~_umask()
    if isinstance(file, int):
        if hasattr(os, "fchmod"):
            os.fchmod(file, mode)
    else:
        os.chmod(file, mode)


def temp_file_in(folder: Path, suffix: str, error: type[Exception] = OutputError) -> Path:
    """A new hidden temporary file in ``folder`` with the usual mode, for write-then-rename;
    a folder that takes no files raises ``error`` with a one-line message."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".itermask-", suffix=suffix)
    except OSError as exc:
        raise error(f"cannot write into {folder}: {exc.strerror or exc}") from None
    try:
        usual_mode(fd)
    finally:
        os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once or not at all (OutputError if the folder
    takes no files)."""
    tmp = temp_file_in(path.parent, ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Atomic file writes: hidden temporary files in the target folder, then renames.

A failure never leaves a partial file under a final name, and what is written gets the mode a
plain ``open`` would give it (0666 minus the umask), not ``mkstemp``'s 0600. Used for label
maps and sidecars (``export``), model bundles (``models.bundle``), settings and lesion tables.

Files that belong together (labels, their sidecar, their lesion table) are written with
``write_together``: every new file is written in full (and flushed to the disk) before any
existing one is touched, then all are renamed into place; if a rename fails, the files that
were there before are put back. So a full disk, a folder that turns read-only or any other
write error leaves the existing files byte-identical. ``write_all`` is the one place where
bytes reach a file (tests simulate a full disk there).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError

__all__ = ["atomic_write_bytes", "temp_file_in", "usual_mode", "write_all", "write_together"]


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


def write_all(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and make sure it reached the disk (a full disk shows up here,
    as OSError ENOSPC, not later when the file is closed or renamed)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once or not at all; OutputError (one line) if the
    folder takes no files or the write fails (an existing file is then left as it was)."""
    write_together({Path(path): data})


def _backup(final: Path) -> Path | None:
    """A second name for an existing ``final`` (a hard link: no copy, no space), or None when
    there is nothing to keep. Where hard links are not possible the file is renamed instead."""
    if not final.exists():
        return None
    keep = Path(tempfile.mktemp(dir=final.parent, prefix=".itermask-keep-"))
    try:
        os.link(final, keep)
    except OSError:
        os.replace(final, keep)  # (a window without the file; put back on any failure below)
    return keep


def write_together(files: dict[Path, bytes]) -> list[Path]:
    """Write each ``{path: bytes}`` so that either all of them end up replaced by the new
    contents or none of them changes; returns the paths in the order given.

    Every new file is written to a temporary file in its folder first (a full disk or an
    unwritable folder fails here, with nothing touched); then each existing file gets a
    second name, the temporary files are renamed over the final names, and the second names
    go. If a rename fails, what was there before is put back. OutputError says, in one line,
    which file could not be written and that the existing files were left as they were.
    """
    paths = [Path(p) for p in files]
    temps: dict[Path, Path] = {}
    keeps: dict[Path, Path | None] = {}
    placed: list[Path] = []
    try:
        try:
            for path in paths:
                folder = path.parent if str(path.parent) else Path(".")
                tmp = temp_file_in(folder, ".tmp")
                temps[path] = tmp
                write_all(tmp, files[path])
            for path in paths:
                keeps[path] = _backup(path)
            for path in paths:
                os.replace(temps[path], path)
                placed.append(path)
        except OSError as exc:
            _undo(paths, placed, keeps)
            existing = [p for p in paths if keeps.get(p) is not None or
                        (p not in keeps and p.exists())]
            kept = (f"; {', '.join(p.name for p in existing)} left as it was"
                    if existing else "; nothing was written")
            failed = next((p for p in paths if p not in placed), paths[0])
            raise OutputError(f"cannot write {failed}: {_why(exc)}{kept}") from None
        except BaseException:
            _undo(paths, placed, keeps)
            raise
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    for keep in keeps.values():
        if keep is not None:
            keep.unlink(missing_ok=True)
    return paths


def _undo(paths: list[Path], placed: list[Path], keeps: dict[Path, Path | None]) -> None:
    """Put back what was there before ``placed`` replaced it (and remove what is new)."""
    for path in paths:
        keep = keeps.get(path)
        if path in placed or (keep is not None and not path.exists()):
            try:
                if keep is not None:
                    os.replace(keep, path)
                else:
                    path.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - the folder vanished under us
                pass
        elif keep is not None:
            keep.unlink(missing_ok=True)

"""File names of scans and results: NIfTI suffixes off and on, in one place.

A scan is a NIfTI file (``.nii`` or ``.nii.gz``, any case) or DICOM (a folder, or a ``.zip``).
Its *stem* names everything derived from it: layers, ``<stem>_lesions.nii.gz``, the JSON
sidecar ``<stem>.json``, ``<stem>_error.nii.gz``, and the stems ``evaluate`` pairs files by.
Only the suffixes listed here are removed: ``scan.v2.nii.gz`` has the stem ``scan.v2``, and a
DICOM folder named by a UID (``1.2.840.…``) keeps its whole name. Pure string work, no I/O.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ARCHIVE_SUFFIXES", "NIFTI_SUFFIXES", "is_nifti", "nifti_stem", "scan_stem",
           "tagged_nifti"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")  # longest first: ".nii.gz" must win over ".gz"
ARCHIVE_SUFFIXES = (".zip",)  # a DICOM series in an archive


def _split(name: str, suffixes) -> tuple[str, str] | None:
    for suffix in suffixes:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return None


def is_nifti(name) -> bool:
    """Whether a file name (or path) ends in .nii or .nii.gz, in any case."""
    return _split(Path(name).name, NIFTI_SUFFIXES) is not None


def nifti_stem(name) -> str | None:
    """The file name without its .nii / .nii.gz suffix (any case); None for any other name."""
    parts = _split(Path(name).name, NIFTI_SUFFIXES)
    return None if parts is None else parts[0]


def scan_stem(name) -> str:
    """The stem of a scan: without .nii / .nii.gz / .zip (any case); any other name whole."""
    name = Path(name).name
    parts = _split(name, NIFTI_SUFFIXES + ARCHIVE_SUFFIXES)
    return name if parts is None else parts[0]


def tagged_nifti(path, tag: str) -> Path:
    """``a/scan.nii.gz`` with ``tag`` "_error" → ``a/scan_error.nii.gz``: the tag goes before
    the NIfTI suffix, which keeps its case; ValueError for a name that is not NIfTI."""
    path = Path(path)
    parts = _split(path.name, NIFTI_SUFFIXES)
    if parts is None:
        raise ValueError(f"{path.name} is not a NIfTI file name (.nii or .nii.gz)")
    return path.with_name(parts[0] + tag + parts[1])

"""Writing results: label maps as NIfTI on the scan's own grid, plus a JSON provenance sidecar.

Writes are atomic and together (temporary files in the target folder, then renames:
``atomic.write_together``), so a failure (a full disk, an unwritable folder) never leaves a
partial file and leaves existing files byte-identical; nothing is overwritten unless asked. The
sidecar records the sha256 of the label file it describes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_write_bytes, temp_file_in, write_together
from .errors import OutputError
from .names import is_nifti, nifti_stem

# atomic_write_bytes lives in ``atomic``; re-exported for callers that import it from here
__all__ = ["sidecar_path", "labels_image", "write_labels", "write_image", "check_target",
           "atomic_write_bytes", "nifti_bytes", "sidecar_matches", "error_map_image"]


def sidecar_path(path) -> Path:
    """``out.nii.gz`` → ``out.json``; ``out.nii`` → ``out.json``."""
    path = Path(path)
    return path.with_name((nifti_stem(path.name) or path.name) + ".json")


def check_target(path, overwrite: bool = False) -> Path:
    """Raise OutputError unless ``path`` (a NIfTI name) can be written."""
    path = Path(path)
    if not is_nifti(path.name):
        raise OutputError(f"output {path.name} must end in .nii.gz or .nii")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable: nothing written, existing "
                          "files left as they were")
    temp_file_in(parent, ".probe").unlink()  # a real write: permissions can lie (root, read-only fs)
    if path.is_dir():
        raise OutputError(f"output {path} is a folder")
    for p in (path, sidecar_path(path)):
        if p.exists() and not overwrite:
            raise OutputError(f"{p} exists; pass --overwrite (or choose another name) to replace it")
    return path


def labels_image(labels: np.ndarray, affine: np.ndarray, header=None) -> nib.Nifti1Image:
    """uint8 label image with the source's affine, and its qform/sform codes where known.

    When ``affine`` is the one the source header itself gives (the usual case: labels for the
    scan they were computed on), the header's geometry is kept as it is: sform and qform with
    their codes, exactly, none of them recomputed (tools that read the qform, or a file with no
    codes, see the input's grid). Otherwise ``affine`` is written into both forms.
    """
    labels = np.asarray(labels)
    affine = np.asarray(affine, np.float64)
    hdr = None
    if header is not None:
        try:
            hdr = nib.Nifti1Header.from_header(header)
        except Exception:  # a header of another kind: keep the affine only
            hdr = None
    # the header's own affine: nibabel then leaves its sform and qform alone (and the image
    # still knows its affine in memory, which passing None would not give)
    keep = hdr is not None and np.array_equal(affine, hdr.get_best_affine())
    img = nib.Nifti1Image(labels.astype(np.uint8), affine, header=hdr)
    img.set_data_dtype(np.uint8)
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    img.header["cal_min"] = 0
    img.header["cal_max"] = max(1, int(labels.max(initial=0)))
    if hdr is None:
        img.set_sform(affine, 1)
        img.set_qform(affine, 1)
    elif not keep:  # (kept: the header's own sform and qform, codes and all)
        sform, scode = header.get_sform(coded=True)
        qform, qcode = header.get_qform(coded=True)
        img.set_sform(affine, int(scode) if sform is not None else 1)
        img.set_qform(affine, int(qcode) if qform is not None else 1)
    return img


def nifti_bytes(img: nib.Nifti1Image, gz: bool) -> bytes:
    """The file ``nib.save`` would write for ``img`` (``gz``: gzip-compressed, with no time
    stamp in the gzip header, so the same labels always give the same bytes and hash)."""
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw


def _gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def write_labels(path, labels, affine, header=None, sidecar: dict | None = None,
                 overwrite: bool = False, extra: dict | None = None) -> list[Path]:
    """Write labels (and the sidecar, and the ``extra`` files: ``{path: bytes}``, e.g. the
    lesion table) atomically and together: all of them appear, or are replaced, or none of
    them changes (``atomic.write_together``).

    The sidecar records ``labels_sha256``, the sha256 of the label file written beside it, so
    a sidecar can always be checked against its labels (``sidecar_matches``).
    """
    path = check_target(path, overwrite)
    for other in extra or {}:
        if Path(other).exists() and not overwrite:
            raise OutputError(f"{other} exists; pass --overwrite (or choose another name) to "
                              "replace it")
    data = nifti_bytes(labels_image(labels, affine, header), _gz(path))
    files = {path: data}
    if sidecar is not None:
        side = {**sidecar, "labels_file": path.name,
                "labels_sha256": hashlib.sha256(data).hexdigest()}
        files[sidecar_path(path)] = (json.dumps(side, indent=2, default=_json_default)
                                     + "\n").encode()
    for other, blob in (extra or {}).items():
        files[Path(other)] = blob
    return write_together(files)


def sidecar_matches(path) -> bool:
    """Whether the sidecar beside label file ``path`` was written with exactly these labels
    (its ``labels_sha256`` is the file's sha256). False for a sidecar without the hash."""
    path = Path(path)
    try:
        side = json.loads(sidecar_path(path).read_text())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return False
    return isinstance(side, dict) and side.get("labels_sha256") == digest


def error_map_image(data, affine) -> nib.Nifti1Image:
    """A float32 map (e.g. the error map) on the scan's grid, its affine in both forms."""
    img = nib.Nifti1Image(np.asarray(data, np.float32), np.asarray(affine, np.float64))
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    return img


def write_image(path, data, affine, overwrite: bool = False) -> Path:
    """Write a float32 map (e.g. the error map) on the scan's grid, atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    write_together({path: nifti_bytes(error_map_image(data, affine), _gz(path))})
    return path


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

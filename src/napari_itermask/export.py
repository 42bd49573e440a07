"""Writing results: label maps as NIfTI on the scan's own grid, plus a JSON provenance sidecar.

Writes are atomic (a temporary file in the target folder, then a rename: ``atomic``), so a
failure never leaves a partial file, and nothing is overwritten unless asked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_write_bytes, temp_file_in
from .errors import OutputError
from .names import is_nifti, nifti_stem

# atomic_write_bytes lives in ``atomic``; re-exported for callers that import it from here
__all__ = ["sidecar_path", "labels_image", "write_labels", "write_image", "check_target",
           "atomic_write_bytes"]


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
        raise OutputError(f"output folder {parent} is not writable")
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


def write_labels(path, labels, affine, header=None, sidecar: dict | None = None,
                 overwrite: bool = False) -> list[Path]:
    """Write labels (and the sidecar) atomically; both appear or neither does."""
    path = check_target(path, overwrite)
    folder = path.parent if str(path.parent) else Path(".")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    tmp_img = temp_file_in(folder, suffix)
    tmp_json = None
    written: list[Path] = []
    try:
        tmp_json = temp_file_in(folder, ".json") if sidecar is not None else None
        nib.save(labels_image(labels, affine, header), str(tmp_img))
        if tmp_json is not None:
            tmp_json.write_text(json.dumps(sidecar, indent=2, default=_json_default) + "\n")
        os.replace(tmp_img, path)
        written.append(path)
        if tmp_json is not None:
            os.replace(tmp_json, sidecar_path(path))
            written.append(sidecar_path(path))
    except OSError as exc:
        for p in written:
            p.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp_img.unlink(missing_ok=True)
        if tmp_json is not None:
            tmp_json.unlink(missing_ok=True)
    return written


def write_image(path, data, affine, overwrite: bool = False) -> Path:
    """Write a float32 map (e.g. the error map) on the scan's grid, atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    tmp = temp_file_in(folder, ".nii.gz" if path.name.lower().endswith(".gz") else ".nii")
    try:
        img = nib.Nifti1Image(np.asarray(data, np.float32), np.asarray(affine, np.float64))
        img.set_sform(affine, 1)
        img.set_qform(affine, 1)
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

"""napari writer: a Labels layer → NIfTI (uint8) on its source scan's grid.

The affine, header (qform/sform codes) and array shape come from the layer's metadata, which
the reader and the widget put on every layer derived from a scan (``_layers.py``); a Labels
layer from elsewhere is placed by its napari transform read as (S, P, L) world. Writing goes
through ``export.write_labels``: a temporary file in the target folder, then a rename, with a
JSON sidecar (the layer's provenance if the widget accepted it, else a short note of origin).

Overwriting. napari's Save dialog (Qt) asks before replacing a file it sees, but it does not
know about the sidecar, and ``layer.save(path)`` from a script asks nobody. So the writer itself
never replaces an existing label file or sidecar unless ``confirm_overwrite(paths)`` returns
True. By default that asks in a dialog when a Qt application is running and refuses otherwise
(scripts, headless); tests and embedding code may replace the module attribute.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

__all__ = ["write_labels", "confirm_overwrite", "ask_overwrite"]


def ask_overwrite(paths: list[Path]) -> bool:
    """Default overwrite confirmation: a Yes/No dialog if there is a Qt GUI, else refuse."""
    try:
        from qtpy.QtWidgets import QApplication, QMessageBox
    except Exception:
        return False
    app = QApplication.instance()
    if app is None:
        return False
    names = "\n".join(str(p) for p in paths)
    answer = QMessageBox.question(
        None,
        "Replace existing files?",
        f"These files exist and would be replaced:\n{names}\n\nReplace them?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


#: Called with the existing paths before anything is replaced; must return True to allow it.
confirm_overwrite = ask_overwrite


def _layer_for(data, meta: dict):
    """A throw-away Labels layer with the saved layer's transform (for layers not from a scan)."""
    from napari.layers import Labels

    keys = ("scale", "translate", "rotate", "shear", "affine", "axis_labels", "name")
    return Labels(np.asarray(data), **{k: meta[k] for k in keys if k in meta})


def _sidecar(meta: dict, labels: np.ndarray) -> dict:
    from . import __version__

    md = meta.get("metadata") or {}
    prov = md.get("provenance")
    side = dict(prov) if isinstance(prov, dict) else {
        "software": "napari-itermask",
        "version": __version__,
        "note": "labels saved from a napari layer with napari-itermask's writer",
    }
    side.update({
        "layer": meta.get("name"),
        "source_scan": md.get("path"),
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "saved_with_version": __version__,
        "labels_present": sorted(int(v) for v in np.unique(labels) if v),
    })
    return side


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer; returns the paths written (label file, sidecar)."""
    from ._layers import has_scan_metadata, layer_ras_affine, layer_scan_array
    from .errors import OutputError
    from .export import check_target, sidecar_path, write_labels as _write

    meta = meta or {}
    md = meta.get("metadata") or {}
    arr = np.asarray(data)
    if arr.dtype.kind not in "biu":
        raise OutputError(f"labels of type {arr.dtype} cannot be saved as NIfTI labels")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise OutputError("labels must lie in 0..255 to be saved as uint8 NIfTI")
    layer = _layer_for(arr, meta)
    layer.metadata = md
    ours = has_scan_metadata(layer)
    affine = layer_ras_affine(layer)
    header = md.get("header") if ours else None
    arr = layer_scan_array(layer)
    if not ours and np.asarray(data).ndim == 2:
        arr = arr[..., 0]  # a 2-D layer stays a 2-D image
    target = Path(path)
    existing = [p for p in (target, sidecar_path(target)) if p.exists()]
    overwrite = False
    if existing:
        if not confirm_overwrite(existing):
            raise OutputError(f"{existing[0]} exists; not replaced (choose another name)")
        overwrite = True
    check_target(target, overwrite)
    written = _write(target, arr.astype(np.uint8), affine, header, _sidecar(meta, arr), overwrite)
    return [str(p) for p in written]

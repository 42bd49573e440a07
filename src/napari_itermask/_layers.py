"""How a scan becomes napari layers, and how layers lead back to the scan's grid and affine.

Placement. napari draws a layer in world coordinates given by ``affine`` (data → world). NIfTI
affines map voxels to RAS+ millimetres. napari orders world axes (z, y, x), slices along the
first one and draws the last two as rows (downwards) and columns (rightwards), and it expects a
layer's data axis k to run (roughly) along world axis k. So a scan is shown as

    data   = the file's array, transposed (a view, no copy) so that its axes run along
             (S, P, L) as closely as possible (``scan_axes``);
    affine = RAS_TO_WORLD @ scan_affine @ P(scan_axes),   world = (S, P, L) mm,

i.e. (z, y, x) of DICOM LPS: a fixed, proper (right-handed) relabelling of the scanner frame.
Consequences: the default view is **axial** (slider = inferior→superior), anterior is at the
top and the patient's right is on the screen's left — the **radiological** convention — and
the 3-D view is not mirrored. Axis labels ``S``, ``P``, ``L`` name the direction in which each
world axis increases. Nothing is resampled; the affine (never scale/translate) places the data.
An oblique scan is placed exactly, but napari's 2-D view drops the out-of-plane part of the
tilt: the reader warns.

Metadata. Image layers from a scan, and every layer derived from one, carry in ``metadata``:
``affine`` (the file's RAS affine, 4×4, verbatim), ``header`` (the NIfTI header, for
qform/sform codes on export), ``path`` (the file, or None), ``scan_shape`` (the file's array
shape, 2-D or 3-D), ``scan_axes`` (the transpose above) and ``warnings``. The writer and the
widget use these, so labels saved from napari land exactly on the source scan. A 2-D scan
becomes a 3-D layer with one slice.

This module only moves arrays between layers and the scan's grid (reshapes) and composes
placement matrices; all image maths lives in the core and pipeline.
"""

from __future__ import annotations

import numpy as np

from .names import scan_stem
from .volume import Scan

__all__ = [
    "RAS_TO_WORLD",
    "WORLD_AXIS_LABELS",
    "RADIOLOGICAL_NOTE",
    "world_affine",
    "display_axes",
    "permutation_matrix",
    "scan_metadata",
    "display_warnings",
    "image_layer_data",
    "labels_layer_data",
    "layer_ras_affine",
    "layer_scan_array",
    "layer_world_affine",
    "derived_kwargs",
    "has_scan_metadata",
    "to_layer_shape",
    "from_layer_shape",
    "layer_stem",
]

#: RAS+ (x, y, z) → napari world (S, P, L): z → first axis, −y → second, −x → third.
RAS_TO_WORLD = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
WORLD_TO_RAS = np.linalg.inv(RAS_TO_WORLD)
WORLD_AXIS_LABELS = ("S", "P", "L")
RADIOLOGICAL_NOTE = "R ◀ ▶ L   axial, radiological view (patient's right on screen left)"


def world_affine(ras_affine: np.ndarray) -> np.ndarray:
    """The RAS affine relabelled to napari's (S, P, L) world (voxel axes unchanged)."""
    return RAS_TO_WORLD @ np.asarray(ras_affine, dtype=np.float64)


def display_axes(ras_affine: np.ndarray) -> tuple[int, int, int]:
    """Transpose of a (3-D) scan array whose axes run along world (S, P, L) in that order."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(ras_affine, dtype=np.float64))
    world_of_voxel = [2 - int(a) for a in ornt[:, 0]]  # RAS index 2 (S) → world axis 0, …
    return tuple(world_of_voxel.index(k) for k in range(3))


def permutation_matrix(axes) -> np.ndarray:
    """4×4 P with file voxel = P @ layer voxel, for layer data = file data.transpose(axes)."""
    p = np.zeros((4, 4))
    for k, j in enumerate(axes):
        p[j, k] = 1.0
    p[3, 3] = 1.0
    return p


def layer_stem(path) -> str:
    """The layer name of a scan file or DICOM folder / zip: ``names.scan_stem``."""
    return scan_stem(path)


def display_warnings(affine: np.ndarray) -> list[str]:
    """Why napari's 2-D view may not show this scan faithfully (empty if it will)."""
    lin = (world_affine(affine) @ permutation_matrix(display_axes(affine)))[:3, :3]
    cols = lin / np.linalg.norm(lin, axis=0)
    if np.abs(cols - np.diag(np.diag(cols))).max() < 1e-3:
        return []
    return [
        "the scan is oblique to the scanner axes: napari's 2-D slices are drawn without the "
        "out-of-plane part of the tilt (the 3-D view, the segmentation and exports are exact)"
    ]


def scan_metadata(scan: Scan, extra_warnings=()) -> dict:
    import nibabel as nib

    return {
        "affine": np.array(scan.affine, dtype=np.float64),
        "header": scan.header,
        "path": str(scan.path) if scan.path else None,
        "scan_shape": tuple(int(s) for s in scan.data.shape),
        "scan_axes": display_axes(scan.affine),
        "axcodes": "".join(nib.aff2axcodes(scan.affine)),
        "display": RADIOLOGICAL_NOTE,
        "warnings": list(scan.notes) + list(extra_warnings),
    }


def _volume3(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.reshape(arr.shape + (1,) * (3 - arr.ndim))


def image_layer_data(scan: Scan, name: str) -> tuple:
    """(data, kwargs, "image") for an Image layer showing ``scan``."""
    meta = scan_metadata(scan, display_warnings(scan.affine))
    axes = meta["scan_axes"]
    kwargs = {
        "name": name,
        "affine": world_affine(scan.affine) @ permutation_matrix(axes),
        "axis_labels": WORLD_AXIS_LABELS,
        "metadata": meta,
        "colormap": "gray",
    }
    return _volume3(scan.data).transpose(axes), kwargs, "image"


def labels_layer_data(scan: Scan, name: str) -> tuple:
    """(data, kwargs, "labels") for a label map on a scan's grid (e.g. an exported result)."""
    data, kwargs, _ = image_layer_data(scan, name)
    kwargs.pop("colormap")
    return data, kwargs, "labels"


def _meta(layer) -> dict:
    meta = getattr(layer, "metadata", None)
    return meta if isinstance(meta, dict) else {}


def _axes(layer) -> tuple:
    axes = _meta(layer).get("scan_axes", (0, 1, 2))
    return tuple(int(a) for a in axes)


def has_scan_metadata(layer) -> bool:
    """True if the layer carries a scan's affine and shape that fit its data."""
    meta = _meta(layer)
    aff, shape = meta.get("affine"), meta.get("scan_shape")
    if aff is None or shape is None:
        return False
    if np.asarray(aff).shape != (4, 4) or sorted(_axes(layer)) != [0, 1, 2]:
        return False
    return int(np.prod(shape)) == int(np.asarray(layer.data).size)


def layer_world_affine(layer) -> np.ndarray:
    """The full data → world matrix of a layer (its affine composed with scale, translate…)."""
    if has_scan_metadata(layer) and layer.ndim == 3:
        return world_affine(_meta(layer)["affine"]) @ permutation_matrix(_axes(layer))
    nd = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(nd)), dtype=np.float64)
    mat = np.eye(nd + 1)
    for j in range(nd):
        e = np.zeros(nd)
        e[j] = 1.0
        mat[:nd, j] = np.asarray(layer.data_to_world(e), dtype=np.float64) - origin
    mat[:nd, nd] = origin
    return mat


def layer_ras_affine(layer) -> np.ndarray:
    """RAS affine of the scan array that ``layer_scan_array`` gives for this layer.

    Layers we made carry it in metadata. For any other layer napari's world is read as
    (S, P, L) like ours; a 2-D layer gets a 1 mm slice axis.
    """
    if has_scan_metadata(layer):
        return np.array(_meta(layer)["affine"], dtype=np.float64)
    w = layer_world_affine(layer)
    if layer.ndim == 2:  # world (P, L) → (S, P, L); the added voxel axis (last) is S
        w3 = np.zeros((4, 4))
        w3[1:3, 0:2] = w[:2, :2]
        w3[1:3, 3] = w[:2, 2]
        w3[0, 2] = 1.0
        w3[3, 3] = 1.0
        w = w3
    elif layer.ndim != 3:
        raise ValueError(f"layer {layer.name!r} has {layer.ndim} dimensions; 2-D or 3-D needed")
    return WORLD_TO_RAS @ w


def layer_scan_array(layer) -> np.ndarray:
    """The layer's data as the scan array (the file's own shape and order for our layers)."""
    return from_layer_shape(layer.data, layer)


def from_layer_shape(arr: np.ndarray, layer) -> np.ndarray:
    """An array arranged like ``layer.data`` → the scan's grid (inverse of to_layer_shape)."""
    arr = np.asarray(arr)
    if arr.shape != np.asarray(layer.data).shape:
        raise ValueError(f"shape {arr.shape} differs from layer {layer.name!r}'s "
                         f"{np.asarray(layer.data).shape}")
    if arr.ndim == 2:
        return arr[..., None]
    if has_scan_metadata(layer):
        return arr.transpose(np.argsort(_axes(layer))).reshape(_meta(layer)["scan_shape"])
    return arr


def to_layer_shape(arr: np.ndarray, layer) -> np.ndarray:
    """A scan-grid array arranged like the layer's data (a reshape and transpose, no maths)."""
    shape = np.asarray(layer.data).shape
    if len(shape) == 3 and has_scan_metadata(layer):
        return _volume3(arr).transpose(_axes(layer))
    return np.asarray(arr).reshape(shape)


def derived_kwargs(source, suffix: str, **extra) -> dict:
    """kwargs for a layer derived from ``source``: its name, placement and scan metadata."""
    meta = _meta(source)
    ours = has_scan_metadata(source)
    metadata = {
        "affine": layer_ras_affine(source),
        "header": meta.get("header") if ours else None,
        "path": meta.get("path") if ours else None,
        "scan_shape": tuple(meta["scan_shape"]) if ours
        else tuple(layer_scan_array(source).shape),
        "scan_axes": _axes(source) if ours else (0, 1, 2),
        "axcodes": meta.get("axcodes"),
        "source_layer": source.name,
        "warnings": list(meta.get("warnings", [])),
    }
    metadata.update(extra.pop("metadata", {}))
    kwargs = {
        "name": f"{source.name} {suffix}",
        "affine": layer_world_affine(source),
        "axis_labels": tuple(source.axis_labels),
        "metadata": metadata,
    }
    kwargs.update(extra)
    return kwargs

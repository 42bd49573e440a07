"""Per-lesion statistics on the scan's grid (volume, centroid, diameter, intensity) and their CSV.

The set follows 3D Slicer's "Segment Statistics" (labelmap volume, centroid, Feret diameter,
scalar-volume mean), computed here from our own definitions:

- a lesion is a connected component of the label map, 26-connected in 3-D (8 in 2-D), the same
  rule as ``core.segmentation.remove_small`` and ``lesion_stats``, so the table's rows add up
  to the lesion count and volume of the sidecar;
- ``volume_ml``: voxels × |det(affine)| / 1000 (the affine's mm³ per voxel);
- ``centroid_*_mm``: the mean voxel position mapped through the scan's affine, i.e. scanner
  RAS+ millimetres (R, A, S: the coordinates a viewer shows for that point of the NIfTI file);
- ``largest_diameter_mm``: the largest distance between the centres of two of the lesion's
  voxels, in mm (so a one-voxel lesion has 0 mm; add about one voxel for an outer extent);
- ``mean_intensity``: the mean of the scan's own values (the file's units) over the lesion.

Rows are numbered 1… from the largest lesion down. No Qt, no napari: the widget, Export and
``itermask segment`` all call ``lesion_table`` and ``write_table`` here.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["Lesion", "COLUMNS", "lesion_table", "summary", "to_csv", "table_path",
           "check_table_target", "write_table"]


@dataclass(frozen=True)
class Lesion:
    lesion: int  # 1 = the largest
    voxels: int
    volume_ml: float
    centroid_r_mm: float
    centroid_a_mm: float
    centroid_s_mm: float
    largest_diameter_mm: float
    mean_intensity: float  # NaN when no image was given

    @property
    def centroid_mm(self) -> tuple[float, float, float]:
        return self.centroid_r_mm, self.centroid_a_mm, self.centroid_s_mm


COLUMNS = tuple(f.name for f in fields(Lesion))


def _as3d(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.reshape(arr.shape + (1,) * (3 - arr.ndim))


def _largest_distance(points: np.ndarray) -> float:
    """Largest pairwise distance of points (N × 3, mm): on the convex hull's vertices when
    there are many (the farthest pair always lies on the hull)."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    if len(points) < 2:
        return 0.0
    if len(points) > 64:
        try:  # QJ: joggled, so flat (one-slice) and collinear lesions work too
            points = points[ConvexHull(points, qhull_options="QJ").vertices]
        except Exception:  # qhull refused (degenerate beyond joggling): all points below
            pass
    return float(pdist(points).max())


def lesion_table(labels: np.ndarray, affine: np.ndarray, image: np.ndarray | None = None
                 ) -> list[Lesion]:
    """One ``Lesion`` per connected component of ``labels > 0`` (scan grid, 2-D or 3-D),
    largest first; ``affine`` is the scan's voxel → RAS mm matrix, ``image`` its values."""
    mask = _as3d(labels) > 0
    affine = np.asarray(affine, dtype=np.float64)
    if image is not None:
        image = _as3d(image)
        if image.shape != mask.shape:
            raise ValueError(f"image of shape {image.shape} does not fit labels {mask.shape}")
    if not mask.any():
        return []
    comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    order = sorted(range(1, n + 1), key=lambda i: (-sizes[i], i))
    boxes = ndimage.find_objects(comp)
    rows = []
    for rank, i in enumerate(order, start=1):
        box = boxes[i - 1]
        here = comp[box] == i
        offset = np.array([s.start for s in box], dtype=np.float64)
        idx = np.argwhere(here).astype(np.float64) + offset
        centre = affine[:3, :3] @ idx.mean(axis=0) + affine[:3, 3]
        surface = here & ~ndimage.binary_erosion(here, structure=np.ones((3, 3, 3)))
        pts = np.argwhere(surface).astype(np.float64) + offset
        mm = pts @ affine[:3, :3].T  # the translation cancels in distances
        mean = float(image[box][here].mean()) if image is not None else math.nan
        rows.append(Lesion(rank, int(sizes[i]), float(sizes[i]) * voxel_ml,
                           *(float(c) for c in centre), _largest_distance(mm), mean))
    return rows


def summary(table: list[Lesion], csv_name: str | None = None) -> dict:
    """What the sidecar says about the table: counts, volumes, the largest lesion, the file."""
    out = {
        "lesions": len(table),
        "total_volume_ml": round(sum(r.volume_ml for r in table), 4),
        "largest_volume_ml": round(table[0].volume_ml, 4) if table else 0.0,
        "largest_diameter_mm": round(max((r.largest_diameter_mm for r in table), default=0.0),
                                     2),
        "centroid_of_largest_mm": [round(c, 2) for c in table[0].centroid_mm] if table else None,
        "columns": list(COLUMNS),
        "coordinates": "scanner RAS+ mm (the NIfTI affine)",
    }
    if csv_name is not None:
        out["file"] = csv_name
    return out


def to_csv(table: list[Lesion]) -> str:
    """The table as CSV text: a header row of ``COLUMNS``, then one row per lesion."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in table:
        writer.writerow([v if isinstance(v, int) else
                         ("" if math.isnan(v) else f"{v:.6g}") for v in astuple(row)])
    return buf.getvalue()


def table_path(labels_path) -> Path:
    """``out.nii.gz`` → ``out.csv`` (beside the labels and their ``out.json`` sidecar)."""
    from .export import sidecar_path

    return sidecar_path(labels_path).with_suffix(".csv")


def check_table_target(labels_path, overwrite: bool = False) -> Path:
    """The table's path; OutputError if it exists and ``overwrite`` is False (checked before
    the labels are written, so a refusal leaves nothing half-written)."""
    from .errors import OutputError

    path = table_path(labels_path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite (or choose another name) to "
                          "replace it")
    return path


def write_table(labels_path, table: list[Lesion]) -> Path:
    """Write the table beside the labels, atomically (never a partial file); returns its path."""
    from .export import atomic_write_bytes

    path = table_path(labels_path)
    atomic_write_bytes(path, to_csv(table).encode())
    return path

"""lesion_table: per-lesion volume, scanner-mm centroid, largest diameter and mean intensity, and
their CSV — on label maps whose answers are known by construction (no Qt)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from napari_itermask.core.segmentation import lesion_stats
from napari_itermask.lesion_table import (
    COLUMNS,
    lesion_table,
    summary,
    table_path,
    to_csv,
    write_table,
)


def _affine(diag=(2.0, 1.0, 3.0), shift=(-10.0, 20.0, 5.0)):
    aff = np.diag([*diag, 1.0])
    aff[:3, 3] = shift
    return aff


def test_two_boxes_volume_centroid_diameter_intensity_and_order():
    labels = np.zeros((20, 20, 10), np.uint8)
    image = np.full(labels.shape, 5.0, np.float32)
    labels[2:4, 2:4, 2:4] = 1  # 8 voxels, the smaller
    labels[10:13, 5:8, 4:7] = 1  # 27 voxels, the larger: row 1
    image[10:13, 5:8, 4:7] = 40.0
    image[2:4, 2:4, 2:4] = np.arange(8).reshape(2, 2, 2)
    aff = _affine()
    big, small = lesion_table(labels, aff, image)
    assert (big.lesion, big.voxels, small.lesion, small.voxels) == (1, 27, 2, 8)
    assert big.volume_ml == pytest.approx(27 * 6 / 1000) and small.volume_ml == pytest.approx(
        8 * 6 / 1000)
    # centroid: the middle voxel (11, 6, 5) through the affine, in scanner mm
    np.testing.assert_allclose(big.centroid_mm, aff[:3, :3] @ [11, 6, 5] + aff[:3, 3])
    np.testing.assert_allclose(small.centroid_mm, aff[:3, :3] @ [2.5, 2.5, 2.5] + aff[:3, 3])
    # the farthest voxel centres are opposite corners: (2, 2, 2) voxels apart
    assert big.largest_diameter_mm == pytest.approx(math.dist((0, 0, 0), (4, 2, 6)))
    assert small.largest_diameter_mm == pytest.approx(math.dist((0, 0, 0), (2, 1, 3)))
    assert big.mean_intensity == pytest.approx(40.0)
    assert small.mean_intensity == pytest.approx(3.5)


def test_single_voxel_and_no_image_and_empty():
    labels = np.zeros((5, 5, 5), np.uint8)
    assert lesion_table(labels, np.eye(4)) == []
    labels[1, 2, 3] = 1
    (one,) = lesion_table(labels, np.eye(4))
    assert one.voxels == 1 and one.largest_diameter_mm == 0.0
    assert math.isnan(one.mean_intensity)
    assert one.centroid_mm == (1.0, 2.0, 3.0)


def test_sphere_and_flat_disc_diameters_on_the_hull():
    """Many surface voxels take the convex-hull path; a one-slice disc is coplanar (qhull's
    degenerate case) and still gives its diameter."""
    n = 41
    z, y, x = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    r2 = (z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2
    sphere = (r2 <= 15**2).astype(np.uint8)
    (s,) = lesion_table(sphere, np.diag([0.5, 0.5, 0.5, 1.0]))
    assert s.largest_diameter_mm == pytest.approx(15.0, abs=0.01)  # 2 × 15 voxels × 0.5 mm
    disc = np.zeros((n, n, 3), np.uint8)
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    disc[..., 1] = ((yy - 20) ** 2 + (xx - 20) ** 2) <= 18**2
    (d,) = lesion_table(disc, np.diag([1.0, 2.0, 5.0, 1.0]))
    # the longest chord runs along the 2 mm axis: 36 voxels × 2 mm
    assert d.largest_diameter_mm == pytest.approx(72.0, abs=0.01)


def test_components_match_the_lesion_count_rule_and_oblique_affine():
    rng = np.random.default_rng(3)
    labels = (rng.random((24, 20, 12)) > 0.93).astype(np.uint8)
    labels[3, 3, 3] = labels[4, 4, 4] = 1  # touching at a corner: one lesion (26-connected)
    ang = np.deg2rad(20)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0],
                            [0, 0, 1]]) @ np.diag([1.2, 0.9, 2.5])
    aff[:3, 3] = [30, -40, 12]
    table = lesion_table(labels, aff)
    n, ml = lesion_stats(labels, abs(np.linalg.det(aff[:3, :3])))
    assert len(table) == n and sum(r.volume_ml for r in table) == pytest.approx(ml)
    assert [r.lesion for r in table] == list(range(1, n + 1))
    assert all(a.voxels >= b.voxels for a, b in zip(table, table[1:]))
    import nibabel as nib
    from scipy import ndimage

    comp, _ = ndimage.label(labels, structure=np.ones((3, 3, 3)))
    for row in table[:5]:
        # find the component by its size and centroid in voxels, then check the mm centroid
        ids = [i for i in range(1, comp.max() + 1) if (comp == i).sum() == row.voxels]
        want = [nib.affines.apply_affine(aff, np.argwhere(comp == i).mean(0)) for i in ids]
        assert any(np.allclose(row.centroid_mm, w) for w in want)


def test_csv_summary_and_written_beside_the_labels(tmp_path):
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[6:9, 6:9, 6:9] = 1
    table = lesion_table(labels, _affine(), np.ones(labels.shape))
    rows = list(csv.reader(io.StringIO(to_csv(table))))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 3
    assert float(rows[1][COLUMNS.index("volume_ml")]) == pytest.approx(table[0].volume_ml)
    s = summary(table, "x.csv")
    assert s["lesions"] == 2 and s["file"] == "x.csv"
    assert s["total_volume_ml"] == pytest.approx(35 * 6 / 1000)
    assert s["largest_volume_ml"] == pytest.approx(27 * 6 / 1000)
    assert table_path(tmp_path / "a_lesions.nii.gz") == tmp_path / "a_lesions.csv"
    assert table_path(tmp_path / "b.nii") == tmp_path / "b.csv"
    out = write_table(tmp_path / "a_lesions.nii.gz", table)
    assert out.read_text() == to_csv(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_lesions.csv"]  # no temp left
    assert to_csv([]).strip() == ",".join(COLUMNS)


def test_segment_writes_the_table_beside_its_labels_and_never_overwrites_it(
        tmp_path, phantom_nifti, tiny_model_dir):
    import json

    import nibabel as nib

    from napari_itermask import cli

    scan, _label, aff = phantom_nifti
    out = tmp_path / "out.nii.gz"
    args = ["segment", str(scan), "-o", str(out), "--model", str(tiny_model_dir), "--device",
            "cpu", "--quiet", "--threshold", "0.5"]
    assert cli.main(args) == 0
    side = json.loads((tmp_path / "out.json").read_text())
    labels = np.asarray(nib.load(str(out)).dataobj)
    image = np.asarray(nib.load(str(scan)).dataobj)
    want = to_csv(lesion_table(labels, aff, image))
    assert (tmp_path / "out.csv").read_text() == want
    assert side["lesion_table"]["file"] == "out.csv" and side["lesion_count"] > 0
    assert side["lesion_table"]["lesions"] == side["lesion_count"] == len(want.splitlines()) - 1
    # a CSV already there is refused like the labels would be, before anything is written
    out2 = tmp_path / "other.nii.gz"
    (tmp_path / "other.csv").write_text("mine\n")
    assert cli.main([*args[:3], str(out2), *args[4:]]) != 0
    assert not out2.exists() and (tmp_path / "other.csv").read_text() == "mine\n"

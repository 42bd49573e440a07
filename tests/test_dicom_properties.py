"""Property-based test of the DICOM path: any orientation (rotations, axis permutations, flips),
any in-plane and slice spacing, gantry tilt, and either stacking direction — a series written
with pydicom loads with exactly the source's voxel grid and RAS affine.

Derandomised (the same examples on every run and in CI), a few dozen tiny series, no example
database written.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("pydicom")

from test_dicom import LPS_TO_RAS, write_series  # noqa: E402

from napari_itermask.volume import ScanWarning, load_scan  # noqa: E402
from _geometry import rotation

SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "max_examples": 30,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


@st.composite
def series_sources(draw):
    """(data indexed column,row,slice; RAS affine) of a volume DICOM can hold: orthonormal row
    and column directions, any slice step (tilted and/or against r × c)."""
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(2, 7)))
    perm = draw(st.permutations([0, 1, 2]))
    flips = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    signed = np.zeros((3, 3))
    for k, (p, f) in enumerate(zip(perm, flips)):
        signed[p, k] = f
    angles = ([draw(st.floats(-np.pi, np.pi)) for _ in range(3)] if draw(st.booleans())
              else [0.0, 0.0, 0.0])
    axes = rotation(angles) @ signed  # orthonormal: row direction, column direction, normal
    col_sp, row_sp = draw(st.floats(0.2, 4.0)), draw(st.floats(0.2, 4.0))
    thick = draw(st.floats(0.3, 8.0)) * draw(st.sampled_from([-1.0, 1.0]))
    tilt = [draw(st.floats(-0.4, 0.4)) if draw(st.integers(0, 3)) == 0 else 0.0
            for _ in range(2)]
    lin = np.column_stack([axes[:, 0] * col_sp, axes[:, 1] * row_sp,
                           axes[:, 2] * thick + tilt[0] * axes[:, 0] + tilt[1] * axes[:, 1]])
    lps = np.eye(4)
    lps[:3, :3] = lin
    lps[:3, 3] = [draw(st.floats(-300.0, 300.0)) for _ in range(3)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.integers(0, 1200, shape).astype(np.float32)
    data.flat[rng.integers(data.size)] = 600.0  # never all zero
    return data, LPS_TO_RAS @ lps


def as_stored_along_normal(data, affine):
    """The same voxels and world places, slices ordered along r × c as the loader orders them."""
    lps = LPS_TO_RAS @ affine
    normal = np.cross(lps[:3, 0], lps[:3, 1])
    if lps[:3, 2] @ normal > 0:
        return data, affine
    out = affine.copy()
    out[:3, 3] = affine[:3, 3] + (data.shape[2] - 1) * affine[:3, 2]
    out[:3, 2] = -affine[:3, 2]
    return data[:, :, ::-1], out


@settings(**SETTINGS)
@given(source=series_sources())
def test_dicom_written_then_loaded_gives_the_exact_grid_and_affine(tmp_path_factory, source):
    data, affine = source
    folder = tmp_path_factory.mktemp("series")
    write_series(folder, data, affine, shuffle_seed=int(data.sum()) % 97)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)  # tilted stacks are sheared: warned
        scan = load_scan(folder)
    want_data, want_affine = as_stored_along_normal(data, affine)
    assert scan.data.shape == data.shape
    np.testing.assert_array_equal(scan.data, want_data)
    np.testing.assert_allclose(scan.affine, want_affine, atol=1e-5, rtol=0)
    # every voxel sits where the source put it, whichever way the slices were stacked
    ijk = np.array([[0, 0, 0], [s - 1 for s in data.shape]], float).T
    back = np.rint(np.linalg.solve(scan.affine, affine @ np.vstack([ijk, [1, 1]]))[:3]).T
    for src, got in zip(ijk.T.astype(int), back.astype(int)):
        assert scan.data[tuple(got)] == data[tuple(src)]

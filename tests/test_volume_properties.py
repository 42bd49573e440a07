"""Property-based tests of the volume pipeline: any grid, voxel size, orientation or oblique
affine goes to the model grid and comes back onto exactly the scan's own grid and affine.

Hypothesis draws the scans: 2-D and 3-D shapes (singleton axes included), anisotropic voxel
sizes, every axis permutation and flip, arbitrary rotations (oblique acquisitions) and offsets,
plus the model grid and pixel size. Each test is kept to a few dozen small examples and runs
derandomised (the same examples on every run and in CI); no example database is written.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from napari_itermask.export import write_labels
from napari_itermask.volume import Geometry, ScanWarning, load_scan, scan_from_array, to_model_grid
from _geometry import rotation

SETTINGS = {
    "deadline": None,
    "derandomize": True,  # the same examples on every run and in CI
    "database": None,  # no .hypothesis folder written
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


def signed_permutation(perm, flips) -> np.ndarray:
    m = np.zeros((3, 3))
    for k, (p, f) in enumerate(zip(perm, flips)):
        m[p, k] = -1.0 if f else 1.0
    return m


@st.composite
def affines(draw, shear: bool = True) -> np.ndarray:
    """Voxel → world: rotation · axis permutation with flips · voxel sizes (· a mild shear,
    which only an sform can hold), plus an offset."""
    zooms = [draw(st.floats(0.25, 6.0)) for _ in range(3)]
    perm = draw(st.permutations([0, 1, 2]))
    flips = [draw(st.booleans()) for _ in range(3)]
    angles = ([draw(st.floats(-np.pi, np.pi)) for _ in range(3)] if draw(st.booleans())
              else [0.0, 0.0, 0.0])
    skew = np.eye(3)
    if shear and draw(st.integers(0, 3)) == 0:
        skew[0, 1], skew[1, 2], skew[0, 2] = (draw(st.floats(-0.3, 0.3)) for _ in range(3))
    aff = np.eye(4)
    aff[:3, :3] = rotation(angles) @ signed_permutation(perm, flips) @ np.diag(zooms) @ skew
    aff[:3, 3] = [draw(st.floats(-250.0, 250.0)) for _ in range(3)]
    return aff


@st.composite
def scans(draw, ndim: int | None = None, max_side: int = 18, shear: bool = True):
    """(data, affine): a skull-stripped-looking blob (values > 0 inside, 0 outside)."""
    ndim = draw(st.sampled_from([2, 3, 3, 3])) if ndim is None else ndim
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    centre = [rng.uniform(0, n - 1) if n > 1 else 0.0 for n in shape]
    radius = [max(n * rng.uniform(0.2, 0.6), 0.6) for n in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) < 1
    data = np.where(inside, rng.uniform(20, 200, shape), 0.0).astype(np.float32)
    data.flat[rng.integers(data.size)] = 150.0  # never an empty brain
    return data, draw(affines(shear=shear))


def _orthogonal(affine):
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return m.T @ m, np.eye(3)


def quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        return fn(*args, **kwargs)


def save(data, affine, path, sform_code: int, qform_code: int):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine if sform_code else None, sform_code)
    img.set_qform(affine if qform_code else None, qform_code)
    nib.save(img, str(path))
    return path


def segment_like_the_cli(path, out, grid, pixel_size_mm, seed):
    """Scan → model grid → a label map on the model grid → scan grid → NIfTI, as ``segment``
    does it (labels from the model-grid brain with random holes, brought back both ways)."""
    scan = quietly(load_scan, path)
    vol = quietly(to_model_grid, scan, grid=grid, pixel_size_mm=pixel_size_mm)
    rng = np.random.default_rng(seed)
    model_labels = vol.brain & (rng.random(vol.brain.shape) < 0.7)
    nearest = vol.geometry.to_scan(model_labels.astype(np.uint8), order=0) > 0
    linear = vol.geometry.to_scan(model_labels.astype(np.float32), order=1) > 0.5
    labels = ((nearest | linear) & vol.scan_brain).astype(np.uint8)
    write_labels(out, labels, scan.affine, scan.header, {"case": "property"})
    return scan, vol, labels


HEADERS = {  # name: (sform_code, qform_code), as scanners' converters and tools write them
    "scanner sform + qform": (1, 1),
    "aligned sform + scanner qform": (2, 1),
    "MNI sform only": (4, 0),
}


@settings(max_examples=30, **SETTINGS)
@given(scan=scans(), header=st.sampled_from(sorted(HEADERS)),
       grid=st.sampled_from([8, 16, 32, 48]), pixel_size_mm=st.floats(0.5, 8.0),
       gz=st.booleans(), one_volume_4d=st.booleans(), seed=st.integers(0, 1000))
def test_labels_come_back_on_exactly_the_input_grid_and_affine(
        tmp_path_factory, scan, header, grid, pixel_size_mm, gz, one_volume_4d, seed):
    data, affine = scan
    if HEADERS[header][1] and not np.allclose(*_orthogonal(affine)):
        header = "MNI sform only"  # a qform cannot hold a shear: such files carry an sform only
    folder = tmp_path_factory.mktemp("prop")
    suffix = ".nii.gz" if gz else ".nii"
    stored = data[..., None] if one_volume_4d and data.ndim == 3 else data  # x, y, z, 1
    src = save(stored, affine, folder / f"scan{suffix}", *HEADERS[header])
    out = folder / f"lesions{suffix}"
    scan_, vol, labels = segment_like_the_cli(src, out, grid, pixel_size_mm, seed)

    original, written = nib.load(str(src)), nib.load(str(out))
    assert original.shape == stored.shape
    assert written.shape == data.shape  # a single-volume 4-D scan gets 3-D labels
    assert np.array_equal(written.affine, original.affine)  # exactly, not approximately
    assert np.array_equal(scan_.affine, original.affine)
    assert written.header.get_sform(coded=True)[1] == original.header.get_sform(coded=True)[1]
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(written.dataobj), labels)
    assert not (labels.astype(bool) & ~vol.scan_brain).any()  # labels never leave the brain


def _oblique_example():
    rng = np.random.default_rng(3)
    data = np.where(rng.random((14, 12, 9)) < 0.5, 100.0, 0.0).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = rotation([-0.57, 2.53, 1.12]) @ np.diag([2.18, 2.28, 1.85])
    affine[:3, 3] = [-12.3, 45.6, 7.8]
    return data, affine


@pytest.mark.parametrize("codes", [
    pytest.param((0, 1), id="qform only"),
    pytest.param((0, 0), id="no codes"),
    pytest.param((1, 1), id="sform and qform"),
])
@settings(max_examples=10, phases=[Phase.explicit, Phase.generate], **SETTINGS)  # no shrinking
@given(scan=scans(ndim=3, max_side=10, shear=False))
@example(scan=_oblique_example())
def test_labels_keep_the_input_qform_and_sform_exactly(tmp_path_factory, codes, scan):
    """Each of the input's sform and qform, with its code, is what the labels carry."""
    data, affine = scan
    folder = tmp_path_factory.mktemp("forms")
    src = save(data, affine, folder / "scan.nii.gz", *codes)
    out = folder / "lesions.nii.gz"
    segment_like_the_cli(src, out, 16, 2.0, 0)
    original, written = nib.load(str(src)), nib.load(str(out))
    assert np.array_equal(written.affine, original.affine)
    for form in ("get_sform", "get_qform"):
        o, o_code = getattr(original.header, form)(coded=True)
        w, w_code = getattr(written.header, form)(coded=True)
        assert w_code == o_code
        assert o is None or np.array_equal(w, o)


@settings(max_examples=40, **SETTINGS)
@given(scan=scans(), grid=st.sampled_from([4, 9, 16, 33]), pixel_size_mm=st.floats(0.3, 9.0))
def test_reorientation_is_exact_and_maps_come_back_in_the_scan_shape(scan, grid, pixel_size_mm):
    data, affine = scan
    geo = Geometry.for_scan(data.shape, affine, pixel_size_mm, grid, data > 0)
    canon = geo.to_canonical(data)
    assert canon.shape == geo.canonical_shape
    assert sorted(canon.shape) == sorted(geo.shape3)
    assert np.array_equal(geo.from_canonical(canon), data)
    for order, dtype in ((0, np.uint8), (1, np.float32)):
        slices = np.ones((geo.n_slices, grid, grid), dtype)
        back = geo.to_scan(slices, order=order)
        assert back.shape == data.shape
    # canonical axes: in-plane along world R then A, both pointing that way (3-D scans whose
    # slices are not singletons; 2-D images and single slices keep their own plane)
    if data.ndim == 3 and min(data.shape) > 1:
        canonical = np.eye(4)
        canonical[:3, :3] = affine[:3, :3] @ signed_permutation(geo.perm, geo.flips)
        ornt = nib.orientations.io_orientation(canonical)
        assert ornt[:, 0].tolist() == [0, 1, 2] and ornt[:2, 1].tolist() == [1, 1]


@settings(max_examples=60, **SETTINGS)
@given(scan=scans(), grid=st.sampled_from([4, 9, 16, 33]), pixel_size_mm=st.floats(0.3, 9.0),
       seed=st.integers(0, 2**16))
@example(scan=(np.ones((9, 9, 3), np.float32), np.eye(4)), grid=4, pixel_size_mm=1.0,
         seed=0)  # every scan voxel half-way between two model pixels: nearest's tie rule
def test_the_separable_resampling_equals_scipy_slice_by_slice(scan, grid, pixel_size_mm, seed):
    """Model grid → scan grid: nearest neighbour identical to ``map_coordinates`` per slice,
    linear equal to it within float32 rounding, for labels, masks and maps alike."""
    data, affine = scan
    geo = Geometry.for_scan(data.shape, affine, pixel_size_mm, grid, data > 0)
    rng = np.random.default_rng(seed)
    shape = (geo.n_slices, grid, grid)
    labels = rng.integers(0, 4, shape).astype(np.uint8)
    assert np.array_equal(geo.to_scan(labels, order=0), geo.to_scan(labels, 0, method="scipy"))
    maps = (rng.random(shape) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)
    fast, ref = geo.to_scan(maps, order=1), geo.to_scan(maps, 1, method="scipy")
    assert fast.dtype == ref.dtype == np.float32 and fast.shape == ref.shape == data.shape
    np.testing.assert_allclose(fast, ref, rtol=2e-7, atol=0)


def test_the_resampling_refuses_an_order_or_method_it_does_not_have():
    geo = Geometry.for_scan((6, 6, 2), np.eye(4), 1.0, 4)
    slices = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="order"):
        geo.to_scan(slices, order=3)
    with pytest.raises(ValueError, match="method"):
        geo.to_scan(slices, order=1, method="cubic")


@st.composite
def storage_orders(draw, ndim: int = 3):
    """How the same scan may be stored: an axis permutation and flips of its array (a 2-D
    image's implicit third axis stays where it is)."""
    perm = list(draw(st.permutations(list(range(ndim))))) + list(range(ndim, 3))
    return perm, [draw(st.booleans()) for _ in range(ndim)] + [False] * (3 - ndim)


def restore(data, affine, perm, flips):
    """The same physical image stored with axes permuted by ``perm`` and flipped where
    ``flips``, with the affine that keeps every voxel at its place in the world."""
    out = np.transpose(data, perm[: data.ndim])
    shift = np.eye(4)
    shift[:3, :3] = signed_permutation(perm, flips)
    for k, (p, f) in enumerate(zip(perm, flips)):
        if f:
            out = np.flip(out, axis=k)
            shift[p, 3] = data.shape[p] - 1
    return np.ascontiguousarray(out), affine @ shift


@st.composite
def scans_and_storage_orders(draw):
    data, affine = draw(scans(max_side=16))
    return data, affine, draw(storage_orders(data.ndim))


@settings(max_examples=40, **SETTINGS)
@given(case=scans_and_storage_orders(), grid=st.sampled_from([16, 24]),
       pixel_size_mm=st.floats(0.5, 4.0))
def test_the_model_sees_the_same_slices_whatever_the_storage_order(case, grid, pixel_size_mm):
    data, affine, order = case
    data2, affine2 = restore(data, affine, *order)
    # the relabelled array really is the same image in the world
    idx = np.argwhere(data > 0)[:5]
    pad = np.zeros((len(idx), 3 - data.ndim), int)
    world = nib.affines.apply_affine(affine, np.hstack([idx, pad]))
    idx2 = np.rint(nib.affines.apply_affine(np.linalg.inv(affine2), world)).astype(int)
    assert np.array_equal(data2[tuple(idx2[:, : data.ndim].T)], data[tuple(idx.T)])

    v1 = quietly(to_model_grid, quietly(scan_from_array, data, affine), grid=grid,
                 pixel_size_mm=pixel_size_mm)
    v2 = quietly(to_model_grid, quietly(scan_from_array, data2, affine2), grid=grid,
                 pixel_size_mm=pixel_size_mm)
    assert np.array_equal(v1.x, v2.x) and np.array_equal(v1.brain, v2.brain)
    # and a model-grid map comes back onto each storage order's own voxels identically
    m = np.random.default_rng(0).random(v1.brain.shape).astype(np.float32)
    back1 = v1.geometry.to_scan(m, order=1)
    back2 = v2.geometry.to_scan(m, order=1)
    assert np.array_equal(restore(back1, affine, *order)[0], back2)


@st.composite
def on_voxel_centres(draw):
    """An isotropic scan in any storage order whose model pixels, at a pixel size equal to the
    voxel size, fall on voxel centres: every side has the parity of the grid."""
    grid = draw(st.sampled_from([15, 16, 31, 32]))
    shape = tuple(draw(st.integers(1, grid // 2).map(lambda n: 2 * n - grid % 2))
                  for _ in range(3))
    voxel = draw(st.floats(0.5, 3.0))
    perm, flips = draw(storage_orders())
    affine = np.eye(4)
    affine[:3, :3] = signed_permutation(perm, flips) * voxel
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.normal(size=shape).astype(np.float32), affine, voxel, grid


@settings(max_examples=25, **SETTINGS)
@given(case=on_voxel_centres())
def test_model_grid_and_back_is_the_identity_when_pixels_are_voxels(case):
    """The way to the model grid and the way back are inverse maps of the same coordinates:
    at a pixel size equal to the voxel size, with model pixels on voxel centres and the scan
    inside the field of view, any map comes back bit for bit."""
    data, affine, voxel, grid = case
    geo = Geometry.for_scan(data.shape, affine, voxel, grid)  # centred on the field of view
    assert geo.steps == (1.0, 1.0)
    there = geo.to_model(data, order=1, antialias=False)
    assert np.array_equal(geo.to_scan(there, order=1), data)
    assert np.array_equal(geo.to_scan(geo.to_model(data, order=0), order=0), data)

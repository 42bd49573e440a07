"""The benchmark's scoring protocols: slab slice, area label rule, thresholds, statistics, CLI."""

import argparse
import json

import numpy as np
import pytest

from napari_itermask.core.metrics import best_threshold_dice, dice
from training import evaluate, prepare, protocols
from training.common import split_seeds
from conftest import perturbed_bundle, phantom

GRID = ["--grid", "64", "--pixel-size", "3.75", "--min-brain", "50"]


# -- slab and slice choice ---------------------------------------------------------------------
def _brain(n=100, first=10, last=89):
    bp = np.zeros(n, int)
    bp[first:last + 1] = 500
    return bp


def test_slab_is_a_fraction_of_the_brains_axial_extent():
    # brain on slices 10..89 (80 slices): centres at (k + ½ − 10) / 80 in [0.50, 0.63) → 50..59
    assert protocols.slab_slices(_brain(), (0.50, 0.63)).tolist() == list(range(50, 60))
    # the same slab moves with the brain, not with the array
    assert protocols.slab_slices(_brain(first=20, last=99), (0.50, 0.63)).tolist() == list(
        range(60, 70))
    pos = protocols.axial_position(_brain())
    assert np.isnan(pos[:10]).all() and np.isnan(pos[90:]).all()
    assert pos[10] == pytest.approx(0.5 / 80) and pos[89] == pytest.approx(79.5 / 80)
    assert protocols.slab_slices(np.zeros(5)).size == 0
    with pytest.raises(ValueError):
        protocols.slab_slices(_brain(), (0.6, 0.5))


def test_the_slab_slice_with_most_lesion_is_chosen_and_lesion_outside_is_ignored():
    bp = _brain()
    les = np.zeros(100, int)
    les[52], les[57], les[70], les[20] = 30, 50, 5000, 4000  # 70 and 20 lie outside the slab
    assert protocols.choose_slice(les, bp) == 57
    les[53] = 50  # a tie: the lower slice
    assert protocols.choose_slice(les, bp) == 53
    only_outside = np.zeros(100, int)
    only_outside[[20, 70]] = 900
    assert protocols.choose_slice(only_outside, bp) is None  # the case is dropped


# -- the model-grid label: area resize, any fraction counts -------------------------------------
def test_area_weights_are_exact_block_means_at_twice_the_voxel_size():
    w = protocols.area_weights(8, centre=3.5, step=2.0, grid=4)
    assert np.allclose(w, np.kron(np.eye(4), [[0.5, 0.5]]))
    lab = np.zeros((8, 8, 1))
    lab[2, 2, 0] = 1  # one voxel of the 2 × 2 block of model pixel (1, 1)
    frac = protocols.area_fraction(lab, w, w)
    assert frac.shape == (1, 4, 4) and frac[0, 1, 1] == pytest.approx(0.25)
    assert np.count_nonzero(frac) == 1  # no kernel tail reaches the neighbours
    got = protocols.label_from_fraction(frac)
    assert got[0, 1, 1] and got.sum() == 1  # 25 % lesion is lesion (a > 0.5 rule would drop it)
    assert protocols.LABEL_MIN_FRACTION == 0.0


def test_area_resize_keeps_the_lesion_area_at_a_non_integer_step():
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 40, 3))
    lab[10:30, 10:30] = rng.random((20, 20, 3)) > 0.6
    step = 1.875 / 1.5  # 1.5 mm voxels onto the 1.875 mm model grid
    w = protocols.area_weights(40, 19.5, step, 40)
    frac = protocols.area_fraction(lab, w, w)
    # partial volume conserves area: Σ fraction · pixel area = lesion voxels
    assert np.allclose(frac.sum((1, 2)) * step**2, lab.sum((0, 1)))
    assert frac.max() <= 1 + 1e-12
    # a pixel is lesion where any lesion voxel overlaps its footprint, and only there
    one = np.zeros((40, 40, 1))
    one[20, 20] = 1
    got = protocols.label_from_fraction(protocols.area_fraction(one, w, w))[0]
    p = 19.5 + (np.arange(40) - 19.5) * step  # pixel centres in voxel units
    touch = np.nonzero(np.abs(p - 20) < (step + 1) / 2)[0]
    assert got.sum() == len(touch) ** 2 and got[np.ix_(touch, touch)].all()


def test_evaluate_puts_the_label_on_the_model_grid_with_the_any_fraction_rule():
    from napari_itermask.volume import Geometry

    geo = Geometry.for_scan((8, 8, 2), np.eye(4), pixel_size_mm=2.0, grid=4)
    gt = np.zeros((8, 8, 2), bool)
    gt[2, 2, 1] = True
    lab = evaluate.model_grid_label(geo, gt)
    assert lab.shape == (2, 4, 4) and lab.sum() == 1 and lab[1, 1, 1]


# -- thresholds ---------------------------------------------------------------------------------
def _two_cases():
    """Case A: lesion 0.8, noise 0.35, rest 0.2; case B: lesion 0.6, five false spots 0.7.
    Normalised by the set's 0.2–0.8: A noise 0.25, B lesion 0.667, B spots 0.833. Any threshold
    in [0.25, 0.667) keeps A perfect (Dice 1) and B at lesion + spots (2·10 / 25 = 0.8)."""
    region = np.ones((10, 10), bool)
    ga = np.zeros((10, 10), bool)
    ga[:2, :5] = True
    sa = np.where(ga, 0.8, 0.2)
    sa[5, :4] = 0.35
    gb = np.zeros((10, 10), bool)
    gb[4:6, 2:7] = True
    sb = np.where(gb, 0.6, 0.2)
    sb[9, :5] = 0.7
    return [(sa, ga, region), (sb, gb, region)]


def test_global_threshold_tuned_on_test_labels_on_a_known_set():
    g = protocols.sweep_global_threshold(_two_cases())
    assert (g.score_min, g.score_max) == (0.2, 0.8)
    assert g.mean_dice == pytest.approx(0.9)
    assert g.dice == pytest.approx([1.0, 0.8])
    assert g.threshold == pytest.approx(250 / 999)  # the first of 1,000 values above 0.25
    assert g.raw_threshold == pytest.approx(0.2 + 0.6 * 250 / 999)
    assert g.sens == pytest.approx([1.0, 1.0]) and g.prec == pytest.approx([1.0, 10 / 15])
    # a coarse grid that never lands in [0.25, 0.667) does worse
    assert protocols.sweep_global_threshold(_two_cases(), n_thresholds=2).mean_dice < 0.9


def test_global_sweep_agrees_with_brute_force_dice():
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(4):
        gt = np.zeros((16, 16), bool)
        r, c = rng.integers(2, 10, 2)
        gt[r:r + 5, c:c + 4] = True
        score = rng.random((16, 16)) + 0.8 * gt
        region = np.ones_like(gt)
        region[0] = False  # ground truth outside the region counts as missed
        gt[0, 3] = True
        cases.append((score, gt, region))
    g = protocols.sweep_global_threshold(cases, n_thresholds=50)
    lo = min(s[r].min() for s, _, r in cases)
    hi = max(s[r].max() for s, _, r in cases)
    means = [np.mean([dice(((s - lo) / (hi - lo) > t) & r, gt) for s, gt, r in cases])
             for t in np.linspace(0, 1, 50)]
    assert g.mean_dice == pytest.approx(max(means))
    assert g.threshold == pytest.approx(np.linspace(0, 1, 50)[int(np.argmax(means))])
    # the per-image best threshold is never below the global one, case by case
    for (s, gt, r), d in zip(cases, g.dice):
        assert best_threshold_dice(s, gt, r)[0] >= d - 1e-12


def test_per_image_best_threshold_on_the_known_set():
    (sa, ga, ra), (sb, gb, rb) = _two_cases()
    assert best_threshold_dice(sa, ga, ra)[0] == pytest.approx(1.0)
    best, t = best_threshold_dice(sb, gb, rb)
    assert best == pytest.approx(0.8)  # the spots outscore the lesion: they must come along
    assert protocols.slice_scores(sb > t, gb) == pytest.approx(
        {"dice": 0.8, "sens": 1.0, "prec": 10 / 15})
    # an empty prediction on a slice with lesion: precision 0, not NaN
    assert protocols.slice_scores(np.zeros_like(gb), gb) == {"dice": 0.0, "sens": 0.0,
                                                            "prec": 0.0}


# -- statistics ---------------------------------------------------------------------------------
def test_mean_and_standard_error_on_known_numbers():
    mean, se = protocols.mean_se([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    assert mean == 2.5 and se == pytest.approx(np.sqrt(5 / 3) / 2)
    m1, se1 = protocols.mean_se([0.7])
    assert m1 == 0.7 and np.isnan(se1)
    assert all(np.isnan(protocols.mean_se([])))


def test_paired_bootstrap_on_known_differences():
    rng = np.random.default_rng(1)
    other = rng.uniform(0.2, 0.7, 40)
    up = protocols.paired_bootstrap(other + 0.1, other)  # a constant gain of 0.1 on every case
    assert up.diff == pytest.approx(0.1) and up.lo == pytest.approx(0.1)
    assert up.hi == pytest.approx(0.1) and up.verdict == "better" and up.n == 40
    assert protocols.paired_bootstrap(other - 0.1, other).verdict == "worse"
    x = rng.normal(0, 0.1, 20)
    noise = protocols.paired_bootstrap(other + np.r_[x, -x], other)  # symmetric around 0
    assert noise.lo < 0 < noise.hi and noise.verdict == "tie"
    assert noise.diff == pytest.approx(0.0, abs=1e-12)
    again = protocols.paired_bootstrap(other + np.r_[x, -x], other)
    assert (again.lo, again.hi) == (noise.lo, noise.hi)  # fixed seed
    # the interval's width follows the standard error of the mean difference
    d = rng.normal(0.05, 0.1, 40)
    b = protocols.paired_bootstrap(other + d, other)
    half = 1.96 * d.std(ddof=1) / np.sqrt(40)
    assert (b.hi - b.lo) / 2 == pytest.approx(half, rel=0.2)
    assert protocols.paired_bootstrap([0.5], [0.2]).verdict == "n/a"
    assert protocols.paired_bootstrap([0.5, None, 0.6], [0.2, 0.3, 0.3]).n == 2
    st = protocols.compare_to_reference({"itermask": list(other + 0.1), "DAE": list(other)})
    assert "vs_reference" not in st["itermask"]
    assert st["DAE"]["vs_reference"]["verdict"] == "better"
    assert st["DAE"]["mean"] == pytest.approx(other.mean())


def test_size_strata_share_and_dice():
    st = protocols.strata_summary([100, 300, 900, 1000], [0.1, 0.5, 0.8, 0.6])
    assert [st[s]["share"] for s in ("small", "medium", "large")] == [0.25, 0.25, 0.5]
    assert st["large"]["dice"] == pytest.approx(0.7) and st["small"]["n"] == 1
    assert protocols.strata_summary([900], [0.5])["small"]["dice"] is None


# -- evaluate: seeds, strata, the single-slice loop, the whole run ------------------------------
def test_each_stratum_has_its_own_test_seeds_and_keywords_are_passed(monkeypatch):
    subtle, glioma, stroke = (set(split_seeds("test", 50, s)) for s in
                              ("subtle", "glioma", "stroke"))
    assert min(subtle) == 900_000 and min(glioma) == 910_000 and min(stroke) == 920_000
    assert not (subtle & glioma or subtle & stroke or glioma & stroke)
    train = set(split_seeds("train", 50)) | set(split_seeds("val", 50))
    assert not train & (subtle | glioma | stroke)
    assert evaluate.case_seeds("val", 2, "glioma") == [200_100, 200_101]
    with pytest.raises(ValueError):
        split_seeds("test", 1, "nonsense")
    assert evaluate.synth_keywords("subtle", None) == {}
    assert evaluate.synth_keywords("glioma", "sri24") == {"stratum": "glioma",
                                                          "anatomy": "sri24"}
    calls = []

    class Case:
        image, affine, label = phantom(shape=(20, 20, 10))[0], np.eye(4), np.zeros(1)

    def fake(modality, seed, **kw):
        calls.append((modality, seed, kw))
        return Case

    monkeypatch.setattr(evaluate.synth, "make_case", fake)
    ns = argparse.Namespace(data=None, split="test", n=2, modality="t1ce", voxel_size=3.0,
                            leftover=False, stratum="stroke", anatomy=None)
    assert [n for n, _, _ in evaluate.test_cases(ns)] == ["synth920000", "synth920001"]
    assert calls[0] == ("t1ce", 920_000, {"voxel_size": 3.0, "leftover": False,
                                          "stratum": "stroke"})
    # t1ce is scored bright like FLAIR/T2; T1 dark
    x, br = np.array([[1.0, -2.0]]), np.array([[True, True]])
    assert (evaluate.intensity_score(x, br, "t1ce") == x).all()
    assert (evaluate.intensity_score(x, br, "t1") == -x).all()


def test_the_slice_loop_equals_that_slice_of_the_full_volume_run():
    from napari_itermask.pipeline import Job
    from napari_itermask.volume import scan_from_array

    b = perturbed_bundle()
    b.card.grid_size, b.card.pixel_size_mm, b.card.min_brain_pixels = 64, 3.75, 50
    img, _ = phantom(shape=(40, 48, 30))
    scan = scan_from_array(img, np.diag([3.75, 3.75, 3.75, 1.0]))
    job = Job.create(scan, b)
    job.run_all()
    k = 15
    first, last = evaluate.slice_loop(b, job.volume, k)
    full = job.history.last
    assert full.iterations[k] > 1 and last.iterations[0] == full.iterations[k]
    assert np.allclose(last.error[0], full.error[k], atol=1e-6)
    assert np.allclose(last.recon[0], full.recon[k], atol=1e-6)
    assert last.error[0].max() > 0 and not np.allclose(first.error[0], last.error[0])


def test_the_loop_seed_changes_the_noise_draws_and_nothing_else():
    from napari_itermask.pipeline import Job
    from napari_itermask.volume import scan_from_array

    b = perturbed_bundle()
    b.card.grid_size, b.card.pixel_size_mm, b.card.min_brain_pixels = 64, 3.75, 50
    img, _ = phantom(shape=(40, 48, 30))
    vol = Job.create(scan_from_array(img, np.diag([3.75, 3.75, 3.75, 1.0])), b).volume
    k = 15
    f0, l0 = evaluate.slice_loop(b, vol, k)
    f0b, l0b = evaluate.slice_loop(b, vol, k, seed=0)
    f1, l1 = evaluate.slice_loop(b, vol, k, seed=1)
    assert np.array_equal(l0.error, l0b.error)  # the default is seed 0
    assert np.array_equal(f0.masks, f1.masks)  # the first step draws no noise
    assert not np.allclose(l0.recon, l1.recon)  # later steps do


@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare.main(["synth", "--modality", "flair", "--split", "train", "--n", "2",
                  "--voxel-size", "3.0", "-o", str(d / "val.npz"), *GRID])
    return d / "val.npz"


def test_evaluate_scores_both_protocols_end_to_end(val_data, tmp_path, monkeypatch):
    from napari_itermask.models import save_bundle

    b = perturbed_bundle()
    b.card.grid_size, b.card.pixel_size_mm, b.card.min_brain_pixels = 64, 3.75, 50
    model = save_bundle(b, tmp_path / "m")
    # the whole brain as slab, so that both random synthetic cases are kept whatever their
    # lesions' height (the slab rule itself is tested above)
    monkeypatch.setattr(protocols, "CENTRAL_SLAB", (0.0, 1.0))
    out = tmp_path / "res"
    args = ["--model", str(model), "--val", str(val_data), "--modality", "flair", "--n", "2",
            "--split", "val", "--voxel-size", "3.0"]
    evaluate.main([*args, "--protocol", "both", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    methods = ["itermask", "no-iteration", "intensity"]
    assert list(res["thresholds"]) == methods and len(res["cases"]) == 2
    paper = res["paper"]
    assert paper["central_slab"] == [0.0, 1.0] and paper["dropped"] == []
    assert [r["case"] for r in paper["cases"]] == ["synth200100", "synth200101"]
    for r in paper["cases"]:
        assert r["lesion_px"] > 0 and 0 < r["slice_position"] < 1
        for m in methods:
            best, honest, tuned = (r[m][k]["dice"] for k in ("best", "honest", "tuned"))
            assert best >= honest - 1e-12 and best >= tuned - 1e-9  # the per-image oracle
            assert 0 <= tuned <= 1
        assert 0 < r["itermask"]["ssim_normal"] <= 1 and "ssim_normal" not in r["intensity"]
        kept = r["still_masked"]  # the loop only ever shrinks its mask
        assert 0 <= kept["lesion_end"] <= kept["lesion_first"] <= 1
        assert 0 <= kept["healthy_end"] <= kept["healthy_first"] <= 1
    for m in methods:
        t = paper["tuned_on_test_labels"][m]
        assert t["mean_dice"] == pytest.approx(np.mean([r[m]["tuned"]["dice"]
                                                        for r in paper["cases"]]))
        st = paper["statistics"]["modes"]["honest"][m]
        assert st["mean"] == pytest.approx(np.mean([r[m]["honest"]["dice"]
                                                    for r in paper["cases"]]))
        assert ("vs_reference" in st) == (m != "itermask")
    assert res["statistics"]["no-iteration"]["vs_reference"]["verdict"] in {"better", "worse",
                                                                              "tie", "n/a"}
    md = (out / "results.md").read_text()
    clinical, _, paper_md = md.partition("#### Paper protocol")
    assert "#### Clinical protocol" in clinical and paper_md
    for part in (clinical, paper_md):
        assert all(f"| {m} |" in part for m in methods)
    assert "tuned on test labels" in paper_md and "per-image best" in paper_md
    assert "What the loop (`itermask`) kept masked" in paper_md
    assert "IterMask² is" in paper_md and "IterMask² is" in clinical
    # the paper protocol alone: no whole-volume table, the same slices and honest scores
    out2 = tmp_path / "paper"
    evaluate.main([*args, "--protocol", "paper", "--out", str(out2)])
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["cases"] == [] and "statistics" not in res2
    assert [r["slice"] for r in res2["paper"]["cases"]] == [r["slice"] for r in paper["cases"]]
    assert [r["itermask"]["honest"] for r in res2["paper"]["cases"]] == [
        r["itermask"]["honest"] for r in paper["cases"]]
    md2 = (out2 / "results.md").read_text()
    assert "Clinical protocol" not in md2 and "#### Paper protocol" in md2
    assert (out2 / "cases.png").exists() and (out2 / "typical.png").exists()
    # a slab without lesion (the brain's top 1 %): every case is dropped, and said so
    monkeypatch.setattr(protocols, "CENTRAL_SLAB", (0.99, 1.0))
    out3 = tmp_path / "none"
    evaluate.main([*args, "--protocol", "paper", "--out", str(out3), "--loop-seed", "5"])
    res3 = json.loads((out3 / "results.json").read_text())
    assert res3["loop_seed"] == 5 and res["loop_seed"] == 0
    assert res3["paper"]["cases"] == [] and res3["paper"]["dropped"] == ["synth200100",
                                                                         "synth200101"]
    assert "No case has lesion in the central slab" in (out3 / "results.md").read_text()


def test_typical_cases_are_best_median_worst():
    from training.evaluate import typical_cases

    rows = [{"case": c, "itermask": {"dice": d}}
            for c, d in [("a", 0.5), ("b", 0.9), ("c", 0.1), ("d", 0.7), ("e", 0.3)]]
    assert typical_cases(rows) == [("best", "b"), ("median", "a"), ("worst", "c")]
    # even count: the upper of the two middle cases; ties by name
    rows.append({"case": "f", "itermask": {"dice": 0.9}})
    assert typical_cases(rows) == [("best", "b"), ("median", "a"), ("worst", "c")]
    assert typical_cases(rows, method="itermask")[0] == ("best", "b")
    # fewer than three cases: each once
    assert typical_cases(rows[:1]) == [("best", "a")]
    assert typical_cases(rows[:2]) == [("best", "b"), ("median", "a")]
    assert typical_cases([]) == []

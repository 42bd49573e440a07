"""Training recipe smoke tests on tiny data: prepare, train/resume, calibrate, metrics."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_itermask.core.calibration import tau_from_masked_errors, threshold_from_healthy
from napari_itermask.core import precision as prec_mod
from napari_itermask.core.metrics import (
    best_threshold_dice,
    dice,
    lesion_detection,
    precision,
    sensitivity,
    size_stratum,
    ssim_normal,
)
from training import prepare, train
from training.common import SliceSet
from conftest import ball_cases, phantom

GRID = ["--grid", "64", "--pixel-size", "3.75", "--min-brain", "50"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare.main(["synth", "--modality", "flair", "--split", "train", "--n", "2",
                  "--voxel-size", "3.0", "-o", str(d / "train.npz"), *GRID])
    return d / "train.npz"


def test_prepare_synth_gives_healthy_slices_on_the_grid(tiny_data):
    ds = SliceSet.load(tiny_data)
    assert ds.x.shape[1:] == (64, 64) and len(ds) > 10
    assert (ds.brain.reshape(len(ds), -1).sum(1) >= 50).all()
    assert ds.label is None and ds.meta["split"] == "train"
    assert ds.meta["seeds"][0] == 100_000


def test_prepare_brats_layout_uses_only_tumour_free_slices(tmp_path):
    root = tmp_path / "BraTS2021"
    for k in range(2):
        case = root / f"BraTS2021_0000{k}"
        case.mkdir(parents=True)
        img, lab = phantom(shape=(48, 48, 20), seed=k)
        aff = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-like, as BraTS files are
        for mod in ("flair", "t1", "t1ce", "t2"):
            nib.save(nib.Nifti1Image(img, aff), str(case / f"{case.name}_{mod}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(case / f"{case.name}_seg.nii.gz"))
    out = tmp_path / "brats.npz"
    prepare.main(["brats", str(root), "--modality", "flair", "-o", str(out), *GRID,
                  "--min-brain", "1"])
    ds = SliceSet.load(out)
    tumour_slices = {z for z in range(20) if lab[:, :, z].any()}
    assert len(tumour_slices) > 0
    # every slice with brain and no tumour, from both cases, and none with tumour
    expected = sum(1 for z in range(20) if (img[:, :, z] > 0).any() and z not in tumour_slices)
    assert len(ds) <= 2 * expected
    assert len(ds) >= 2 * (expected - 2)
    assert ds.x.max() < 6 and ds.x.min() >= -3.5  # p90 normalisation


def test_train_loss_goes_down_and_resumes(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = ["--train", str(tiny_data), "--preset", "tiny", "--net", "first", "--steps", "30",
            "--batch", "8", "--lr", "3e-3", "--out", str(run), "--save-every", "0",
            "--threads", "1"]
    train.main(args)
    rows = list(csv.DictReader(open(run / "first_log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert (run / "first_loss.png").stat().st_size > 1000
    ck = train.load_checkpoint(run / "first.ckpt")
    assert ck["step"] == 30
    train.main([*args[:-4], "--steps", "35", "--resume", "--save-every", "0"])
    assert train.load_checkpoint(run / "first.ckpt")["step"] == 35
    rows = list(csv.DictReader(open(run / "first_log.csv")))
    assert [int(r["step"]) for r in rows][-5:] == [31, 32, 33, 34, 35]
    # a checkpoint older than the log (a crash between saves): the log is cut back to it
    with open(run / "first_log.csv", "a") as f:
        f.write("36,0.1,,0.001,1.0\n37,0.1,,0.001,1.0\n")
    train.main([*args[:-4], "--steps", "36", "--resume", "--save-every", "0"])
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "first_log.csv"))]
    assert steps == list(range(1, 37))


def test_no_guidance_ablation_is_recorded(tiny_data, tmp_path):
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "masked", "--steps", "2",
                "--batch", "2", "--out", str(tmp_path), "--threads", "1", "--no-guidance"])
    import json

    extra = json.loads(train.load_checkpoint(tmp_path / "masked.ckpt")["extra"])
    assert extra["masked_guidance"] is False


def test_leftover_augmentation_adds_a_rim_to_image_and_mask(tiny_data, tmp_path):
    data = SliceSet.load(tiny_data)
    sampler = train.MaskSampler(size=data.x.shape[-1])
    plain = train.Batcher(data, "masked", sampler, 15.0, seed=0)
    aug = train.Batcher(data, "masked", sampler, 15.0, seed=0, leftover_prob=1.0)
    x, brain = data.x[:8], data.brain[:8]
    xa, ba = aug._leftover(x, brain)
    assert np.array_equal(x, data.x[:8]) and np.array_equal(brain, data.brain[:8])  # copies
    grown = ba & ~brain
    assert grown.any() and np.array_equal(ba & brain, brain)
    assert np.array_equal(xa[brain], x[brain])  # the brain itself is untouched
    assert np.all(xa[grown] > -3.0)  # the rim is tissue, not background
    assert plain.leftover_prob == 0.0
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "masked", "--steps", "2",
                "--batch", "2", "--out", str(tmp_path), "--threads", "1",
                "--leftover-prob", "0.5"])
    import json

    extra = json.loads(train.load_checkpoint(tmp_path / "masked.ckpt")["extra"])
    assert extra["leftover_prob"] == 0.5


def test_masked_and_baseline_nets_train(tiny_data, tmp_path):
    for net in ("masked", "dae", "ae"):
        train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", net, "--steps", "3",
                    "--batch", "4", "--out", str(tmp_path), "--threads", "1"])
        assert train.load_checkpoint(tmp_path / f"{net}.ckpt")["step"] == 3


def test_calibration_on_known_distributions():
    rng = np.random.default_rng(0)
    errs = rng.uniform(0, 1, (50, 32, 32))
    masks = np.zeros_like(errs, bool)
    masks[:, :16] = True
    errs[~masks] = 100.0  # outside the masks must not count
    assert tau_from_masked_errors(errs, masks, 80) == pytest.approx(0.8, abs=0.01)
    brains = np.ones_like(errs, bool)
    e = rng.exponential(1.0, errs.shape)
    assert threshold_from_healthy(e, brains, 0.001) == pytest.approx(np.log(1000), rel=0.1)
    with pytest.raises(ValueError):
        threshold_from_healthy(e, brains, 0.0)


def test_metrics_on_hand_made_cases():
    gt = np.zeros((20, 20), bool)
    gt[5:10, 5:10] = True  # 25 px
    pred = np.zeros_like(gt)
    pred[5:10, 5:15] = True  # 50 px, 25 correct
    assert dice(pred, gt) == pytest.approx(2 * 25 / 75)
    assert sensitivity(pred, gt) == 1.0 and precision(pred, gt) == 0.5
    assert dice(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert np.isnan(sensitivity(pred, np.zeros_like(gt)))
    assert size_stratum(150) == "small" and size_stratum(500) == "medium"
    assert size_stratum(900) == "large"
    two = gt.copy()
    two[15:18, 15:18] = True
    assert lesion_detection(pred, two) == (1, 2)
    x = np.random.default_rng(0).normal(size=(32, 32))
    brain = np.ones_like(x, bool)
    assert ssim_normal(x, x, brain, np.zeros_like(brain)) == pytest.approx(1.0)
    noisy = x + np.random.default_rng(1).normal(scale=1.0, size=x.shape)
    assert ssim_normal(noisy, x, brain, np.zeros_like(brain)) < 0.8


def test_best_threshold_dice_is_exact():
    rng = np.random.default_rng(3)
    for trial in range(20):
        score = rng.integers(0, 6, size=(9, 11)).astype(np.float32)  # many ties
        gt = rng.random(score.shape) < 0.3
        region = rng.random(score.shape) < 0.8 if trial % 2 else None
        inside = np.ones_like(gt) if region is None else region
        cuts = np.r_[np.unique(score[inside]) - 0.5, score.max() + 1]
        brute = max(dice((score > t) & inside, gt) for t in cuts)
        best, t = best_threshold_dice(score, gt, region)
        assert best == pytest.approx(brute)
        assert dice((score > t) & inside, gt) == pytest.approx(best)
    # a lesion of 0.1 % of the volume (a small lesion in a brain): a sweep over quantiles
    # 0.5–0.9999 in 200 steps, as the harness had before, misses its cut; the exact sweep finds it
    gt = np.zeros((40, 100, 100), bool)
    gt[20, 40:60, 40:60] = True  # 400 of 400,000 voxels
    score = rng.normal(size=gt.shape) + 12.0 * gt  # separable: the best cut has Dice 1
    best, t = best_threshold_dice(score, gt)
    old = max(dice(score > c, gt) for c in np.quantile(score, np.linspace(0.5, 0.9999, 200)))
    assert best == pytest.approx(1.0) and old < 0.6
    assert best_threshold_dice(score, np.zeros_like(gt)) == (1.0, pytest.approx(score.max()))


def test_baseline_maps_count_the_card_polarity():
    import torch

    from training.evaluate import baseline_error

    class Brighter(torch.nn.Module):  # reconstructs every pixel 1.0 too bright
        def forward(self, x):
            return x + 1.0

    x = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    brain = np.zeros(x.shape, bool)
    brain[:, 2:6, 2:6] = True
    both = baseline_error(Brighter(), x, brain)
    assert np.allclose(both, brain * 1.0)
    assert np.array_equal(baseline_error(Brighter(), x, brain, "dark"), both)
    assert not baseline_error(Brighter(), x, brain, "bright").any()


def test_two_process_ddp_training_with_torchrun(tiny_data, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "-m", "training.train", "--train", str(tiny_data), "--preset", "tiny", "--net",
         "masked", "--steps", "3", "--batch", "2", "--out", str(tmp_path), "--threads", "1"],
        capture_output=True, text=True, cwd=root, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "batch 2×2" in proc.stderr
    assert train.load_checkpoint(tmp_path / "masked.ckpt")["step"] == 3


def test_init_from_a_bundle_starts_from_its_weights(tiny_data, tmp_path):
    import torch

    from napari_itermask.models import save_bundle
    from conftest import perturbed_bundle

    src = perturbed_bundle()
    folder = save_bundle(src, tmp_path / "m")
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "masked", "--steps", "1",
                "--batch", "2", "--lr", "1e-12", "--out", str(tmp_path / "run"),
                "--threads", "1", "--init-from", str(folder)])
    got = train.load_checkpoint(tmp_path / "run" / "masked.ckpt")["model"]
    want = src.masked.state_dict()
    assert torch.allclose(got["out.weight"], want["out.weight"], atol=1e-6)
    assert got["out.weight"].abs().sum() > 0  # not the zero-initialised layer


def test_calibrate_writes_a_bundle_from_healthy_data_only(tiny_data, tmp_path):
    import torch

    from napari_itermask.models import load_bundle
    from training import calibrate

    run = tmp_path / "run"
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "both", "--steps", "2",
                "--batch", "2", "--out", str(run), "--threads", "1"])
    out = tmp_path / "bundle"
    calibrate.main(["--run", str(run), "--val", str(tiny_data), "--name", "t", "--modality",
                    "flair", "-o", str(out), "--max-slices", "5"])
    card = load_bundle(out).card
    assert card.trained and card.tau > 0 and card.threshold > 0
    assert card.threshold_derivation["slices"] == 5
    assert card.tau_derivation["slices"] == len(SliceSet.load(tiny_data))
    # the '-freq' ablation: only the masked net is retrained, f1 comes from an existing model
    nf = tmp_path / "nofreq"
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "masked", "--steps", "2",
                "--batch", "2", "--out", str(nf), "--threads", "1", "--no-guidance"])
    calibrate.main(["--run", str(nf), "--val", str(tiny_data), "--name", "nf", "--modality",
                    "flair", "-o", str(tmp_path / "nfb"), "--max-slices", "5",
                    "--first-from", str(out)])
    nfb = load_bundle(tmp_path / "nfb")
    assert nfb.card.masked_guidance is False
    for k, v in load_bundle(out).first.state_dict().items():
        assert torch.equal(nfb.first.state_dict()[k], v)
    # an unguided masked net never sees x_f, so its radius need not match f1's; a guided one must
    for guided, name in ((False, "nf25"), (True, "g25")):
        train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "masked", "--steps",
                    "1", "--batch", "2", "--out", str(tmp_path / name), "--threads", "1",
                    "--radius", "25"] + ([] if guided else ["--no-guidance"]))
    calibrate.main(["--run", str(tmp_path / "nf25"), "--val", str(tiny_data), "--name", "nf",
                    "--modality", "flair", "-o", str(tmp_path / "nf25b"), "--max-slices", "5",
                    "--first-from", str(out)])
    assert load_bundle(tmp_path / "nf25b").card.frequency_radius == card.frequency_radius == 15
    with pytest.raises(SystemExit, match="radius differs"):
        calibrate.main(["--run", str(tmp_path / "g25"), "--val", str(tiny_data), "--name", "g",
                        "--modality", "flair", "-o", str(tmp_path / "g25b"), "--max-slices", "5",
                        "--first-from", str(out)])
    assert not (tmp_path / "g25b").exists()
    # recalibrating an existing bundle with error smoothing keeps its weights
    calibrate.main(["--model", str(out), "--val", str(tiny_data), "--name", "ts", "--modality",
                    "flair", "-o", str(tmp_path / "smooth"), "--max-slices", "5",
                    "--smoothing", "1.5"])
    sm = load_bundle(tmp_path / "smooth")
    assert sm.card.error_smoothing == 1.5 and sm.card.name == "ts"
    assert sm.sha256 == load_bundle(out).sha256 and sm.card.threshold != card.threshold
    assert sm.card.training["recalibrated_from"].startswith(str(out))
    # a rim: the healthy rate is counted inside it, the card carries it, the loop applies it
    calibrate.main(["--model", str(out), "--val", str(tiny_data), "--name", "tr", "--modality",
                    "flair", "-o", str(tmp_path / "rim"), "--max-slices", "5", "--rim", "2"])
    rb = load_bundle(tmp_path / "rim")
    assert rb.card.error_rim == 2 and rb.card.threshold_derivation["rim_px"] == 2
    assert rb.card.tau == pytest.approx(card.tau) and rb.sha256 == load_bundle(out).sha256
    with pytest.raises(SystemExit, match="rim"):
        calibrate.main(["--model", str(out), "--val", str(tiny_data), "--name", "x",
                        "--modality", "flair", "-o", str(tmp_path / "x"), "--rim", "-1"])
    # a polarity: τ and the threshold read only the deviations of one sign (never more error)
    one_sided = {}
    for pol in ("bright", "dark"):
        calibrate.main(["--model", str(out), "--val", str(tiny_data), "--name", "tp",
                        "--modality", "flair", "-o", str(tmp_path / pol), "--max-slices", "5",
                        "--polarity", pol])
        one_sided[pol] = pb = load_bundle(tmp_path / pol)
        assert pb.card.error_polarity == pol and pb.card.tau_derivation["polarity"] == pol
        assert pb.card.tau <= card.tau and pb.sha256 == load_bundle(out).sha256
    assert min(b.card.tau for b in one_sided.values()) < card.tau
    with pytest.raises(SystemExit, match="t1 model|not t1"):
        calibrate.main(["--model", str(out), "--val", str(tiny_data), "--name", "x",
                        "--modality", "t1", "-o", str(tmp_path / "x")])
    # a set with lesion labels is refused
    s = SliceSet.load(tiny_data)
    s.label = np.zeros_like(s.brain)
    s.label[0, 0, 0] = True
    s.save(tmp_path / "lesioned.npz")
    with pytest.raises(SystemExit, match="healthy"):
        calibrate.main(["--run", str(run), "--val", str(tmp_path / "lesioned.npz"), "--name",
                        "t", "--modality", "flair", "-o", str(tmp_path / "b2")])


def _grid_bundle(seed: int, guidance: bool = True):
    from conftest import perturbed_bundle

    b = perturbed_bundle(seed=seed)
    b.card.grid_size, b.card.pixel_size_mm, b.card.min_brain_pixels = 64, 3.75, 50
    b.card.masked_guidance = guidance
    return b


def test_evaluate_prints_all_methods_side_by_side(tiny_data, tmp_path):
    import json

    from napari_itermask.models import save_bundle
    from training import evaluate

    model = save_bundle(_grid_bundle(0), tmp_path / "m")
    one_sided = _grid_bundle(0)
    one_sided.card.error_polarity = "bright"
    bright = save_bundle(one_sided, tmp_path / "bright")
    nofreq = save_bundle(_grid_bundle(1, guidance=False), tmp_path / "nf")
    for net in ("ae", "dae"):
        train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", net, "--steps", "2",
                    "--batch", "2", "--out", str(tmp_path / "base"), "--threads", "1"])
    # a hand-made case: a bright ball that any intensity threshold finds exactly
    data = ball_cases(tmp_path / "cases")
    out = tmp_path / "res"
    evaluate.main(["--model", str(model), "--val", str(tiny_data), "--modality", "flair",
                   "--data", str(data), "--baselines", str(tmp_path / "base"),
                   "--no-freq-model", str(nofreq), "--variant", f"second copy={model}",
                   "--variant", f"bright={bright}", "--rising-tau", "0.5", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    row = res["cases"][0]
    methods = {"itermask", "itermask -freq", "second copy", "bright", "no-iteration", "AE",
               "DAE", "intensity"}
    assert methods <= set(res["thresholds"]) and methods <= set(row)
    for m in methods:
        assert 0.0 <= row[m]["dice"] <= 1.0 and 0.0 <= row[m]["best_dice"] <= 1.0
        # the oracle sweeps every threshold, the honest one included
        assert row[m]["best_dice"] >= row[m]["dice"] - 1e-12
    assert row["intensity"]["dice"] > 0.8 and row["intensity"]["detected"] == 1
    assert "best_iteration_dice" in row["itermask"]
    trace = row["itermask"]["masked_share"]
    assert trace["lesion"][0] == 1.0 and trace["healthy"][0] == 1.0  # before iteration 1: brain
    assert all(a >= b for a, b in zip(trace["healthy"], trace["healthy"][1:]))  # only shrinks
    assert "still masked after iteration" in (out / "results.md").read_text()
    assert all((out / f).stat().st_size > 0 for f in ("cases.png", "typical.png", "dice.png"))
    md = (out / "results.md").read_text()
    assert "![](typical.png)" in md
    assert all(f"| {m} |" in md for m in methods)
    # a variant is just another bundle on the same cases: the same model scores the same
    assert row["second copy"] == {k: v for k, v in row["itermask"].items()
                                  if k in row["second copy"]}
    for bad in (str(model), f"DAE={model}"):  # no label; a label another method uses
        with pytest.raises(SystemExit, match="LABEL=MODEL"):
            evaluate.main(["--model", str(model), "--val", str(tiny_data), "--modality",
                           "flair", "--data", str(data), "--variant", bad, "--out", str(out)])
    # --baseline-polarity: the AE and DAE maps (and their healthy thresholds) count only that
    # sign, as the paper's best DAE variants do; IterMask²'s own error is untouched
    thr = {}
    for pol in ("bright", "dark"):
        o = tmp_path / f"res_{pol}"
        evaluate.main(["--model", str(model), "--val", str(tiny_data), "--modality", "flair",
                       "--data", str(data), "--baselines", str(tmp_path / "base"),
                       "--baseline-polarity", pol, "--protocol", "clinical", "--out", str(o)])
        thr[pol] = json.loads((o / "results.json").read_text())["thresholds"]
    assert thr["bright"]["DAE"] != thr["dark"]["DAE"] and thr["bright"]["AE"] != thr["dark"]["AE"]
    assert thr["bright"]["itermask"] == thr["dark"]["itermask"] == res["thresholds"]["itermask"]
    # the -freq slot refuses a model that was trained with x_f
    with pytest.raises(SystemExit, match="guidance"):
        evaluate.main(["--model", str(model), "--val", str(tiny_data), "--modality", "flair",
                       "--data", str(data), "--no-freq-model", str(model), "--out", str(out)])


def test_evaluate_can_give_validation_cases_skull_strip_leftovers():
    import argparse

    from training import evaluate

    def first(leftover):
        ns = argparse.Namespace(data=None, split="val", n=1, modality="flair", voxel_size=3.0,
                                leftover=leftover)
        return next(evaluate.test_cases(ns))

    name, clean, gt = first(False)
    name2, dirty, gt2 = first(True)
    assert name == name2 and np.array_equal(gt, gt2)
    assert (dirty.data > 0).sum() > (clean.data > 0).sum()
    md = evaluate.render({"modality": "flair", "model": "m", "model_sha256": "0" * 64,
                          "fpr": 0.001, "split": "val", "leftover": True, "cases": [
                              {"mean_iterations": 1.0, "itermask": {
                                  "dice": 0.5, "sens": 0.5, "prec": 0.5, "slice_dice": 0.5,
                                  "size_dice": {}, "detected": 1, "lesions": 1,
                                  "best_dice": 0.5, "ssim_normal": 0.9}}]}, ["itermask"])
    assert "1 val volumes with skull-strip leftovers," in md.splitlines()[0]


def test_dae_noise_sign_is_its_intensity_prior():
    from training.baselines import coarse_noise

    shape = (3, 1, 32, 32)
    both = coarse_noise(shape, np.random.default_rng(0))
    pos = coarse_noise(shape, np.random.default_rng(0), sign="positive")
    neg = coarse_noise(shape, np.random.default_rng(0), sign="negative")
    assert (both < 0).any() and (both > 0).any()
    assert (pos >= 0).all() and (neg <= 0).all() and pos.abs().max() > 0.1
    # the same draws, folded: the magnitudes agree wherever no sign change blurs them
    assert torch.allclose(pos, -neg)
    with pytest.raises(ValueError, match="noise"):
        coarse_noise(shape, np.random.default_rng(0), sign="up")


def test_dae_trains_with_positive_noise_and_records_it(tiny_data, tmp_path):
    from training.train import load_checkpoint

    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "dae", "--steps", "2",
                "--batch", "2", "--dae-noise", "positive", "--out", str(tmp_path),
                "--threads", "1"])
    state = load_checkpoint(tmp_path / "dae.ckpt")
    assert json.loads(state["extra"])["dae_noise"] == "positive"


def test_training_cost_ledger_adds_up_across_init_from_and_resume(tiny_data, tmp_path,
                                                                 monkeypatch):
    """The card carries cumulative steps, samples seen and CPU hours: a run started from a
    bundle adds its own segment to the bundle's history; --resume extends that segment."""
    from napari_itermask.models import save_bundle
    from conftest import perturbed_bundle
    from training import calibrate

    src = perturbed_bundle()
    # an old card: only the run's own steps and batch, no CPU time
    src.card.training = {"masked": {"steps": 700, "batch": 16}, "first": {"steps": 500,
                                                                         "batch": 16}}
    folder = save_bundle(src, tmp_path / "m")
    run = tmp_path / "run"
    base = ["--train", str(tiny_data), "--preset", "tiny", "--net", "masked", "--batch", "2",
            "--out", str(run), "--threads", "1", "--save-every", "0"]
    train.main([*base, "--steps", "3", "--init-from", str(folder)])
    extra = json.loads(train.load_checkpoint(run / "masked.ckpt")["extra"])
    hist = extra["history"]
    assert [h["steps"] for h in hist] == [700, 3]
    assert hist[0]["cpu_hours"] is None and hist[1]["cpu_hours"] > 0
    cum = extra["cumulative"]
    assert cum["steps"] == 703 and cum["samples_seen"] == 700 * 16 + 3 * 2
    assert cum["cpu_hours_complete"] is False
    train.main([*base, "--steps", "5", "--resume"])
    extra2 = json.loads(train.load_checkpoint(run / "masked.ckpt")["extra"])
    assert [h["steps"] for h in extra2["history"]] == [700, 5]
    assert extra2["history"][1]["cpu_hours"] >= hist[1]["cpu_hours"]
    # resumed in another precision: the fp32 steps so far close their segment (on a CPU that
    # has bf16; elsewhere train runs fp32, tested below)
    monkeypatch.setattr(prec_mod, "cpu_flags", lambda: {"avx512_bf16"})
    train.main([*base, "--steps", "7", "--resume", "--precision", "bf16"])
    extra3 = json.loads(train.load_checkpoint(run / "masked.ckpt")["extra"])
    assert [(h["steps"], h["precision"]) for h in extra3["history"]] == [
        (700, "fp32"), (5, "fp32"), (2, "bf16")]
    # calibrate puts it in the card; a bundle made from that card continues the ledger
    out = tmp_path / "b"
    calibrate.main(["--run", str(run), "--val", str(tiny_data), "--name", "t", "--modality",
                    "flair", "-o", str(out), "--max-slices", "3", "--first-from", str(folder)])
    from napari_itermask.models import load_bundle

    card = load_bundle(out).card
    assert card.training["masked"]["cumulative"]["steps"] == 707
    prior = train.prior_history(card.training, "masked", "t")
    assert [h["steps"] for h in prior] == [700, 5, 2]


def test_bf16_training_step_trains_float32_weights(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prec_mod, "cpu_flags", lambda: {"avx512_bf16"})
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "first", "--steps", "3",
                "--batch", "2", "--out", str(tmp_path), "--threads", "1", "--precision",
                "bf16"])
    ck = train.load_checkpoint(tmp_path / "first.ckpt")
    assert all(v.dtype in (torch.float32, torch.int64) for v in ck["model"].values())
    assert json.loads(ck["extra"])["precision"] == "bf16"
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 1, 8, 8)
    before = net.weight.detach().clone()
    loss = train.train_step(net, opt, x, x, "bf16")
    assert loss.dtype == torch.float32 and not torch.equal(before, net.weight)


def test_bf16_on_a_cpu_without_it_trains_fp32_and_says_so(tiny_data, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.setattr(prec_mod, "cpu_flags", lambda: {"avx2", "fma"})
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "first", "--steps", "2",
                "--batch", "2", "--out", str(tmp_path), "--threads", "1", "--precision",
                "bf16"])
    extra = json.loads(train.load_checkpoint(tmp_path / "first.ckpt")["extra"])
    assert extra["precision"] == "fp32"
    assert [h["precision"] for h in extra["history"]] == ["fp32"]
    assert "no native bf16" in capsys.readouterr().err


def test_a_stop_signal_saves_the_checkpoint_and_starts_no_further_net(tiny_data, tmp_path,
                                                                    monkeypatch):
    import os
    import signal

    calls = {"n": 0}
    real = train.train_step

    def step_then_signal(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(train, "train_step", step_then_signal)
    monkeypatch.setattr(train, "STOPPED", False)
    train.main(["--train", str(tiny_data), "--preset", "tiny", "--net", "both", "--steps", "50",
                "--batch", "2", "--out", str(tmp_path), "--threads", "1", "--save-every",
                "1000"])
    assert train.load_checkpoint(tmp_path / "first.ckpt")["step"] == 2
    assert not (tmp_path / "masked.ckpt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL



def test_calibrate_refuses_another_contrasts_weights_unless_asked(tiny_data, tmp_path):
    from napari_itermask.models import load_bundle, save_bundle
    from training import calibrate
    from conftest import perturbed_bundle

    src = save_bundle(perturbed_bundle(), tmp_path / "flair")  # a FLAIR model
    args = ["--model", str(src), "--val", str(tiny_data), "--name", "t1ce", "--modality",
            "t1ce", "--max-slices", "3"]
    with pytest.raises(SystemExit, match="--other-contrast"):
        calibrate.main([*args, "-o", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
    calibrate.main([*args, "-o", str(tmp_path / "b"), "--other-contrast"])
    card = load_bundle(tmp_path / "b").card
    assert card.modality == "t1ce" and card.training["weights_trained_on_contrast"] == "flair"


def test_ledger_counts_gpu_hours_apart_from_cpu_hours():
    """Segments trained on a GPU carry their wall time as GPU hours; CPU segments add none."""
    hist = [{"steps": 100, "batch": 16, "cpu_hours": 0.5, "device": "cpu"},
            {"steps": 4000, "batch": 16, "cpu_hours": 0.1, "device": "cuda", "gpu_hours": 0.07},
            {"steps": 10, "batch": 8, "cpu_hours": None}]
    cum = train.cumulative(hist)
    assert cum["steps"] == 4110 and cum["samples_seen"] == 100 * 16 + 4000 * 16 + 80
    assert cum["cpu_hours"] == 0.6 and cum["cpu_hours_complete"] is False
    assert cum["gpu_hours"] == 0.07
    assert train.cumulative(hist[:1])["gpu_hours"] == 0.0


def test_resuming_on_another_device_closes_the_segment(tiny_data, tmp_path):
    """Steps trained on a GPU and then continued on a CPU are two segments, so GPU hours never
    count CPU steps (here the first segment is marked as a GPU's in its checkpoint)."""
    run = tmp_path / "run"
    base = ["--train", str(tiny_data), "--preset", "tiny", "--net", "masked", "--batch", "2",
            "--out", str(run), "--threads", "1", "--save-every", "0", "--device", "cpu"]
    train.main([*base, "--steps", "2"])
    ckpt = run / "masked.ckpt"
    state = train.load_checkpoint(ckpt)
    extra = json.loads(state["extra"])
    extra["history"][-1].update(device="cuda", gpu_hours=0.25)
    state["extra"] = json.dumps(extra)
    torch.save(state, ckpt)
    train.main([*base, "--steps", "3", "--resume"])
    hist = json.loads(train.load_checkpoint(ckpt)["extra"])["history"]
    assert [(h["steps"], h["device"]) for h in hist] == [(2, "cuda"), (1, "cpu")]
    assert train.cumulative(hist)["gpu_hours"] == 0.25

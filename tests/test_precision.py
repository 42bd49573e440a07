"""Inference precision: detection, the card's per-precision calibrations, refusal and fallback,
the sidecar's record and replay, calibrate --precision and evaluate in a card's precision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _cli_support import lines, run_cli
from conftest import ball_cases, needs_bf16_kernels, perturbed_bundle
from napari_itermask.core import precision as prec_mod
from napari_itermask.core.precision import cpu_flags, usable_precision
from napari_itermask.errors import ModelError
from napari_itermask.models import ModelCard, new_card, save_bundle
from napari_itermask.models.card import options_note
from napari_itermask.params import ParamsError, RunParams
from napari_itermask.pipeline import Job, segment_scan
from napari_itermask.volume import load_scan

BF16 = {"tau": 0.6, "threshold": 2.5, "tau_derivation": {"precision": "bf16"},
        "threshold_derivation": {"precision": "bf16"}}


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(prec_mod, "cpu_flags", lambda *a: {"avx512f", "avx512_bf16"})


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(prec_mod, "cpu_flags", lambda *a: {"avx2"})


def bf16_bundle(seed=0):
    b = perturbed_bundle(seed=seed)
    b.card.calibrations = {"bf16": dict(BF16)}
    return b


def test_cpu_flags_and_the_precision_that_runs(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == set()
    assert usable_precision("fp32", flags=set()) == ("fp32", None)
    assert usable_precision("bf16", flags={"amx_bf16"}) == ("bf16", None)
    used, notice = usable_precision("bf16", flags={"avx2"})
    assert used == "fp32" and "no native bf16" in notice and "\n" not in notice
    assert usable_precision("bf16", "mps", flags={"avx512_bf16"})[0] == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        usable_precision("int8")


def test_old_cards_load_unchanged_and_run_fp32():
    old = new_card("m", "flair", tau=0.3, threshold=1.2).to_dict()
    del old["precision"], old["calibrations"]  # a card written before precisions existed
    card = ModelCard.from_dict(old)
    assert card.precision == "fp32" and card.calibrations == {}
    assert card.calibration()["tau"] == 0.3 and card.calibration("fp32")["threshold"] == 1.2
    assert RunParams().resolve(card).precision == "fp32"
    assert "bf16" not in options_note(card)
    with pytest.raises(ModelError, match="no bf16 calibration"):
        card.calibration("bf16")


@pytest.mark.parametrize("change, match", [
    ({"precision": "fp16"}, "precision must be one of"),
    ({"precision": "bf16"}, "no entry in calibrations"),
    ({"calibrations": {"bf16": {"tau": 0.5}}}, "finite threshold"),
    ({"calibrations": {"bf16": {"tau": float("nan"), "threshold": 1.0}}}, "finite tau"),
    ({"calibrations": {"fp32": {"tau": 0.5, "threshold": 1.0}}}, "calibrations holds"),
    ({"calibrations": {"bf16": [0.5, 1.0]}}, "JSON object"),
])
def test_card_refuses_bad_precision_fields(change, match):
    d = {**new_card("m", "flair").to_dict(), **change}
    with pytest.raises(ModelError, match=match):
        ModelCard.from_dict(d)


def test_a_bf16_card_resolves_to_its_bf16_calibration():
    card = bf16_bundle().card
    card.precision = "bf16"
    card = ModelCard.from_dict(card.to_dict())
    p = RunParams(precision="bf16").resolve(card)
    assert (p.precision, p.tau, p.threshold) == ("bf16", 0.6, 2.5)
    # bf16 only when asked for: a run of a bf16-calibrated card is fp32 by default
    p = RunParams().resolve(card)
    assert (p.precision, p.tau, p.threshold) == ("fp32", card.tau, card.threshold)
    assert RunParams(precision="bf16", tau=0.9).resolve(card).tau == 0.9  # a given τ wins
    assert "also calibrated in bf16" in options_note(card)
    with pytest.raises(ParamsError, match="precision must be one of"):
        RunParams(precision="fp64")


def test_bf16_is_refused_for_a_model_without_a_bf16_calibration(phantom_nifti, tmp_path,
                                                                 capsys, native_bf16):
    scan = load_scan(phantom_nifti[0])
    with pytest.raises(ParamsError, match="no bf16 calibration"):
        Job.create(scan, perturbed_bundle(), RunParams(precision="bf16"))
    model = save_bundle(perturbed_bundle(), tmp_path / "m")
    out = tmp_path / "out" / "lab.nii.gz"
    code, _, err = run_cli(capsys, "segment", phantom_nifti[0], "-o", out, "--model", model,
                           "--precision", "bf16", "--max-iter", "2", "-q")
    # the model's own lines, then one error line, no traceback, nothing written
    assert code != 0 and "Traceback" not in err
    assert lines(err)[-1].startswith("itermask: error: model 'tiny' has no bf16 calibration")
    assert sum(ln.startswith("itermask: error") for ln in lines(err)) == 1
    assert not out.exists() and not out.with_name("lab.json").exists()


@needs_bf16_kernels
def test_bf16_run_uses_its_calibration_records_it_and_replays(phantom_nifti, native_bf16):
    scan = load_scan(phantom_nifti[0])
    b = bf16_bundle()
    res = segment_scan(scan, b, RunParams(precision="bf16", max_iter=3, seed=1))
    assert res.params.precision == "bf16" and res.provenance["precision"] == "bf16"
    assert (res.params.tau, res.params.threshold) == (0.6, 2.5)
    assert res.job.config.tau == 0.6 and res.provenance["params"]["precision"] == "bf16"
    again = segment_scan(scan, b, RunParams.from_dict(res.provenance["params"]))
    assert np.array_equal(again.labels, res.labels) and np.array_equal(again.error, res.error)
    # bf16 really ran: the same τ in fp32 gives other error maps
    fp32 = segment_scan(scan, b, RunParams(precision="fp32", tau=0.6, max_iter=3, seed=1))
    assert fp32.provenance["precision"] == "fp32"
    assert not np.array_equal(fp32.error, res.error)
    assert np.abs(fp32.error - res.error).max() < 0.25 * max(1.0, float(fp32.error.max()))


def test_bf16_without_native_support_runs_fp32_with_a_notice(phantom_nifti, tmp_path, capsys,
                                                            no_bf16):
    scan = load_scan(phantom_nifti[0])
    b = bf16_bundle()
    job = Job.create(scan, b, RunParams(precision="bf16", max_iter=2))
    assert job.params.precision == "fp32" and job.config.tau == b.card.tau
    assert len(job.notices) == 1 and "running in fp32" in job.notices[0]
    res = segment_scan(scan, b, RunParams(precision="bf16", max_iter=2))
    assert res.provenance["precision"] == "fp32"
    assert any("no native bf16" in w for w in res.provenance["warnings"])
    model = save_bundle(bf16_bundle(), tmp_path / "m")
    out = tmp_path / "lab.nii.gz"
    code, _, err = run_cli(capsys, "segment", phantom_nifti[0], "-o", out, "--model", model,
                           "--precision", "bf16", "--max-iter", "2")
    assert code == 0 and "note: bf16 was asked for" in err
    side = json.loads(out.with_name("lab.json").read_text())
    assert side["precision"] == "fp32" and side["params"]["precision"] == "fp32"


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    from training import prepare

    d = tmp_path_factory.mktemp("data")
    prepare.main(["synth", "--modality", "flair", "--split", "train", "--n", "2",
                  "--voxel-size", "3.0", "-o", str(d / "val.npz"), "--grid", "64",
                  "--pixel-size", "3.75", "--min-brain", "50"])
    return d / "val.npz"


def _grid_bundle(seed=0):
    b = perturbed_bundle(seed=seed)
    b.card.grid_size, b.card.pixel_size_mm, b.card.min_brain_pixels = 64, 3.75, 50
    return b


@needs_bf16_kernels
def test_calibrate_precision_bf16_records_both_and_evaluate_runs_each(tiny_val, tmp_path,
                                                                       native_bf16, monkeypatch):
    from napari_itermask.models import load_bundle
    from training import calibrate, evaluate

    src = save_bundle(_grid_bundle(), tmp_path / "src")
    out = tmp_path / "b16"
    args = ["--model", str(src), "--val", str(tiny_val), "--name", "b16", "--modality", "flair",
            "--max-slices", "4", "--threads", "1"]
    calibrate.main([*args, "-o", str(out), "--precision", "bf16"])
    card = load_bundle(out).card
    cal = card.calibrations["bf16"]
    assert card.precision == "bf16" and cal["tau"] > 0 and cal["threshold"] > 0
    assert (cal["tau"], cal["threshold"]) != (card.tau, card.threshold)
    assert cal["threshold_derivation"]["precision"] == "bf16"
    assert cal["threshold_derivation"]["slices"] == card.threshold_derivation["slices"] == 4
    # recalibrating without --precision drops the bf16 calibration (it would be stale)
    calibrate.main(["--model", str(out), *args[2:], "-o", str(tmp_path / "f32")])
    again = load_bundle(tmp_path / "f32").card
    assert again.precision == "fp32" and again.calibrations == {}
    assert again.tau == pytest.approx(card.tau, rel=1e-6)  # the same fp32 calibration
    # evaluate runs --model and each variant in its card's precision, or the one named
    data = ball_cases(tmp_path / "cases")
    res_dir = tmp_path / "res"
    evaluate.main(["--model", str(src), "--val", str(tiny_val), "--modality", "flair",
                   "--data", str(data), "--protocol", "clinical", "--variant", f"b={out}",
                   "--variant", f"f={out}@fp32", "--out", str(res_dir), "--threads", "1"])
    res = json.loads((res_dir / "results.json").read_text())
    assert res["precision"] == {"itermask": "fp32", "b": "bf16", "f": "fp32"}
    assert res["thresholds"]["b"] == cal["threshold"]
    assert res["thresholds"]["f"] == card.threshold
    with pytest.raises(SystemExit, match="no bf16 calibration"):
        evaluate.main(["--model", str(src), "--val", str(tiny_val), "--modality", "flair",
                       "--data", str(data), "--precision", "bf16", "--out", str(res_dir)])
    # a CPU without native bf16: calibrating in bf16 is refused, not emulated
    monkeypatch.setattr(prec_mod, "cpu_flags", lambda *a: set())
    with pytest.raises(SystemExit, match="no native bf16"):
        calibrate.main([*args, "-o", str(tmp_path / "x"), "--precision", "bf16"])


@needs_bf16_kernels
def test_add_precision_keeps_the_fp32_card_and_adds_bf16_only(tiny_val, tmp_path, native_bf16,
                                                             monkeypatch):
    from napari_itermask.models import load_bundle
    from training import calibrate

    src = save_bundle(_grid_bundle(seed=3), tmp_path / "src")
    args = ["--val", str(tiny_val), "--name", "g", "--modality", "flair", "--threads", "1"]
    # an fp32 calibration with non-default settings, as a published card has
    calibrate.main(["--model", str(src), *args, "--max-slices", "4", "--tau-percentile", "70",
                    "--fpr", "0.01", "--seed", "5", "--polarity", "bright",
                    "-o", str(tmp_path / "f32")])
    f32 = load_bundle(tmp_path / "f32")
    calibrate.main(["--model", str(tmp_path / "f32"), *args, "--add-precision", "bf16",
                    "-o", str(tmp_path / "both")])
    both = load_bundle(tmp_path / "both")
    before, after = f32.card.to_dict(), both.card.to_dict()
    cal = after.pop("calibrations")["bf16"]
    assert before.pop("calibrations") == {}
    assert after == before  # weights, options, fp32 τ and threshold, default precision: unchanged
    assert both.card.precision == "fp32"
    # the bf16 calibration used the card's own settings, not calibrate's defaults
    assert cal["tau_derivation"]["percentile"] == 70.0
    td = cal["threshold_derivation"]
    assert td["false_positive_rate"] == 0.01 and td["slices"] == 4 and td["seed"] == 5
    assert td["precision"] == "bf16" and cal["tau_derivation"]["precision"] == "bf16"
    # ... and gives what a full bf16 calibration with those settings gives
    calibrate.main(["--model", str(src), *args, "--max-slices", "4", "--tau-percentile", "70",
                    "--fpr", "0.01", "--seed", "5", "--polarity", "bright", "--precision",
                    "bf16", "-o", str(tmp_path / "full")])
    full = load_bundle(tmp_path / "full").card.calibrations["bf16"]
    assert (cal["tau"], cal["threshold"]) == (full["tau"], full["threshold"])
    # refused: other validation data, a run folder, a name that is not the card's
    other = tmp_path / "other.npz"
    from training.common import SliceSet

    v = SliceSet.load(tiny_val)
    SliceSet(v.x[:3], v.brain[:3], {**v.meta, "seeds": [1, 2]}).save(other)
    with pytest.raises(SystemExit, match="not the data"):
        calibrate.main(["--model", str(tmp_path / "f32"), *args[2:], "--val", str(other),
                        "--add-precision", "bf16", "-o", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="goes with --model"):
        calibrate.main(["--run", str(tmp_path), *args, "--add-precision", "bf16",
                        "-o", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="must be its own"):
        calibrate.main(["--model", str(tmp_path / "f32"), *args[:2], "--name", "other",
                        *args[4:], "--add-precision", "bf16", "-o", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()

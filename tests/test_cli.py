"""`itermask` end to end on generated NIfTI files with a non-trivial affine."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_itermask import __version__
from conftest import phantom
from _cli_support import assert_one_line_error, run_cli


def test_segment_end_to_end(tmp_path, capsys, phantom_nifti, tiny_model_dir):
    scan_p, _, aff = phantom_nifti
    out = tmp_path / "out" / "lesions.nii.gz"
    out.parent.mkdir()
    code, stdout, err = run_cli(capsys, "segment", scan_p, "-o", out, "--model", tiny_model_dir,
                                "-q", "--seed", 3, "--save-error-map")
    assert code == 0, err
    img = nib.load(str(out))
    src = nib.load(str(scan_p))
    assert img.shape == src.shape
    assert np.allclose(img.affine, aff)
    assert img.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1}
    side = json.loads((tmp_path / "out" / "lesions.json").read_text())
    for key in ("input_sha256", "model", "model_sha256", "tau", "threshold", "seed",
                "iterations_per_slice", "slices_skipped", "lesion_volume_ml", "lesion_count",
                "version"):
        assert key in side
    assert side["seed"] == 3 and side["version"] == __version__
    assert len(side["input_sha256"]) == 64
    assert (tmp_path / "out" / "lesions_error.nii.gz").exists()
    assert "lesion(s)" in stdout
    # deterministic for a seed
    out2 = tmp_path / "out" / "again.nii.gz"
    assert run_cli(capsys, "segment", scan_p, "-o", out2, "--model", tiny_model_dir, "-q",
                   "--seed", 3)[0] == 0
    assert np.array_equal(np.asarray(nib.load(str(out2)).dataobj), np.asarray(img.dataobj))


def test_threshold_changes_volume(tmp_path, capsys, phantom_nifti, tiny_model_dir):
    scan_p = phantom_nifti[0]
    vols = []
    for i, thr in enumerate((0.5, 50.0)):
        out = tmp_path / f"o{i}.nii.gz"
        assert run_cli(capsys, "segment", scan_p, "-o", out, "--model", tiny_model_dir, "-q",
                       "--threshold", thr)[0] == 0
        vols.append(json.loads((tmp_path / f"o{i}.json").read_text())["lesion_volume_ml"])
    assert vols[0] > vols[1]


def test_several_inputs_go_to_a_folder(tmp_path, capsys, phantom_nifti, tiny_model_dir):
    scan_p = phantom_nifti[0]
    other = tmp_path / "other.nii.gz"
    other.write_bytes(scan_p.read_bytes())
    code, _, err = run_cli(capsys, "segment", scan_p, other, "-o", tmp_path / "res",
                           "--model", tiny_model_dir, "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [
        "other_lesions.csv", "other_lesions.json", "other_lesions.nii.gz",
        "scan_lesions.csv", "scan_lesions.json", "scan_lesions.nii.gz", "summary.csv"]
    rows = (tmp_path / "res" / "summary.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows] == [["case", "status"], ["other", "ok"],
                                                ["scan", "ok"]]


def test_refuses_to_overwrite(tmp_path, capsys, phantom_nifti, tiny_model_dir):
    scan_p = phantom_nifti[0]
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "segment", scan_p, "-o", out, "--model", tiny_model_dir, "-q")
    assert_one_line_error(code, err)
    assert "overwrite" in err and out.read_bytes() == b"precious"
    code, _, err = run_cli(capsys, "segment", scan_p, "-o", out, "--model", tiny_model_dir, "-q",
                           "--overwrite")
    assert code == 0 and nib.load(str(out)).shape == nib.load(str(scan_p)).shape


def _bad_inputs(tmp_path):
    img, _ = phantom(shape=(20, 20, 10))
    aff = np.eye(4)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(good))
    cases = {}
    cases["missing"] = tmp_path / "missing.nii.gz"
    notnifti = tmp_path / "notnifti.nii.gz"
    notnifti.write_text("plain text, not an image")
    cases["not a NIfTI"] = notnifti
    txt = tmp_path / "scan.txt"
    txt.write_text("x")
    cases["wrong suffix"] = txt
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[:-200])
    cases["truncated"] = trunc
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([img] * 3, -1), aff), str(four))
    cases["4-D"] = four
    cplx = tmp_path / "cplx.nii.gz"
    nib.save(nib.Nifti1Image(img.astype(np.complex64), aff), str(cplx))
    cases["complex"] = cplx
    zero = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(img), aff), str(zero))
    cases["all zero"] = zero
    return good, cases


@pytest.mark.parametrize("which", ["missing", "not a NIfTI", "wrong suffix", "truncated", "4-D",
                                   "complex", "all zero"])
def test_bad_inputs_fail_cleanly(tmp_path, capsys, tiny_model_dir, which):
    _, cases = _bad_inputs(tmp_path)
    out = tmp_path / "out.nii.gz"
    code, _, err = run_cli(capsys, "segment", cases[which], "-o", out, "--model", tiny_model_dir,
                           "-q")
    assert_one_line_error(code, err)
    assert not out.exists() and not (tmp_path / "out.json").exists()
    assert not list(tmp_path.glob(".itermask-*"))


def test_unwritable_output_folder(tmp_path, capsys, tiny_model_dir):
    # (a missing folder is created: tests/test_cli_edges.py)
    good, _ = _bad_inputs(tmp_path)
    for target in ("/proc/itermask_out.nii.gz", "/proc/itermask_new/out.nii.gz"):
        code, _, err = run_cli(capsys, "segment", good, "-o", target, "--model", tiny_model_dir,
                               "-q")
        assert_one_line_error(code, err)
    assert not os.path.exists("/proc/itermask_new")


def test_bad_model_and_device(tmp_path, capsys):
    good, _ = _bad_inputs(tmp_path)
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04K\x01.")
    code, _, err = run_cli(capsys, "segment", good, "-o", tmp_path / "o.nii.gz", "--model", pt,
                           "-q")
    assert_one_line_error(code, err)
    assert "pickle" in err
    import torch

    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, "segment", good, "-o", tmp_path / "o.nii.gz",
                               "--device", "cuda", "-q")
        assert_one_line_error(code, err)
    assert not (tmp_path / "o.nii.gz").exists()


def test_nan_voxels_warn_but_work(tmp_path, capsys, tiny_model_dir):
    img, _ = phantom(shape=(20, 24, 10))
    img[img == 0] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(p))
    code, _, err = run_cli(capsys, "segment", p, "-o", tmp_path / "o.nii.gz", "--model",
                           tiny_model_dir, "-q")
    assert code == 0 and "NaN" in err


def test_brain_mask_option(tmp_path, capsys, phantom_nifti, tiny_model_dir):
    scan_p, _, aff = phantom_nifti
    data = np.asarray(nib.load(str(scan_p)).dataobj)
    half = (data > 0).astype(np.uint8)
    half[:, : data.shape[1] // 2] = 0
    mp = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(half, aff), str(mp))
    out = tmp_path / "o.nii.gz"
    code, _, err = run_cli(capsys, "segment", scan_p, "-o", out, "--model", tiny_model_dir, "-q",
                           "--brain-mask", mp, "--threshold", 0.0)
    assert code == 0, err
    lab = np.asarray(nib.load(str(out)).dataobj) > 0
    assert lab.any() and not (lab & (half == 0)).any()


def test_models_and_evaluate(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "unusable" not in out
    listed = [ln.split()[0] for ln in out.splitlines() if ln and not ln.startswith(" ")]
    assert {"flair", "t1", "t2"} <= set(listed)
    t1 = next(ln for ln in out.splitlines() if ln.startswith("t1 "))
    assert "dark deviations only" in t1  # the shipped T1 model's one-sided error is stated
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 2:4] = 1  # half of the lesion: Dice 2·32/(32+64) = 0.667
    for name, arr in (("p.nii.gz", pred), ("g.nii.gz", gt)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / name))
    code, out, _ = run_cli(capsys, "evaluate", "--pred", tmp_path / "p.nii.gz",
                           "--gt", tmp_path / "g.nii.gz")
    assert code == 0 and "0.667" in out and "0.500" in out and "1.000" in out


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "napari_itermask.cli", "segment",
                           str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o.nii.gz")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_segment_flags_choose_the_result_and_params_replay_it(tmp_path, capsys, phantom_nifti,
                                                               tiny_model_dir):
    """--tau, --first-unmask, --iteration and --result are recorded; --params replays them."""
    scan_p = phantom_nifti[0]
    a = tmp_path / "a.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", scan_p, "-o", a, "--model", tiny_model_dir,
                                "-q", "--tau", 0.3, "--first-unmask", 0.3, "--max-iter", 4,
                                "--iteration", 2, "--threshold", 1.0, "--seed", 5)
    assert code == 0, err
    assert "error of iteration 2 above 1" in stdout
    side = json.loads((tmp_path / "a.json").read_text())
    assert (side["tau"], side["first_unmask"], side["iteration"], side["seed"]) == (0.3, 0.3, 2, 5)
    assert side["result_source"] == "error" and side["iterations_run"] >= 2
    # the last iteration differs from the chosen one (else the choice would test nothing)
    last = tmp_path / "last.nii.gz"
    assert run_cli(capsys, "segment", scan_p, "-o", last, "--model", tiny_model_dir, "-q",
                   "--tau", 0.3, "--first-unmask", 0.3, "--max-iter", 4, "--threshold", 1.0,
                   "--seed", 5)[0] == 0
    labels_a = np.asarray(nib.load(str(a)).dataobj)
    assert not np.array_equal(labels_a, np.asarray(nib.load(str(last)).dataobj))
    # replay: the sidecar alone (its model path) gives the same labels
    b = tmp_path / "b.nii.gz"
    code, _, err = run_cli(capsys, "segment", scan_p, "-o", b, "--params", tmp_path / "a.json",
                           "-q")
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(nib.load(str(b)).dataobj), labels_a)
    assert json.loads((tmp_path / "b.json").read_text())["params"] == side["params"]
    # a flag overrides the sidecar's value: the mask of that iteration
    c = tmp_path / "c.nii.gz"
    assert run_cli(capsys, "segment", scan_p, "-o", c, "--params", tmp_path / "a.json", "-q",
                   "--result", "mask")[0] == 0
    side_c = json.loads((tmp_path / "c.json").read_text())
    assert side_c["result_source"] == "mask" and side_c["iteration"] == 2
    assert not np.array_equal(np.asarray(nib.load(str(c)).dataobj), labels_a)


@pytest.mark.parametrize("flags, message", [
    (["--tau", "-1"], "τ (tau) must be >= 0"),
    (["--first-unmask", "1.5"], "first_unmask must be below 1"),
    (["--iteration", "0"], "iteration 0 is the brain"),
    (["--min-size", "-2"], "minimum lesion size must be >= 0"),
    (["--max-iter", "2", "--iteration", "9"], "iteration 9 is beyond the iteration cap of 2"),
])
def test_bad_run_values_give_one_line_and_no_file(tmp_path, capsys, phantom_nifti,
                                                  tiny_model_dir, flags, message):
    out = tmp_path / "o.nii.gz"
    code, _, err = run_cli(capsys, "segment", phantom_nifti[0], "-o", out, "--model",
                           tiny_model_dir, "-q", *flags)
    assert_one_line_error(code, err)
    assert message in err
    assert not out.exists() and not (tmp_path / "o.json").exists()


def test_params_replay_refuses_other_weights_and_non_sidecars(tmp_path, capsys, phantom_nifti,
                                                              tiny_model_dir):
    from conftest import perturbed_bundle
    from napari_itermask.models import save_bundle

    scan_p = phantom_nifti[0]
    a = tmp_path / "a.nii.gz"
    assert run_cli(capsys, "segment", scan_p, "-o", a, "--model", tiny_model_dir, "-q",
                   "--max-iter", 2)[0] == 0
    other = save_bundle(perturbed_bundle(seed=9), tmp_path / "other-model")
    code, _, err = run_cli(capsys, "segment", scan_p, "-o", tmp_path / "b.nii.gz", "--params",
                           tmp_path / "a.json", "--model", other, "-q")
    errors = [ln for ln in err.splitlines() if ln.startswith("itermask: error:")]
    assert code != 0 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert "was made with model weights" in errors[0] and "Traceback" not in err and not (tmp_path / "b.nii.gz").exists()
    junk = tmp_path / "junk.json"
    junk.write_text('{"model": "x"}')
    code, _, err = run_cli(capsys, "segment", scan_p, "-o", tmp_path / "b.nii.gz", "--params",
                           junk, "-q")
    assert_one_line_error(code, err)
    assert "no \"params\"" in err

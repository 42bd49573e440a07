"""The CLI's rough edges a new user hits first, checked by what they would see.

``demo`` without a display, ``demo --headless`` progress, which model ``segment`` ran and why,
output folders that do not exist yet, and ``evaluate`` on the folders ``sample`` and ``segment``
write. Every run uses the tiny random models of conftest.py on small phantoms.
"""

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from conftest import perturbed_bundle, phantom

from napari_itermask import demo
from napari_itermask.cli import contrast_hints, main, pairing_stem
from napari_itermask._sample_data import sample_seed
from _cli_support import lines, run_cli


def small_scan(path, seed=0):
    img, lab = phantom(shape=(24, 28, 12), seed=seed)
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(path))
    return path, lab


# -- demo without a display ------------------------------------------------------------------
@pytest.mark.parametrize("env, platform, blocked", [
    ({}, "linux", True),
    ({"QT_QPA_PLATFORM": "xcb"}, "linux", True),
    ({"QT_QPA_PLATFORM": "wayland;xcb"}, "linux", True),
    ({"DISPLAY": ":0"}, "linux", False),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", False),
    ({"QT_QPA_PLATFORM": "offscreen"}, "linux", False),
    ({"QT_QPA_PLATFORM": "minimal"}, "linux", False),
    ({"QT_QPA_PLATFORM": "wayland;offscreen"}, "linux", False),
    ({}, "darwin", False),
    ({}, "win32", False),
])
def test_which_environments_count_as_no_display(env, platform, blocked):
    problem = demo.display_problem(env, platform)
    assert (problem is not None) == blocked
    if blocked:
        assert "--headless" in problem


def test_demo_without_display_is_one_line_pointing_at_headless(monkeypatch, capsys):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")

    def no_qt(*a, **k):
        raise AssertionError("a Qt viewer was started without a display")

    monkeypatch.setattr(demo, "_open_viewer", no_qt)
    code, out, err = run_cli(capsys, "demo")
    assert code == 1 and out == ""
    assert len(lines(err)) == 1, err
    assert err.startswith("itermask: error: no display") and "itermask demo --headless" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the X11/Wayland check")
def test_demo_without_display_exits_cleanly_in_a_real_process(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    proc = subprocess.run([sys.executable, "-m", "napari_itermask.cli", "demo"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr  # not 134: Qt never got to abort the process
    assert len(lines(proc.stderr)) == 1 and "--headless" in proc.stderr
    assert "Traceback" not in proc.stderr and "xcb" not in proc.stderr


# -- demo --headless progress ------------------------------------------------------------------
PROGRESS = re.compile(r"^demo: (\d+) % · iteration (\d+) · (\d+) of (\d+) slices left · "
                      r"(\d+):(\d\d)$")


def test_headless_demo_shows_progress_and_the_same_result_as_segment_scan(
        monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setattr(demo, "PROGRESS_INTERVAL_S", 0.0)  # every iteration, to see them all
    code, out, err = run_cli(capsys, "demo", "--headless", "--model", tiny_model_dir)
    assert code == 0, err
    progress = [PROGRESS.match(ln) for ln in lines(err) if ln.startswith("demo:")]
    assert progress and all(progress), err
    iterations = [int(m.group(2)) for m in progress]
    assert iterations == list(range(1, len(iterations) + 1))
    assert int(progress[-1].group(3)) == 0  # the last line is the finished state
    assert int(progress[-1].group(1)) == 100
    percents = [int(m.group(1)) for m in progress]
    assert percents == sorted(percents)  # never goes back
    seconds = [60 * int(m.group(5)) + int(m.group(6)) for m in progress]
    assert seconds == sorted(seconds)

    from napari_itermask import synth
    from napari_itermask.core.metrics import dice
    from napari_itermask.models import load_bundle
    from napari_itermask.pipeline import segment_scan
    from napari_itermask.volume import scan_from_array

    case = synth.make_case("flair", sample_seed("glioma"), stratum="glioma")
    scan = scan_from_array(case.image, case.affine, name="sample flair")
    res = segment_scan(scan, load_bundle(tiny_model_dir))
    prov = res.provenance
    assert f"found {prov['lesion_count']} lesion(s), {prov['lesion_volume_ml']:.2f} mL" in out
    assert f"Dice {dice(res.labels > 0, case.label > 0):.3f} " in out


def test_progress_is_printed_at_most_once_per_interval_and_always_at_the_end(capsys):
    from napari_itermask.progress import Printer

    clock = iter([0.0] + [0.25 * i for i in range(12)])  # start, then one state per 0.25 s
    printer = Printer("demo", max_iter=20, interval=1.0, clock=lambda: next(clock))
    for i in range(12):
        active = np.array([i < 11] * 3 + [False])
        printer(SimpleNamespace(iteration=i + 1, active=active))
    printer.finish()  # nothing open: not a terminal
    shown = lines(capsys.readouterr().err)
    assert [int(PROGRESS.match(ln).group(2)) for ln in shown] == [1, 5, 9, 12]
    # 1 of 4 slices done, 3 shrinking at 1/20 of the cap: (1 + 3 × 0.05) / 4
    assert shown[0] == "demo: 29 % · iteration 1 · 3 of 4 slices left · 0:00"
    assert shown[-1] == "demo: 100 % · iteration 12 · 0 of 4 slices left · 0:03"


def test_segment_reports_progress_with_fraction_slices_left_and_time(tmp_path, capsys,
                                                                    phantom_nifti,
                                                                    tiny_model_dir):
    code, _, err = run_cli(capsys, "segment", phantom_nifti[0], "-o", tmp_path / "o.nii.gz",
                           "--model", tiny_model_dir)
    assert code == 0, err
    shown = [ln for ln in err.replace("\r", "\n").splitlines() if " slices left · " in ln]
    assert shown and shown[-1].startswith(f"{phantom_nifti[0].name}: 100 % · iteration ")
    assert " 0 of " in shown[-1]


# -- which model segment runs ----------------------------------------------------------------
@pytest.mark.parametrize("name, hints", [
    ("scan.nii.gz", set()),
    ("sub-01_FLAIR.nii.gz", {"flair"}),
    ("BraTS2021_00012_t1.nii.gz", {"t1"}),
    ("sub-01_T1w.nii", {"t1"}),
    ("case.T2.nii.gz", {"t2"}),
    ("case_t1ce.nii.gz", {"t1ce"}),
    ("case_T1Gd.nii.gz", {"t1ce"}),
    ("case t1c.nii.gz", {"t1ce"}),
    ("myflairscan_t10.nii.gz", set()),  # tokens only: no 'flair' inside a word, 't10' ≠ 't1'
    ("t1_to_flair.nii.gz", {"t1", "flair"}),
])
def test_contrast_hint_is_a_token_of_the_file_name(name, hints):
    assert contrast_hints(name) == hints


@pytest.fixture
def contrast_models(isolated_home):
    """User models named flair, t1, t2 and t1ce (tiny, fast), shadowing the bundled ones."""
    from napari_itermask.models import load_bundle, save_bundle

    shas = {}
    for contrast in ("flair", "t1", "t2", "t1ce"):
        bundle = perturbed_bundle()
        bundle.card.name = bundle.card.modality = contrast
        save_bundle(bundle, isolated_home.models / contrast)
        shas[contrast] = load_bundle(contrast).sha256
    return shas


MODEL_LINE = re.compile(r"^model: (\S+) \((\S+), sha256 ([0-9a-f]{12})…\), (.+)$")


def model_lines(err):
    return [MODEL_LINE.match(ln) for ln in lines(err) if ln.startswith("model:")]


def test_segment_names_the_model_it_ran(tmp_path, capsys, tiny_model_dir):
    from napari_itermask.models import load_bundle

    scan, _ = small_scan(tmp_path / "scan.nii.gz")
    code, _, err = run_cli(capsys, "segment", scan, "-o", tmp_path / "o.nii.gz",
                           "--model", tiny_model_dir, "-q")
    assert code == 0, err
    (m,) = model_lines(err)
    assert m and m.groups() == ("tiny", "flair", load_bundle(tiny_model_dir).sha256[:12],
                                "--model")
    assert not [ln for ln in lines(err) if ln.startswith("warning:")]


@pytest.mark.parametrize("name, model, why, warned", [
    ("case_T1.nii.gz", "t1", "the file name says t1", None),
    ("case_t2w.nii.gz", "t2", "the file name says t2", None),
    ("case_FLAIR.nii.gz", "flair", "the file name says flair", None),
    ("case.nii.gz", "flair", "the default", None),
    ("case_t1ce.nii.gz", "t1ce", "the file name says t1ce", None),
    ("case_T1Gd.nii.gz", "flair", "the default", "t1ce"),  # as if t1ce had no bundled model
])
def test_segment_picks_the_model_from_the_file_name(tmp_path, capsys, contrast_models, name,
                                                    model, why, warned, monkeypatch):
    from napari_itermask import cli

    if warned:
        monkeypatch.delitem(cli.BUNDLED_FOR, warned)
    scan, _ = small_scan(tmp_path / name)
    code, _, err = run_cli(capsys, "segment", scan, "-o", tmp_path / "o.nii.gz", "-q")
    assert code == 0, err
    (m,) = model_lines(err)
    assert m and m.groups() == (model, model, contrast_models[model][:12], why)
    warnings = [ln for ln in lines(err) if ln.startswith("warning:")]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"a {warned} scan" in warnings[0]
        assert "no bundled model" in warnings[0]


def test_segment_warns_when_the_chosen_model_does_not_match_the_name(tmp_path, capsys,
                                                                     contrast_models):
    scan, _ = small_scan(tmp_path / "sub-01_FLAIR.nii.gz")
    code, _, err = run_cli(capsys, "segment", scan, "-o", tmp_path / "o.nii.gz", "-q",
                           "--model", "t1")
    assert code == 0, err
    assert model_lines(err)[0].group(1) == "t1"
    (warning,) = [ln for ln in lines(err) if ln.startswith("warning:")]
    assert "flair scan" in warning and "'t1' is for t1 scans" in warning


def test_model_help_documents_the_rule(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for token in ("flair", "t1w", "t2w", "t1ce", "t1gd", "warning"):
        assert token in text


# -- output folders ----------------------------------------------------------------------------
def test_segment_creates_missing_output_folders(tmp_path, capsys, tiny_model_dir):
    scan, _ = small_scan(tmp_path / "scan.nii.gz")
    target = tmp_path / "new" / "deeper" / "scan_lesions.nii.gz"
    code, _, err = run_cli(capsys, "segment", scan, "-o", target, "--model", tiny_model_dir, "-q")
    assert code == 0, err
    assert target.is_file() and target.with_name("scan_lesions.json").is_file()
    other = tmp_path / "other.nii.gz"
    other.write_bytes(scan.read_bytes())
    folder = tmp_path / "batch" / "results"
    code, _, err = run_cli(capsys, "segment", scan, other, "-o", folder, "--model",
                           tiny_model_dir, "-q")
    assert code == 0, err
    assert sorted(f.name for f in folder.glob("*.nii.gz")) == ["other_lesions.nii.gz",
                                                               "scan_lesions.nii.gz"]
    # still nothing is replaced without --overwrite
    code, _, err = run_cli(capsys, "segment", scan, "-o", target, "--model", tiny_model_dir, "-q")
    assert code == 1 and "--overwrite" in err


def test_a_failed_segment_leaves_no_new_folders(tmp_path, capsys, tiny_model_dir):
    scan, _ = small_scan(tmp_path / "scan.nii.gz")
    # a bad output name, then a model that is not there: both found after the folders are made
    for target, model in ((tmp_path / "new" / "a" / "out.txt", tiny_model_dir),
                          (tmp_path / "new" / "b" / "out.nii.gz", tmp_path / "no-such-model")):
        code, _, err = run_cli(capsys, "segment", scan, "-o", target, "--model", model, "-q")
        assert code == 1 and len(lines(err)) == 1, err
    assert not (tmp_path / "new").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, tiny_model_dir):
    scan, _ = small_scan(tmp_path / "scan.nii.gz")
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(capsys, "segment", scan, "-o", tmp_path / "afile" / "sub" / "o.nii.gz",
                           "--model", tiny_model_dir, "-q")
    assert code == 1 and len(lines(err)) == 1 and "cannot create output folder" in err
    assert (tmp_path / "afile").read_text() == "x"


# -- evaluate pairs by stem --------------------------------------------------------------------
@pytest.mark.parametrize("name, stem", [
    ("case_label.nii.gz", ("case", True)),
    ("case_labels.nii", ("case", True)),
    ("case_lesions.nii.gz", ("case", True)),
    ("case_SEG.nii.gz", ("case", True)),
    ("case_mask.nii.gz", ("case", True)),
    ("case.nii.gz", ("case", False)),
    ("case_label_lesions.nii.gz", ("case_label", True)),  # one suffix only
    ("_mask.nii.gz", ("_mask", False)),
    ("case.json", None),
])
def test_pairing_stem_rule(name, stem):
    assert pairing_stem(name) == stem


def _save(path, arr):
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.eye(4)), str(path))


def test_evaluate_pairs_sample_and_segment_names(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    half = truth.copy()
    half[:, :, 4:] = 0  # Dice 2·32/(32+64) = 0.667
    _save(gt_dir / "case1_flair.nii.gz", np.ones_like(truth) * 5)  # the image: never the truth
    _save(gt_dir / "case1_flair_label.nii.gz", truth)
    _save(gt_dir / "case2_label.nii.gz", truth)
    _save(gt_dir / "only_truth_label.nii.gz", truth)
    _save(pred_dir / "case1_flair_lesions.nii.gz", half)
    _save(pred_dir / "case1_flair_lesions_error.nii.gz", truth)  # an error map, skipped
    _save(pred_dir / "case2_MASK.nii.gz", truth)
    _save(pred_dir / "stray_lesions.nii.gz", truth)
    (pred_dir / "case1_flair_lesions.json").write_text("{}")
    code, out, err = run_cli(capsys, "evaluate", "--pred", pred_dir, "--gt", gt_dir)
    assert code == 0, err
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines(out)[1:-1]}
    assert rows == {"case1_flair_lesions.nii.gz": ["0.667", "0.500", "1.000"],
                    "case2_MASK.nii.gz": ["1.000", "1.000", "1.000"]}
    assert "mean (2 cases)" in out
    assert lines(err) == ["itermask: note: no ground truth for stray_lesions.nii.gz",
                          "itermask: note: no prediction for only_truth_label.nii.gz"]


def test_evaluate_with_nothing_paired_is_one_line(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    _save(tmp_path / "gt" / "a_label.nii.gz", np.ones((4, 4, 4)))
    _save(tmp_path / "pred" / "b_lesions.nii.gz", np.ones((4, 4, 4)))
    code, out, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred",
                             "--gt", tmp_path / "gt")
    assert code == 1 and out == ""
    assert len(lines(err)) == 1 and err.startswith("itermask: error: no prediction")


def test_sample_then_segment_then_evaluate_pairs_every_case(tmp_path, capsys, tiny_model_dir):
    for seed in (0, 1):
        assert run_cli(capsys, "sample", "-o", tmp_path / "samples", "--seed", seed,
                       "--voxel-size", 4)[0] == 0
    scans = sorted((tmp_path / "samples").glob("sample?_flair.nii.gz"))
    code, _, err = run_cli(capsys, "segment", *scans, "-o", tmp_path / "results",
                           "--model", tiny_model_dir, "-q")
    assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "results",
                             "--gt", tmp_path / "samples")
    assert code == 0, err
    assert "mean (2 cases)" in out and "note:" not in err

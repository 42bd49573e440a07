"""Offline skull stripping (``skullstrip``) and the refusal of heads given without a brain mask.

Heads here are the shipped template moved by a known rotation and scaling onto a coarse 4 mm
grid (so tests take seconds); the real-head quality is measured by benchmarks/skullstrip.py.
"""

import json
from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest
from _cli_support import assert_one_line_error, run_cli
from nibabel.processing import resample_from_to

from napari_itermask import skullstrip
from napari_itermask.errors import InputError
from napari_itermask.volume import ScanWarning, UnstrippedWarning, scan_from_array

SHAPE = (46, 54, 46)
VOX = 4.0


def _t2_like(head):
    rel = head / np.percentile(head[head > 0], 95)
    return np.interp(rel, [0, 0.15, 0.4, 0.65, 0.85, 1.2],
                     [0, 0.1, 1.0, 0.6, 0.4, 0.5]).astype(np.float32) * 500


@lru_cache(maxsize=4)
def moved_head(deg=6.0, scale=1.06, contrast="t1"):
    """(data, affine the file claims, true brain): the template rotated and scaled in space."""
    t1_f, mask_f = skullstrip.template_files()
    t1, mask = nib.load(str(t1_f)), nib.load(str(mask_f))
    a = np.deg2rad(deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    claimed = np.diag([VOX, VOX, VOX, 1.0])
    claimed[:3, 3] = -VOX / 2 * (np.array(SHAPE) - 1) + np.array([0.0, -15.0, 10.0])
    true = claimed.copy()
    true[:3, :3] = rot @ claimed[:3, :3] / scale  # where the voxels really sit in the template
    true[:3, 3] = rot @ claimed[:3, 3] / scale
    data = resample_from_to(t1, (SHAPE, true), order=1).get_fdata().astype(np.float32)
    brain = resample_from_to(mask, (SHAPE, true), order=1).get_fdata() > 0.5
    if contrast == "t2":
        data = _t2_like(data)
    return data, claimed, brain


def dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_finds_the_brain_of_a_moved_head_in_either_contrast(contrast):
    data, aff, brain = moved_head(contrast=contrast)
    mask = skullstrip.brain_mask(data, aff, threads=1)
    assert mask.shape == data.shape and mask.dtype == bool
    assert dice(mask, brain) > 0.9


def test_mirrored_array_with_compensating_affine_gives_the_mirrored_mask():
    data, aff, brain = moved_head(deg=-4, scale=0.97)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, SHAPE[0] - 1
    mask = skullstrip.brain_mask(data[::-1].copy(), aff @ flip, threads=1)
    assert dice(mask[::-1], brain) > 0.9


def test_refuses_what_it_cannot_strip():
    with pytest.raises(InputError, match="3-D"):
        skullstrip.brain_mask(np.ones((40, 40), np.float32), np.eye(4))
    with pytest.raises(InputError, match="above zero"):
        skullstrip.brain_mask(np.zeros((20, 20, 20), np.float32), np.eye(4))


def test_unstripped_by_share_or_volume_and_stripped_brains_pass():
    data, aff, brain = moved_head()
    assert "field of view" in skullstrip.unstripped_reason(data, aff)
    assert skullstrip.unstripped_reason(np.where(brain, data, 0), aff) is None
    wide = np.zeros((92, 108, 92), np.float32)  # a head in a wide field of view
    wide[23:69, 27:81, 23:69] = data
    assert skullstrip.unstripped_reason(wide) is None  # without a voxel size: the share only
    assert "L of it is non-zero" in skullstrip.unstripped_reason(wide, aff)
    assert skullstrip.unstripped_reason(np.ones((50, 50, 1)), np.eye(4)) is None  # a 2-D image


def test_volume_warns_with_its_own_category():
    data, aff, _ = moved_head()
    with pytest.warns(UnstrippedWarning, match="skull-stripped"):
        scan = scan_from_array(data, aff)
    assert issubclass(UnstrippedWarning, ScanWarning) and scan.notes


@pytest.fixture
def head_nifti(tmp_path):
    data, aff, brain = moved_head()
    p = tmp_path / "head_t1.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(p))
    return p, brain


def test_cli_refuses_a_head_in_one_line_and_writes_nothing(tmp_path, capsys, head_nifti,
                                                           tiny_model_dir):
    p, _ = head_nifti
    out = tmp_path / "o" / "labels.nii.gz"
    code, _, err = run_cli(capsys, "segment", p, "-o", out, "--model", tiny_model_dir, "-q")
    assert_one_line_error(code, err)
    assert "--skull-strip" in err and "--brain-mask" in err
    assert not out.parent.exists()


def test_cli_skull_strip_and_brain_mask_exclude_each_other(tmp_path, capsys, head_nifti,
                                                           tiny_model_dir):
    p, brain = head_nifti
    mp = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), nib.load(str(p)).affine), str(mp))
    code, _, err = run_cli(capsys, "segment", p, "-o", tmp_path / "o.nii.gz", "--model",
                           tiny_model_dir, "-q", "--skull-strip", "--brain-mask", mp)
    assert_one_line_error(code, err)
    assert not (tmp_path / "o.nii.gz").exists()


def test_cli_skull_strip_segments_a_head(tmp_path, capsys, head_nifti, tiny_model_dir,
                                         monkeypatch):
    p, brain = head_nifti
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "labels.nii.gz"
    code, _, err = run_cli(capsys, "segment", p, "-o", out, "--model", tiny_model_dir, "-q",
                           "--skull-strip", "--threshold", 0.0, "--max-iter", 2)
    assert code == 0, err
    assert "skull-stripped" not in err  # the head is stripped, not warned about
    lab = np.asarray(nib.load(str(out)).dataobj) > 0
    side = json.loads(out.with_suffix("").with_suffix(".json").read_text())
    assert side["brain_mask"] == skullstrip.SOURCE
    assert not any(skullstrip.UNSTRIPPED_NOTE in w for w in side["warnings"])
    assert lab.any() and (lab & brain).sum() > 0.9 * lab.sum()  # labels stay inside the brain


@pytest.mark.gui
def test_widget_choice_strips_the_head_in_the_worker(make_napari_viewer, qtbot, head_nifti,
                                                      tiny_model_dir, monkeypatch):
    pytest.importorskip("napari")
    from napari_itermask._plugin import IterMaskWidget
    from napari_itermask._plugin.inputs import SKULL_STRIP
    from napari_itermask._reader import napari_get_reader

    p, brain = head_nifti
    viewer = make_napari_viewer()
    for data, kwargs, kind in napari_get_reader(str(p))(str(p)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    w = IterMaskWidget(viewer)
    qtbot.addWidget(w)
    assert w.set_model(str(tiny_model_dir))
    w.inputs.device.value = "cpu"
    assert (SKULL_STRIP, SKULL_STRIP) in w.inputs._brain_choices()
    w.inputs.brain.value = SKULL_STRIP
    assert w.inputs.skull_strip and w.inputs.brain_layer is None
    assert w.step()
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    job = w._current_session().job
    assert job.brain_mask_source == skullstrip.SOURCE
    assert 0.8 < job.volume.scan_brain.sum() / brain.sum() < 1.2


def test_cohort_fails_a_head_case_unless_skull_strip(tmp_path, capsys, head_nifti,
                                                     tiny_model_dir):
    p, _ = head_nifti
    folder = tmp_path / "heads"
    folder.mkdir()
    p.rename(folder / p.name)
    out = tmp_path / "out"
    args = ["segment", "--folder", folder, "-o", out, "--model", tiny_model_dir, "-q",
            "--max-iter", 2]
    code, _, err = run_cli(capsys, *args)
    assert code != 0 and "--skull-strip" in err
    assert not list(out.glob("*.nii.gz"))
    code, _, err = run_cli(capsys, *args, "--skull-strip", "--overwrite")
    assert code == 0, err
    assert len(list(out.glob("*.nii.gz"))) == 1

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


# -- the boundary refinement -----------------------------------------------------------------
def _layered_head(csf_bright: bool, vox=2.0, seed=0):
    """(data, affine, true brain): an ellipsoid brain, a 4 mm CSF layer, 4 mm of dark bone and
    a bright scalp, 5 % noise; CSF dark (T1-like) or bright (T2-like). Grey and white matter
    are smooth blobs mixed at every depth, as a folded cortex mixes them within a few mm of
    the surface."""
    shape = (80, 92, 76)
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = -vox / 2 * (np.array(shape) - 1)
    g = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * vox for n in shape],
                             indexing="ij"))
    r = np.sqrt(((g / np.array([62.0, 76.0, 58.0])[:, None, None, None]) ** 2).sum(0))
    depth = (1 - r) * 62.0  # about mm inside the brain's surface
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    blobs = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0 / vox)
    wm = np.where(blobs > 0, 1.0, 0.75)  # white and grey matter
    csf, bone, scalp = (1.4 if csf_bright else 0.2), 0.08, 1.1
    data = np.select([depth > 0, depth > -4, depth > -8, depth > -14],
                     [wm, csf, bone, scalp], 0.0)
    data = (data + 0.05 * rng.standard_normal(shape)) * (data > 0)
    return (data * 500).astype(np.float32), aff, depth > 0


def _moved_surface(brain, aff, mm):
    """The mask grown (mm > 0) or shrunk (mm < 0) by about |mm|: a registration's misfit."""
    from scipy import ndimage

    vox = np.linalg.norm(aff[:3, :3], axis=0)
    if mm > 0:
        return ndimage.distance_transform_edt(~brain, sampling=vox) <= mm
    return ndimage.distance_transform_edt(brain, sampling=vox) > -mm


@pytest.mark.parametrize("csf_bright", [False, True], ids=["csf-dark", "csf-bright"])
@pytest.mark.parametrize("misfit_mm", [0.0, 2.0, 4.0, -2.0])
def test_refinement_trims_a_mask_that_reaches_past_the_brain_in_either_contrast(csf_bright,
                                                                               misfit_mm):
    data, aff, brain = _layered_head(csf_bright)
    start = _moved_surface(brain, aff, misfit_mm)
    refined = skullstrip.refine_boundary(data, start, aff)
    assert refined.shape == brain.shape and refined.dtype == bool
    if misfit_mm > 0:  # 2-4 mm into CSF and bone (Dice 0.92-0.96) comes back to the surface
        assert dice(refined, brain) > 0.98 and dice(refined, brain) > dice(start, brain) + 0.02
    elif misfit_mm == 0:  # a right mask stays right
        assert dice(refined, brain) > 0.98
    else:  # short of the surface it does not grow (docs/skullstrip.md, limits): a bounded loss
        assert dice(start, brain) - 0.03 < dice(refined, brain) <= dice(start, brain) + 0.01


def test_refinement_keeps_a_mask_it_has_no_room_to_learn_from():
    tiny = np.zeros((12, 12, 12), bool)
    tiny[4:8, 4:8, 4:8] = True
    data = np.random.default_rng(0).random(tiny.shape).astype(np.float32)
    assert skullstrip.refine_boundary(data, tiny, np.eye(4)) is tiny


def test_the_unrefined_path_is_still_there_for_comparison():
    data, aff, brain = moved_head()
    plain = skullstrip.brain_mask(data, aff, threads=1, refine=False)
    refined = skullstrip.brain_mask(data, aff, threads=1)
    assert dice(plain, skullstrip.registered_mask(data, aff, threads=1)) > 0.99
    assert dice(plain, brain) > 0.9 and dice(refined, brain) > 0.9

"""`itermask sample`: the paper's glioma case by default, other strata and T1CE on request."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from napari_itermask.cli import main


def _label(tmp_path, name):
    return np.asarray(nib.load(str(tmp_path / name)).dataobj)


def test_sample_defaults_to_one_glioma(tmp_path, capsys):
    assert main(["sample", "-o", str(tmp_path), "--voxel-size", "3"]) == 0
    lab = _label(tmp_path, "sample0_flair_label.nii.gz")
    # one BraTS-sized tumour: a single connected lesion of several mL
    from scipy import ndimage

    n = ndimage.label(lab > 0)[1]
    assert n == 1 and (lab > 0).sum() * 27 / 1000 > 5


def test_sample_strata_and_t1ce(tmp_path, capsys):
    assert main(["sample", "-o", str(tmp_path / "a"), "--stratum", "subtle", "--one",
                 "--voxel-size", "3"]) == 0
    assert main(["sample", "-o", str(tmp_path / "b"), "--modality", "t1ce",
                 "--voxel-size", "3"]) == 0
    assert (tmp_path / "b" / "sample0_t1ce.nii.gz").is_file()
    small = (_label(tmp_path / "a", "sample0_flair_label.nii.gz") > 0).sum()
    big = (_label(tmp_path / "b", "sample0_t1ce_label.nii.gz") > 0).sum()
    assert 0 < small < big


def test_sample_one_is_refused_outside_subtle(tmp_path, capsys):
    assert main(["sample", "-o", str(tmp_path), "--one", "--voxel-size", "3"]) != 0
    assert "subtle" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written

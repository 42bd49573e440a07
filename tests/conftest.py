"""Shared fixtures: tiny models with known behaviour and small phantom scans."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the training/ scripts live at the repository root
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


def phantom(shape=(60, 70, 40), lesion=True, value=100.0, lesion_value=220.0, seed=0):
    """An ellipsoidal 'brain' with mild texture and an optional bright spherical lesion."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    c = [(s - 1) / 2 for s in shape]
    r = [s * 0.42 for s in shape]
    brain = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
    img = np.where(brain, value * (1 + 0.05 * rng.standard_normal(shape)), 0).astype(np.float32)
    img[brain] = np.maximum(img[brain], 1.0)
    lab = np.zeros(shape, np.uint8)
    if lesion:
        ball = ((zz - c[0] - 5) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 6**2
        lab[ball & brain] = 1
        img[lab > 0] = lesion_value
    return img, lab


def perturbed_bundle(preset="tiny", seed=0, tau=0.5, threshold=2.0):
    """A random (not zero-output) model: untrained nets output zeros, which tests nothing."""
    from napari_itermask.models import ModelBundle, new_card

    torch.manual_seed(seed)
    bundle = ModelBundle.fresh(new_card("tiny", "flair", preset))
    for net in (bundle.first, bundle.masked):
        torch.nn.init.normal_(net.out.weight, std=0.05)
        torch.nn.init.constant_(net.out.bias, -1.0)
    bundle.card.tau = tau
    bundle.card.threshold = threshold
    bundle.card.min_brain_pixels = 20
    return bundle.to("cpu")


@pytest.fixture
def tiny_bundle():
    return perturbed_bundle()


@pytest.fixture
def tiny_model_dir(tmp_path):
    from napari_itermask.models import save_bundle

    return save_bundle(perturbed_bundle(), tmp_path / "tinymodel")


@pytest.fixture
def phantom_nifti(tmp_path):
    """A phantom scan saved with an oblique LPS-like affine, and its lesion label."""
    import nibabel as nib

    img, lab = phantom()
    ang = np.deg2rad(8)
    rot = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    lin = rot @ np.diag([-1.2, -1.1, 2.0])  # L→R flipped, P→A flipped, thick slices
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = [40.0, 35.0, -30.0]
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(path))
    lpath = tmp_path / "scan_label.nii.gz"
    nib.save(nib.Nifti1Image(lab, aff), str(lpath))
    return path, lpath, aff

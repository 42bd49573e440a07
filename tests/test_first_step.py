"""The complementary first step (core.engine ``first_step``) with fake nets of known errors."""

import json

import numpy as np
import pytest
import torch

from napari_itermask.core.engine import (
    EngineConfig,
    History,
    blob_partition,
    reconstruct_at,
    run,
)

G = 32


def _scan():
    brain = np.zeros((2, G, G), bool)
    brain[:, 4:28, 4:28] = True
    x = np.where(brain, 1.0, -3.0).astype(np.float32)
    lesion = np.zeros_like(brain)
    lesion[:, 12:16, 12:18] = True
    x[lesion] = 2.0
    return x, brain, lesion


def test_blob_masks_are_complementary_blobs_drawn_from_seed_and_slice():
    _, brain, _ = _scan()
    p = blob_partition(brain[0], 3, seed=0, slice_id=5)
    assert set(np.unique(p[brain[0]])) == {0, 1, 2} and np.all(p[~brain[0]] == -1)
    shares = np.bincount(p[brain[0]]) / brain[0].sum()
    assert np.allclose(shares, 1 / 3, atol=0.01)
    assert np.array_equal(p, blob_partition(brain[0], 3, seed=0, slice_id=5))
    assert not np.array_equal(p, blob_partition(brain[0], 3, seed=0, slice_id=6))
    assert not np.array_equal(p, blob_partition(brain[0], 3, seed=1, slice_id=5))
    # blobs, not salt and pepper: on the 128² model grid most pixels share their right
    # neighbour's mask
    big = np.zeros((128, 128), bool)
    big[16:112, 16:112] = True
    q = blob_partition(big, 3, seed=0, slice_id=5)
    assert (q[:, :-1] == q[:, 1:])[big[:, :-1] & big[:, 1:]].mean() > 0.8


class InpaintSpy(torch.nn.Module):
    """A masked net that fills every masked pixel with normal tissue (1.0) and copies the rest:
    its error is 1 on a masked lesion pixel and 0 elsewhere. Records the masks it was given."""

    def __init__(self, x):
        super().__init__()
        self.x = torch.from_numpy(x)[:, None]
        self.masks = []

    def forward(self, inp):
        x = self.x[: len(inp)] if len(inp) == len(self.x) else None
        masked = inp[:, :1] != x
        self.masks.append(masked[:, 0].clone())
        return torch.where(masked, torch.ones_like(x), x)


def test_complementary_first_step_predicts_every_pixel_from_a_pass_that_did_not_see_it():
    x, brain, lesion = _scan()
    f = InpaintSpy(x)
    f1 = lambda xf: torch.zeros_like(xf)  # noqa: E731  an f1 that errs everywhere
    cfg = EngineConfig(tau=0.5, first_unmask=0.4, max_iter=1, first_step="complementary",
                       complementary_masks=3, batch_size=2)
    st = next(run(x, brain, f1, f, cfg))
    assert len(f.masks) == 3 and st.forward_passes == 2 * 3
    stack = torch.stack(f.masks).numpy()  # (3, N, H, W)
    assert np.array_equal(stack.sum(0), brain.astype(int))  # each brain pixel in exactly one
    # f1's error would rank every pixel alike; the complementary error is exactly the lesion's
    np.testing.assert_allclose(st.error, lesion.astype(np.float32))
    assert st.masks[lesion].all()
    # 'both': per pixel the larger error, here f1's everywhere (it errs by ≥ 1 on the brain)
    both = next(run(x, brain, f1, InpaintSpy(x), EngineConfig(
        tau=0.5, max_iter=1, first_step="both", batch_size=2)))
    assert both.forward_passes == 2 * 4
    np.testing.assert_allclose(both.error, np.where(brain, x, 0) ** 2)


def test_replay_and_card_of_the_complementary_first_step(tmp_path):
    from napari_itermask.errors import ModelError
    from napari_itermask.models import load_bundle, save_bundle
    from napari_itermask.models.card import ModelCard
    from conftest import perturbed_bundle

    rng = np.random.default_rng(0)
    x, brain, _ = _scan()
    x = np.where(brain, rng.normal(1, 0.5, x.shape), -3).astype(np.float32)
    b = perturbed_bundle()
    b.card.first_step, b.card.complementary_masks = "both", 2
    back = load_bundle(save_bundle(b, tmp_path / "m"))
    cfg = EngineConfig.from_card(back.card)
    assert (cfg.first_step, cfg.complementary_masks) == ("both", 2)
    cfg.tau, cfg.max_iter, cfg.min_brain_pixels = 0.3, 3, 5
    hist = History.start(brain, cfg.tau)
    states = []
    for st in run(x, brain, back.first, back.masked, cfg):
        hist.record(st)
        states.append(st)
    for st in states:
        err, rec = reconstruct_at(x, brain, back.first, back.masked, cfg, hist, st.iteration)
        np.testing.assert_allclose(err, st.error, atol=1e-5)
        np.testing.assert_allclose(rec, st.recon, atol=1e-5)
    old = b.card.to_dict()
    for k in ("first_step", "complementary_masks"):
        old.pop(k)
    assert EngineConfig.from_card(ModelCard.from_dict(old)).first_step == "f1"
    for bad in ({"first_step": "f2"}, {"complementary_masks": 1}, {"complementary_masks": 2.5}):
        with pytest.raises(ModelError):
            ModelCard.from_dict({**b.card.to_dict(), **bad})
    with pytest.raises(ValueError, match="first_step"):
        EngineConfig(tau=1.0, first_step="nope")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["first_step"] == "both"

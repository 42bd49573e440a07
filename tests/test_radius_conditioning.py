"""The radius-conditioned masked net (core.conditioning): schedule, input, loop, card, training."""

import json

import numpy as np
import pytest
import torch

from napari_itermask.core.conditioning import RadiusConditioning
from napari_itermask.core.engine import (
    EngineConfig,
    History,
    masked_net_input,
    reconstruct_at,
    run,
)
from napari_itermask.core.frequency import high_pass, high_pass_radii
from napari_itermask.core.net_input import masked_input

G = 32
RC = RadiusConditioning(low=4.0, high=12.0, trained=(2.0, 14.0), full_share=0.6)


def test_schedule_rises_as_the_mask_shrinks_within_the_trained_radii():
    assert RC.radius(0.6) == 4.0 and RC.radius(0.9) == 4.0  # first-step-sized masks: low
    assert RC.radius(0.0) == 12.0  # a vanishing mask: high
    assert RC.radius(0.3) == 8.0
    radii = [RC.radius(s) for s in np.linspace(0.0, 1.0, 41)]
    assert all(a >= b for a, b in zip(radii, radii[1:]))
    assert all(float(r).is_integer() for r in radii)
    assert RC.level(2.0) == 0.0 and RC.level(14.0) == 1.0 and RC.level(8.0) == 0.5
    assert RadiusConditioning.from_dict(RC.to_dict()) == RC
    assert RadiusConditioning.from_dict({}) is None and RadiusConditioning.from_dict(None) is None
    with pytest.raises(ValueError, match="within the trained"):
        RadiusConditioning(low=1.0, high=12.0, trained=(2.0, 14.0))
    with pytest.raises(ValueError, match="lo < hi"):
        RadiusConditioning(low=5.0, high=5.0, trained=(5.0, 5.0))


def test_batched_radii_equal_one_radius_at_a_time():
    x = torch.randn(3, G, G)
    got = high_pass_radii(x, [3.0, 7.0, 12.0])
    for i, r in enumerate((3.0, 7.0, 12.0)):
        torch.testing.assert_close(got[i], high_pass(x[i], r))
    with pytest.raises(ValueError, match="radii"):
        high_pass_radii(x, [3.0])


def test_the_level_is_a_constant_third_channel():
    x = torch.randn(2, 1, G, G)
    m = torch.rand(2, 1, G, G) > 0.5
    eps, xf = torch.randn_like(x), torch.randn_like(x)
    plain = masked_input(x, m, eps, xf)
    cond = masked_input(x, m, eps, xf, level=torch.tensor([0.25, 1.0]))
    assert plain.shape[1] == 2 and cond.shape[1] == 3
    assert torch.equal(cond[:, :2], plain)
    assert torch.all(cond[0, 2] == 0.25) and torch.all(cond[1, 2] == 1.0)
    with pytest.raises(ValueError, match="one value per slice"):
        masked_input(x, m, eps, xf, level=torch.tensor([0.5]))


def _lesioned_slice():
    """One square brain with a bright 'lesion' block; brain 20×20 = 400 px, lesion 16 px."""
    x = np.full((1, G, G), -3.0, np.float32)
    brain = np.zeros((1, G, G), bool)
    brain[0, 6:26, 6:26] = True
    x[brain] = 1.0
    lesion = np.zeros_like(brain)
    lesion[0, 14:18, 14:18] = True
    x[lesion] = 3.0
    return x, brain, lesion


class LevelSpy(torch.nn.Module):
    """A masked net with a known error that copies the scan and reconstructs masked normal tissue
    exactly, but paints the masked lesion ever more like normal tissue as the mask shrinks:
    its error there is ``(2·share/0.6 + 2·level)²`` (share: the masked share of the brain;
    level: channel 2, zero for a two-channel net). Records the inputs it was given."""

    def __init__(self, x, brain, lesion, channels=3):
        super().__init__()
        self.x, self.brain = torch.from_numpy(x)[:, None], torch.from_numpy(brain)[:, None]
        self.lesion = torch.from_numpy(lesion)[:, None]
        self.channels = channels
        self.levels, self.inputs = [], []

    def forward(self, inp):
        assert inp.shape[1] == self.channels
        self.inputs.append(inp.clone())
        masked = (inp[:, :1] != self.x) & self.brain
        share = float(masked.sum() / self.brain.sum())
        level = float(inp[0, 2, 0, 0]) if self.channels == 3 else 0.0
        self.levels.append(level)
        return torch.where(self.lesion, self.x - 2.0 * share / 0.6 - 2.0 * level, self.x)


def _first(x, brain, lesion):
    """f1 with a ramp of errors, largest on the lesion: the first step keeps 60 % of the brain,
    the lesion among it."""
    ramp = np.zeros_like(x)
    order = np.argsort(np.where(lesion, 2.0, 1.0)[brain] + np.linspace(0, 0.5, brain.sum()))
    ramp[brain] = np.sqrt(np.argsort(order) + 1.0)
    out = torch.from_numpy(x - ramp)[:, None]
    return lambda xf: out


def test_loop_gives_the_radius_of_each_masks_share_and_keeps_the_lesion_masked():
    x, brain, lesion = _lesioned_slice()
    rc = RadiusConditioning(low=4.0, high=12.0, trained=(4.0, 12.0), full_share=0.6)
    cfg = EngineConfig(tau=0.5, first_unmask=0.4, max_iter=6, radius_conditioning=rc)
    spy = LevelSpy(x, brain, lesion)
    states = list(run(x, brain, _first(x, brain, lesion), spy, cfg))
    masks_before = [states[t].masks for t in range(len(states) - 1)]
    assert len(spy.inputs) == len(masks_before) >= 2
    for inp, m in zip(spy.inputs, masks_before):
        r = rc.radius(m.sum() / brain.sum())
        assert float(inp[0, 2, 0, 0]) == pytest.approx(rc.level(r))
        torch.testing.assert_close(inp[:, 1], high_pass(torch.from_numpy(x), r))
    # the first masked iteration sees a first-step-sized mask (radius low, level 0) and unmasks
    # the normal tissue; the lesion-sized mask then gets a high radius and the lesion stays
    assert spy.levels[0] == 0.0 and spy.levels[-1] == rc.level(rc.radius(16 / 400)) > 0.8
    assert (states[-1].masks == lesion).all()
    # the paper's fixed radius with the same net: once the mask is lesion-sized, the lesion is
    # painted in (error ≈ 0.02 < τ) and unmasked
    spy2 = LevelSpy(x, brain, lesion, channels=2)
    plain = list(run(x, brain, _first(x, brain, lesion), spy2,
                     EngineConfig(tau=0.5, first_unmask=0.4, max_iter=6)))
    assert plain[1].masks[lesion].all() and not plain[-1].masks.any()


def test_reconstruct_at_recomputes_the_conditioned_inputs():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:G, :G]
    brain = np.stack([((yy - 16) / (9 + i)) ** 2 + ((xx - 16) / (12 - i)) ** 2 < 1
                      for i in range(3)])
    x = np.where(brain, rng.normal(1, 0.8, (3, G, G)), -3).astype(np.float32)
    from napari_itermask.models import ModelBundle, new_card

    card = new_card("rc", "flair", "tiny")
    card.radius_conditioning = RC.to_dict()
    torch.manual_seed(0)  # before the nets are built: their initialisation draws from it too
    b = ModelBundle.fresh(card)
    for net in (b.first, b.masked):
        torch.nn.init.normal_(net.out.weight, std=0.05)
    assert b.masked.inp.in_channels == 3
    cfg = EngineConfig.from_card(card)
    cfg.tau, cfg.max_iter, cfg.min_brain_pixels, cfg.batch_size = 0.3, 4, 5, 2
    assert cfg.radius_conditioning == RC
    hist = History.start(brain, cfg.tau)
    states = []
    for st in run(x, brain, b.first, b.masked, cfg):
        hist.record(st)
        states.append(st)
    assert len(states) >= 3
    for st in states:
        err, rec = reconstruct_at(x, brain, b.first, b.masked, cfg, hist, st.iteration)
        np.testing.assert_allclose(err, st.error, atol=1e-5)
        np.testing.assert_allclose(rec, st.recon, atol=1e-5)
    # masked_net_input is what calibration feeds the net: the loop's input for a given mask
    xt = torch.from_numpy(x)[:, None]
    m = torch.from_numpy(states[0].masks)[:, None]
    inp = masked_net_input(xt, m, torch.zeros_like(xt), torch.from_numpy(brain)[:, None], cfg)
    shares = states[0].masks.reshape(3, -1).sum(1) / brain.reshape(3, -1).sum(1)
    for i in range(3):
        assert float(inp[i, 2, 0, 0]) == pytest.approx(RC.level(RC.radius(shares[i])))


def test_cards_with_and_without_conditioning(tmp_path):
    from napari_itermask.errors import ModelError
    from napari_itermask.models import ModelBundle, load_bundle, new_card, save_bundle
    from napari_itermask.models.card import ModelCard

    old = new_card("old", "flair", "tiny").to_dict()
    old.pop("radius_conditioning")  # a card written before the option existed
    card = ModelCard.from_dict(old)
    assert card.radius_conditioning == {}
    assert EngineConfig.from_card(card).radius_conditioning is None
    assert ModelBundle.fresh(card).masked.inp.in_channels == 2  # the paper's masked net
    new = new_card("rc", "flair", "tiny")
    new.radius_conditioning = RC.to_dict()
    folder = save_bundle(ModelBundle.fresh(new), tmp_path / "rc")
    back = load_bundle(folder)
    assert back.masked.inp.in_channels == 3
    assert RadiusConditioning.from_dict(back.card.radius_conditioning) == RC
    bad = dict(new.to_dict(), radius_conditioning={"low": 1, "high": 50, "trained": [2, 14]})
    with pytest.raises(ModelError, match="radius_conditioning"):
        ModelCard.from_dict(bad)
    card_file = folder / "card.json"
    d = json.loads(card_file.read_text())
    d["radius_conditioning"] = {"low": 4}
    card_file.write_text(json.dumps(d))
    with pytest.raises(ModelError, match="radius_conditioning"):
        load_bundle(folder)


def test_widened_input_computes_what_the_two_channel_net_did():
    from napari_itermask.core.unet import build_unet
    from training.train import widen_input

    torch.manual_seed(0)
    two = build_unet("tiny", 2).eval()
    three = build_unet("tiny", 3).eval()
    three.load_state_dict(widen_input(two.state_dict(), three.state_dict()))
    inp = torch.randn(2, 2, G, G)
    with torch.no_grad():
        want = two(inp)
        got = three(torch.cat([inp, torch.rand(2, 1, G, G)], 1))
    torch.testing.assert_close(got, want)


def test_training_draws_radii_and_calibration_records_the_schedule(tmp_path):
    from napari_itermask.models import load_bundle
    from training import calibrate, prepare, train
    from training.common import SliceSet

    grid = ["--grid", "64", "--pixel-size", "3.75", "--min-brain", "50"]
    data = tmp_path / "train.npz"
    prepare.main(["synth", "--modality", "flair", "--split", "train", "--n", "1",
                  "--voxel-size", "3.0", "-o", str(data), *grid])
    batcher = train.Batcher(SliceSet.load(data), "masked", train.MaskSampler(size=64), 15.0,
                            seed=0, radius_range=(6.0, 10.0))
    inp, _ = batcher.get(32)
    levels = inp[:, 2, 0, 0]
    assert inp.shape[1] == 3 and torch.all((inp[:, 2] == levels[:, None, None]))
    assert set(np.round(levels.numpy() * 4).astype(int).tolist()) == {0, 1, 2, 3, 4}
    run_dir = tmp_path / "run"
    train.main(["--train", str(data), "--preset", "tiny", "--net", "both", "--steps", "1",
                "--batch", "2", "--out", str(run_dir), "--threads", "1",
                "--radius-range", "15", "25"])
    out = tmp_path / "b"
    calibrate.main(["--run", str(run_dir), "--val", str(data), "--name", "rc", "--modality",
                    "flair", "-o", str(out), "--max-slices", "3", "--radius-schedule", "15", "20"])
    b = load_bundle(out)
    assert b.masked.inp.in_channels == 3 and b.first.inp.in_channels == 1
    assert b.card.radius_conditioning == {"low": 15.0, "high": 20.0, "trained": [15.0, 25.0],
                                          "full_share": 0.6}
    with pytest.raises(SystemExit, match="within the trained"):
        calibrate.main(["--model", str(out), "--val", str(data), "--name", "rc", "--modality",
                        "flair", "-o", str(tmp_path / "c"), "--radius-schedule", "15", "30"])
    assert not (tmp_path / "c").exists()

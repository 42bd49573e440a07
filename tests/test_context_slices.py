"""2.5-D context (``context_slices``, docs/method.md §18): the masked net also sees the axial
neighbours of its slice, hidden under the slice's own mask — in training, τ calibration, the
loop, the replay of an iteration and the paper protocol's one-slice runs alike."""

import numpy as np
import pytest
import torch

from napari_itermask.core.context_slices import check_context_slices, context_offsets
from napari_itermask.core.engine import (
    EngineConfig,
    History,
    neighbour_noise,
    reconstruct_at,
    run,
    run_to_end,
    slice_noise,
)
from napari_itermask.core.net_input import (
    masked_channels,
    masked_input,
    neighbour_slices,
    shared_mask_context,
)
from napari_itermask.errors import ModelError
from napari_itermask.models import ModelBundle, ModelCard, new_card, options_note
from conftest import InputRecorder

G = 16


def _volume(n=5, lesion=True):
    """n identical slices: tissue 1.0 in a square brain, a 3.0 lesion through every slice."""
    brain = np.zeros((n, G, G), bool)
    brain[:, 2:14, 2:14] = True
    x = np.where(brain, 1.0, -3.0).astype(np.float32)
    les = np.zeros_like(brain)
    if lesion:
        les[:, 6:9, 6:9] = True
        x[les] = 3.0
    return x, brain, les


def _zero_f1(xf):
    return torch.zeros_like(xf)


def test_channel_count_bounds_and_order():
    assert masked_channels(False) == 2 and masked_channels(False, 1) == 4
    assert masked_channels(True, 2) == 7
    assert context_offsets(2) == (-1, -2, 1, 2) and context_offsets(0) == ()
    for bad in (3, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="context_slices"):
            check_context_slices(bad)
    with pytest.raises(ValueError, match="f1 first step"):
        EngineConfig(tau=1.0, context_slices=1, first_step="both")


def test_neighbours_are_found_by_id_and_missing_ones_are_zeros():
    x = np.stack([np.full((G, G), v, np.float32) for v in (10, 11, 12, 20)])
    brain = x > 10.5  # slice 10 has no brain
    cx, cb = neighbour_slices(x, brain, 1, ids=[10, 11, 12, 20])
    assert cx.shape == (4, 2, G, G) and cb.dtype == bool
    below, above = cx[:, 0, 0, 0], cx[:, 1, 0, 0]
    assert below.tolist() == [0, 10, 11, 0] and above.tolist() == [11, 12, 0, 0]
    assert not cb[1, 0].any() and cb[1, 1].all()  # slice 10's (empty) brain, slice 12's
    sub_x, _ = neighbour_slices(x, brain, 1, ids=[10, 11, 12, 20], idx=[2])
    assert np.array_equal(sub_x, cx[2:3])


def test_neighbour_channels_are_hidden_where_the_slice_is_within_their_brain():
    x = torch.zeros(1, 1, G, G)
    mask = torch.zeros(1, 1, G, G, dtype=torch.bool)
    mask[..., 4:8, 4:8] = True
    nb_x = torch.full((1, 2, G, G), 5.0)
    nb_brain = torch.ones(1, 2, G, G, dtype=torch.bool)
    nb_brain[:, 1, :, :6] = False  # the upper neighbour's brain ends at column 6
    noise = torch.full((1, 2, G, G), -7.0)
    inp = masked_input(x, mask, torch.zeros_like(x), torch.zeros_like(x),
                       context=shared_mask_context(nb_x, nb_brain, mask, noise))
    assert inp.shape == (1, 4, G, G)
    below, above = inp[0, 2], inp[0, 3]
    assert (below[4:8, 4:8] == -7).all() and (below[~mask[0, 0]] == 5).all()
    assert (above[4:8, 6:8] == -7).all() and (above[4:8, 4:6] == 5).all()  # outside its brain
    with pytest.raises(ValueError, match="neighbour"):
        masked_input(x, mask, x, x, context=(nb_x[:, :1], mask[:, :1].expand(1, 1, G, G),
                                             noise))


def test_the_loop_shows_each_slice_its_neighbours_under_its_own_mask():
    x, brain, _ = _volume(3)
    x[1] += 0.01  # slices differ, so a channel shows which neighbour it holds
    x[2] += 0.02
    f = InputRecorder()
    cfg = EngineConfig(tau=0.5, context_slices=1, max_iter=2, batch_size=8, seed=4)
    states = list(run(x, brain, _zero_f1, f, cfg))
    mask_after_first = states[0].masks  # what iteration 2 shows the net
    inp = f.inputs[0]  # iteration 2, slices 0, 1, 2 in one batch
    assert inp.shape == (3, 4, G, G)
    for i in range(3):
        m = mask_after_first[i]
        for c, d in enumerate(context_offsets(1)):
            j = i + d
            got = inp[i, 2 + c].numpy()
            if not 0 <= j < 3:
                assert not got.any()  # beyond the scan: zeros
                continue
            noise = slice_noise(4, i, 2, (G, G), c + 1).numpy()
            want = np.where(m & brain[j], noise, x[j])
            assert np.array_equal(got, want)
    eps = neighbour_noise(np.array([1]), np.arange(3), 2, 4, 1, (G, G), "cpu")
    assert torch.equal(eps[0, 0], slice_noise(4, 1, 2, (G, G), 1))
    assert not torch.equal(eps[0, 0], slice_noise(4, 1, 2, (G, G)))  # not the slice's own draw


class NeighbourCopier(torch.nn.Module):
    """Paints every pixel from the nearest neighbour that shows it (its value there equals the
    known healthy-or-lesion image), else with normal tissue (1.0): a net that copies the lesion
    from the next slice whenever it can see it there."""

    def __init__(self, x_ref):
        super().__init__()
        self.x_ref = torch.from_numpy(x_ref[0])

    def forward(self, inp):
        below, above = inp[:, 2], inp[:, 3]
        out = torch.where(below == self.x_ref, below,
                          torch.where(above == self.x_ref, above, torch.ones_like(below)))
        return out[:, None]


def test_hiding_the_neighbours_keeps_a_lesion_a_copying_net_would_paint_in():
    """f1's error (x²) leaves only the lesion masked after the first step. The copying net sees
    the lesion in the neighbours unless it is hidden there too: hidden (the rule), it paints
    tissue and the lesion stays masked with error (3 − 1)² = 4; shown (neighbours given without
    brain, so nothing is hidden in them), it copies 3.0 and the lesion is lost."""
    x, brain, les = _volume(5)
    cfg = EngineConfig(tau=0.5, context_slices=1, max_iter=5)
    net = NeighbourCopier(x)
    last, _ = run_to_end(x, brain, _zero_f1, net, cfg)
    assert last.masks[2].sum() == les[2].sum() and (last.masks == les).all()
    assert np.allclose(last.error[les], 4.0)
    cx, _ = neighbour_slices(x, brain, 1)
    shown, _ = run_to_end(x, brain, _zero_f1, net, cfg, context=(cx, np.zeros_like(cx, bool)))
    assert not shown.masks.any() and np.allclose(shown.error[les], 0.0)


class Mixer(torch.nn.Module):
    """A deterministic net that mixes all its channels, so every neighbour value matters."""

    def forward(self, inp):
        w = torch.arange(1, inp.shape[1] + 1, dtype=inp.dtype).reshape(1, -1, 1, 1)
        return torch.tanh((inp * w).sum(1, keepdim=True) / inp.shape[1])


def test_batching_replay_and_given_context_agree():
    rng = np.random.default_rng(0)
    x, brain, _ = _volume(6)
    x = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    f1 = lambda xf: torch.tanh(xf)  # noqa: E731
    cfg = EngineConfig(tau=0.3, context_slices=2, max_iter=4, batch_size=2, seed=1)
    hist = History.start(brain, cfg.tau)
    for st in run(x, brain, f1, Mixer(), cfg):
        hist.record(st)
    last = hist.last
    big, _ = run_to_end(x, brain, f1, Mixer(), EngineConfig(tau=0.3, context_slices=2,
                                                             max_iter=4, batch_size=32, seed=1))
    assert np.array_equal(big.masks, last.masks)
    assert np.allclose(big.error, last.error, atol=1e-6)
    err, _ = reconstruct_at(x, brain, f1, Mixer(), cfg, hist, len(hist) - 1)
    assert np.allclose(err, last.error, atol=1e-6)
    given, _ = run_to_end(x, brain, f1, Mixer(), cfg, context=neighbour_slices(x, brain, 2))
    assert np.array_equal(given.masks, last.masks)
    with pytest.raises(ValueError, match="context must be"):
        run_to_end(x, brain, f1, Mixer(), cfg, context=neighbour_slices(x, brain, 1))
    flat, _ = run_to_end(x, brain, f1, Mixer(), EngineConfig(tau=0.3, max_iter=4, seed=1))
    assert not np.allclose(flat.error, last.error)  # the neighbours did count


def _context_card(k=1):
    card = new_card("ctx", "flair", "tiny")
    card.context_slices = k
    return card


def test_card_records_context_and_old_cards_keep_the_paper_net():
    card = _context_card(1)
    again = ModelCard.from_dict(card.to_dict())
    assert again.context_slices == 1
    assert EngineConfig.from_card(again).context_slices == 1
    assert "2.5-D masked net (1 neighbour slices per side)" in options_note(again)
    old = {k: v for k, v in card.to_dict().items() if k != "context_slices"}
    assert ModelCard.from_dict(old).context_slices == 0
    assert "2.5-D" not in options_note(ModelCard.from_dict(old))
    for bad in (3, 1.5, True):
        with pytest.raises(ModelError, match="context_slices"):
            ModelCard.from_dict({**card.to_dict(), "context_slices": bad})
    with pytest.raises(ModelError, match="first_step f1"):
        ModelCard.from_dict({**card.to_dict(), "first_step": "complementary"})
    bundle = ModelBundle.fresh(_context_card(2))
    first_conv = next(m for m in bundle.masked.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 6


def test_a_widened_2d_net_computes_what_it_did():
    from training.train import widen_input

    torch.manual_seed(0)
    flat = ModelBundle.fresh(new_card("a", "flair", "tiny")).masked
    for p in flat.parameters():
        torch.nn.init.normal_(p, std=0.1)
    wide = ModelBundle.fresh(_context_card(1)).masked
    wide.load_state_dict(widen_input(flat.state_dict(), wide.state_dict()))
    flat.eval(), wide.eval()
    inp = torch.randn(2, 2, G, G)
    with torch.no_grad():
        assert torch.allclose(flat(inp), wide(torch.cat([inp, torch.randn(2, 2, G, G)], 1)),
                              atol=1e-6)


class _Vol:
    def __init__(self, x, brain):
        self.x, self.brain = x, brain


def test_a_paper_protocol_slice_gets_what_it_gets_in_the_whole_scan():
    from conftest import perturbed_bundle
    from napari_itermask.pipeline import engine_config
    from training.evaluate import slice_loop

    ref = perturbed_bundle()
    bundle = ModelBundle.fresh(_context_card(1))
    bundle.card.tau, bundle.card.min_brain_pixels = 0.5, 20
    bundle.first.load_state_dict(ref.first.state_dict())
    torch.manual_seed(1)
    for p in bundle.masked.parameters():
        torch.nn.init.normal_(p, std=0.05)
    rng = np.random.default_rng(2)
    x, brain, _ = _volume(5)
    x = x + 0.2 * rng.standard_normal(x.shape).astype(np.float32)
    whole, _ = run_to_end(x, brain, *bundle.nets("fp32"), engine_config(bundle.card))
    for k in (0, 2, 4):
        _, last = slice_loop(bundle, _Vol(x, brain), k)
        assert np.array_equal(last.masks[0], whole.masks[k])
        assert np.allclose(last.error[0], whole.error[k], atol=1e-5)


@pytest.fixture(scope="module")
def context_data(tmp_path_factory):
    from training import prepare

    d = tmp_path_factory.mktemp("ctxdata")
    args = ["synth", "--modality", "flair", "--split", "train", "--n", "2", "--voxel-size",
            "3.0", "--grid", "64", "--pixel-size", "3.75", "--min-brain", "50"]
    prepare.main([*args, "--context-slices", "1", "-o", str(d / "ctx.npz")])
    prepare.main([*args, "-o", str(d / "flat.npz")])
    return d / "ctx.npz", d / "flat.npz"


def test_prepare_stores_each_slice_s_neighbours(context_data):
    from training.common import SliceSet

    ctx, flat = (SliceSet.load(p) for p in context_data)
    assert flat.context is None and flat.context_slices == 0
    assert ctx.context.shape == (len(ctx), 2) + ctx.x.shape[1:] and ctx.context_slices == 1
    assert ctx.meta["context_slices"] == 1
    # consecutive kept slices of one volume are each other's neighbours
    same = np.nonzero((ctx.volume_id[1:] == ctx.volume_id[:-1]))[0]
    hits = [i for i in same if np.array_equal(ctx.context[i + 1, 0], ctx.x[i].astype(np.float16)
                                              .astype(np.float32))]
    assert len(hits) > len(same) // 2
    assert np.array_equal(ctx.context_brain[hits[0] + 1, 0], ctx.brain[hits[0]])


def test_train_calibrate_and_refusals_with_context(context_data, tmp_path):
    from napari_itermask.models import load_bundle, save_bundle
    from training import calibrate, train

    ctx, flat = context_data
    base = ["--preset", "tiny", "--batch", "2", "--threads", "1"]
    with pytest.raises(SystemExit, match="prepare --context-slices 1"):
        train.main(["--train", str(flat), "--net", "masked", "--steps", "1", *base,
                    "--context-slices", "1", "--out", str(tmp_path / "bad")])
    # a 2-D bundle starts the 2.5-D net: its new first-layer weights start at zero
    from conftest import perturbed_bundle

    src = save_bundle(perturbed_bundle(), tmp_path / "flat_model")
    train.main(["--train", str(ctx), "--net", "masked", "--steps", "1", "--lr", "1e-12", *base,
                "--context-slices", "1", "--init-from", str(src), "--out", str(tmp_path / "w")])
    w = train.load_checkpoint(tmp_path / "w" / "masked.ckpt")["model"]
    first = next(v for k, v in w.items() if v.ndim == 4 and v.shape[1] == 4)
    assert first[:, 2:].abs().max() < 1e-9 and first[:, :2].abs().max() > 0
    run_dir = tmp_path / "run"
    train.main(["--train", str(ctx), "--net", "both", "--steps", "2", *base,
                "--context-slices", "1", "--out", str(run_dir)])
    out = tmp_path / "bundle"
    calibrate.main(["--run", str(run_dir), "--val", str(ctx), "--name", "c", "--modality",
                    "flair", "-o", str(out), "--max-slices", "5"])
    card = load_bundle(out).card
    assert card.context_slices == 1 and card.tau > 0 and card.threshold > 0
    assert card.training["masked"]["context_slices"] == 1
    with pytest.raises(SystemExit, match="--context-slices 1"):
        calibrate.main(["--run", str(run_dir), "--val", str(flat), "--name", "c", "--modality",
                        "flair", "-o", str(tmp_path / "b2"), "--max-slices", "5"])
    assert not (tmp_path / "b2").exists()


@pytest.mark.parametrize("script", ["prepare", "train"])
@pytest.mark.parametrize("value", ["3", "-1", "one"])
def test_context_slices_out_of_range_is_a_usage_error(script, value, tmp_path, capsys):
    import importlib

    mod = importlib.import_module(f"training.{script}")
    argv = (["synth", "--modality", "flair", "--split", "val", "--n", "1", "-o",
             str(tmp_path / "d.npz")] if script == "prepare"
            else ["--train", str(tmp_path / "d.npz"), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exc:
        mod.main([*argv, "--context-slices", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --context-slices: context_slices must be a whole number" in err, err
    assert not any(tmp_path.iterdir())

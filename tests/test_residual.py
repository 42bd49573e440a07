"""The standardised residual (core.residual): fit, scale map, loop, card, calibration."""

import json

import numpy as np
import pytest
import torch

from napari_itermask.core.engine import EngineConfig, History, reconstruct_at, run, run_to_end
from napari_itermask.core.residual import (
    ResidualScale,
    edge_distance,
    fit_residual_scale,
    xf_strength,
)

G = 32


def _square(n=1, lo=6, hi=26):
    b = np.zeros((n, G, G), bool)
    b[:, lo:hi, lo:hi] = True
    return b


def test_edge_distance_counts_pixels_to_the_outside():
    b = _square()
    d = edge_distance(b)[0]
    assert d[6, 10] == 1.0 and d[7, 10] == 2.0 and d[16, 16] == 10.0
    assert d[0, 0] == 0.0
    full = np.ones((1, 5, 5), bool)  # the grid's border counts as outside
    assert edge_distance(full)[0, 0, 2] == 1.0 and edge_distance(full)[0, 2, 2] == 3.0


def test_fit_recovers_known_expected_errors_and_standardises_them_to_one():
    rng = np.random.default_rng(0)
    brain = _square(4)
    xf = rng.normal(0, 1, brain.shape).astype(np.float32)
    dist = edge_distance(brain)
    # healthy errors: 4 on the brain's outer pixel, 1 inside, exponentially distributed
    mean = np.where(dist == 1, 4.0, 1.0)
    errors = rng.exponential(mean)
    masks = brain & (rng.random(brain.shape) < 0.8)
    rs = fit_residual_scale(errors, masks, xf, brain, n_xf_bins=2, min_pixels=50)
    scale = rs.scale_map(xf, brain)
    inner = brain & (dist > 1)
    edge = brain & (dist == 1)
    assert scale[edge].mean() / scale[inner].mean() == pytest.approx(4.0, rel=0.15)
    z = errors / scale
    assert z[edge].mean() == pytest.approx(z[inner].mean(), rel=0.15)
    assert np.all(scale[~brain] == 1.0)
    assert ResidualScale.from_dict(rs.to_dict()) == rs
    assert ResidualScale.from_dict({}) is None


def test_sparse_bins_take_their_rows_mean_and_validation_refuses_bad_tables():
    brain = _square(1)
    xf = np.zeros(brain.shape, np.float32)
    errors = np.ones(brain.shape)
    rs = fit_residual_scale(errors, brain, xf, brain, n_xf_bins=2, min_pixels=10_000)
    assert all(v == pytest.approx(1.0) for r in rs.expected for v in r)
    with pytest.raises(ValueError, match="ascending"):
        ResidualScale(xf_edges=(1.0, 0.5), dist_edges=(1.5,), expected=((1, 1),) * 3)
    with pytest.raises(ValueError, match="one value per bin"):
        ResidualScale(xf_edges=(1.0,), dist_edges=(1.5,), expected=((1, 1),))
    with pytest.raises(ValueError, match="> 0"):
        ResidualScale(xf_edges=(1.0,), dist_edges=(1.5,), expected=((1, 0), (1, 1)))
    with pytest.raises(ValueError, match="no masked"):
        fit_residual_scale(errors, ~brain, xf, brain)
    assert xf_strength(np.full((1, 4, 4), -2.0), 0.0).min() == 2.0


EDGE_ONLY = ResidualScale(xf_edges=(1e9,), dist_edges=(1.5,), expected=((9.0, 1.0), (9.0, 1.0)))


class EdgeAndLesionNet(torch.nn.Module):
    """Copies the scan, except that every masked pixel on the brain's outer edge gets error 4
    (a healthy pixel that is hard to reconstruct) and the masked lesion error 2.25."""

    def __init__(self, x, brain, lesion):
        super().__init__()
        self.x = torch.from_numpy(x)[:, None]
        self.edge = torch.from_numpy(edge_distance(brain) == 1)[:, None]
        self.lesion = torch.from_numpy(lesion)[:, None]

    def forward(self, inp):
        masked = inp[:, :1] != self.x
        out = self.x - 2.0 * (masked & self.edge) - 1.5 * (masked & self.lesion)
        return out


def test_the_loop_and_map_divide_by_the_expected_error():
    brain = _square(1)
    x = np.where(brain, 1.0, -3.0).astype(np.float32)
    lesion = np.zeros_like(brain)
    lesion[0, 14:18, 14:18] = True
    net = EdgeAndLesionNet(x, brain, lesion)
    first = lambda xf: net.x - 2.0 * net.edge - 1.5 * net.lesion  # noqa: E731
    plain, _ = run_to_end(x, brain, first, net, EngineConfig(tau=3.0, first_unmask=0.5))
    # τ = 3 between the lesion's 2.25 and the edge's 4: the edge stays masked, the lesion goes
    assert plain.masks[0][edge_distance(brain)[0] == 1].all() and not plain.masks[lesion].any()
    assert plain.error[0][6, 16] == pytest.approx(4.0)
    cfg = EngineConfig(tau=1.0, first_unmask=0.5, residual_scale=EDGE_ONLY)
    hist = History.start(brain, cfg.tau)
    states = []
    for st in run(x, brain, first, net, cfg):
        hist.record(st)
        states.append(st)
    # standardised: the edge's 4 / 9 is ordinary, the lesion's 2.25 / 1 is not
    assert (states[-1].masks == lesion).all()
    assert states[0].error[0][6, 16] == pytest.approx(4.0 / 9.0)  # the first step's map too
    assert states[1].error[0][6, 16] == pytest.approx(4.0 / 9.0)
    assert states[-1].error[0][15, 15] == pytest.approx(2.25)
    for st in states:
        err, _ = reconstruct_at(x, brain, first, net, cfg, hist, st.iteration)
        np.testing.assert_allclose(err, st.error, atol=1e-6)


def test_cards_carry_the_scale_and_old_cards_keep_the_plain_error(tmp_path):
    from napari_itermask.errors import ModelError
    from napari_itermask.models import ModelBundle, load_bundle, new_card, save_bundle
    from napari_itermask.models.card import ModelCard

    old = new_card("old", "flair", "tiny").to_dict()
    old.pop("residual_scale")
    assert EngineConfig.from_card(ModelCard.from_dict(old)).residual_scale is None
    card = new_card("std", "flair", "tiny")
    card.residual_scale = EDGE_ONLY.to_dict()
    folder = save_bundle(ModelBundle.fresh(card), tmp_path / "std")
    assert EngineConfig.from_card(load_bundle(folder).card).residual_scale == EDGE_ONLY
    d = json.loads((folder / "card.json").read_text())
    d["residual_scale"]["expected"] = [[1.0, -1.0], [1.0, 1.0]]
    (folder / "card.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="residual_scale"):
        load_bundle(folder)


def test_calibrate_standardise_fits_the_table_on_healthy_data(tmp_path):
    from napari_itermask.models import load_bundle, save_bundle
    from training import calibrate, prepare
    from conftest import perturbed_bundle

    data = tmp_path / "val.npz"
    prepare.main(["synth", "--modality", "flair", "--split", "val", "--n", "1",
                  "--voxel-size", "3.0", "-o", str(data), "--grid", "64", "--pixel-size",
                  "3.75", "--min-brain", "50"])
    src = save_bundle(perturbed_bundle(), tmp_path / "m")
    common = ["--val", str(data), "--modality", "flair", "--max-slices", "3"]
    calibrate.main(["--model", str(src), "--name", "p", "-o", str(tmp_path / "p"), *common])
    calibrate.main(["--model", str(src), "--name", "s", "-o", str(tmp_path / "s"),
                    "--standardise", *common])
    p, s = load_bundle(tmp_path / "p").card, load_bundle(tmp_path / "s").card
    assert p.residual_scale == {} and not p.tau_derivation["standardised"]
    rs = ResidualScale.from_dict(s.residual_scale)
    assert rs is not None and s.tau_derivation["standardised"]
    assert s.tau != p.tau and s.threshold != p.threshold


def test_the_no_iteration_threshold_reads_the_same_map_as_its_test_cases():
    """evaluate's first_error is the loop's first state, standardised like it (a healthy
    threshold taken on f1's plain error would not fit the maps it is applied to)."""
    from training.evaluate import first_error
    from conftest import perturbed_bundle

    rng = np.random.default_rng(1)
    brain = _square(3)
    x = np.where(brain, rng.normal(1, 0.5, brain.shape), -3).astype(np.float32)
    b = perturbed_bundle()
    b.card.min_brain_pixels = 5
    plain = first_error(b, x, brain)
    b.card.residual_scale = EDGE_ONLY.to_dict()
    std = first_error(b, x, brain)
    st = next(run(x, brain, b.first, b.masked, EngineConfig.from_card(b.card)))
    np.testing.assert_allclose(std, st.error, atol=1e-6)
    edge = brain & (edge_distance(brain) == 1)
    np.testing.assert_allclose(std[edge], plain[edge] / 9.0, rtol=1e-5)

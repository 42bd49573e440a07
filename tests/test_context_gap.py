"""The context gap (core.engine ``context_gap``): a fake net that paints a hole from the pixels
next to it erodes a lesion from its rim inwards; hiding a band around the mask stops that."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from napari_itermask.core.engine import EngineConfig, hole, run

G = 32


def _scan():
    brain = np.zeros((1, G, G), bool)
    brain[0, 4:28, 4:28] = True
    x = np.where(brain, 1.0, -3.0).astype(np.float32)
    lesion = np.zeros_like(brain)
    lesion[0, 11:19, 11:19] = True  # 8 × 8
    x[lesion] = 3.0
    return x, brain, lesion


class NeighbourPainter(torch.nn.Module):
    """Fills every hidden pixel that touches a visible brain pixel with the mean of its visible
    neighbours (3 × 3), and deeper hidden pixels with normal tissue (1.0): a net that paints a
    hole from its context. Records the holes it was given."""

    def __init__(self, x, brain):
        super().__init__()
        self.x, self.brain = torch.from_numpy(x)[:, None], torch.from_numpy(brain)[:, None]
        self.holes = []

    def forward(self, inp):
        hidden = (inp[:, :1] != self.x) & self.brain
        self.holes.append(hidden.clone())
        seen = (~hidden & self.brain).float()
        k = torch.ones(1, 1, 3, 3)
        total = F.conv2d(self.x * seen, k, padding=1)
        count = F.conv2d(seen, k, padding=1)
        painted = torch.where(count > 0, total / count.clamp(min=1), torch.ones_like(total))
        return torch.where(hidden, painted, self.x)


def _first(x, lesion):
    """f1 that errs on the lesion's core only (its 1-px rim looks normal to it): the first step
    keeps the 6 × 6 core and a share of normal tissue masked."""
    core = np.zeros_like(lesion)
    core[0, 12:18, 12:18] = True
    out = torch.from_numpy(np.where(core, 0.0, x).astype(np.float32))[:, None]
    return lambda xf: out


def test_the_hole_is_the_mask_grown_within_the_brain():
    _, brain, lesion = _scan()
    m = torch.from_numpy(lesion)[:, None]
    b = torch.from_numpy(brain)[:, None]
    assert torch.equal(hole(m, b, 0), m)
    h = hole(m, b, 2)[0, 0].numpy()
    assert h[9:21, 9:21].all() and h.sum() == 12 * 12
    edge = torch.zeros_like(b)
    edge[0, 0, 4, 4] = True  # a corner pixel of the brain: the grown hole stays in the brain
    assert (hole(edge, b, 3) <= b).all() and hole(edge, b, 3).sum() == 16


def test_without_a_gap_the_lesion_erodes_and_with_one_it_stays():
    x, brain, lesion = _scan()
    cfg = dict(tau=1.0, first_unmask=0.4, max_iter=10)
    paper = list(run(x, brain, _first(x, lesion), NeighbourPainter(x, brain), EngineConfig(**cfg)))
    # the core's outer ring touches the visible lesion rim, is painted 3.0 and unmasked; ring by
    # ring the whole core follows
    assert paper[0].masks[lesion].sum() == 36 and not paper[-1].masks.any()
    net = NeighbourPainter(x, brain)
    gap = list(run(x, brain, _first(x, lesion), net, EngineConfig(**cfg, context_gap=2)))
    assert (gap[-1].masks == (gap[0].masks & lesion)).all() and gap[-1].masks.sum() == 36
    # the net saw holes two pixels wider than the masks; τ judged only the masks' pixels
    for h, st in zip(net.holes, gap):
        want = hole(torch.from_numpy(st.masks)[:, None], torch.from_numpy(brain)[:, None], 2)
        assert torch.equal(h, want)
    # the reported map covers the hidden band too: the lesion's rim shows its error again
    assert (gap[-1].error[lesion] > 1.0).all()
    with pytest.raises(ValueError, match="context_gap"):
        EngineConfig(tau=1.0, context_gap=-1)


def test_cards_carry_the_gap():
    from napari_itermask.errors import ModelError
    from napari_itermask.models import new_card
    from napari_itermask.models.card import ModelCard

    card = new_card("g", "t2", "tiny")
    assert EngineConfig.from_card(card).context_gap == 0
    d = card.to_dict()
    d.pop("context_gap")  # a card from before the option
    assert EngineConfig.from_card(ModelCard.from_dict(d)).context_gap == 0
    assert EngineConfig.from_card(ModelCard.from_dict({**d, "context_gap": 3})).context_gap == 3
    with pytest.raises(ModelError, match="context_gap"):
        ModelCard.from_dict({**d, "context_gap": 40})


def test_users_are_told_every_option_beyond_the_paper():
    from napari_itermask.models import new_card, options_note

    card = new_card("p", "t2", "tiny")
    assert options_note(card) == "" and options_note(card.to_dict()) == ""
    card.context_gap, card.error_smoothing, card.error_polarity = 2, 1.0, "bright"
    card.residual_scale = {"xf_edges": [1.0], "dist_edges": [1.5], "expected": [[1, 1], [1, 1]]}
    card.first_step, card.masked_guidance = "both", False
    card.radius_conditioning = {"low": 15, "high": 40, "trained": [15, 40]}
    note = options_note(card)
    for words in ("bright deviations only", "smoothed (σ 1 px)", "context gap 2 px",
                  "standardised residual", "radius-conditioned", "first step: both",
                  "without x_f"):
        assert words in note
    assert options_note(card.to_dict()) == note


@pytest.mark.parametrize("bad", [-1, 17, 2.5, True, "2"])
def test_one_bound_for_card_engine_and_calibrate(bad):
    """The card, the engine's configuration and ``calibrate --context-gap`` refuse the same
    values with the same words (``core.context_gap``)."""
    from napari_itermask.core.context_gap import CONTEXT_GAPS, check_context_gap
    from napari_itermask.errors import ModelError
    from napari_itermask.models import new_card
    from napari_itermask.models.card import ModelCard
    from training import calibrate

    assert check_context_gap(16) == 16 and check_context_gap(np.int64(3)) == 3
    assert check_context_gap(2.0) == 2 and list(CONTEXT_GAPS) == list(range(17))
    words = "context_gap must be a whole number of pixels from 0 to 16"
    with pytest.raises(ValueError, match=words):
        check_context_gap(bad)
    with pytest.raises(ValueError, match=words):
        EngineConfig(tau=1.0, context_gap=bad)
    # the card checks a JSON whole number first (its own words), then the same bound
    with pytest.raises(ModelError, match=words if bad == 17 else "context_gap"):
        ModelCard.from_dict({**new_card("g", "t2", "tiny").to_dict(), "context_gap": bad})
    if isinstance(bad, int) and not isinstance(bad, bool):  # argparse gives calibrate an int
        with pytest.raises(SystemExit, match=words):
            calibrate.main(["--model", "nothing-here", "--val", "nothing.npz", "--name", "g",
                            "--modality", "t2", "-o", "out", "--context-gap", str(bad)])

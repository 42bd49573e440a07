"""Data-only sanity check of the glioma stratum against real BraTS, in the paper protocol.

On real BraTS FLAIR a plain global intensity threshold reaches a best-threshold Dice of 0.738
(docs/benchmark.md §2). The synthetic glioma FLAIR stratum, scored the same way (paper protocol:
the central-slab slice with the largest lesion, the reference's label rule, one global threshold
tuned on the labels), must land in 0.65-0.85: above it the synthetic normal FLAIR would be too
clean to say anything about real scans. No network is involved.
"""

from __future__ import annotations

import numpy as np

from napari_itermask import synth
from training import protocols
from training.evaluate import intensity_score
from training.strata import TUNING_SEEDS, paper_slice


def _paper_slices(n: int, modality: str = "flair"):
    out = []
    for i in range(n):
        case = synth.make_case(modality, TUNING_SEEDS + i, stratum="glioma", voxel_size=1.875)
        vol, lab, k = paper_slice(case)
        assert k is not None, "every glioma crosses the central slab"
        br = vol.brain[k]
        score = intensity_score(vol.x[k:k + 1], br[None], modality)[0]
        out.append((np.where(br, score, score[br].min()), lab[k] & br, br))
    return out


def test_intensity_threshold_on_glioma_flair_is_in_the_real_brats_range():
    tuned = protocols.sweep_global_threshold(_paper_slices(16))
    assert 0.65 <= tuned.mean_dice <= 0.85, tuned.mean_dice

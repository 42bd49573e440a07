"""`training.prepare` options of the benchmark: central-slab slices, anatomy pools, strata."""

from __future__ import annotations

import numpy as np
import pytest

from napari_itermask.core.metrics import CENTRAL_SLAB
from training import prepare
from training.common import SliceSet

GRID = ["--grid", "64", "--pixel-size", "3.75", "--min-brain", "50", "--voxel-size", "3.0"]


def _prep(tmp_path, name, *extra):
    out = tmp_path / f"{name}.npz"
    prepare.main(["synth", "--modality", "flair", "--split", "train", "--n", "1",
                  "-o", str(out), *GRID, *extra])
    return SliceSet.load(out)


def test_central_slab_keeps_only_the_slab_and_says_so(tmp_path):
    every = _prep(tmp_path, "all")
    slab = _prep(tmp_path, "slab", "--slab", "central")
    assert every.meta["slices"] == "all" and slab.meta["slices"] == list(CENTRAL_SLAB)
    assert 0 < len(slab) < 0.3 * len(every)
    # the slab's slices are a contiguous run of the full set's, around its middle
    idx = [int(np.flatnonzero((every.x == s).all(axis=(1, 2)))[0]) for s in slab.x]
    assert idx == list(range(idx[0], idx[0] + len(idx)))
    assert 0.25 * len(every) < idx[0] < 0.75 * len(every)


def test_anatomies_cycle_and_are_recorded(tmp_path):
    ds = _prep(tmp_path, "pool", "--anatomies", "icbm152")
    assert ds.meta["anatomies"] == ["icbm152"]
    with pytest.raises(SystemExit, match="anatomies"):
        _prep(tmp_path, "bad", "--anatomies", "icbm152,nowhere")


def test_lesioned_sets_follow_the_stratum(tmp_path):
    out = tmp_path / "g.npz"
    prepare.main(["synth", "--modality", "flair", "--split", "val", "--n", "1", "--lesions",
                  "--stratum", "glioma", "-o", str(out), *GRID])
    ds = SliceSet.load(out)
    assert ds.meta["stratum"] == "glioma" and ds.label.sum() > 100  # one large tumour

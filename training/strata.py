"""Statistics of a synthetic lesion stratum on seeds outside every split (no network involved).

The strata's generator parameters may be tuned only against these statistics, on these seeds
(``TUNING_SEEDS``: never used for training, validation or test): the share of cases per size bin
of the largest lesion slice of the central slab on the model grid (the paper protocol's slice),
lesion volumes, and how many cases have no lesion in the slab.

  python -m training.strata --stratum glioma --n 50
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_itermask import synth
from napari_itermask.core.metrics import SIZE_BINS
from napari_itermask.volume import scan_from_array, to_model_grid

from . import protocols
from .evaluate import model_grid_label

TUNING_SEEDS = 950_000  # seeds 950000 + i: outside the train / val / test ranges


def paper_slice(case):
    """The paper protocol's view of a case, by the protocol's own code: the case on the model
    grid (``to_model_grid`` with its default grid), its label there by the reference's rule
    (``evaluate.model_grid_label``) and the chosen central-slab slice (``protocols.choose_slice``;
    None when no slab slice has lesion)."""
    vol = to_model_grid(scan_from_array(case.image, case.affine))
    lab = model_grid_label(vol.geometry, case.label > 0)
    n = len(lab)
    k = protocols.choose_slice(lab.reshape(n, -1).sum(1), vol.brain.reshape(n, -1).sum(1))
    return vol, lab, k


def largest_slab_area(case) -> int:
    """Lesion pixels of the paper protocol's slice (0 when the slab holds no lesion)."""
    _, lab, k = paper_slice(case)
    return 0 if k is None else int(lab[k].sum())


def size_shares(areas) -> tuple[float, float, float]:
    a = np.asarray(areas, float)
    lo, hi = SIZE_BINS
    n = max(len(a), 1)
    return (float((a < lo).sum() / n), float(((a >= lo) & (a <= hi)).sum() / n),
            float((a > hi).sum() / n))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stratum", default="glioma", choices=synth.STRATA)
    p.add_argument("--modality", default="flair", choices=synth.MODALITIES)
    p.add_argument("--anatomy", default="icbm152")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--voxel-size", type=float, default=1.5)
    a = p.parse_args(argv)
    best, vols, empty = [], [], 0
    for i in range(a.n):
        c = synth.make_case(a.modality, TUNING_SEEDS + i, stratum=a.stratum, anatomy=a.anatomy,
                            voxel_size=a.voxel_size)
        area = largest_slab_area(c)
        vols.append(c.label.sum() * a.voxel_size**3 / 1000.0)
        if area == 0:
            empty += 1
            continue
        best.append(area)
    s = size_shares(best)
    print(f"{a.stratum} / {a.anatomy}: {a.n} cases, {empty} without lesion in the slab")
    print(f"largest slab slice (px at 128²): median {np.median(best):.0f}, "
          f"shares <200 / 200-800 / >800: {s[0]:.2f} / {s[1]:.2f} / {s[2]:.2f}")
    print(f"lesion volume (mL): median {np.median(vols):.1f}, "
          f"10-90 %: {np.percentile(vols, 10):.1f}-{np.percentile(vols, 90):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

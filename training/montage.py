"""Render a montage of synthetic cases from ``napari_itermask.synth``.

Rows are the modalities (FLAIR, T1, T2).  The first column is a healthy case
(mid-axial slice); then, for every seed, the axial slice through that case's
largest lesion, shown plain and, next to it, a copy with the lesion outline.
Display is radiological (patient's right on the viewer's left), anterior up.

    python training/montage.py -o montage.png --seeds 0 1 2 --voxel-size 1.5
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

try:
    from napari_itermask import synth
except ImportError:  # running from a source checkout without installation
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))
    from napari_itermask import synth


def _axial(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice in radiological display orientation (anterior up)."""
    return vol[:, :, z].T[::-1, ::-1]


def _lesion_slice(case: synth.SynthCase) -> int:
    if not case.lesions or not case.label.any():
        idx = np.argwhere(case.brain)
        return int(round((idx[:, 2].min() + idx[:, 2].max()) * 0.55))
    big = max(case.lesions, key=lambda d: d["volume_ml"])
    inv = np.linalg.inv(case.affine)
    z = int(round((inv[:3, :3] @ np.asarray(big["centre_mm"]) + inv[:3, 3])[2]))
    z = min(max(z, 0), case.label.shape[2] - 1)
    if not case.label[:, :, z].any():  # fall back to the slice with most lesion
        z = int(np.argmax(case.label.sum((0, 1))))
    return z


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="PNG file to write")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="seeds of the lesioned cases (default: 0 1 2)")
    ap.add_argument("--healthy-seed", type=int, default=1000,
                    help="seed of the healthy case (default: 1000)")
    ap.add_argument("--voxel-size", type=float, default=1.5, help="mm (default 1.5)")
    ap.add_argument("--dpi", type=int, default=80)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 1 + 2 * len(args.seeds)
    nrow = len(synth.MODALITIES)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.1 * ncol, 2.5 * nrow), squeeze=False)
    fig.patch.set_facecolor("black")
    for r, mod in enumerate(synth.MODALITIES):
        cases = [synth.make_healthy(mod, args.healthy_seed, voxel_size=args.voxel_size)]
        cases += [synth.make_case(mod, s, voxel_size=args.voxel_size) for s in args.seeds]
        panels = [(cases[0], False)]
        for c in cases[1:]:
            panels += [(c, False), (c, True)]
        for col, (case, outline) in enumerate(panels):
            ax = axes[r, col]
            z = _lesion_slice(case)
            img = _axial(case.image, z)
            inside = case.image[case.brain]
            vmax = float(np.percentile(inside, 99.8)) if inside.size else 1.0
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax, interpolation="bilinear")
            if outline and case.label[:, :, z].any():
                ax.contour(_axial(case.label, z).astype(float), levels=[0.5],
                           colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if r == 0:
                title = "healthy" if col == 0 else f"seed {case.seed}"
                title += " + label" if outline else ""
                ax.set_title(title, color="white", fontsize=9)
            if col == 0:
                ax.set_ylabel(mod.upper(), color="white", fontsize=10)
    fig.subplots_adjust(left=0.03, right=0.995, top=0.94, bottom=0.005, wspace=0.02, hspace=0.02)
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Skull stripping candidates against reference brain masks on real heads (docs/skullstrip.md).

Heads (none of them used by any candidate): the SRI24 atlas with skull (reference: its
skull-stripped version) and ITK's real subject (reference: its skull-strip mask), each as the
real T1 and as synthetic T2- and FLAIR-contrast heads made from it (``synthetic_contrast``).
Needs ``python -m training.data`` to have fetched ``data/anatomy/``.

Candidates:

* ``template``: ``napari_itermask.skullstrip.registered_mask`` (MNI152 head, affine
  registration): the path before the boundary refinement;
* ``template+refine``: ``brain_mask`` as it is now, the same registration then
  ``refine_boundary`` (registered once per head: its seconds are the registration's plus the
  refinement's);
* ``brainextractor``: the BET-style surface extractor from PyPI, run in the Python given by
  ``--bet-python`` (it pulls in numba, trimesh and pyrender, so it lives in its own venv);
  left out without that option.

Prints one row per head and candidate: Dice, sensitivity, precision, seconds, and the mean.

    OMP_NUM_THREADS=1 python benchmarks/skullstrip.py --threads 1 --bet-python /tmp/bxenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HEADS = {
    "sri24": ("sri24/t1_brats_space.nii", "sri24/t1_skullstripped_brats_space.nii"),
    "itk_subject": ("itk_subject/KmeansTest_T1UCharRaw.nii.gz",
                    "itk_subject/KmeansTest_T1RawSkullStrip.nii.gz"),
}

_BET = r"""
import sys, nibabel as nib, numpy as np
from brainextractor import BrainExtractor
img = nib.load(sys.argv[1])
bet = BrainExtractor(img=img)
bet.run()
bet.save_mask(sys.argv[2])
"""


def anatomy_dir() -> Path:
    return Path(os.environ.get("ITERMASK_ANATOMY_DIR", ROOT / "data" / "anatomy"))


def load_head(name: str):
    """(data, affine, reference brain on the head's grid)."""
    head_f, ref_f = HEADS[name]
    head = nib.load(str(anatomy_dir() / head_f))
    data = np.asarray(head.dataobj, dtype=np.float32)
    data = data[..., 0] if data.ndim == 4 else data
    ref = nib.load(str(anatomy_dir() / ref_f))
    ref_arr = np.asarray(ref.dataobj, dtype=np.float32)
    ref_arr = ref_arr[..., 0] if ref_arr.ndim == 4 else ref_arr
    # the two files may store mirrored arrays with compensating affines: go through world space
    ref_on_head = resample_from_to(nib.Nifti1Image(ref_arr, ref.affine), (data.shape, head.affine),
                                   order=0).get_fdata() > 0
    return data, head.affine, ref_on_head


# T1 intensity (relative to white matter = 1) → the other contrast, inside the brain and its
# CSF rim, and outside it (skull, air, scalp: no CSF there).
_KNOTS = [0.0, 0.3, 0.55, 0.75, 1.0, 1.6]
_INSIDE = {"t2": [0.0, 1.0, 0.95, 0.65, 0.4, 0.55], "flair": [0.0, 0.12, 0.25, 0.7, 0.5, 0.6]}
_OUTSIDE = {"t2": [0.0, 0.1, 0.3, 0.5, 0.6, 0.8], "flair": [0.0, 0.1, 0.3, 0.45, 0.5, 0.7]}


def synthetic_contrast(data, affine, brain, contrast: str, seed: int = 0) -> np.ndarray:
    """A T2- or FLAIR-looking head from a T1 head: piecewise-linear intensity maps (CSF bright
    in T2 and dark in FLAIR, white matter darker than grey in both), one map inside the brain
    and a 3 mm rim of CSF around it, another for skull and scalp, 2 % Rician-like noise."""
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    wm = float(np.percentile(data[brain], 90))
    t = data / max(wm, 1e-6)
    rim = ndimage.binary_dilation(brain, iterations=max(1, round(3 / vox.min()))) & ~brain
    inside = brain | (rim & (t < 0.55))  # dark voxels right outside the brain: CSF
    out = np.where(inside, np.interp(t, _KNOTS, _INSIDE[contrast]),
                   np.interp(t, _KNOTS, _OUTSIDE[contrast]))
    out = np.where(data > 0, out, 0.0)
    rng = np.random.default_rng(seed)
    s = 0.02
    out = np.hypot(out + rng.normal(0, s, out.shape), rng.normal(0, s, out.shape))
    return (out * 1000).astype(np.float32)


def dice(a, b) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def run_template(data, affine, threads):
    """(registered mask, its seconds, refined mask, the refinement's seconds)."""
    from napari_itermask.skullstrip import refine_boundary, registered_mask

    t0 = time.perf_counter()
    reg = registered_mask(data, affine, threads=threads)
    t1 = time.perf_counter()
    refined = refine_boundary(data, reg, affine)
    return reg, t1 - t0, refined, time.perf_counter() - t1


def run_bet(data, affine, python):
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "head.nii.gz", Path(tmp) / "mask.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(src))
        done = subprocess.run([python, "-c", _BET, str(src), str(dst)], capture_output=True,
                              text=True, check=False,
                              env={**os.environ, "NUMBA_NUM_THREADS": "1"})
        if done.returncode:
            raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
        return np.asarray(nib.load(str(dst)).dataobj) > 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="SimpleITK threads (default 1)")
    ap.add_argument("--bet-python", help="a Python with brainextractor installed")
    ap.add_argument("--heads", nargs="*", default=list(HEADS))
    ap.add_argument("--contrasts", nargs="*", default=["t1", "t2", "flair"])
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    except ImportError:
        pass
    candidates = {"template": None, "template+refine": None}  # both from run_template
    if args.bet_python:
        candidates["brainextractor"] = lambda d, a: run_bet(d, a, args.bet_python)
    rows = []
    print(f"{'head':<30}{'candidate':<16}{'Dice':>7}{'sens':>7}{'prec':>7}{'s/head':>8}")
    for name in args.heads:
        data, affine, ref = load_head(name)
        vox = "x".join(f"{v:g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
        for contrast in args.contrasts:
            img = data if contrast == "t1" else synthetic_contrast(data, affine, ref, contrast)
            try:
                reg, t_reg, refined, t_ref = run_template(img, affine, args.threads)
                done = {"template": (reg, t_reg, None),
                        "template+refine": (refined, t_reg + t_ref, None)}
            except Exception as exc:  # noqa: BLE001 - a failing candidate is a row
                why = f"{type(exc).__name__}: {exc}"[:80]
                done = {c: (np.zeros_like(ref), 0.0, why) for c in ("template",
                                                                    "template+refine")}
            for cand, fn in candidates.items():
                if fn is None:
                    m, dt, err = done[cand]
                else:
                    t0 = time.perf_counter()
                    try:
                        m = fn(img, affine)
                        err = None
                    except Exception as exc:  # noqa: BLE001 - a failing candidate is a row, not the end of the table
                        m, err = np.zeros_like(ref), f"{type(exc).__name__}: {exc}"[:80]
                    dt = time.perf_counter() - t0
                tp = float((m & ref).sum())
                row = dict(head=f"{name}/{contrast} ({vox} mm)", candidate=cand, dice=dice(m, ref),
                           sens=tp / max(1, ref.sum()), prec=tp / max(1, m.sum()), seconds=dt,
                           error=err)
                rows.append(row)
                print(f"{row['head']:<30}{cand:<16}{row['dice']:7.3f}{row['sens']:7.3f}"
                      f"{row['prec']:7.3f}{dt:8.1f}" + (f"  {err}" if err else ""), flush=True)
    for cand in candidates:
        mine = [r for r in rows if r["candidate"] == cand]
        print(f"{'mean':<30}{cand:<16}{np.mean([r['dice'] for r in mine]):7.3f}"
              f"{np.mean([r['sens'] for r in mine]):7.3f}{np.mean([r['prec'] for r in mine]):7.3f}"
              f"{np.mean([r['seconds'] for r in mine]):8.1f}  min Dice "
              f"{min(r['dice'] for r in mine):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

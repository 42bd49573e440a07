"""Prepare healthy 2-D training slices on the model grid.

Sources:
  synth  — synthetic healthy brains (napari_itermask.synth) from a seed range per split
  folder — a folder of healthy, skull-stripped NIfTI scans (every slice with enough brain)
  brats  — a BraTS 2021 folder (BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz):
           axial slices without any tumour voxel; p90 normalisation (docs/method.md §1)

Every source goes through the same volume pipeline as inference (napari_itermask.volume), so
training and inference see identically prepared slices.

Examples:
  python -m training.prepare synth --modality flair --split train --n 60 -o data/flair_train.npz
  python -m training.prepare synth --modality flair --split val --n 8 -o data/flair_val.npz
  python -m training.prepare brats /data/BraTS2021 --modality flair -o data/brats_flair.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_itermask.core.metrics import CENTRAL_SLAB, slab_slices
from napari_itermask.core.net_input import neighbour_slices
from napari_itermask.models import ModelCard
from napari_itermask.names import is_nifti
from napari_itermask.volume import load_scan, scan_from_array, to_model_grid

from .common import SliceSet, context_slices_arg, log, split_seeds

DEFAULTS = ModelCard(name="_", modality="_", preset="small", unet={})


def grid_kwargs(args) -> dict:
    return dict(grid=args.grid, pixel_size_mm=args.pixel_size, normalisation=args.normalisation)


def _keep(vol, min_brain: int, exclude=None, slab: str = "all"):
    """Slices with enough brain, minus ``exclude``; with ``slab="central"`` only those of the
    central slab (``core.metrics.CENTRAL_SLAB``), as the reference trains on its test slab."""
    n_brain = vol.brain.reshape(len(vol.brain), -1).sum(1)
    keep = n_brain >= min_brain
    if exclude is not None:
        keep &= ~exclude
    if slab == "central":
        in_slab = np.zeros(len(keep), bool)
        in_slab[slab_slices(n_brain)] = True
        keep &= in_slab
    return np.nonzero(keep)[0]


def neighbours(vol, idx, k: int):
    """(context, context brains), each (len(idx), 2k, G, G): the model-grid slices at the
    ``context_offsets(k)`` of each kept slice, whether or not they were kept themselves (the
    loop's neighbours are the scan's slices too); zeros / False beyond the volume. (None, None)
    for k = 0."""
    if not k:
        return None, None
    return neighbour_slices(vol.x, vol.brain, k, idx=idx)


def _stack(parts):
    return None if not parts or parts[0] is None else np.concatenate(parts)


def slab_meta(slab: str):
    """How the slices were selected, for the data description in the model card."""
    return list(CENTRAL_SLAB) if slab == "central" else "all"


def from_synth(modality: str, seeds, args, *, lesions: bool = False) -> SliceSet:
    """Synthetic brains; seed i uses anatomy ``anatomies[i % len(anatomies)]``."""
    from napari_itermask import synth

    anatomies = [a.strip() for a in args.anatomies.split(",") if a.strip()]
    bad = [a for a in anatomies if a not in synth.ANATOMIES]
    if not anatomies or bad:
        raise SystemExit(f"--anatomies must name some of {', '.join(synth.ANATOMIES)}")
    xs, bs, ls, vids, cxs, cbs = [], [], [], [], [], []
    for i, seed in enumerate(seeds):
        anatomy = anatomies[i % len(anatomies)]
        case = synth.make_case(modality, seed, n_lesions=None if lesions else 0,
                               stratum=args.stratum, anatomy=anatomy,
                               voxel_size=args.voxel_size)
        scan = scan_from_array(case.image, case.affine, name=f"synth{seed}")
        vol = to_model_grid(scan, **grid_kwargs(args))
        idx = _keep(vol, args.min_brain, slab=args.slab)
        xs.append(vol.x[idx])
        bs.append(vol.brain[idx])
        vids.append(np.full(len(idx), i))
        cx, cb = neighbours(vol, idx, args.context_slices)
        cxs.append(cx), cbs.append(cb)
        if lesions:
            lab = vol.geometry.to_model(case.label.astype(np.float32), order=1) > 0.5
            ls.append(lab[idx] & vol.brain[idx])
        log(f"synth {modality} seed {seed} ({anatomy}): {len(idx)} slices")
    meta = {"source": "synth", "modality": modality, "seeds": list(map(int, seeds)),
            "voxel_size": args.voxel_size, "lesions": lesions, **grid_kwargs(args),
            "min_brain_pixels": args.min_brain, "anatomies": anatomies,
            "slices": slab_meta(args.slab), "context_slices": args.context_slices}
    if lesions:
        meta["stratum"] = args.stratum
    return SliceSet(np.concatenate(xs), np.concatenate(bs), meta,
                    np.concatenate(ls) if lesions else None, np.concatenate(vids),
                    _stack(cxs), _stack(cbs))


def from_folder(folder: Path, args) -> SliceSet:
    files = sorted(p for p in folder.iterdir() if is_nifti(p))
    if not files:
        raise SystemExit(f"no NIfTI files in {folder}")
    xs, bs, vids, cxs, cbs = [], [], [], [], []
    for i, f in enumerate(files):
        vol = to_model_grid(load_scan(f), **grid_kwargs(args))
        idx = _keep(vol, args.min_brain, slab=args.slab)
        xs.append(vol.x[idx]), bs.append(vol.brain[idx]), vids.append(np.full(len(idx), i))
        cx, cb = neighbours(vol, idx, args.context_slices)
        cxs.append(cx), cbs.append(cb)
        log(f"{f.name}: {len(idx)} slices")
    meta = {"source": "folder", "folder": str(folder), "files": [f.name for f in files],
            **grid_kwargs(args), "min_brain_pixels": args.min_brain,
            "slices": slab_meta(args.slab), "context_slices": args.context_slices}
    return SliceSet(np.concatenate(xs), np.concatenate(bs), meta, None, np.concatenate(vids),
                    _stack(cxs), _stack(cbs))


def from_brats(folder: Path, modality: str, args) -> SliceSet:
    import nibabel as nib

    cases = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("BraTS"))
    if not cases:
        raise SystemExit(f"no BraTS case folders in {folder}")
    if args.limit:
        cases = cases[: args.limit]
    xs, bs, vids, cxs, cbs = [], [], [], [], []
    for i, case in enumerate(cases):
        img = case / f"{case.name}_{modality}.nii.gz"
        seg = case / f"{case.name}_seg.nii.gz"
        if not img.exists() or not seg.exists():
            log(f"{case.name}: missing {modality} or seg, skipped")
            continue
        scan = load_scan(img)
        vol = to_model_grid(scan, **grid_kwargs(args))
        tumour = np.asarray(nib.load(str(seg)).dataobj) > 0
        t_model = vol.geometry.to_model(tumour.astype(np.float32), order=1, antialias=False) > 0
        has_tumour = t_model.reshape(len(t_model), -1).any(1)
        idx = _keep(vol, args.min_brain, exclude=has_tumour, slab=args.slab)
        xs.append(vol.x[idx]), bs.append(vol.brain[idx]), vids.append(np.full(len(idx), i))
        cx, cb = neighbours(vol, idx, args.context_slices)  # neighbours may hold tumour
        cxs.append(cx), cbs.append(cb)
        log(f"{case.name}: {len(idx)} tumour-free slices")
    if not xs:
        raise SystemExit("no usable BraTS cases")
    meta = {"source": "brats", "folder": str(folder), "modality": modality,
            "cases": [c.name for c in cases], **grid_kwargs(args),
            "min_brain_pixels": args.min_brain, "slices": slab_meta(args.slab),
            "context_slices": args.context_slices}
    return SliceSet(np.concatenate(xs), np.concatenate(bs), meta, None, np.concatenate(vids),
                    _stack(cxs), _stack(cbs))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["synth", "folder", "brats"])
    p.add_argument("path", nargs="?", help="folder for the folder/brats sources")
    p.add_argument("-o", "--output", required=True, help="output .npz (a .json sits beside it)")
    p.add_argument("--modality", default="flair", choices=["flair", "t1", "t2", "t1ce"])
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="synthetic seed range (test seeds are never used for training)")
    p.add_argument("--n", type=int, default=60, help="number of synthetic brains")
    p.add_argument("--lesions", action="store_true", help="synthetic brains with lesions")
    p.add_argument("--stratum", default="subtle", choices=["glioma", "stroke", "subtle"],
                   help="lesion stratum of --lesions sets (docs/benchmark.md)")
    p.add_argument("--anatomies", default="icbm152",
                   help="comma-separated healthy anatomies the synthetic brains cycle through "
                        "(icbm152, sri24, mni152, itk_subject; keep one out for the "
                        "leave-one-anatomy-out test)")
    p.add_argument("--slab", default="all", choices=["all", "central"],
                   help="keep every slice with enough brain, or only the central slab's "
                        "(the reference's training data; recorded in the card)")
    p.add_argument("--voxel-size", type=float, default=1.5, help="synthetic voxel size (mm)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N BraTS cases")
    p.add_argument("--grid", type=int, default=DEFAULTS.grid_size)
    p.add_argument("--pixel-size", type=float, default=DEFAULTS.pixel_size_mm)
    p.add_argument("--normalisation", default=DEFAULTS.normalisation, choices=["p90", "zscore"])
    p.add_argument("--min-brain", type=int, default=DEFAULTS.min_brain_pixels,
                   help="minimum brain pixels for a slice to be kept")
    p.add_argument("--context-slices", type=context_slices_arg, default=0, metavar="K",
                   help="also store each slice's K axial neighbours per side, for a 2.5-D "
                        "masked net (train --context-slices K)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.source == "synth":
        ds = from_synth(args.modality, split_seeds(args.split, args.n), args,
                        lesions=args.lesions)
        ds.meta["split"] = args.split
    elif args.path is None:
        raise SystemExit(f"the {args.source} source needs a folder")
    elif args.source == "folder":
        ds = from_folder(Path(args.path), args)
    else:
        ds = from_brats(Path(args.path), args.modality, args)
    out = ds.save(args.output)
    log(f"wrote {len(ds)} slices to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

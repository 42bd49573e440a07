"""Evaluate a model bundle on lesioned test volumes, side by side with baselines.

Test data: synthetic volumes with lesions from the *test* seed range (never used for training
or calibration), or a folder of NIfTI scans with ``*_label.nii.gz`` ground truth beside them.

Methods (every threshold from healthy validation slices at the same false-positive rate):
  itermask      the full shrink loop; final error map (docs/method.md §6–7); card threshold
  no-iteration  ablation: the first network's error only, (x − f1(x_f))² ("-spat" in the paper)
  itermask -freq  ablation (``--no-freq-model``): a bundle whose masked net was trained without
                x_f (``train --no-guidance``), calibrated the same way; its own card threshold
  LABEL         (``--variant LABEL=MODEL[@PRECISION]``, repeatable) any other bundle on the same
                cases, e.g. the x_f-guided model where the shipped one is unguided; its own card
                threshold (and error polarity), in its card's precision or the one named
  intensity     no network: the normalised intensity itself (bright for FLAIR/T2, dark for T1)

Every method's score map is smoothed with the model's ``error_smoothing`` σ (0 = none, the
paper) and ignores the brain's outer ``error_rim`` pixels (0 = none, the paper), healthy
thresholds included; the AE, DAE and no-iteration maps count the same ``error_polarity``
deviations as the loop (both signs in the paper): no option favours one method.

Two scoring protocols (``--protocol``, default both):

clinical  what a user of the plugin meets: the whole scan, 3-D Dice / sensitivity / precision per
          volume at the honest threshold; per-slice Dice; Dice by lesion size (pixels at 128²:
          < 200, 200–800, > 800); normal-tissue SSIM; lesion-wise detection rate. Separately
          labelled *optimistic* modes: per-image best threshold (an oracle, as the paper's grey
          cells) and, with ``--rising-tau``, per-image best iteration while τ rises whenever the
          mask stalls (docs/method.md §8).
paper     the reference's Table 1 (docs/method.md §11): one axial slice per case, the one with most
          lesion in the central slab (``protocols.CENTRAL_SLAB``), on the model grid, label =
          any partial-volume lesion after area resizing; cases without lesion there are dropped.
          The loop runs on that slice only (normalised with its whole volume, as for a scan).
          Mean slice Dice / sensitivity / precision / SSIM at three thresholds: honest (as
          above), *tuned on the test labels* (one global threshold over min–max normalised maps,
          the paper's white cells) and per-image best (grey cells); Dice by lesion size.

Each table gives mean ± standard error and, against IterMask², the paired bootstrap 95 % interval
of the per-case Dice difference (IterMask² − method; 10,000 resamples of the cases, seed 0) with
a verdict: IterMask² is "better", "worse" or in a "tie" (the interval covers 0).

Example:
  python -m training.evaluate --model flair --val data/flair_val.npz --n 40 --modality flair \\
      --stratum glioma --protocol both --out results/flair
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_itermask import synth
from napari_itermask.core.calibration import threshold_from_healthy
from napari_itermask.core.engine import SKIPPED, IterationState
from napari_itermask.core.net_input import neighbour_slices
from napari_itermask.core.engine import run as run_loop
from napari_itermask.core.metrics import (
    best_threshold_dice,
    dice,
    lesion_detection,
    precision,
    sensitivity,
    size_stratum,
    ssim_normal,
)
from napari_itermask.core.precision import PRECISIONS, usable_precision
from napari_itermask.core.segmentation import error_map, inner_region, smooth_within
from napari_itermask.errors import ModelError
from napari_itermask.models import load_bundle
from napari_itermask.names import nifti_stem, tagged_nifti
from napari_itermask.params import RunParams
from napari_itermask.pipeline import Job, engine_config, prepare
from napari_itermask.volume import load_scan, scan_from_array

from . import protocols
from .common import TEST_STRATUM_SEEDS, SliceSet, log, split_seeds

HYPO = {"t1"}


def _recon_error(recon, x: np.ndarray, brain: np.ndarray, polarity: str,
                 batch: int = 32) -> np.ndarray:
    """``squared_error`` of ``recon`` (a function of a (B, 1, H, W) batch) inside ``brain``."""
    out = np.empty_like(x)
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xt = torch.from_numpy(x[i:i + batch])[:, None]
            out[i:i + batch] = error_map(xt[:, 0].numpy(), recon(xt)[:, 0].numpy(),
                                         brain[i:i + batch], polarity)
    return out


def run_precision(bundle, asked: str | None = None) -> str:
    """The precision a bundle is evaluated in: ``asked``, else its card's. Refused (SystemExit)
    when the card has no calibration for it or this CPU cannot run it natively: an evaluation
    must run the arithmetic it is labelled with."""
    p = asked or bundle.card.precision
    try:
        bundle.card.calibration(p)
    except ModelError as exc:
        raise SystemExit(str(exc)) from None
    used, notice = usable_precision(p, bundle.device)
    if notice:
        raise SystemExit(f"{bundle.card.name}: {notice}")
    return used


def first_error(bundle, x: np.ndarray, brain: np.ndarray, batch: int = 32,
                seed: int = 0, precision: str | None = None) -> np.ndarray:
    """The "no iterations" ablation's map: the loop's own first step on (N, H, W) slices — f1's
    error in the paper, with everything the card adds (polarity, first step, standardised
    residual, smoothing, rim) — so that its healthy threshold and its test maps (the first state
    of each case's loop) are one computation. Skipped slices (too little brain) map to 0."""
    cfg = engine_config(bundle.card, seed=seed, max_iter=1, batch_size=batch, precision=precision)
    first = next(run_loop(x, brain, *bundle.nets(precision or bundle.card.precision), cfg), None)
    return np.zeros_like(x, dtype=np.float32) if first is None else first.error


def baseline_error(model, x: np.ndarray, brain: np.ndarray, polarity: str = "both",
                   batch: int = 32) -> np.ndarray:
    """An AE/DAE's anomaly map: its reconstruction error of the clean input."""
    model.eval()
    return _recon_error(model, x, brain, polarity, batch)


def baseline_recon(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """An AE/DAE's reconstruction of (N, H, W) slices (for the normal-tissue SSIM)."""
    model.eval()
    out = np.empty_like(x)
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out[i:i + batch] = model(torch.from_numpy(x[i:i + batch])[:, None])[:, 0].numpy()
    return out


def model_grid_label(geo, gt: np.ndarray) -> np.ndarray:
    """The scan's label on the model grid by the reference's rule (paper protocol): its lesion
    share of each model pixel's area (exact area resampling, ``protocols.area_fraction``) and
    ``protocols.label_from_fraction`` (any fraction counts). (N, grid, grid) bool."""
    a, b, _ = geo.canonical_shape
    wa = protocols.area_weights(a, geo.centre[0], geo.steps[0], geo.grid)
    wb = protocols.area_weights(b, geo.centre[1], geo.steps[1], geo.grid)
    frac = protocols.area_fraction(geo.to_canonical(np.asarray(gt, np.float32)), wa, wb)
    return protocols.label_from_fraction(frac)


def slice_loop(bundle, vol, k: int, seed: int = 0, precision: str | None = None
               ) -> tuple[IterationState, IterationState]:
    """The bundle's shrink loop on model-grid slice ``k`` of ``vol`` alone: (first, last) state.

    ``vol`` is the whole prepared volume (normalised as a whole, exactly as the pipeline does
    for a scan); only slice ``k`` runs (a 2.5-D model's: with its neighbours), under its own
    slice id, so its noise — and its result —
    are those of a run on the full volume (the engine's results do not depend on batching).
    A slice the engine skips (too little brain) gets a zero error map and its own image.
    ``precision`` (None: the card's) chooses the networks' arithmetic and the calibrated τ.
    """
    first = last = None
    precision = precision or bundle.card.precision
    # a 2.5-D model's slice sees its neighbours in the volume (their images only: what it gets
    # in a run on the whole volume)
    c = int(getattr(bundle.card, "context_slices", 0))
    context = neighbour_slices(vol.x, vol.brain, c, idx=[k]) if c else None
    for st in run_loop(vol.x[k:k + 1], vol.brain[k:k + 1], *bundle.nets(precision),
                       engine_config(bundle.card, seed=seed, precision=precision),
                       slice_ids=[k], context=context):
        first = st if first is None else first
        last = st
    if last is None:
        x = vol.x[k:k + 1]
        last = first = IterationState(
            iteration=0, tau=np.full(1, bundle.card.tau), masks=np.zeros(x.shape, bool),
            error=np.zeros_like(x), recon=x.copy(), status=np.full(1, SKIPPED, np.int8),
            iterations=np.zeros(1, np.int32), updated=np.zeros(1, bool), forward_passes=0)
    return first, last


def _finite(score: np.ndarray) -> np.ndarray:
    """Non-finite scores (the intensity score's −inf off the rim) → the lowest finite one."""
    ok = np.isfinite(score)
    if ok.all():
        return score
    return np.where(ok, score, score[ok].min() if ok.any() else 0.0).astype(np.float32)


def _still_masked(first_mask, last_mask, lesion, brain) -> dict:
    """Shares of the lesion's and the healthy brain's pixels masked after the first step and at
    the end of the loop."""
    healthy = brain & ~lesion

    def share(m, where):
        return float(m[where].mean()) if where.any() else float("nan")
    return {"lesion_first": share(first_mask, lesion), "lesion_end": share(last_mask, lesion),
            "healthy_first": share(first_mask, healthy), "healthy_end": share(last_mask, healthy)}


def paper_case(name, vol, gt, ctx, slab=None):
    """One case under the paper protocol: choose the slab slice, run every method on it and
    score it at the honest and the per-image best threshold. Returns (row, maps, panel), or
    None when the slab holds no lesion (the case is dropped). ``maps`` (method → (score, label,
    brain) on the slice) feed the global threshold tuned on the test labels afterwards.
    ``slab`` defaults to ``protocols.CENTRAL_SLAB`` (read at call time)."""
    slab = protocols.CENTRAL_SLAB if slab is None else slab
    lab = model_grid_label(vol.geometry, gt)
    n = len(lab)
    les_px = lab.reshape(n, -1).sum(1)
    brain_px = vol.brain.reshape(n, -1).sum(1)
    k = protocols.choose_slice(les_px, brain_px, slab)
    if k is None:
        return None
    x, br, g = vol.x[k:k + 1], vol.brain[k:k + 1], lab[k]
    region = inner_region(br, ctx.bundle.card.error_rim)
    first, last = slice_loop(ctx.bundle, vol, k, ctx.loop_seed, ctx.precision["itermask"])
    scores = {"itermask": last.error[0], "no-iteration": first.error[0],
              "intensity": ctx.smoothed(intensity_score(x, br, ctx.modality), br, region,
                                        -np.inf)[0]}
    recons = {"itermask": last.recon[0], "no-iteration": first.recon[0]}
    for kind, mdl in ctx.baselines.items():
        scores[kind] = ctx.smoothed(baseline_error(mdl, x, br, ctx.polarity), br, region)[0]
        recons[kind] = baseline_recon(mdl, x)[0]
    for label, other in ctx.variants.items():
        _, lv = slice_loop(other, vol, k, ctx.loop_seed, ctx.precision[label])
        scores[label], recons[label] = lv.error[0], lv.recon[0]
    row = {"case": name, "slice": k,
           "slice_position": float(protocols.axial_position(brain_px)[k]),
           "lesion_px": int(les_px[k]), "stratum": size_stratum(int(les_px[k])),
           "iterations": int(last.iterations[0]), "skipped": bool(last.status[0] == SKIPPED),
           # what the loop kept: shares of the lesion and of the healthy brain still masked
           # after its first step and at its end (the loop's own verdict, before any threshold)
           "still_masked": _still_masked(first.masks[0], last.masks[0], g, br[0])}
    maps, preds = {}, {}
    for m in ctx.methods:
        sm = _finite(scores[m])
        preds[m] = (sm > ctx.thr[m]) & br[0]
        best, best_t = best_threshold_dice(sm, g, br[0])
        r = {"honest": protocols.slice_scores(preds[m], g),
             "best": {**protocols.slice_scores((sm > best_t) & br[0], g), "dice": best,
                      "threshold": best_t}}
        if m in recons:
            r["ssim_normal"] = ssim_normal(recons[m], x[0], br[0], g)
        row[m] = r
        maps[m] = (sm, g, br[0])
    panel = {"case": name, "x": x[0], "brain": br[0], "gt": g, "pred": preds,
             "error": scores["itermask"]}
    return row, maps, panel


def tune_on_test_labels(rows: list, maps: list, methods) -> dict:
    """The paper's white cells: per method one global threshold over its min–max normalised
    maps, chosen to maximise the mean slice Dice *with the test labels*; fills each row's
    ``tuned`` entry and returns the thresholds."""
    out = {}
    for m in methods:
        g = protocols.sweep_global_threshold([mp[m] for mp in maps])
        for r, d, se, pr in zip(rows, g.dice, g.sens, g.prec):
            r[m]["tuned"] = {"dice": d, "sens": se, "prec": pr}
        out[m] = {"threshold_normalised": g.threshold, "threshold_raw": g.raw_threshold,
                  "score_min": g.score_min, "score_max": g.score_max, "mean_dice": g.mean_dice}
    return out


PAPER_MODES = ("honest", "tuned", "best")


def paper_statistics(rows: list, methods) -> dict:
    """Mean ± SE of slice Dice / sensitivity / precision per method and threshold mode, the
    paired bootstrap against IterMask² on Dice, SSIM, and the size strata."""
    out = {"modes": {}, "ssim_normal": {}, "strata": {}}
    for mode in PAPER_MODES:
        vals = {m: [r[m][mode]["dice"] for r in rows] for m in methods}
        st = protocols.compare_to_reference(vals)
        for m in methods:
            for key in ("sens", "prec"):
                mu, se = protocols.mean_se([r[m][mode][key] for r in rows])
                st[m][key] = {"mean": mu, "se": se}
        out["modes"][mode] = st
    for m in methods:
        if all("ssim_normal" in r[m] for r in rows):
            mu, se = protocols.mean_se([r[m]["ssim_normal"] for r in rows])
            out["ssim_normal"][m] = {"mean": mu, "se": se}
        out["strata"][m] = {mode: protocols.strata_summary(
            [r["lesion_px"] for r in rows], [r[m][mode]["dice"] for r in rows])
            for mode in PAPER_MODES}
    return out


class _Context(argparse.Namespace):
    """What scoring one case needs: the models, their honest thresholds and the smoothing."""


def load_baselines(run: Path, preset: str) -> dict:
    from .baselines import build_baseline
    from .train import load_checkpoint

    models = {}
    for kind in ("ae", "dae"):
        ck = run / f"{kind}.ckpt"
        if ck.exists():
            state = load_checkpoint(ck)
            m = build_baseline(kind, preset)
            m.load_state_dict(state["model"])
            models[kind.upper()] = m.eval()
            noise = json.loads(state.get("extra") or "{}").get("dae_noise")
            log(f"baseline {kind}: {int(state['step'])} steps"
                + (f", noise {noise}" if kind == "dae" and noise else ""))
    return models


def intensity_score(x: np.ndarray, brain: np.ndarray, modality: str) -> np.ndarray:
    s = -x if modality in HYPO else x
    return np.where(brain, s, -np.inf).astype(np.float32)


def test_cases(args):
    if args.data:
        for img in sorted(Path(args.data).glob("*.nii*")):
            stem = nifti_stem(img.name)
            if stem is None or stem.endswith("_label"):
                continue
            lab = tagged_nifti(img, "_label")
            if lab.exists():
                scan = load_scan(img)
                import nibabel as nib

                yield img.name, scan, np.asarray(nib.load(str(lab)).dataobj) > 0
        return
    stratum = getattr(args, "stratum", "subtle")
    kw = synth_keywords(stratum, getattr(args, "anatomy", None))
    for seed in case_seeds(args.split, args.n, stratum):
        case = synth.make_case(args.modality, seed, voxel_size=args.voxel_size,
                               leftover=args.leftover, **kw)
        yield f"synth{seed}", scan_from_array(case.image, case.affine), case.label > 0


def synth_keywords(stratum: str, anatomy: str | None) -> dict:
    """Keywords for ``synth.make_case``: the lesion stratum and the anatomy, each left out when
    it is the default ("subtle" = the original generator; no anatomy named), so the call also
    works with a generator that does not know them."""
    kw = {}
    if stratum != "subtle":
        kw["stratum"] = stratum
    if anatomy:
        kw["anatomy"] = anatomy
    return kw


def case_seeds(split: str, n: int, stratum: str = "subtle") -> list[int]:
    """Lesioned synthetic volumes: the stratum's test seeds, or validation seeds 100 past the
    healthy calibration brains (so design decisions never see the calibration anatomy either)."""
    return [s + (100 if split == "val" else 0) for s in split_seeds(split, n, stratum)]


def mask_trace(history, gt: np.ndarray, brain: np.ndarray) -> dict:
    """Share of lesion and of healthy brain pixels (model grid) still masked after each
    iteration (index 0 = before the first): shows whether the loop keeps the lesion masked
    while it unmasks healthy tissue, or erodes it."""
    les, healthy = gt & brain, brain & ~gt
    out = {"lesion": [], "healthy": []}
    for k in range(len(history)):
        m = history.masks(k)
        out["lesion"].append(float(m[les].mean()) if les.any() else float("nan"))
        out["healthy"].append(float(m[healthy].mean()) if healthy.any() else float("nan"))
    return out


def trace_line(rows) -> str | None:
    """Mean masked shares after iterations 1, 2, 3, 5 and at the end, over cases with lesions
    on the model grid."""
    tr = [r["itermask"].get("masked_share") for r in rows]
    tr = [t for t in tr if t and t["lesion"] and np.isfinite(t["lesion"][0])]
    if not tr:
        return None

    def at(key, k):
        return np.mean([t[key][min(k, len(t[key]) - 1)] for t in tr])

    steps = [1, 2, 3, 5]
    cells = [f"{at('lesion', k):.2f} / {at('healthy', k):.3f}" for k in steps]
    cells.append(f"{np.mean([t['lesion'][-1] for t in tr]):.2f} / "
                 f"{np.mean([t['healthy'][-1] for t in tr]):.3f}")
    return ("Share of lesion / healthy brain pixels still masked after iteration 1, 2, 3, 5 and "
            "at the end: " + ", ".join(cells) + ".")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle name or folder")
    p.add_argument("--val", required=True, help="healthy validation slices (.npz) for baselines")
    p.add_argument("--modality", required=True, choices=["flair", "t1", "t1ce", "t2"])
    p.add_argument("--n", type=int, default=8, help="synthetic test volumes")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="synthetic seed range: 'val' (lesioned validation brains, seeds 200100+) "
                        "is for design decisions; 'test' only for the reported results")
    p.add_argument("--stratum", default="subtle", choices=list(TEST_STRATUM_SEEDS),
                   help="synthetic lesion stratum (synth.make_case(stratum=...)); each has its "
                        "own test seed range (training/common.py)")
    p.add_argument("--anatomy", help="synthetic anatomy (synth.make_case(anatomy=...))")
    p.add_argument("--protocol", default="both", choices=["paper", "clinical", "both"],
                   help="paper: the reference's one-slice-per-case Table 1 protocol; clinical: "
                        "whole volumes at the honest threshold; both (default)")
    p.add_argument("--data", help="folder of test scans with *_label.nii.gz (instead of synth)")
    p.add_argument("--voxel-size", type=float, default=1.5)
    p.add_argument("--leftover", action="store_true",
                   help="synthetic cases keep skull-strip leftovers (robustness check)")
    p.add_argument("--fpr", type=float, default=0.001)
    p.add_argument("--rising-tau", type=float, default=0.0,
                   help="τ step for the optimistic best-iteration mode (0 = off; clinical)")
    p.add_argument("--loop-seed", type=int, default=0,
                   help="seed of the loop's noise draws (the plugin's default is 0); another "
                        "seed measures how much a result depends on them")
    p.add_argument("--baselines", help="run folder with ae.ckpt / dae.ckpt (train --net ae|dae)")
    p.add_argument("--no-freq-model", metavar="MODEL",
                   help="bundle trained with --no-guidance: the '-freq' ablation")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=MODEL",
                   help="another IterMask² bundle run on the same cases under its own label and "
                        "card threshold (e.g. the x_f-guided model where the shipped one is "
                        "not); repeatable")
    p.add_argument("--out", required=True, help="folder for results.json and results.md")
    p.add_argument("--baseline-polarity", choices=["both", "bright", "dark"], default=None,
                   help="deviations the AE and DAE maps count (default: the model card's)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="arithmetic of --model's networks (default: its card's); the τ and "
                        "threshold calibrated in it are used")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    from napari_itermask import allocator

    allocator.tune()  # batches of 32 slices: large activations stay on the heap
    if args.threads:
        torch.set_num_threads(args.threads)
    clinical = args.protocol in ("clinical", "both")
    paper = args.protocol in ("paper", "both")
    bundle = load_bundle(args.model)
    val = SliceSet.load(args.val)
    if val.label is not None and val.label.any():
        raise SystemExit("--val must be healthy")
    sigma, rim = bundle.card.error_smoothing, bundle.card.error_rim
    # the AE and DAE maps count the same deviations as the loop, unless --baseline-polarity
    # gives them another sign (the DAE's intensity prior is its training noise, train
    # --dae-noise; this only chooses which residuals its map counts)
    pol = args.baseline_polarity or bundle.card.error_polarity
    val_region = inner_region(val.brain, rim)  # where healthy false positives are counted

    def smoothed(score, brain, region, outside=0.0):
        """Every method's map gets the model's error smoothing and rim, so the comparison stays
        like for like (the two IterMask² loops apply both inside the engine): smoothed within
        ``brain``, kept on ``region`` (the brain inside its rim, computed once per volume);
        ``outside`` fills the rest (-inf for the intensity score, which may be negative)."""
        out = smooth_within(score, brain, sigma)
        return np.where(region, out, np.float32(outside))

    precision = {"itermask": run_precision(bundle, args.precision)}
    thr = {
        "itermask": bundle.card.calibration(precision["itermask"])["threshold"],
        # the engine's first state is already smoothed and cut to the rim, like the loop's
        "no-iteration": threshold_from_healthy(
            first_error(bundle, val.x, val.brain, precision=precision["itermask"]), val_region,
            args.fpr),
    }
    variants = {}
    if args.no_freq_model:
        variants["itermask -freq"] = load_bundle(args.no_freq_model)
        if variants["itermask -freq"].card.masked_guidance:
            raise SystemExit(f"--no-freq-model {args.no_freq_model} was trained with x_f guidance")
    for spec in args.variant:
        label, sep, model = spec.partition("=")
        head, _, prec = model.rpartition("@")
        model, prec = (head, prec) if head and prec in PRECISIONS else (model, "")
        taken = {*thr, *variants, "AE", "DAE", "intensity"}  # every other method's label
        if not sep or not label or not model or label in taken:
            raise SystemExit(f"--variant wants a new LABEL=MODEL[@{'|'.join(PRECISIONS)}], got "
                             f"{spec!r}")
        variants[label] = load_bundle(model)
        precision[label] = prec or None
    # a variant may count other deviations (error_polarity): its loop, map and card threshold
    # are its own, e.g. the paper's two-sided error beside a one-sided model
    same = ("grid_size", "pixel_size_mm", "normalisation", "min_brain_pixels", "error_smoothing",
            "error_rim")
    for label, other in variants.items():
        if any(getattr(other.card, k) != getattr(bundle.card, k) for k in same):
            raise SystemExit(f"{label}: the model must use the same model grid, error "
                             "smoothing and rim as --model")
        precision[label] = run_precision(other, precision.get(label))
        thr[label] = other.card.calibration(precision[label])["threshold"]
    baselines = load_baselines(Path(args.baselines), bundle.card.preset) if args.baselines else {}
    for kind, model in baselines.items():
        thr[kind] = threshold_from_healthy(
            smoothed(baseline_error(model, val.x, val.brain, pol), val.brain, val_region),
            val_region, args.fpr)
    iscore = smoothed(intensity_score(val.x, val.brain, args.modality), val.brain, val_region,
                      -np.inf)
    thr["intensity"] = float(np.quantile(iscore[val_region], 1 - args.fpr))
    log("thresholds from healthy validation: " + ", ".join(f"{k}={v:.4g}" for k, v in thr.items()))
    methods = list(thr)
    ctx = _Context(bundle=bundle, variants=variants, baselines=baselines, thr=thr,
                   methods=methods, smoothed=smoothed, modality=args.modality, polarity=pol,
                   rim=rim, rising_tau=args.rising_tau, loop_seed=args.loop_seed,
                   precision=precision)
    per_case, panels = [], []
    paper_rows, paper_maps, paper_panels, dropped = [], [], [], []
    n_volumes = 0
    for name, scan, gt in test_cases(args):
        n_volumes += 1
        if clinical:
            row, panel, vol = clinical_case(name, scan, gt, ctx)
            per_case.append(row)
            panels.append(panel)
            log(f"{name}: " + ", ".join(f"{m} {row[m]['dice']:.3f}" for m in methods)
                + f" (iterations {row['mean_iterations']:.1f})")
        else:
            vol = prepare(scan, bundle)
        if paper:
            got = paper_case(name, vol, gt, ctx)
            if got is None:
                dropped.append(name)
                log(f"{name}: no lesion in the central slab, dropped from the paper protocol")
            else:
                prow, pmaps, ppanel = got
                paper_rows.append(prow)
                paper_maps.append(pmaps)
                paper_panels.append(ppanel)
                log(f"{name} slice {prow['slice']} ({prow['lesion_px']} px): " + ", ".join(
                    f"{m} {prow[m]['honest']['dice']:.3f}" for m in methods))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    synthetic = not args.data
    summary = {"model": bundle.card.name, "model_sha256": bundle.sha256,
               "modality": args.modality, "fpr": args.fpr, "thresholds": thr,
               "protocol": args.protocol, "n_volumes": n_volumes,
               "cases": per_case, "split": args.split if synthetic else None,
               "stratum": args.stratum if synthetic else None,
               "anatomy": args.anatomy if synthetic else None,
               "seeds": case_seeds(args.split, args.n, args.stratum) if synthetic else None,
               "loop_seed": args.loop_seed, "precision": precision,
               "leftover": bool(args.leftover and synthetic)}
    if clinical:
        summary["statistics"] = clinical_statistics(per_case, methods)
    if paper:
        summary["paper"] = {
            "central_slab": list(protocols.CENTRAL_SLAB),  # the slab every case above used
            "label_rule": "lesion where the area-resized lesion fraction on the model grid is "
                          f"> {protocols.LABEL_MIN_FRACTION}",
            "n_thresholds": protocols.N_THRESHOLDS, "dropped": dropped, "cases": paper_rows,
            "tuned_on_test_labels": (tune_on_test_labels(paper_rows, paper_maps, methods)
                                     if paper_rows else {}),
        }
        if paper_rows:
            summary["paper"]["statistics"] = paper_statistics(paper_rows, methods)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    md = render(summary, methods)
    if clinical:
        figs = save_figures(out, panels, per_case, methods, args.modality)
    else:  # the paper protocol's slices at the honest thresholds
        fig_rows = [{"case": r["case"], **{m: {"dice": r[m]["honest"]["dice"]}
                                           for m in methods}} for r in paper_rows]
        figs = (save_figures(out, paper_panels, fig_rows, methods, args.modality,
                             "slice Dice (paper protocol)") if paper_rows else [])
    if figs:
        md += "\n" + "\n".join(f"![]({f})" for f in figs) + "\n"
    (out / "results.md").write_text(md)
    print(md)
    return 0


def clinical_case(name, scan, gt, ctx):
    """One case under the clinical protocol: the whole loop on the whole scan, every method at
    its honest threshold on the scan's grid. Returns (row, figure panel, prepared volume)."""
    bundle, thr, methods, rim = ctx.bundle, ctx.thr, ctx.methods, ctx.rim
    job = Job.create(scan, bundle, RunParams(precision=ctx.precision["itermask"]),
                     seed=ctx.loop_seed)
    first_state = None
    for st in job.iterate():
        if first_state is None:
            first_state = st
    geo, vol = job.volume.geometry, job.volume
    region = inner_region(vol.brain, rim)
    scores_model = {
        "itermask": job.history.last.error,
        "no-iteration": first_state.error,  # smoothed by the engine like the loop's
        "intensity": ctx.smoothed(intensity_score(vol.x, vol.brain, ctx.modality), vol.brain,
                                  region, -np.inf),
        **{k: ctx.smoothed(baseline_error(mdl, vol.x, vol.brain, ctx.polarity), vol.brain,
                           region)
           for k, mdl in ctx.baselines.items()},
    }
    for label, other in ctx.variants.items():
        scores_model[label] = Job.create(scan, other, RunParams(precision=ctx.precision[label]),
                                         seed=ctx.loop_seed).run_all().error
    gt_model = geo.to_model(gt.astype(np.float32), order=1) > 0.5
    row = {"case": name, "lesion_ml": float(gt.sum() * scan.voxel_volume_mm3 / 1000),
           "mean_iterations": float(job.history.last.iterations[
               job.history.last.status != 3].mean()),
           "forward_passes": int(job.history.last.forward_passes)}
    for m in methods:
        sm = scores_model[m]
        if m == "intensity":
            sm = np.where(np.isfinite(sm), sm, sm[np.isfinite(sm)].min())
        s_scan = geo.to_scan(sm, order=1)
        s_scan = np.where(vol.scan_brain, s_scan, -np.inf if m == "intensity" else 0)
        pred = (s_scan > thr[m]) & vol.scan_brain
        row[m] = {"dice": dice(pred, gt), "sens": sensitivity(pred, gt),
                  "prec": precision(pred, gt)}
        det, tot = lesion_detection(pred, gt)
        row[m]["detected"], row[m]["lesions"] = det, tot
        row[m]["best_dice"], row[m]["best_threshold"] = best_threshold_dice(
            s_scan, gt, vol.scan_brain)
        # per-slice (model grid) Dice on slices with lesion, and size strata
        pm = (sm > thr[m]) & vol.brain
        sl = [k for k in range(len(gt_model)) if gt_model[k].any()]
        row[m]["slice_dice"] = (float(np.mean([dice(pm[k], gt_model[k]) for k in sl]))
                                if sl else None)
        strata = {}
        for k in sl:
            strata.setdefault(size_stratum(int(gt_model[k].sum())), []).append(
                dice(pm[k], gt_model[k]))
        row[m]["size_dice"] = {k: float(np.mean(v)) for k, v in strata.items()}
    row["itermask"]["masked_share"] = mask_trace(job.history, gt_model, vol.brain)
    k_show = int(np.argmax(gt_model.reshape(len(gt_model), -1).sum(1)))
    panel = {"case": name, "x": vol.x[k_show], "brain": vol.brain[k_show],
             "gt": gt_model[k_show], "error": scores_model["itermask"][k_show],
             "pred": {m: (scores_model[m][k_show] > thr[m]) & vol.brain[k_show]
                      for m in methods}}
    last = job.history.last
    ss = [ssim_normal(last.recon[k], vol.x[k], vol.brain[k], gt_model[k])
          for k in range(len(vol.x)) if last.status[k] != 3]
    row["itermask"]["ssim_normal"] = float(np.mean(ss))
    if ctx.rising_tau > 0:
        job2 = Job.create(scan, bundle, RunParams(precision=ctx.precision["itermask"]),
                          tau_step=ctx.rising_tau, max_iter=40,
                          seed=ctx.loop_seed)
        job2.run_all()
        best = 0.0
        for k in range(len(job2.history)):
            best = max(best, dice(job2.mask_on_scan(k), gt))
        row["itermask"]["best_iteration_dice"] = best
    return row, panel, vol


def clinical_statistics(rows: list, methods) -> dict:
    """Mean ± SE of the per-volume 3-D Dice / sensitivity / precision and the paired bootstrap
    of the 3-D Dice against IterMask²."""
    st = protocols.compare_to_reference({m: [r[m]["dice"] for r in rows] for m in methods})
    for m in methods:
        for key in ("sens", "prec"):
            mu, se = protocols.mean_se([r[m].get(key) for r in rows])
            st[m][key] = {"mean": mu, "se": se}
    return st


def _radiological(a: np.ndarray) -> np.ndarray:
    """Model-grid slice (i → patient right, j → anterior) in radiological display."""
    return a.T[::-1, ::-1]


def typical_cases(rows: list, method: str = "itermask") -> list[tuple[str, str]]:
    """The best, median and worst case by ``method``'s Dice in ``rows`` (each row: ``case`` and
    ``{method: {"dice": …}}``), as (label, case) pairs; ties go by case name. The median is the
    middle case of the sorted list (the upper one of the two middle cases for an even count).
    Fewer rows than three give each case once."""
    order = sorted(rows, key=lambda r: (-float(r[method]["dice"]), r["case"]))
    if not order:
        return []
    picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    out, seen = [], set()
    for label, r in picks:
        if r["case"] not in seen:
            seen.add(r["case"])
            out.append((label, r["case"]))
    return out


def _plot_cases(path: Path, panels: list, rows: list, methods, title: str,
                labels: dict | None = None) -> None:
    """One row per panel: the model-grid slice, the ground truth, IterMask²'s final error map
    and each method's segmentation at its honest threshold, with its
    Dice. ``labels`` (case → text) prefixes a row's case name."""
    import matplotlib.pyplot as plt

    gray = plt.get_cmap("gray").with_extremes(bad="black")
    heat = plt.get_cmap("magma").with_extremes(bad="black")
    cols = ["image", "ground truth", "IterMask² error", *methods]
    fig, axes = plt.subplots(len(panels), len(cols), figsize=(1.7 * len(cols), 1.8 * len(panels)),
                             squeeze=False)
    for r, pan in enumerate(panels):
        img = _radiological(np.where(pan["brain"], pan["x"], np.nan))
        lo, hi = np.nanpercentile(img, [1, 99.5])
        row = next(x for x in rows if x["case"] == pan["case"])
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == "IterMask² error":
                err = _radiological(np.where(pan["brain"], pan["error"], np.nan))
                top = max(float(np.nanpercentile(err, 99.5)), 1e-6)
                ax.imshow(err, cmap=heat, vmin=0, vmax=top, interpolation="nearest")
                ax.contour(_radiological(pan["gt"]).astype(float), [0.5], colors="lime",
                           linewidths=0.5)
            else:
                ax.imshow(img, cmap=gray, vmin=lo, vmax=hi, interpolation="nearest")
            if c == 1:
                ax.contour(_radiological(pan["gt"]).astype(float), [0.5], colors="lime",
                           linewidths=0.8)
            elif c > 2:
                pred = _radiological(pan["pred"][col])
                ax.imshow(np.ma.masked_where(~pred, pred), cmap="autumn", alpha=0.7,
                          interpolation="nearest")
                ax.contour(_radiological(pan["gt"]).astype(float), [0.5], colors="lime",
                           linewidths=0.5)
                ax.set_xlabel(f"Dice {row[col]['dice']:.2f}", fontsize=7)
            if r == 0:
                ax.set_title(col, fontsize=8)
        name = pan["case"] if not labels else f"{labels[pan['case']]}: {pan['case']}"
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_figures(out: Path, panels: list, rows: list, methods, modality: str,
                 what: str = "3-D Dice per volume") -> list[str]:
    """``cases.png``: per test case one model-grid slice (the clinical protocol's: most lesion;
    the paper protocol's: its chosen slab slice), the ground truth, IterMask²'s final error map
    and each method's segmentation at its honest threshold; ``typical.png``: the same for the
    best, median and worst case by IterMask²'s Dice (``typical_cases``); ``dice.png``: per-case
    Dice (``what`` says which)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the training extra
        log("matplotlib missing: no figures")
        return []
    title = (f"{modality.upper()}: segmentations at the healthy-calibrated thresholds (red) and "
             "ground truth (green)")
    _plot_cases(out / "cases.png", panels, rows, methods, title)
    picks = typical_cases(rows)
    by_case = {pan["case"]: pan for pan in panels}
    _plot_cases(out / "typical.png", [by_case[c] for _, c in picks], rows, methods,
                f"{modality.upper()}: best, median and worst case by IterMask²'s {what}",
                labels={c: lab for lab, c in picks})
    fig, ax = plt.subplots(figsize=(1.1 * len(methods) + 1.5, 3.2))
    for i, m in enumerate(methods):
        d = [x[m]["dice"] for x in rows]
        ax.bar(i, np.mean(d), color="0.85", edgecolor="0.4")
        ax.plot(np.full(len(d), i) + np.linspace(-0.2, 0.2, len(d)), d, "o", ms=3, color="C0")
    ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
    ax.set_ylabel(what)
    ax.set_ylim(0, 1)
    ax.set_title(f"{modality.upper()}: mean (bar) and per-volume (dots) Dice", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "dice.png", dpi=90)
    plt.close(fig)
    return ["typical.png", "cases.png", "dice.png"]


def _mean(rows, m, key):
    vals = [r[m].get(key) for r in rows if r[m].get(key) is not None]
    vals = [v for v in vals if not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(vals)) if vals else float("nan")


def _pm(mean: float, se: float) -> str:
    """"0.612 ± 0.034" (the SE left out where there is none)."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {se:.3f}" if np.isfinite(se) else f"{mean:.3f}"


def _versus(st: dict) -> tuple[str, str]:
    """The (IterMask² − method) cell with its 95 % interval, and the verdict cell."""
    b = st.get("vs_reference")
    if b is None:
        return "—", "—"
    if not np.isfinite(b["lo"]):
        return (f"{b['diff']:+.3f}" if np.isfinite(b["diff"]) else "–"), b["verdict"]
    return f"{b['diff']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}]", b["verdict"]


def _strata_cells(strata: dict) -> str:
    return " / ".join(f"{strata[s]['dice']:.2f}" if strata[s]["dice"] is not None else "–"
                      for s in ("small", "medium", "large"))


def render(summary: dict, methods) -> str:
    """results.md: a header line for the run, then one table per protocol that ran."""
    rows = summary["cases"]
    n = summary.get("n_volumes", len(rows))
    split = summary.get("split") or "test"
    extra = " with skull-strip leftovers" if summary.get("leftover") else ""
    stratum = f", stratum {summary['stratum']}" if summary.get("stratum") else ""
    anatomy = f", anatomy {summary['anatomy']}" if summary.get("anatomy") else ""
    head = (f"### {summary['modality'].upper()} — {n} {split} volumes{extra}, model "
            f"`{summary['model']}` ({summary['model_sha256'][:12]}), healthy FPR "
            f"{summary['fpr']}{stratum}{anatomy}")
    lines = [head, ""]
    if rows:
        lines += render_clinical(summary, methods)
    if "paper" in summary:
        lines += render_paper(summary["paper"], methods)
    return "\n".join(lines) + "\n"


def render_clinical(summary: dict, methods) -> list[str]:
    rows = summary["cases"]
    st = summary.get("statistics") or clinical_statistics(rows, methods)
    lines = ["#### Clinical protocol: whole volumes, honest thresholds", "",
             ("| method | Dice (3-D) mean ± SE | sens. | prec. | SSIM | slice Dice |"
              " S / M / L slice Dice | lesions found | IterMask² − method [95 % CI] |"
              " IterMask² is | *best-threshold Dice (oracle)* |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        det = sum(r[m]["detected"] for r in rows)
        tot = sum(r[m]["lesions"] for r in rows)
        strata = []
        for s in ("small", "medium", "large"):
            v = [r[m]["size_dice"][s] for r in rows if s in r[m]["size_dice"]]
            strata.append(f"{np.mean(v):.2f}" if v else "–")
        ssim = _mean(rows, m, "ssim_normal")
        diff, word = _versus(st[m])
        lines.append(f"| {m} | {_pm(st[m]['mean'], st[m]['se'])} | {_mean(rows, m, 'sens'):.3f} | "
                     f"{_mean(rows, m, 'prec'):.3f} | "
                     f"{f'{ssim:.3f}' if np.isfinite(ssim) else '–'} | "
                     f"{_mean(rows, m, 'slice_dice'):.3f} | {' / '.join(strata)} | {det}/{tot} | "
                     f"{diff} | {word} | *{_mean(rows, m, 'best_dice'):.3f}* |")
    ssim = _mean(rows, "itermask", "ssim_normal")
    lines.append("")
    lines.append(f"IterMask² normal-tissue SSIM {ssim:.3f}; mean iterations per slice "
                 f"{np.mean([r['mean_iterations'] for r in rows]):.1f}. Differences: paired "
                 "bootstrap of the per-volume 3-D Dice (10,000 resamples of the volumes).")
    trace = trace_line(rows)
    if trace:
        lines.append(trace)
    if any("best_iteration_dice" in r["itermask"] for r in rows):
        lines.append("*Optimistic, per-image best iteration under rising τ (docs/method.md §8): "
                     f"Dice {_mean(rows, 'itermask', 'best_iteration_dice'):.3f}.*")
    lines.append("")
    return lines


def render_paper(paper: dict, methods) -> list[str]:
    rows, dropped = paper["cases"], paper["dropped"]
    lo, hi = paper["central_slab"]
    lines = [(f"#### Paper protocol (Table 1): one slab slice per case — {len(rows)} cases, "
              f"{len(dropped)} dropped without lesion in the central slab ({lo:.2f}–{hi:.2f} "
              "of the brain's axial extent)"), ""]
    if not rows:
        return lines + ["No case has lesion in the central slab.", ""]
    st = paper.get("statistics") or paper_statistics(rows, methods)
    lines += [("| method | honest Dice ± SE | sens. | prec. |"
               " *tuned on test labels* Dice ± SE | sens. | prec. |"
               " *per-image best* Dice ± SE | sens. | prec. | SSIM |"
               " IterMask² − method, honest [95 % CI] | IterMask² is |"
               " IterMask² − method, tuned [95 % CI] | IterMask² is |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        cells = []
        for mode in PAPER_MODES:
            s = st["modes"][mode][m]
            cells += [_pm(s["mean"], s["se"]), f"{s['sens']['mean']:.3f}",
                      f"{s['prec']['mean']:.3f}"]
        ss = st["ssim_normal"].get(m)
        cells.append(f"{ss['mean']:.3f}" if ss else "–")
        for mode in ("honest", "tuned"):
            cells += list(_versus(st["modes"][mode][m]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    share = protocols.strata_summary([r["lesion_px"] for r in rows], [0.0] * len(rows))
    tuned = paper.get("tuned_on_test_labels", {})
    kept = {k: np.nanmean([r["still_masked"][k] for r in rows if "still_masked" in r] or [np.nan])
            for k in ("lesion_first", "lesion_end", "healthy_first", "healthy_end")}
    lines += ["",
              "*Tuned on test labels*: per method one threshold for all cases, swept over "
              f"{paper['n_thresholds']} values of its min–max normalised map and chosen to "
              "maximise the mean slice Dice with the test labels (the paper's white cells) — "
              "not available to a user. *Per-image best*: each slice's own best threshold "
              "(grey cells). Differences: paired bootstrap of the per-case slice Dice (10,000 "
              "resamples of the cases); the tuned column's threshold was itself chosen on "
              "these cases. Tuned thresholds (normalised): "
              + ", ".join(f"{m} {tuned[m]['threshold_normalised']:.3f}" for m in methods
                          if m in tuned) + ".",
              "",
              (f"Lesion size of the chosen slices (model-grid pixels): small < 200 "
               f"{share['small']['share']:.0%}, medium {share['medium']['share']:.0%}, "
               f"large > 800 {share['large']['share']:.0%} (the paper's ≈ 8 / 46 / 46 %)."),
              "",
              (f"What the loop (`itermask`) kept masked, mean over the cases: lesion "
               f"{kept['lesion_first']:.0%} after the first step, {kept['lesion_end']:.0%} at "
               f"the end; healthy brain {kept['healthy_first']:.0%} → "
               f"{kept['healthy_end']:.1%}."),
              "",
              "| method | S / M / L Dice, honest | tuned on test labels | per-image best |",
              "|---|---|---|---|"]
    for m in methods:
        sm = st["strata"][m]
        lines.append(f"| {m} | " + " | ".join(_strata_cells(sm[mode]) for mode in PAPER_MODES)
                     + " |")
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())

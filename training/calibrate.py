"""Build a model bundle from a training run and calibrate it on healthy validation data only.

- τ (docs/method.md §5): random training masks (the paper's sampler) on healthy validation slices,
  reconstructed by the masked network; τ = the ``--tau-percentile`` (80) of the squared error
  inside the masks.
- segmentation threshold (docs/method.md §7): the full shrink loop runs on the healthy validation
  slices; the threshold is the error level exceeded by ``--fpr`` (0.1 %) of healthy brain pixels
  of the final error maps (model grid) — a chosen false-positive rate, fixed before any lesion
  is seen. No lesion label is read here. With ``--rim PX`` the segmentation ignores the brain's
  outer PX pixels per slice, and the rate counts the pixels inside that rim only. With
  ``--polarity bright|dark`` only deviations of that sign count as error, for τ, the loop and
  the threshold alike.
- precision: τ and the threshold always come calibrated in fp32 (the card's ``tau`` and
  ``threshold``). ``--precision bf16`` calibrates both again, on the same slices and masks, with
  the networks in bf16 (``core.fuse``), records them in the card's ``calibrations["bf16"]`` and
  makes bf16 the model's default precision (``precision``); it needs a CPU with native bf16.
  ``--model M --add-precision bf16`` leaves everything of ``M``'s card as it is (weights,
  options, the fp32 τ and threshold) and only adds ``calibrations["bf16"]``, made with the
  card's own settings (τ percentile, false-positive rate, rim, loop slices, seed) on the same
  validation data as its fp32 calibration: a published model gains a bf16 path without a
  single fp32 figure moving.

Example:
  python -m training.calibrate --run runs/flair --val data/flair_val.npz --name flair \\
      --modality flair -o src/napari_itermask/models/bundled/flair
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_itermask import allocator
from napari_itermask.core.calibration import tau_from_masked_errors, threshold_from_healthy
from napari_itermask.core.conditioning import RadiusConditioning
from napari_itermask.core.context_gap import check_context_gap
from napari_itermask.core.engine import error_scale, masked_net_input, run_to_end
from napari_itermask.core.first_step import COMPLEMENTARY_MASKS, FIRST_STEPS
from napari_itermask.core.frequency import high_pass
from napari_itermask.core.masks import MaskSampler
from napari_itermask.core.precision import PRECISIONS, bf16_supported
from napari_itermask.core.residual import ResidualScale, fit_residual_scale
from napari_itermask.core.segmentation import (
    POLARITIES,
    inner_region,
    smooth_within,
    squared_error,
)
from napari_itermask.models import ModelBundle, load_bundle, new_card, save_bundle
from napari_itermask.pipeline import engine_config

from .common import SliceSet, log
from .train import load_checkpoint


def bundle_from_run(run: Path, name: str, modality: str, preset: str | None = None,
                    half: bool = False, first_from: str | None = None) -> ModelBundle:
    """A bundle from a run's checkpoints; ``first_from`` takes f1 from an existing model instead
    (e.g. the '-freq' ablation, which retrains only the masked network)."""
    states, extras = {}, {}
    for net in ("first", "masked"):
        if net == "first" and first_from:
            src = load_bundle(first_from)
            states[net] = src.first.state_dict()
            extras[net] = {**src.card.training.get("first", {}),
                           "taken_from": f"{src.card.name} ({src.sha256[:12]})"}
            continue
        ck = load_checkpoint(run / f"{net}.ckpt")
        states[net] = ck["model"]
        extras[net] = {**json.loads(ck["extra"]), "steps": int(ck["step"])}
    preset = preset or extras["masked"]["preset"]
    guided = bool(extras["masked"].get("masked_guidance", True))
    radius = float(extras["masked"]["radius"])
    if first_from:
        # an unguided masked net never sees x_f: only f1's radius matters then
        if src.card.preset != preset or (guided and src.card.frequency_radius != radius):
            raise SystemExit(f"--first-from {first_from}: preset or frequency radius differs "
                             "from the run's masked network")
        radius = src.card.frequency_radius
    meta = extras["masked"]["train"]
    card = new_card(name, modality, preset)
    card.normalisation = meta.get("normalisation", card.normalisation)
    card.grid_size = int(meta.get("grid", card.grid_size))
    card.pixel_size_mm = float(meta.get("pixel_size_mm", card.pixel_size_mm))
    card.min_brain_pixels = int(meta.get("min_brain_pixels", card.min_brain_pixels))
    card.frequency_radius = radius
    card.masked_guidance = guided
    card.context_slices = int(extras["masked"].get("context_slices") or 0)
    trained = extras["masked"].get("radius_range")
    if trained:  # schedule over the whole trained range until calibrate chooses another
        card.radius_conditioning = RadiusConditioning(
            low=trained[0], high=trained[1], trained=tuple(trained)).to_dict()
    card.trained = True
    card.training = {
        "data": meta,
        "first": {k: v for k, v in extras["first"].items() if k != "train"},
        "masked": {k: v for k, v in extras["masked"].items() if k != "train"},
        "weights_dtype": "float16" if half else "float32",
    }
    bundle = ModelBundle.fresh(card)
    bundle.first.load_state_dict(states["first"])
    bundle.masked.load_state_dict(states["masked"])
    if half:  # stored as float16 to keep the package small; round-trip back to float32 weights
        for netm in (bundle.first, bundle.masked):
            for p in netm.parameters():
                p.data = p.data.half().float()
    return bundle.to("cpu")


def masked_errors(bundle: ModelBundle, val: SliceSet, seed: int = 0, n_masks: int = 2,
                  batch: int = 32, precision: str = "fp32"
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """The masked net's errors on healthy slices under random training masks (docs/method.md
    §4, §5), as the loop counts them (polarity, standardised residual if the card has one; not
    smoothed), with the net as it runs in ``precision``: per batch (errors, masks, first slice
    index). The masks and noise depend on ``seed`` only, so every precision sees the same."""
    cfg = engine_config(bundle.card, precision="fp32")  # τ plays no part in the net's input
    # a bundle's inference copy; anything with a ``masked`` net (tests' recorders) runs as is
    net = bundle.nets(precision)[1] if hasattr(bundle, "nets") else bundle.masked
    scale = error_scale(val.x, val.brain, cfg)
    rng = np.random.default_rng(seed)
    sampler = MaskSampler(size=val.x.shape[-1])
    k = int(getattr(bundle.card, "context_slices", 0))
    if k and val.context_slices != k:
        raise SystemExit(f"{bundle.card.name} is a 2.5-D model ({k} neighbours per side): "
                         f"--val needs data prepared with --context-slices {k}")
    errs, masks, starts = [], [], []
    with torch.inference_mode():
        for _ in range(n_masks):
            for i in range(0, len(val), batch):
                x = torch.from_numpy(val.x[i:i + batch])[:, None]
                m = torch.from_numpy(sampler.sample_batch(val.brain[i:i + batch], rng))[:, None]
                eps = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
                br = torch.from_numpy(val.brain[i:i + batch])[:, None]
                nb = None
                if k:  # the slice's stored neighbours, hidden under its mask
                    cx = val.context[i:i + batch]
                    nb = (torch.from_numpy(cx), torch.from_numpy(val.context_brain[i:i + batch]),
                          torch.from_numpy(rng.standard_normal(cx.shape).astype(np.float32)))
                out = net(masked_net_input(x, m, eps, br, cfg, neighbours=nb))
                e = squared_error(x, out, bundle.card.error_polarity)[:, 0].numpy()
                errs.append(e if scale is None else e / scale[i:i + batch])
                masks.append(m[:, 0].numpy())
                starts.append(i)
    return errs, masks, starts


def calibrate_tau(bundle: ModelBundle, val: SliceSet, percentile: float, seed: int = 0,
                  n_masks: int = 2, batch: int = 32, precision: str = "fp32") -> float:
    errs, masks, _ = masked_errors(bundle, val, seed, n_masks, batch, precision)
    sigma = bundle.card.error_smoothing
    return tau_from_masked_errors([smooth_within(e, m, sigma) for e, m in zip(errs, masks)],
                                  masks, percentile)


def fit_scale(bundle: ModelBundle, val: SliceSet, seed: int = 0, n_masks: int = 2,
              batch: int = 32) -> ResidualScale:
    """The standardised residual's table from the bundle's plain masked errors on ``val``."""
    bundle.card.residual_scale = {}
    errs, masks, starts = masked_errors(bundle, val, seed, n_masks, batch)
    xf = high_pass(torch.from_numpy(val.x), bundle.card.frequency_radius).numpy()
    sel = np.concatenate([np.arange(i, i + len(e)) for e, i in zip(errs, starts)])
    return fit_residual_scale(np.concatenate(errs), np.concatenate(masks), xf[sel],
                              val.brain[sel])


def calibrate_threshold(bundle: ModelBundle, val: SliceSet, fpr: float, seed: int = 0,
                        precision: str = "fp32", tau: float | None = None):
    """The threshold from the full loop on healthy slices with the networks in ``precision``
    and ``tau`` (None: the card's fp32 τ)."""
    cfg = engine_config(bundle.card, seed=seed, tau=tau, precision="fp32")
    f1, f = bundle.nets(precision)
    if cfg.context_slices and val.context_slices != cfg.context_slices:
        raise SystemExit(f"{bundle.card.name} is a 2.5-D model ({cfg.context_slices} neighbours "
                         f"per side): --val needs data prepared with --context-slices "
                         f"{cfg.context_slices}")
    context = (val.context, val.context_brain) if cfg.context_slices else None
    state, _ = run_to_end(val.x, val.brain, f1, f, cfg, context=context)
    thr = threshold_from_healthy(state.error, inner_region(val.brain, cfg.rim), fpr)
    return thr, state


def build_parser():
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run folder (first.ckpt, masked.ckpt)")
    src.add_argument("--model", metavar="MODEL",
                     help="recalibrate an existing bundle (name or folder) instead, e.g. with "
                          "another --smoothing or --rim; its weights are kept as they are")
    p.add_argument("--val", required=True, help="healthy validation slices (.npz)")
    p.add_argument("--name", required=True)
    p.add_argument("--modality", required=True)
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--tau-percentile", type=float, default=80.0)
    p.add_argument("--fpr", type=float, default=0.001, help="healthy-pixel false-positive rate")
    p.add_argument("--first-from", metavar="MODEL",
                   help="take the first network (f1) from this model instead of the run")
    p.add_argument("--smoothing", type=float, default=0.0, metavar="SIGMA",
                   help="σ in model-grid pixels of the error smoothing that every decision of "
                        "the loop and the segmentation read (0 = the paper's per-pixel error)")
    p.add_argument("--rim", type=int, default=0, metavar="PX",
                   help="outer brain pixels per slice (model grid) that the segmentation ignores "
                        "(0 = the paper: the whole brain)")
    p.add_argument("--polarity", choices=POLARITIES, default="both",
                   help="which deviations count as error in the loop and the segmentation: both "
                        "signs (the paper), or only 'bright' (scan brighter than its "
                        "reconstruction: hyper-intense lesions) or 'dark' (hypo-intense)")
    p.add_argument("--radius-schedule", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="radius-conditioned masked net: the radius at the first step's mask "
                        "size and as the mask vanishes (within the trained radii; default: all "
                        "of them)")
    p.add_argument("--standardise", action="store_true",
                   help="standardised residual: divide every squared error by the healthy error "
                        "expected for its pixel kind (|x_f| and distance to the brain's edge), "
                        "fitted here on the validation slices (docs/method.md §15)")
    p.add_argument("--first-step", choices=FIRST_STEPS, default=None,
                   help="the loop's first step: f1 (the paper), complementary (the masked net on "
                        "complementary blob masks) or both (per pixel the larger error); "
                        "default: the model's own (docs/method.md §16)")
    p.add_argument("--complementary-masks", type=int, default=None, metavar="K",
                   help="blob masks of the complementary first step (2–8; default: the model's)")
    p.add_argument("--context-gap", type=int, default=None, metavar="PX",
                   help="also hide PX pixels around the mask from the masked net (0 = the "
                        "paper; default: the model's; docs/method.md §17)")
    p.add_argument("--other-contrast", action="store_true",
                   help="with --model: calibrate weights trained on another contrast for "
                        "--modality (recorded in the card), e.g. T1 weights for T1CE")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: also calibrate τ and the threshold with the networks in bf16 (on "
                        "the same slices) and make bf16 the model's default precision; needs a "
                        "CPU with native bf16 (fp32 is always calibrated)")
    p.add_argument("--add-precision", choices=[q for q in PRECISIONS if q != "fp32"],
                   default=None, metavar="PRECISION",
                   help="with --model: keep the card as it is (fp32 τ and threshold, options, "
                        "default precision) and only add a calibration in PRECISION, with the "
                        "card's own settings on the same validation data")
    p.add_argument("--half", action="store_true", help="round weights to float16 (smaller)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--max-slices", type=int, default=0,
                   help="run the full loop for the threshold on at most N evenly spaced "
                        "validation slices (0 = all; faster on CPUs)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    allocator.tune()  # batches of 32 slices: large activations stay on the heap
    if args.threads:
        torch.set_num_threads(args.threads)
    if not np.isfinite(args.smoothing) or args.smoothing < 0:
        raise SystemExit("--smoothing must be a finite number >= 0")
    if args.rim < 0:
        raise SystemExit("--rim must be >= 0")
    if args.context_gap is not None:
        try:
            check_context_gap(args.context_gap)
        except ValueError as exc:
            raise SystemExit(f"--context-gap: {exc}") from None
    if "bf16" in (args.precision, args.add_precision) and not bf16_supported("cpu"):
        raise SystemExit("bf16: this CPU has no native bf16 instructions "
                         "(avx512_bf16 or amx_bf16); calibrate on one that has")
    val = SliceSet.load(args.val)
    if val.label is not None and val.label.any():
        raise SystemExit("calibration takes healthy validation data only; this set has lesions")
    if args.add_precision:
        return add_precision(args, val)
    if args.model:
        if args.first_from:
            raise SystemExit("--first-from goes with --run, not --model")
        bundle = load_bundle(args.model)
        trained_on = bundle.card.modality
        if trained_on != args.modality and not args.other_contrast:
            raise SystemExit(f"--model {args.model} is a {trained_on} model, not "
                             f"{args.modality} (--other-contrast uses it anyway)")
        bundle.card.name = args.name
        bundle.card.modality = args.modality
        bundle.card.training = {**bundle.card.training,
                                "recalibrated_from": f"{args.model} ({bundle.sha256[:12]})"}
        if trained_on != args.modality:
            bundle.card.training["weights_trained_on_contrast"] = trained_on
    else:
        bundle = bundle_from_run(Path(args.run), args.name, args.modality, half=args.half,
                                 first_from=args.first_from)
    # every calibration is made anew below: an older one in another precision would be stale
    bundle.card.calibrations = {}
    bundle.card.precision = "fp32"
    bundle.card.error_smoothing = float(args.smoothing)
    bundle.card.error_rim = int(args.rim)
    bundle.card.error_polarity = args.polarity
    if args.radius_schedule:
        rc = RadiusConditioning.from_dict(bundle.card.radius_conditioning)
        if rc is None:
            raise SystemExit("--radius-schedule needs a radius-conditioned masked net")
        try:
            rc = RadiusConditioning(low=args.radius_schedule[0], high=args.radius_schedule[1],
                                    trained=rc.trained, full_share=rc.full_share)
        except ValueError as exc:
            raise SystemExit(f"--radius-schedule: {exc}") from None
        bundle.card.radius_conditioning = rc.to_dict()
    if args.context_gap is not None:
        bundle.card.context_gap = args.context_gap
    if args.first_step:
        bundle.card.first_step = args.first_step
    if args.complementary_masks is not None:
        if args.complementary_masks not in COMPLEMENTARY_MASKS:
            raise SystemExit(f"--complementary-masks must be from {COMPLEMENTARY_MASKS[0]} to "
                             f"{COMPLEMENTARY_MASKS[-1]}")
        bundle.card.complementary_masks = args.complementary_masks
    if args.standardise:
        rs = fit_scale(bundle, val, args.seed)
        bundle.card.residual_scale = rs.to_dict()
        log("residual scale: expected healthy error per pixel kind from "
            f"{min(min(r) for r in rs.expected):.3g} to {max(max(r) for r in rs.expected):.3g} "
            "× the mean")
    else:
        bundle.card.residual_scale = {}
    bundle.card.tau = calibrate_tau(bundle, val, args.tau_percentile, args.seed)
    bundle.card.tau_derivation = {
        "method": "percentile of squared error inside random training masks (masked net)",
        "polarity": args.polarity, "standardised": bool(args.standardise),
        "percentile": args.tau_percentile, "data": val.meta, "slices": len(val),
        "precision": "fp32", "seed": args.seed}
    log(f"tau = {bundle.card.tau:.5g} ({args.tau_percentile}th percentile)")
    loop_val = loop_subset(val, args.max_slices)
    thr, state = calibrate_threshold(bundle, loop_val, args.fpr, args.seed)
    bundle.card.threshold = thr

    def derivation(state, precision):
        return {
            "method": "healthy false-positive rate of final error maps (full loop, model grid)",
            "false_positive_rate": args.fpr, "rim_px": int(args.rim), "data": val.meta,
            "slices": len(loop_val),
            "mean_iterations": float(state.iterations.mean()),
            "first_step": bundle.card.first_step, "context_gap": bundle.card.context_gap,
            "precision": precision, "seed": args.seed}

    bundle.card.threshold_derivation = derivation(state, "fp32")
    log(f"threshold = {thr:.5g} (healthy FPR {args.fpr}); mean iterations "
        f"{state.iterations.mean():.1f}")
    if args.precision != "fp32":
        p = args.precision
        tau_p = calibrate_tau(bundle, val, args.tau_percentile, args.seed, precision=p)
        thr_p, state_p = calibrate_threshold(bundle, loop_val, args.fpr, args.seed,
                                             precision=p, tau=tau_p)
        bundle.card.calibrations = {p: {
            "tau": tau_p, "threshold": thr_p,
            "tau_derivation": {**bundle.card.tau_derivation, "precision": p},
            "threshold_derivation": derivation(state_p, p)}}
        bundle.card.precision = p
        log(f"{p}: tau = {tau_p:.5g}, threshold = {thr_p:.5g}; mean iterations "
            f"{state_p.iterations.mean():.1f}")
    save_bundle(bundle, args.output, overwrite=args.overwrite)
    log(f"wrote bundle {args.output}")
    return 0


def loop_subset(val: SliceSet, n: int) -> SliceSet:
    """The ``n`` evenly spaced slices of ``val`` that the threshold's full loop runs on (all of
    them when ``n`` is 0 or not smaller than the set)."""
    if not 0 < n < len(val):
        return val
    keep = np.linspace(0, len(val) - 1, n).round().astype(int)
    return val.take(keep)


def add_precision(args, val: SliceSet) -> int:
    """``--add-precision``: the card's calibration repeated in another precision, nothing else
    changed (see the module's docstring)."""
    if not args.model:
        raise SystemExit("--add-precision goes with --model (an existing, calibrated bundle)")
    p = args.add_precision
    bundle = load_bundle(args.model)
    card = bundle.card
    if card.modality != args.modality or card.name != args.name:
        raise SystemExit(f"--add-precision keeps the card: --name/--modality must be its own "
                         f"({card.name}, {card.modality})")
    td, hd = card.tau_derivation or {}, card.threshold_derivation or {}
    data = hd.get("data") or td.get("data")
    if data is not None and data.get("seeds") != val.meta.get("seeds"):
        raise SystemExit(f"--val {args.val} is not the data of {args.model}'s fp32 calibration "
                         f"(seeds {data.get('seeds')}); the two precisions must see the same")
    if td.get("slices") not in (None, len(val)):
        raise SystemExit(f"--val has {len(val)} slices; {args.model}'s τ was calibrated on "
                         f"{td['slices']}")
    seed = int(hd.get("seed", td.get("seed", args.seed)))
    percentile = float(td.get("percentile", args.tau_percentile))
    fpr = float(hd.get("false_positive_rate", args.fpr))
    loop_val = loop_subset(val, int(hd.get("slices", args.max_slices)))
    tau_p = calibrate_tau(bundle, val, percentile, seed, precision=p)
    thr_p, state = calibrate_threshold(bundle, loop_val, fpr, seed, precision=p, tau=tau_p)
    card.calibrations = {**card.calibrations, p: {
        "tau": tau_p, "threshold": thr_p,
        "tau_derivation": {**td, "precision": p, "seed": seed},
        "threshold_derivation": {**hd, "slices": len(loop_val), "precision": p, "seed": seed,
                                 "mean_iterations": float(state.iterations.mean())}}}
    log(f"{p}: tau = {tau_p:.5g} (fp32 {card.tau:.5g}), threshold = {thr_p:.5g} "
        f"(fp32 {card.threshold:.5g}); mean iterations {state.iterations.mean():.1f}")
    save_bundle(bundle, args.output, overwrite=args.overwrite)
    log(f"wrote bundle {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

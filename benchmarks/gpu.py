"""Per-volume time on a GPU against the CPU path, both presets, in one run.

Every row segments the demo volume (``itermask demo``'s sample, the FLAIR of
``benchmarks/allocator.py``) through ``pipeline.segment_scan``, the function behind
``itermask segment``: normalisation, the model grid, the shrink loop to convergence and the
error map back on the scan's grid. Times are wall seconds per volume for a scan already read
(median of ``--repeats`` after one untimed warm-up run of the same row: the first run of a shape
pays for cuDNN's algorithm search and the CUDA context). Rows:

- ``small``: the bundled ``flair`` model as shipped (real weights, τ and threshold from its
  card; bf16 rows use its bf16 calibration).
- ``paper``: no model of the paper preset is trained, so its rows are randomly initialised
  networks of that preset (output layer perturbed, τ the median masked error of the volume's
  first batch, threshold its 99th percentile; ``benchmarks/scaling.py`` does the same), with the
  iteration cap ``--paper-max-iter``. Their per-volume figure is therefore also given projected:
  the small model's forward count on this volume times the row's time per forward.

Precisions: ``fp32`` is float32 throughout (on CUDA with TF32 off, ``core.fuse``); ``tf32``
is CUDA's TF32 convolutions (torch's default, not ours); ``bf16`` is the bf16 nets
(``core.fuse.InferenceNet``) with the loop's decisions in float32. Every row's labels are
compared with the CPU fp32 row of its preset: equal, or their Dice against it.

    python benchmarks/gpu.py                        # CPU and CUDA rows where CUDA is present
    python benchmarks/gpu.py --devices cpu --repeats 1 --presets small   # a quick look here
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def demo_scan():
    from napari_itermask import synth
    from napari_itermask._sample_data import SAMPLE_STRATUM, sample_seed
    from napari_itermask.volume import scan_from_array

    case = synth.make_case("flair", sample_seed(), stratum=SAMPLE_STRATUM)
    return scan_from_array(case.image.astype(np.float32), case.affine, name="demo_flair")


def paper_bundle(scan):
    """A randomly initialised paper-preset bundle (``scaling.random_bundle``) with τ and the
    threshold from its own errors on the first 32 brain slices of ``scan``; bf16 uses the same."""
    from scaling import random_bundle

    from napari_itermask.models import new_card
    from napari_itermask.volume import to_model_grid

    card = new_card("paper-random", "flair", "paper", tau=1.0, threshold=1.0)
    vol = to_model_grid(scan, grid=card.grid_size, pixel_size_mm=card.pixel_size_mm,
                        normalisation=card.normalisation)
    keep = np.flatnonzero(vol.brain.reshape(len(vol.brain), -1).sum(1) >= card.min_brain_pixels)
    bundle, card.tau, card.threshold = random_bundle(card, vol.x[keep[:32]], vol.brain[keep[:32]])
    card.calibrations = {"bf16": {"tau": card.tau, "threshold": card.threshold}}
    return bundle


def run_row(scan, bundle, device, precision: str, batch: int, repeats: int, max_iter=None):
    """One row: (median wall s, all wall s, forwards, labels)."""
    import torch

    from napari_itermask.core import fuse
    from napari_itermask.params import RunParams
    from napari_itermask.pipeline import segment_scan

    tf32 = precision == "tf32"
    params = RunParams(precision="fp32" if tf32 else precision, max_iter=max_iter)
    bundle.to(device)
    fuse.CUDA_TF32 = tf32
    try:
        walls = []
        res = None
        for k in range(repeats + 1):  # the first run is the warm-up
            _sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                res = segment_scan(scan, bundle, params, batch_size=batch)
            _sync(device)
            if k:
                walls.append(time.perf_counter() - t0)
    finally:
        fuse.CUDA_TF32 = False
    return statistics.median(walls), walls, int(res.provenance["forward_passes"]), res.labels


def table(rows: list[dict]) -> str:
    lines = ["| preset | device | precision | batch | s per volume | forwards | ms per forward |"
             " projected demo s | labels vs CPU fp32 | speed-up vs CPU fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['device']} | {r['precision']} | {r['batch']} | "
                         f"failed: {r['error']} | | | | | |")
            continue
        proj = f"{r['projected_s']:.2f}" if r.get("projected_s") is not None else "—"
        lines.append(
            f"| {r['preset']} | {r['device']} | {r['precision']} | {r['batch']} | "
            f"{r['wall_s']:.2f} | {r['forwards']} | {r['ms_per_forward']:.2f} | {proj} | "
            f"{r['labels']} | {r['speedup']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"],
                    help="GPU precisions (the CPU rows are fp32, today's default path)")
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 256],
                    help="GPU batch sizes (the CPU rows use the CLI's 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-repeats", type=int, default=1, help="timed runs of the CPU rows")
    ap.add_argument("--paper-max-iter", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT / "src/napari_itermask/models/bundled/flair"))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    import torch

    from napari_itermask import allocator
    from napari_itermask.core.metrics import dice
    from napari_itermask.models import load_bundle

    allocator.tune()
    devices = [d for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    if "cuda" in args.devices and "cuda" not in devices:
        print("(no CUDA GPU here: CPU rows only)")
    scan = demo_scan()
    rows: list[dict] = []
    small_forwards = None
    for preset in args.presets:
        bundle = load_bundle(args.model) if preset == "small" else paper_bundle(scan)
        if preset == "small" and bundle.card.preset != "small":
            print(f"(--model {args.model} is of the {bundle.card.preset} preset: its rows are "
                  f"labelled small)")
        max_iter = None if preset == "small" else args.paper_max_iter
        configs = []
        for dev in devices:
            if dev == "cpu":
                configs.append(("cpu", "fp32", 32))
            else:
                configs += [(dev, p, b) for p in args.precisions for b in args.batches]
        ref_labels, ref_wall = None, None
        for dev, prec, batch in configs:
            row = {"preset": preset, "device": dev, "precision": prec, "batch": batch}
            try:
                reps = args.cpu_repeats if dev == "cpu" else args.repeats
                med, walls, fwd, labels = run_row(scan, bundle, torch.device(dev), prec, batch,
                                                  reps, max_iter)
            except Exception as exc:  # a row that cannot run says why; the others go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                rows.append(row)
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
                continue
            if dev == "cpu" and prec == "fp32":
                ref_labels, ref_wall = labels, med
            if preset == "small" and dev == "cpu":
                small_forwards = fwd
            same = ref_labels is not None and np.array_equal(labels, ref_labels)
            row.update(wall_s=med, walls=walls, forwards=fwd, ms_per_forward=1000 * med / fwd,
                       labels=("reference" if labels is ref_labels else "equal" if same else
                               f"Dice {dice(labels, ref_labels):.4f}" if ref_labels is not None
                               else "no CPU row"),
                       speedup=f"{ref_wall / med:.1f}×" if ref_wall else "—",
                       lesion_voxels=int((labels > 0).sum()))
            if preset != "small" and small_forwards:
                row["projected_s"] = small_forwards * med / fwd
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else "none"
    print(f"\nDemo volume ({tuple(scan.data.shape)}), pipeline.segment_scan end to end from a "
          f"read scan; median of {args.repeats} (CPU rows {args.cpu_repeats}) after a warm-up; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs ({torch.get_num_threads()} "
          f"threads), GPU {gpu}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

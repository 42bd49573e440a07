"""Scaling table: time and peak memory of the shrink loop against slices, grid, threads, preset.

Each configuration runs in a child process of its own, so that its peak resident memory
(``ru_maxrss``) is its own and not an earlier, larger configuration's. A child does what
``itermask segment`` does for the loop: ``allocator.tune()`` first, the networks as
``ModelBundle.nets("fp32")`` builds them (BatchNorm folded, pointwise work fused), the CLI's
batch of 32 slices, ``core.engine.run_to_end`` with the card's loop. Its input is N brain slices
of a synthetic FLAIR volume on the model grid (the volume's own slices repeated in order when N
is larger than its brain), each slice resampled to the grid's size when the grid is not 128.

The networks are randomly initialised nets of each preset built for that grid (a card with that
``grid_size``; no model of the paper preset or of a 256 grid is bundled), their output layer
perturbed so that they reconstruct something, and τ is the median masked error of the first
batch, so the loop runs several iterations. The iteration cap (``--max-iter``, default 4) is the
same for every row, so rows differ in the work per iteration, not in how soon random nets stop;
the table gives the slice forwards each row ran and the time per forward beside the total.

Peak RSS is the child's whole process (Python, torch, the data and the loop); ``baseline`` is
its RSS just before the loop starts, so ``peak − baseline`` is what the loop itself added.

    python benchmarks/scaling.py                      # the issue's full grid (both presets)
    python benchmarks/scaling.py --presets small --slices 32 64 --grids 128 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    """This process's current resident memory in MiB (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def random_bundle(card, x, brain, seed: int = 0):
    """(bundle, τ, threshold): randomly initialised nets of ``card`` whose output layer is
    perturbed so that they reconstruct something, τ the median and the threshold the 99th
    percentile of the masked net's squared error on slices ``x`` (N, H, W) inside ``brain``.
    For timing only: no result of such a bundle means anything."""
    import torch

    from napari_itermask.core.frequency import high_pass
    from napari_itermask.models import ModelBundle

    torch.manual_seed(seed)
    bundle = ModelBundle.fresh(card)
    for net in (bundle.first, bundle.masked):
        torch.nn.init.normal_(net.out.weight, std=0.3)
    _, f = bundle.nets("fp32")
    with torch.inference_mode():
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None]
        out = f(torch.cat([xt, high_pass(xt, card.frequency_radius)], 1))
        e = ((xt - out) ** 2)[torch.from_numpy(np.ascontiguousarray(brain))[:, None]][:100_000]
    return bundle, float(torch.quantile(e, 0.5)), float(torch.quantile(e, 0.99))


def child(preset: str, grid: int, slices: int, threads: int, max_iter: int, batch: int) -> dict:
    """One configuration, run in this process; returns its row (JSON-able)."""
    sys.path.insert(0, str(ROOT / "src"))
    from napari_itermask import allocator

    allocator.tune()
    import resource

    import torch

    from napari_itermask import synth
    from napari_itermask.core.engine import run_to_end
    from napari_itermask.models import new_card
    from napari_itermask.pipeline import engine_config
    from napari_itermask.volume import scan_from_array, to_model_grid

    torch.set_num_threads(threads)
    card = new_card(preset, "flair", preset, grid_size=grid)
    case = synth.make_case("flair", 900_123, voxel_size=1.5)
    vol = to_model_grid(scan_from_array(case.image, case.affine), grid=grid,
                        pixel_size_mm=card.pixel_size_mm * 128 / grid)
    keep = np.flatnonzero(vol.brain.reshape(len(vol.brain), -1).sum(1) >= card.min_brain_pixels)
    idx = keep[np.arange(slices) % len(keep)]
    x = np.ascontiguousarray(vol.x[idx], dtype=np.float32)
    brain = np.ascontiguousarray(vol.brain[idx])

    bundle, tau, _ = random_bundle(card, x[:batch], brain[:batch])
    f1, f = bundle.nets("fp32")
    with torch.inference_mode():
        f1(torch.zeros(2, 1, grid, grid))  # the first call of a shape is slow on CPU
    cfg = engine_config(card, tau=tau, max_iter=max_iter, batch_size=batch)

    class Counting(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.slices = net, 0

        def forward(self, inp):
            self.slices += len(inp)
            return self.net(inp)

    c1, c = Counting(f1), Counting(f)
    baseline = _rss_mib()
    t0 = time.perf_counter()
    state, _ = run_to_end(x, brain, c1, c, cfg)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"preset": preset, "grid": grid, "slices": slices, "threads": threads,
            "forwards": c1.slices + c.slices, "iterations": float(state.iterations.mean()),
            "wall_s": wall, "baseline_mib": baseline, "peak_mib": peak,
            "parameters": sum(p.numel() for p in bundle.masked.parameters())}


def table(rows: list[dict]) -> str:
    lines = ["| preset | grid | slices | threads | slice forwards | wall s | ms per forward |"
             " peak RSS MiB | loop added MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['grid']} | {r['slices']} | {r['threads']} | "
                         f"failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['preset']} | {r['grid']} | {r['slices']} | {r['threads']} | {r['forwards']} | "
            f"{r['wall_s']:.1f} | {1000 * r['wall_s'] / max(r['forwards'], 1):.1f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['baseline_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--grids", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--slices", nargs="+", type=int, default=[32, 64, 128, 256])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--max-iter", type=int, default=4, help="the same cap for every row")
    ap.add_argument("--batch-size", type=int, default=32, help="the CLI's default")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one configuration, its row on stdout
        p, g, s, t = args.child.split(",")
        row = child(p, int(g), int(s), int(t), args.max_iter, args.batch_size)
        print("ROW " + json.dumps(row))
        return 0

    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="", MKL_NUM_THREADS="")
    for p, g, t, s in itertools.product(args.presets, args.grids, args.threads, args.slices):
        spec = f"{p},{g},{s},{t}"
        done = subprocess.run([sys.executable, __file__, "--child", spec, "--max-iter",
                               str(args.max_iter), "--batch-size", str(args.batch_size)],
                              capture_output=True, text=True, env=env)
        found = [ln[4:] for ln in done.stdout.splitlines() if ln.startswith("ROW ")]
        if done.returncode or not found:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"preset": p, "grid": g, "slices": s, "threads": t, "error": last})
        else:
            rows.append(json.loads(found[0]))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)  # as it goes
    import torch

    print(f"\nShrink loop (fused fp32, batch {args.batch_size}, cap {args.max_iter} iterations),"
          f" random nets, synthetic FLAIR slices; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

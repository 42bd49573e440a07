"""Engine benchmark: this engine versus a naive loop, same run, same inputs.

The naive loop is what the reference code does: every slice of the batch goes through the
network at every iteration until *all* slices have converged (converged slices' results are
simply not updated). This engine drops converged slices from the batch. Both draw the same
per-slice noise, so their segmentations must be identical — asserted here.

Input: N brain slices of a synthetic FLAIR volume on the model grid. Networks: the bundled model
when ``--model`` names a trained one, else randomly initialised nets of each preset (their
output layer perturbed so they reconstruct something) with τ set from the first masked error so
the loop runs several iterations. Timings are wall-clock on this machine's CPU; run it on an
idle machine and compare rows of the same run only.

    python benchmarks/engine.py --slices 24 --presets small paper
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_itermask import synth  # noqa: E402
from napari_itermask.core.engine import (  # noqa: E402
    RUNNING,
    EngineConfig,
    run_to_end,
    slice_noise,
)
from napari_itermask.core.frequency import high_pass  # noqa: E402
from napari_itermask.core.net_input import masked_input  # noqa: E402
from napari_itermask.core.segmentation import (  # noqa: E402
    inner_region,
    smooth_within,
    squared_error,
)
from napari_itermask.models import ModelBundle, load_bundle, new_card  # noqa: E402
from napari_itermask.pipeline import engine_config  # noqa: E402
from napari_itermask.volume import scan_from_array, to_model_grid  # noqa: E402


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.slices = net, 0, 0

    def forward(self, x):
        self.calls += 1
        self.slices += len(x)
        return self.net(x)


def naive_loop(x, brain, f1, f, cfg: EngineConfig):
    """Reference-style loop: the whole batch runs until every slice has converged.

    Follows the card's options (guidance switch, error smoothing, rim, polarity) so that any
    bundle can be compared; the human–AI rising-τ mode is not part of the comparison."""
    if cfg.tau_step:
        raise SystemExit("the naive loop has no rising-τ mode")
    n, h, w = x.shape
    xt = torch.from_numpy(x)[:, None]
    br = torch.from_numpy(brain)[:, None]
    xf = high_pass(xt, cfg.radius)
    status = np.full(n, RUNNING)
    status[brain.reshape(n, -1).sum(1) < cfg.min_brain_pixels] = -1
    masks = brain.copy()
    masks[status == -1] = False
    error = np.zeros_like(x)
    iters = np.zeros(n, int)
    t = 0
    with torch.inference_mode():
        while (status == RUNNING).any():
            t += 1
            for s in range(0, n, cfg.batch_size):
                sl = slice(s, s + cfg.batch_size)
                if t == 1:
                    out = f1(xf[sl])
                else:
                    m = torch.from_numpy(masks[sl])[:, None]
                    eps = torch.stack([slice_noise(cfg.seed, i, t, (h, w))
                                       for i in range(s, min(n, s + cfg.batch_size))])[:, None]
                    out = f(masked_input(xt[sl], m, eps, xf[sl], cfg.masked_guidance))
                e = (squared_error(xt[sl], out, cfg.polarity) * br[sl])[:, 0].numpy()
                for j, i in enumerate(range(s, min(n, s + cfg.batch_size))):
                    if status[i] != RUNNING:
                        continue  # computed, then thrown away
                    error[i] = smooth_within(e[j], brain[i], cfg.smoothing)
                    iters[i] += 1
                    old = masks[i].copy()
                    if t == 1:
                        cut = (np.quantile(error[i][brain[i]], cfg.first_unmask)
                               if cfg.first_unmask > 0 else -1.0)
                        masks[i] = brain[i] & (error[i] > cut)
                        status[i] = RUNNING if masks[i].any() else 1
                        continue
                    decide = (smooth_within(e[j], old, cfg.smoothing) if cfg.smoothing > 0
                              else error[i])
                    new = old & (decide > cfg.tau)
                    masks[i] = new
                    if not new.any() or old.sum() - new.sum() < cfg.stop_shrink * old.sum():
                        status[i] = 1
            status[(status == RUNNING) & (iters >= cfg.max_iter)] = 2
    if cfg.rim:  # the decisions read the whole brain; the reported map leaves the rim out
        error = np.where(inner_region(brain, cfg.rim), error, np.float32(0))
    return masks, error, iters


def volume_slices(n: int, seed: int = 900_123):
    case = synth.make_case("flair", seed, voxel_size=1.5)
    vol = to_model_grid(scan_from_array(case.image, case.affine))
    counts = vol.brain.reshape(len(vol.brain), -1).sum(1)
    keep = np.argsort(-counts)[:n]
    keep.sort()
    return vol.x[keep], vol.brain[keep]


def random_bundle(preset: str, seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    b = ModelBundle.fresh(new_card(preset, "flair", preset))
    for net in (b.first, b.masked):
        torch.nn.init.normal_(net.out.weight, std=0.3)
    return b.to("cpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--model", help="a trained bundle to use instead of random nets")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, brain = volume_slices(args.slices)
    rows = []
    setups = ([("model:" + args.model, load_bundle(args.model))] if args.model else
              [(p, random_bundle(p)) for p in args.presets])
    for name, bundle in setups:
        card = bundle.card
        tau = card.tau
        if not args.model:  # τ that makes random nets run several iterations
            with torch.inference_mode():
                xt = torch.from_numpy(x)[:, None]
                out = bundle.masked(torch.cat([xt, high_pass(xt, 15.0)], 1))
            e = ((xt - out) ** 2)[torch.from_numpy(brain)[:, None]]
            tau = float(torch.quantile(e[:100_000], 0.5))
        cfg = engine_config(card, tau=tau, max_iter=args.max_iter, batch_size=args.batch_size)
        with torch.inference_mode():  # warm-up: first calls of a shape are slow on CPU
            bundle.first.eval()(torch.zeros(2, 1, *x.shape[1:]))
            bundle.masked.eval()(torch.zeros(2, 2, *x.shape[1:]))
        f1, f = Counting(bundle.first), Counting(bundle.masked)
        t0 = time.perf_counter()
        state, _ = run_to_end(x, brain, f1, f, cfg)
        t_engine = time.perf_counter() - t0
        e_calls, e_slices = f1.calls + f.calls, f1.slices + f.slices
        f1n, fn = Counting(bundle.first), Counting(bundle.masked)
        t0 = time.perf_counter()
        masks_n, err_n, iters_n = naive_loop(x, brain, f1n, fn, cfg)
        t_naive = time.perf_counter() - t0
        same_masks = np.array_equal(state.masks, masks_n)
        same_iters = np.array_equal(state.iterations, iters_n)
        close_err = np.allclose(state.error, err_n, atol=1e-4)
        thr = float(np.quantile(state.error[brain], 0.99))
        same_seg = np.array_equal(state.error > thr, err_n > thr) or close_err
        assert same_masks and same_iters and same_seg, (name, same_masks, same_iters, close_err)
        rows.append((name, "engine", e_slices, e_calls, t_engine, state.iterations))
        rows.append((name, "naive", f1n.slices + fn.slices, f1n.calls + fn.calls, t_naive,
                     iters_n))
    print(f"\n{len(x)} brain slices of a synthetic FLAIR volume, 128×128, batch "
          f"{args.batch_size}, cap {args.max_iter}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("| preset | loop | slice forwards | batch calls | wall s | iterations mean / max |"
          " speed-up |")
    print("|---|---|---|---|---|---|---|")
    for i in range(0, len(rows), 2):
        eng, nai = rows[i], rows[i + 1]
        for r in (eng, nai):
            sp = f"{nai[4] / eng[4]:.2f}×" if r is eng else "1.00×"
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | "
                  f"{r[5].mean():.1f} / {r[5].max()} | {sp} |")
    print("segmentations identical (masks, iterations and error maps): yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

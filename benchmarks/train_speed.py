"""Training-step speed on this CPU: float32 against bf16 autocast and torch.compile, with and
without the allocator settings (``napari_itermask.allocator``), in one run.

Each configuration runs in its own process (allocator settings are per process and cannot be
undone), with the same seed, data and network; the table reports seconds per step after a
warm-up, the speed-up against the first row, and the mean loss of the timed steps (a sanity
check that every configuration trains the same thing, not a quality comparison: that is decided
on validation Dice). Rows are interleaved over ``--repeats`` rounds so that drift on a shared
machine hits every row alike; the median is reported.

    python benchmarks/train_speed.py --train data/flair_train.npz --net masked --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "fp32, default allocator": {"precision": "fp32", "compile": False, "alloc": False},
    "fp32, tuned allocator": {"precision": "fp32", "compile": False, "alloc": True},
    "bf16 autocast, tuned allocator": {"precision": "bf16", "compile": False, "alloc": True},
    "fp32 + torch.compile, tuned allocator": {"precision": "fp32", "compile": True,
                                              "alloc": True},
}


def one(args) -> dict:
    """Time ``args.steps`` training steps of one configuration (run in a child process)."""
    cfg = json.loads(args.one)
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    if cfg["alloc"]:
        from napari_itermask import allocator

        allocator.tune()
    import torch
    from training.common import SliceSet
    from training.train import Batcher, train_step

    from napari_itermask.core.masks import MaskSampler
    from napari_itermask.core.unet import build_unet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = SliceSet.load(args.train)
    in_ch = 1 if args.net == "first" else 2
    model = build_unet(args.preset, in_ch).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if cfg["compile"] else model
    batcher = Batcher(data, args.net, MaskSampler(size=data.x.shape[-1]), 15.0, seed=0)
    batches = [batcher.get(args.batch) for _ in range(args.warmup + args.steps)]
    times, losses = [], []
    for i, (inp, target) in enumerate(batches):
        inp = inp.contiguous(memory_format=torch.channels_last)
        t = time.perf_counter()
        loss = train_step(step_model, opt, inp, target, cfg["precision"])
        dt = time.perf_counter() - t
        if i >= args.warmup:
            times.append(dt)
            losses.append(float(loss))
    return {"s_per_step": statistics.median(times), "loss": statistics.mean(losses)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training slices (.npz from prepare)")
    p.add_argument("--net", default="masked", choices=["first", "masked"])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args)))
        return 0
    results: dict[str, list[dict]] = {k: [] for k in CONFIGS}
    base = [sys.executable, __file__, "--train", args.train, "--net", args.net, "--preset",
            args.preset, "--batch", str(args.batch), "--threads", str(args.threads),
            "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "ITERMASK_NO_ALLOCATOR_TUNING": ""}
    for _ in range(args.repeats):
        for name, cfg in CONFIGS.items():
            out = subprocess.run(base + ["--one", json.dumps(cfg)], capture_output=True, check=False,
                                 text=True, env=env)
            if out.returncode:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = None
    print(f"\n{args.net} net, preset {args.preset}, batch {args.batch}, {args.threads} thread(s), "
          f"median of {args.steps} steps × {args.repeats} rounds\n")
    print("| configuration | s / step | speed-up | mean loss |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        if not rows:
            print(f"| {name} | failed | | |")
            continue
        s = statistics.median(r["s_per_step"] for r in rows)
        ref = ref or s
        print(f"| {name} | {s:.3f} | {ref / s:.2f}× | {rows[-1]['loss']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

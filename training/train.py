"""Train the two IterMask² networks on healthy slices (docs/method.md §3, §4).

  first  — f1(x_f) → x, input: the high-pass image only
  masked — f(cat(x̂, x_f)) → x with x̂ = m·ε + (1 − m)·x, m a random training mask

Loss: MSE over the whole slice. AdamW, linear warm-up then cosine decay. Checkpoints hold no
pickled objects (tensors and plain numbers, read back with ``torch.load(weights_only=True)``);
``--resume`` continues a run, also with a larger ``--steps``. A CSV log and a loss-curve PNG sit
in the run folder. Several GPUs: ``torchrun --nproc_per_node N -m training.train ...`` uses
DistributedDataParallel (each rank draws its own batches).

Recipes:
  --preset small (default): 0.9 M-parameter nets for CPUs, lr 1e-3, batch 16
  --preset paper           : the reference 5.9 M nets, lr 1e-4, batch 32, ~90 k steps (GPU)

Example:
  python -m training.train --train data/flair_train.npz --val data/flair_val.npz \\
      --net both --steps 1500 --out runs/flair
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from napari_itermask.core.conditioning import RadiusConditioning
from napari_itermask.core.frequency import high_pass, high_pass_radii
from napari_itermask.core.masks import MaskSampler
from napari_itermask.core.net_input import masked_channels, masked_input, shared_mask_context
from napari_itermask.core.precision import PRECISIONS, usable_precision
from napari_itermask import allocator, synth
from napari_itermask.core.unet import PRESETS, build_unet, count_parameters

from .common import SliceSet, context_slices_arg, log

RECIPES = {
    "small": {"lr": 1e-3, "batch": 16, "steps": 1500, "warmup": 100},
    "tiny": {"lr": 1e-3, "batch": 4, "steps": 20, "warmup": 2},
    "paper": {"lr": 1e-4, "batch": 32, "steps": 90_000, "warmup": 0},
}
NETS = ("first", "masked")
BASELINES = ("ae", "dae")


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if total <= warmup:
        return base
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


class Batcher:
    """Draws training batches: slices, their x_f, and (for the masked net) masked inputs."""

    def __init__(self, data: SliceSet, net: str, sampler: MaskSampler, radius: float,
                 seed: int, augment: bool = False, guidance: bool = True,
                 leftover_prob: float = 0.0, dae_noise: str = "both",
                 radius_range: tuple[float, float] | None = None, context_slices: int = 0):
        self.data, self.net, self.sampler, self.radius = data, net, sampler, radius
        # 2.5-D: the masked net also sees the slice's stored neighbours under its mask
        self.context_slices = context_slices if net == "masked" else 0
        if self.context_slices and data.context_slices != self.context_slices:
            raise SystemExit(f"--context-slices {context_slices}: the data hold "
                             f"{data.context_slices} neighbours per side (prepare "
                             f"--context-slices {context_slices})")
        if self.context_slices and (augment or leftover_prob):
            raise SystemExit("--context-slices does not go with --augment or --leftover-prob "
                             "(they change the slice, not its neighbours)")
        # radius conditioning: each masked sample's x_f is cut at a whole radius drawn uniformly
        # from this range, and the net is told its level (core.net_input)
        self.conditioning = (None if radius_range is None else
                             RadiusConditioning(low=radius_range[0], high=radius_range[1],
                                                trained=tuple(radius_range)))
        self.dae_noise = dae_noise
        self.guidance = guidance
        self.rng = np.random.default_rng(seed)
        self.augment = augment
        self.leftover_prob = leftover_prob

    def _leftover(self, x: np.ndarray, brain: np.ndarray):
        """Skull-strip leftovers: on a share of the slices, a patchy rim just outside the brain
        gets a tissue-like intensity (normalised units: from CSF-dark to brighter than GM) and
        joins the brain mask, as tissue a loose skull strip keeps would at inference."""
        x, brain = x.copy(), brain.copy()
        for i in range(len(x)):
            if self.rng.random() >= self.leftover_prob:
                continue
            rim = synth.leftover_rim(brain[i], self.rng, depth_vox=self.rng.uniform(1.0, 3.5),
                                     coverage=self.rng.uniform(0.1, 0.5))
            level = self.rng.uniform(-1.5, 3.5)
            x[i][rim] = level + 0.15 * self.rng.standard_normal(int(rim.sum()))
            brain[i] |= rim
        return x, brain

    def _augment(self, x: np.ndarray, brain: np.ndarray) -> np.ndarray:
        # random gamma and contrast on the brain's normalised intensities ([-3, 3] ↔ [0, 1])
        out = x.copy()
        for i in range(len(x)):
            if self.rng.random() < 0.5:
                u = np.clip((x[i] + 3.0) / 6.0, 0.0, None)
                g = np.exp(self.rng.uniform(-0.25, 0.25))
                out[i] = np.where(brain[i], 6.0 * u**g - 3.0, x[i])
        return out

    def get(self, batch: int):
        idx = self.rng.integers(0, len(self.data), size=batch)
        x = self.data.x[idx]
        brain = self.data.brain[idx]
        if self.leftover_prob > 0:
            x, brain = self._leftover(x, brain)
        if self.augment:
            x = self._augment(x, brain)
        xt = torch.from_numpy(x)[:, None]
        if self.net == "ae":
            return xt, xt
        if self.net == "dae":
            from .baselines import coarse_noise

            brain_t = torch.from_numpy(brain)[:, None]
            return xt + coarse_noise(xt.shape, self.rng, sign=self.dae_noise) * brain_t, xt
        if self.net == "first":
            return high_pass(xt, self.radius), xt
        masks = torch.from_numpy(self.sampler.sample_batch(brain, self.rng))[:, None]
        eps = torch.from_numpy(self.rng.standard_normal(x.shape).astype(np.float32))[:, None]
        ctx = None
        if self.context_slices:
            cx = self.data.context[idx]
            ctx = shared_mask_context(
                torch.from_numpy(cx), torch.from_numpy(self.data.context_brain[idx]), masks,
                torch.from_numpy(self.rng.standard_normal(cx.shape).astype(np.float32)))
        rc, level = self.conditioning, None
        if rc is None:
            xf = high_pass(xt, self.radius)
        else:
            lo, hi = (int(round(v)) for v in rc.trained)
            radii = self.rng.integers(lo, hi + 1, size=len(x)).astype(float).tolist()
            xf = high_pass_radii(xt[:, 0], radii)[:, None]
            level = torch.tensor([rc.level(r) for r in radii])
        return masked_input(xt, masks, eps, xf, self.guidance, level, ctx), xt




def train_step(model, opt, inp: torch.Tensor, target: torch.Tensor, precision: str = "fp32"):
    """One optimiser step on an MSE loss; ``bf16`` runs the forward and backward under CPU/CUDA
    autocast (weights, optimiser state and the loss stay float32). Returns the loss tensor."""
    if precision == "bf16":
        with torch.autocast(inp.device.type, dtype=torch.bfloat16):
            out = model(inp)
        loss = F.mse_loss(out.float(), target)
    else:
        loss = F.mse_loss(model(inp), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def prior_history(card_training: dict, net: str, model_label: str) -> list[dict]:
    """The training segments a bundle's network already had (``training.<net>.history`` of its
    card). Cards older than the ledger record only their own run's ``steps`` and ``batch``:
    that becomes one segment whose CPU time is unknown (``cpu_hours: null``)."""
    tr = card_training.get(net, {})
    if tr.get("history"):
        return [dict(h) for h in tr["history"]]
    if not tr.get("steps"):
        return []
    before = list(tr.get("history_of_init", []))
    return before + [{"steps": int(tr["steps"]), "batch": int(tr.get("batch", 0)) or None,
                      "cpu_hours": None, "precision": "fp32", "model": model_label}]


def cumulative(history: list[dict]) -> dict:
    """Totals over training segments: steps, samples seen, CPU hours (process CPU time, all
    threads), whether every segment's CPU time is known, and GPU hours (the wall time of the
    segments that trained on a GPU, ``device: cuda``; 0 when none did)."""
    steps = sum(int(h["steps"]) for h in history)
    samples = sum(int(h["steps"]) * int(h["batch"] or 0) for h in history)
    known = [h["cpu_hours"] for h in history if h.get("cpu_hours") is not None]
    gpu = sum(float(h.get("gpu_hours") or 0.0) for h in history)
    return {"steps": steps, "samples_seen": samples, "cpu_hours": round(sum(known), 6),
            "cpu_hours_complete": len(known) == len(history), "gpu_hours": round(gpu, 6)}


def widen_input(state: dict, target: dict) -> dict:
    """``state`` fitted to ``target``'s shapes where only the first convolution's input channels
    differ: a two-channel masked net's weights start a radius-conditioned (three-channel) one,
    the new channel's weights zero, so the widened net computes exactly what the old one did."""
    out = dict(state)
    for key, ref in target.items():
        old = out.get(key)
        if (old is not None and old.ndim == 4 and ref.ndim == 4 and old.shape != ref.shape
                and old.shape[0] == ref.shape[0] and old.shape[2:] == ref.shape[2:]
                and old.shape[1] < ref.shape[1]):
            wide = torch.zeros(ref.shape, dtype=old.dtype)
            wide[:, : old.shape[1]] = old
            out[key] = wide
    return out


def save_checkpoint(path: Path, model, opt, step: int, extra: dict) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "opt": opt.state_dict(),
        "step": step,
        "extra": json.dumps(extra),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def evaluate_loss(model, data: SliceSet, net: str, sampler, radius: float, device,
                  n: int = 64, seed: int = 12345, guidance: bool = True,
                  dae_noise: str = "both", radius_range=None, context_slices: int = 0) -> float:
    """Validation loss on a fixed draw of slices and masks (the same every time)."""
    b = Batcher(data, net, sampler, radius, seed, guidance=guidance, dae_noise=dae_noise,
                radius_range=radius_range, context_slices=context_slices)
    model.eval()
    losses = []
    with torch.no_grad():
        for _ in range(max(1, n // 16)):
            inp, target = b.get(16)
            losses.append(F.mse_loss(model(inp.to(device)), target.to(device)).item())
    model.train()
    return float(np.mean(losses))


def plot_curve(csv_path: Path, png_path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    vsteps = [int(r["step"]) for r in rows if r["val_loss"]]
    vloss = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, loss, lw=0.6, alpha=0.6, label="train (batch)")
    if vloss:
        ax.plot(vsteps, vloss, "o-", label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.legend()
    ax.set_title(png_path.stem)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


STOPPED = False  # set once a stop signal arrived: main() starts no further network


class _StopOnSignal:
    """SIGTERM/SIGINT during training: finish the current step, save, and stop cleanly."""

    def __init__(self):
        import signal

        self.requested = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        global STOPPED
        self.requested = STOPPED = True

    def restore(self):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


def _dist():
    """(rank, world) under torchrun; initialises the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def train_net(net: str, args, train: SliceSet, val: SliceSet | None) -> Path:
    rank, world = _dist()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = RECIPES[args.preset]
    steps = args.steps or recipe["steps"]
    batch = args.batch or recipe["batch"]
    lr = args.lr or recipe["lr"]
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest convolutions once
        torch.backends.cudnn.benchmark = True
    # emulated bf16 is several times slower than float32: such a device trains in fp32, and the
    # ledger records the precision that ran
    args.precision, notice = usable_precision(args.precision, device)
    if notice:
        log(f"{net}: {notice}")
    torch.manual_seed(args.seed + 1000 * rank + (0 if net == "first" else 7))
    if net in BASELINES:
        from .baselines import build_baseline

        model = build_baseline(net, args.preset).to(device)
    else:
        model = build_unet(args.preset, 1 if net == "first" else
                           masked_channels(args.radius_range is not None,
                                           args.context_slices)).to(device)
    # channels-last convolutions: ~1.4x faster training steps on these CPUs (oneDNN)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ckpt = out / f"{net}.ckpt"
    step = 0
    history: list[dict] = []  # segments before this run (from --init-from's card)
    cpu_before = 0.0  # this segment's CPU seconds before a --resume
    wall_before = 0.0  # and its wall-clock seconds
    seg_start = 0  # the run's step at which the current segment began
    if args.resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        old = json.loads(state["extra"])
        history = old.get("history", [])[:-1] if "history" in old else []
        cpu_before = float(old.get("run_cpu_seconds", 0.0))
        wall_before = float(old.get("run_wall_seconds", 0.0))
        seg_start = int(old.get("segment_start", 0))
        if old.get("history") and (old.get("precision", "fp32") != args.precision or
                                   old["history"][-1].get("device", "cpu") != device.type):
            # another precision or device from here on: the steps so far close their segment
            history, cpu_before, wall_before, seg_start = old["history"], 0.0, 0.0, step
        log(f"{net}: resumed at step {step}")
    elif args.init_from and net in NETS:
        from napari_itermask.models import load_bundle

        src = load_bundle(args.init_from)
        if src.card.preset != args.preset:
            raise SystemExit(f"--init-from model has preset {src.card.preset}, not {args.preset}")
        state = (src.first if net == "first" else src.masked).state_dict()
        model.load_state_dict(widen_input(state, model.state_dict()))
        history = prior_history(src.card.training, net, f"{src.card.name} ({src.sha256[:12]})")
        log(f"{net}: initialised from model {src.card.name} ({src.sha256[:12]})")
    if step >= steps:
        log(f"{net}: already at step {step} >= {steps}")
        return ckpt
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = torch.compile(wrapped) if args.compile else wrapped
    sampler = MaskSampler(size=train.x.shape[-1], wide_prob=args.wide_mask_prob)
    radius_range = args.radius_range if net == "masked" else None
    batcher = Batcher(train, net, sampler, args.radius, seed=args.seed * 7919 + step + 104729 * rank,
                      augment=args.augment, guidance=not args.no_guidance,
                      leftover_prob=args.leftover_prob, dae_noise=args.dae_noise,
                      radius_range=radius_range, context_slices=args.context_slices)
    log_path = out / f"{net}_log.csv"
    new_log = not log_path.exists() or step == 0
    if not new_log:  # rows after the checkpoint's step were trained again: drop the old ones
        with open(log_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        if len(kept) != len(rows):
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerows(kept)
    logf = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(logf)
    if new_log:
        writer.writerow(["step", "loss", "val_loss", "lr", "seconds"])
    if rank == 0:
        log(f"{net}: {count_parameters(model):,} parameters, preset {args.preset}, "
            f"batch {batch}×{world}, lr {lr}, steps {step}→{steps}, device {device}")
    model.train()
    t0 = time.time()
    cpu0 = time.process_time() - cpu_before
    last_save = t0
    extra = {"net": net, "preset": args.preset, "train": train.meta, "radius": args.radius,
             "wide_mask_prob": args.wide_mask_prob, "augment": args.augment,
             "leftover_prob": args.leftover_prob, "batch": batch,
             "masked_guidance": not args.no_guidance, "init_from": args.init_from,
             "lr": lr, "world": world, "dae_noise": args.dae_noise if net == "dae" else None,
             "precision": args.precision, "compile": bool(args.compile),
             "radius_range": list(radius_range) if radius_range else None,
             "context_slices": args.context_slices if net == "masked" else 0}

    def ledger(step_now: int) -> dict:
        run_cpu = time.process_time() - cpu0
        run_wall = time.time() - t0 + wall_before
        seg = {"steps": step_now - seg_start, "batch": batch * world,
               "cpu_hours": round(run_cpu * world / 3600, 6),
               "precision": args.precision, "run": str(out), "device": device.type}
        if device.type == "cuda":  # GPU time is the segment's wall time on its GPUs
            seg["gpu_hours"] = round(run_wall * world / 3600, 6)
        hist = history + [seg]
        return {**extra, "run_cpu_seconds": run_cpu, "run_wall_seconds": run_wall,
                "segment_start": seg_start,
                "history": hist,
                "cumulative": cumulative(hist)}
    stop = _StopOnSignal()
    while step < steps and not stop.requested:
        cur_lr = lr_at(step, steps, lr, recipe["warmup"])
        for g in opt.param_groups:
            g["lr"] = cur_lr
        inp, target = batcher.get(batch)
        inp = inp.to(device).contiguous(memory_format=torch.channels_last)
        loss = train_step(step_model, opt, inp, target.to(device), args.precision)
        step += 1
        val_loss = ""
        if rank == 0 and val is not None and (step % args.val_every == 0 or step == steps):
            vl = evaluate_loss(model, val, net, sampler, args.radius, device,
                               guidance=not args.no_guidance, dae_noise=args.dae_noise,
                               radius_range=radius_range, context_slices=args.context_slices)
            val_loss = f"{vl:.6f}"
        if rank == 0:
            writer.writerow([step, f"{loss.item():.6f}", val_loss, f"{cur_lr:.3g}",
                             f"{time.time() - t0:.1f}"])
            if step % 10 == 0 or step == steps:
                logf.flush()
                print(f"\r{net}: step {step}/{steps} loss {loss.item():.4f}"
                      f"{' val ' + val_loss if val_loss else ''}", end="", file=sys.stderr,
                      flush=True)
            if time.time() - last_save > args.save_every or step == steps or stop.requested:
                save_checkpoint(ckpt, model, opt, step, ledger(step))
                last_save = time.time()
    stop.restore()
    if rank == 0:
        print(file=sys.stderr)
        logf.close()
        if stop.requested:
            log(f"{net}: stopped by signal at step {step}; checkpoint saved (--resume continues)")
        plot_curve(log_path, out / f"{net}_loss.png")
        log(f"{net}: done at step {step} in {time.time() - t0:.0f} s")
    return ckpt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training slices (.npz from prepare)")
    p.add_argument("--val", help="validation slices (.npz) for the validation curve")
    p.add_argument("--net", default="both", choices=["first", "masked", "both", "ae", "dae"],
                   help="both = the two IterMask² nets; ae / dae = baselines")
    p.add_argument("--dae-noise", default="both", choices=["both", "positive", "negative"],
                   help="the DAE's noise range (its intensity prior): both = [-inf, +inf], "
                        "positive = [0, +inf] (the paper's best on FLAIR/T2), negative = "
                        "[-inf, 0] (its best on T1)")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=0, help="total steps (default: the recipe's)")
    p.add_argument("--batch", type=int, default=0, help="batch per process (default: recipe)")
    p.add_argument("--lr", type=float, default=0.0, help="peak learning rate (default: recipe)")
    p.add_argument("--radius", type=float, default=15.0, help="x_f frequency radius (bins)")
    p.add_argument("--wide-mask-prob", type=float, default=0.5,
                   help="share of training masks drawn inference-sized (0 = paper masks only)")
    p.add_argument("--augment", action="store_true", help="random gamma on intensities")
    p.add_argument("--leftover-prob", type=float, default=0.0, metavar="P",
                   help="share of slices given a skull-strip leftover rim (augmentation)")
    p.add_argument("--radius-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="radius-conditioned masked net: x_f cut at a radius drawn per sample "
                        "from LO..HI, given to the net as a third channel (docs/method.md §14)")
    p.add_argument("--context-slices", type=context_slices_arg, default=0, metavar="K",
                   help="2.5-D masked net: it also sees K axial neighbours per side under the "
                        "slice's mask (data from prepare --context-slices K; docs/method.md §18)")
    p.add_argument("--no-guidance", action="store_true",
                   help="ablation '-freq': the masked net gets zeros instead of x_f")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, curves)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoints")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from a model bundle's weights (e.g. continue training a shipped "
                        "model when its run folder is gone); fresh optimiser and schedule")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16 = autocast (float32 weights); measured in benchmarks/train_speed.py")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between checkpoints")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    allocator.tune()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = SliceSet.load(args.train)
    val = SliceSet.load(args.val) if args.val else None
    nets = NETS if args.net == "both" else (args.net,)
    for net in nets:
        if STOPPED:
            break
        train_net(net, args, train, val)
    return 0


if __name__ == "__main__":
    sys.exit(main())

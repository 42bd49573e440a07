"""The IterMask² shrink loop (docs/method.md §6) as a generator of per-iteration states.

Per slice, on the model grid (normalised intensities):

- iteration 1: ``x'1 = f1(x_f)``, ``e1 = (x − x'1)² · brain``; the ``first_unmask`` share of the
  brain with the lowest error is declared normal: ``m2 = brain · (e1 > quantile(e1[brain]))``.
- iteration t > 1: ``x̂t = mt·ε + (1 − mt)·x`` with fresh noise ε, ``x't = f(x̂t, x_f)``,
  ``m(t+1) = mt · ((x − x't)² > τ)``: the mask only ever shrinks.
- a slice stops when its mask shrinks by less than ``stop_shrink`` (relative) or becomes empty;
  it keeps the reconstruction of its last iteration. ``max_iter`` caps the iterations (the
  reference has no cap); a slice that hits it is reported as ``CAPPED``.

Slices are processed in batches; converged slices leave the batch. Noise is drawn per slice and
iteration from ``seed`` (keyed by the slice's id), so results do not depend on the batching.
Every yielded state holds, for all slices, the current mask, the full-brain error map
``(x − x')² · brain`` of the latest reconstruction (what the final segmentation thresholds,
docs/method.md §7), and that reconstruction. Each state owns its arrays (copies, a few MB per
iteration); ``History`` keeps the masks of all iterations compactly, and which slices each
iteration computed.

The error map of any earlier iteration k is not stored: ``reconstruct_at`` recomputes it
deterministically from the history (each slice's mask before its last computed iteration
<= k, and that iteration's seeded noise) with the same forward code as the loop, one pass per
slice. Bounded memory (bits per iteration) at the price of one network call per review of an
earlier iteration. Recomputed and in-loop maps agree to float rounding (batches differ); the
pipeline always obtains a given iteration's map the same way, so replays are bit-identical.

``smoothing`` > 0 (a project option, off in the paper): every decision reads a Gaussian-weighted
local mean of the squared error instead of the single pixel — the first-step cut and the map
reported in ``error`` average over the brain, the τ rule over the current mask
(``segmentation.smooth_within``). Per-pixel noise then no longer decides which pixel of a
lesion is unmasked; τ and the threshold must be calibrated with the same σ.

``rim`` > 0 (a project option, 0 in the paper): the reported ``error`` is zero on the brain's
outer ``rim`` pixels of each slice (``segmentation.inner_region``), so the final segmentation
never reads the brain's edge. The loop itself still decides on the whole brain; the threshold
must be calibrated with the same rim.

``polarity`` (a project option, ``"both"`` in the paper): ``"bright"`` or ``"dark"`` counts only
the deviations of that sign as error (``segmentation.squared_error``), in every decision and in
the reported map: a pixel darker than its reconstruction is no hyper-intense lesion. τ and the
threshold must be calibrated with the same polarity.

``radius_conditioning`` (a project option, None in the paper; ``net_input``): the masked net's
``x_f`` is cut at a radius that grows as the slice's mask shrinks, and the net is told that
radius in a third input channel. The first step keeps ``radius``. The radius follows from the
mask the net is given, so ``reconstruct_at`` recomputes it from the history.

``residual_scale`` (a project option, None in the paper; ``residual``): every squared error —
first step, τ decisions, reported map — is divided by the healthy error expected for a pixel of
its kind, computed once per slice from the scan. τ and the threshold must be calibrated on the
divided errors.

``first_step`` (a project option, ``"f1"`` in the paper): ``"complementary"`` replaces f1 by the
masked net run on ``complementary_masks`` complementary blob masks of the brain (each pixel in
exactly one; each mask reconstructed from the rest of the slice plus x_f, so no pixel sees
itself); ``"both"`` keeps, per pixel, the larger of the two errors, so a pixel is declared normal
only when both agree. The blobs are drawn from (seed, slice): ``blob_partition``.

``context_gap`` (a project option, 0 in the paper): the masked net's hole is the mask grown by
that many pixels within the brain (``hole``); only the mask's own pixels are judged against τ.
Pixels just unmasked next to the mask — the eroded rim of a lesion — then stop serving as
context from which the net paints the rest of the lesion back in (docs/method.md §17).

``context_slices`` K (a project option, 0 in the paper; ``net_input``): the masked net also sees
the K axial neighbours on each side, hidden under the slice's own mask (carried through each
neighbour's brain) with noise of their own (``neighbour_noise``): the same rule as in training.
A slice's input thus depends on its own mask and its neighbours' intensities only, so a slice
run with its neighbours' images alone gets what it gets in the whole scan. Neighbours are given
(``context``) or found by slice id ± offset among the slices (the pipeline's ids are the scan's
axial indices; a missing one is zeros) (docs/method.md §18).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .frequency import high_pass, high_pass_radii
from .conditioning import RadiusConditioning
from .context_gap import check_context_gap
from .context_slices import check_context_slices
from .first_step import COMPLEMENTARY_MASKS, FIRST_STEPS
from .net_input import masked_input, neighbour_slices, shared_mask_context
from .residual import ResidualScale
from .segmentation import POLARITIES, inner_region, smooth_within, squared_error

__all__ = [
    "EngineConfig",
    "IterationState",
    "History",
    "run",
    "run_to_end",
    "masked_net_input",
    "neighbour_noise",
    "hole",
    "error_scale",
    "reconstruct_at",
    "slice_noise",
    "blob_partition",
    "FIRST_STEPS",
    "RUNNING",
    "CONVERGED",
    "CAPPED",
    "SKIPPED",
]

RUNNING, CONVERGED, CAPPED, SKIPPED = 0, 1, 2, 3
STATUS_NAMES = {RUNNING: "running", CONVERGED: "converged", CAPPED: "capped", SKIPPED: "skipped"}

Net = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EngineConfig:
    tau: float
    first_unmask: float = 0.4
    stop_shrink: float = 0.01
    max_iter: int = 20
    batch_size: int = 32
    seed: int = 0
    min_brain_pixels: int = 1
    radius: float = 15.0
    tau_step: float | None = None  # human–AI mode: raise a stalled slice's τ instead of stopping
    masked_guidance: bool = True  # False: f gets zeros for x_f (the paper's "-freq" ablation)
    smoothing: float = 0.0  # σ (px) of the error smoothing before each decision; 0 = the paper
    rim: int = 0  # outer brain pixels left out of the reported error map; 0 = the paper
    polarity: str = "both"  # which deviations count as error: both (the paper), bright, dark
    radius_conditioning: RadiusConditioning | None = None  # None: x_f at `radius` (the paper)
    residual_scale: ResidualScale | None = None  # None: the plain squared error (the paper)
    first_step: str = "f1"  # f1 (the paper), complementary (masked net on blob masks), both
    complementary_masks: int = 3  # blob masks of the complementary first step
    context_gap: int = 0  # px around the mask also hidden from the masked net; 0 = the paper
    context_slices: int = 0  # axial neighbours per side the masked net sees (2.5-D); 0 = paper

    def __post_init__(self):
        if not 0.0 <= self.first_unmask < 1.0:
            raise ValueError("first_unmask must lie in [0, 1)")
        if self.max_iter < 1:
            raise ValueError("max_iter must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not np.isfinite(self.tau) or self.tau < 0:
            raise ValueError("tau must be a finite number >= 0")
        if not np.isfinite(self.smoothing) or self.smoothing < 0:
            raise ValueError("smoothing must be a finite number >= 0")
        if int(self.rim) != self.rim or self.rim < 0:
            raise ValueError("rim must be a whole number of pixels >= 0")
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}")
        if self.first_step not in FIRST_STEPS:
            raise ValueError(f"first_step must be one of {', '.join(FIRST_STEPS)}")
        check_context_gap(self.context_gap)
        check_context_slices(self.context_slices)
        if self.context_slices and self.first_step != "f1":
            raise ValueError("2.5-D context (context_slices) runs with the f1 first step only")
        if (isinstance(self.complementary_masks, bool) or int(self.complementary_masks)
                != self.complementary_masks or self.complementary_masks not in COMPLEMENTARY_MASKS):
            raise ValueError("complementary_masks must be a whole number from "
                             f"{COMPLEMENTARY_MASKS[0]} to {COMPLEMENTARY_MASKS[-1]}")

    @classmethod
    def from_card(cls, card, params=None, *, batch_size: int = 32,
                  tau_step: float | None = None) -> "EngineConfig":
        """The loop a model card describes (τ, first step, stop rule, cap, radius, guidance,
        error smoothing, rim, polarity), with ``params`` overriding τ, ``first_unmask``,
        ``max_iter`` and ``seed`` where they are not None.

        ``params`` is a ``napari_itermask.params.RunParams`` (validated there, with messages
        meant for users) or anything with those attributes; the core does not import it.
        """
        def pick(name):
            value = getattr(params, name, None) if params is not None else None
            return getattr(card, name) if value is None else value

        return cls(
            tau=float(pick("tau")),
            first_unmask=float(pick("first_unmask")),
            stop_shrink=card.stop_shrink,
            max_iter=int(pick("max_iter")),
            batch_size=int(batch_size),
            seed=int(getattr(params, "seed", 0) or 0),
            min_brain_pixels=card.min_brain_pixels,
            radius=card.frequency_radius,
            tau_step=tau_step,
            masked_guidance=card.masked_guidance,
            smoothing=card.error_smoothing,
            rim=card.error_rim,
            polarity=card.error_polarity,
            radius_conditioning=RadiusConditioning.from_dict(
                getattr(card, "radius_conditioning", None)),
            residual_scale=ResidualScale.from_dict(getattr(card, "residual_scale", None)),
            first_step=getattr(card, "first_step", "f1"),
            complementary_masks=int(getattr(card, "complementary_masks", 3)),
            context_gap=int(getattr(card, "context_gap", 0)),
            context_slices=int(getattr(card, "context_slices", 0)),
        )


@dataclass
class IterationState:
    iteration: int  # 1-based; the masks are those *after* this iteration
    tau: np.ndarray  # (N,) τ in force per slice
    masks: np.ndarray  # (N, H, W) bool
    error: np.ndarray  # (N, H, W) float32, (x − x')² · brain of each slice's latest reconstruction
    # (zero on the brain's outer ``rim`` pixels when the config asks for a rim)
    recon: np.ndarray  # (N, H, W) float32
    status: np.ndarray  # (N,) int8: RUNNING / CONVERGED / CAPPED / SKIPPED
    iterations: np.ndarray  # (N,) iterations each slice has run
    updated: np.ndarray  # (N,) bool, slices computed in this iteration
    forward_passes: int  # slice-forwards so far (one slice through one network = 1)

    @property
    def active(self) -> np.ndarray:
        return self.status == RUNNING

    @property
    def done(self) -> bool:
        return not bool(self.active.any())


def slice_noise(seed: int, slice_id: int, iteration: int, shape: tuple[int, int],
                stream: int = 0) -> torch.Tensor:
    """Standard normal noise for one slice and iteration, independent of batching. ``stream``
    c > 0 is a further independent draw (the 2.5-D context's neighbour channel c − 1)."""
    entropy = [int(seed) & 0xFFFFFFFF, int(slice_id), int(iteration)] + ([int(stream)] if stream
                                                                         else [])
    key = np.random.SeedSequence(entropy)
    g = torch.Generator().manual_seed(int(key.generate_state(1, np.uint64)[0] >> 1))
    return torch.randn(shape, generator=g)


def _noise(idx: np.ndarray, ids, iteration: int, seed: int, shape, device) -> torch.Tensor:
    """The noise draws of slices ``idx`` at ``iteration``, (B, 1, H, W)."""
    eps = torch.stack([slice_noise(seed, ids[i], iteration, shape) for i in idx])
    return eps.to(device)[:, None]


def _mask_and_noise(masks: np.ndarray, idx: np.ndarray, ids, iteration: int, seed: int,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks of slices ``idx`` and their noise draws at ``iteration``, as (B, 1, H, W)
    tensors: what the loop and ``reconstruct_at`` feed the masked net."""
    m = torch.from_numpy(masks[idx]).to(device)[:, None]
    return m, _noise(idx, ids, iteration, seed, masks.shape[-2:], device)


def blob_partition(brain: np.ndarray, k: int, seed: int, slice_id: int) -> np.ndarray:
    """(H, W) int8: for each brain pixel which of ``k`` complementary blob masks holds it (0 ..
    k − 1; −1 outside the brain). Blobs come from a smooth random field (σ 4 px at 128², scaled
    with the grid) cut at its quantiles inside the brain, so each mask covers ≈ 1/k of it; the
    field is drawn from (seed, slice), independent of batching."""
    from scipy import ndimage

    brain = np.asarray(brain, dtype=bool)
    key = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(slice_id), 0, 0xB10B])
    rng = np.random.default_rng(key)
    field = ndimage.gaussian_filter(rng.standard_normal(brain.shape), 4.0 * brain.shape[-1] / 128)
    out = np.full(brain.shape, -1, dtype=np.int8)
    if brain.any():
        cuts = np.quantile(field[brain], np.linspace(0, 1, k + 1)[1:-1])
        out[brain] = np.digitize(field[brain], cuts).astype(np.int8)
    return out


def _first_passes(cfg: EngineConfig) -> int:
    """Slice-forwards per slice of the first step."""
    return {"f1": 1, "complementary": cfg.complementary_masks,
            "both": 1 + cfg.complementary_masks}[cfg.first_step]


def _first_step(x, xf, br, brain_np, idx, ids, f1: Net, f: Net, cfg: EngineConfig):
    """The first step's reconstruction of one batch, (B, 1, H, W) float32: ``f1(x_f)``, the
    masked net on complementary blob masks, or per pixel whichever of the two errs more."""
    if cfg.first_step == "f1":
        return f1(xf).float()
    parts = torch.from_numpy(np.stack([
        blob_partition(brain_np[i], cfg.complementary_masks, cfg.seed, ids[i]) for i in idx
    ])).to(x.device)[:, None]
    eps = _noise(idx, ids, 1, cfg.seed, x.shape[-2:], x.device)
    comp = x.clone().float()
    for j in range(cfg.complementary_masks):
        m = parts == j
        comp = torch.where(m, f(masked_net_input(x, m, eps, br, cfg, xf)).float(), comp)
    if cfg.first_step == "complementary":
        return comp
    own = f1(xf).float()
    worse = squared_error(x, own, cfg.polarity) >= squared_error(x, comp, cfg.polarity)
    return torch.where(worse, own, comp)


def _device_of(net) -> torch.device:
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.device
    return torch.device("cpu")


def _chunks(idx: np.ndarray, n: int):
    for i in range(0, len(idx), n):
        yield idx[i : i + n]


def _reconstruct(x, xf, mask, noise, f: Net, cfg: EngineConfig,
                 brain: torch.Tensor, neighbours=None) -> torch.Tensor:
    """One batch through the masked net, ``f(masked_net_input(...))``; (B, 1, H, W) float32.
    (The first step is ``_first_step``.)"""
    return f(masked_net_input(x, mask, noise, brain, cfg, xf, neighbours)).float()


def neighbour_noise(idx: np.ndarray, ids, iteration: int, seed: int, k: int, shape,
                    device) -> torch.Tensor:
    """The 2.5-D context's noise of slices ``idx`` at ``iteration``, (B, 2k, H, W): per neighbour
    channel c its own stream (``slice_noise`` stream c + 1) of the slice's key."""
    eps = torch.stack([torch.stack([slice_noise(seed, ids[i], iteration, shape, c + 1)
                                    for c in range(2 * k)]) for i in idx])
    return eps.to(device)


def _neighbours(ctx, idx, ids, iteration: int, cfg: "EngineConfig", device):
    """(neighbour slices, their brains, their noise) of a batch for ``masked_net_input``, or None
    without 2.5-D context."""
    if ctx is None:
        return None
    cx, cb = ctx
    return (torch.from_numpy(cx[idx]).to(device), torch.from_numpy(cb[idx]).to(device),
            neighbour_noise(idx, ids, iteration, cfg.seed, cfg.context_slices, cx.shape[-2:],
                            device))


def _context_arrays(x_np, b_np, ids, cfg: "EngineConfig", context):
    """The run's neighbour arrays ((N, 2K, H, W) slices and brains) or None: ``context`` as
    given (e.g. a data set's stored neighbours), else found among the run's own slices."""
    k = cfg.context_slices
    if not k:
        return None
    if context is None:
        return neighbour_slices(x_np, b_np, k, ids)
    cx, cb = (np.ascontiguousarray(context[0], dtype=np.float32),
              np.asarray(context[1], dtype=bool))
    want = (len(x_np), 2 * k) + x_np.shape[1:]
    if cx.shape != want or cb.shape != want:
        raise ValueError(f"context must be two {want} arrays; got {cx.shape}, {cb.shape}")
    return cx, cb


def masked_net_input(x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
                     brain: torch.Tensor, cfg: EngineConfig,
                     xf: torch.Tensor | None = None, neighbours=None) -> torch.Tensor:
    """What the masked net is given for masks ``mask`` (all (B, 1, H, W)), as the loop gives it:
    ``net_input.masked_input`` with x_f at the config's radius (``xf`` if already computed), or,
    radius-conditioned, at the radius that each mask's share of ``brain`` calls for together
    with its level. With a ``context_gap`` the net's hole is the mask grown by that many pixels
    within the brain (``hole``). ``neighbours`` (2.5-D: the neighbour slices, their brains and
    noise, each (B, 2K, H, W)) adds the neighbour channels, hidden where the slice's net is
    (``net_input.shared_mask_context``). τ calibration calls this too."""
    rc = cfg.radius_conditioning
    hidden = hole(mask, brain, cfg.context_gap)
    context = None if neighbours is None else shared_mask_context(
        neighbours[0], neighbours[1], hidden, neighbours[2])
    if rc is None:
        if xf is None:
            xf = high_pass(x[:, 0], cfg.radius)[:, None]
        return masked_input(x, hidden, noise, xf, cfg.masked_guidance, context=context)
    share = mask.sum((1, 2, 3)).double() / brain.sum((1, 2, 3)).clamp(min=1).double()
    radii = [rc.radius(v) for v in share.tolist()]
    xf = high_pass_radii(x[:, 0], radii)[:, None]
    level = torch.tensor([rc.level(r) for r in radii], device=x.device)
    return masked_input(x, hidden, noise, xf, cfg.masked_guidance, level, context)


def hole(mask: torch.Tensor, brain: torch.Tensor, gap: int) -> torch.Tensor:
    """The pixels the masked net is not shown, (B, 1, H, W) bool: the mask itself (``gap`` 0, the
    paper), or the mask grown by ``gap`` pixels (square neighbourhood) within the brain, so that
    already unmasked pixels next to the mask — a lesion's eroded rim — give the net no context."""
    if not gap:
        return mask
    grown = torch.nn.functional.max_pool2d(mask.float(), 2 * int(gap) + 1, stride=1,
                                           padding=int(gap)) > 0
    return mask | (grown & brain.bool())


def error_scale(slices: np.ndarray, brain: np.ndarray, cfg: EngineConfig) -> np.ndarray | None:
    """(N, H, W) float32 expected healthy error per pixel that the config's standardised
    residual divides by (``residual``), or None for the plain squared error."""
    if cfg.residual_scale is None:
        return None
    xf = high_pass(torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)), cfg.radius)
    return cfg.residual_scale.scale_map(xf.numpy(), brain)


def _reported_error(x, out, br, brain_np, report, cfg: EngineConfig, scale=None):
    """(per-pixel squared error, its brain-wide smoothing, the map the loop reports) of one
    batch, as NumPy arrays; divided by ``scale`` (the batch's ``error_scale``) if given."""
    e = (squared_error(x, out, cfg.polarity) * br)[:, 0].cpu().numpy()
    if scale is not None:
        e = e / scale
    full = smooth_within(e, brain_np, cfg.smoothing)
    return e, full, (full if report is None else np.where(report, full, 0))


def run(
    slices: np.ndarray,
    brain: np.ndarray,
    f1: Net,
    f: Net,
    config: EngineConfig,
    *,
    slice_ids: Sequence[int] | None = None,
    resume: IterationState | None = None,
    cancel: threading.Event | None = None,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> Iterator[IterationState]:
    """Run the shrink loop on ``slices`` (N, H, W) float32 with ``brain`` (N, H, W) bool.

    ``f1`` maps (B, 1, H, W) x_f to (B, 1, H, W); ``f`` maps (B, 2, H, W) ``cat(x̂, x_f)`` to
    (B, 1, H, W). Torch modules are put in eval mode. ``resume`` continues from an earlier
    state with ``config.tau`` (e.g. a higher τ): slices whose mask is not empty start running
    again, and the iteration cap counts from the resume.
    Setting ``cancel`` stops the loop between iterations. ``context`` (2.5-D models only):
    the slices' neighbours and their brains, (N, 2K, H, W) each in ``context_offsets`` order;
    None finds them among ``slices`` by id (the pipeline's case: a whole scan).
    """
    x_np = np.ascontiguousarray(slices, dtype=np.float32)
    b_np = np.asarray(brain, dtype=bool)
    if x_np.ndim != 3 or b_np.shape != x_np.shape:
        raise ValueError(f"slices {x_np.shape} and brain {b_np.shape} must both be (N, H, W)")
    n, h, w = x_np.shape
    ids = np.arange(n) if slice_ids is None else np.asarray(slice_ids)
    if len(ids) != n:
        raise ValueError("slice_ids must have one id per slice")
    for net in (f1, f):
        if isinstance(net, torch.nn.Module):
            net.eval()
    device = _device_of(f)
    cfg = config

    if resume is None:
        masks = b_np.copy()
        recon = x_np.copy()
        error = np.zeros_like(x_np)
        tau = np.full(n, cfg.tau, dtype=np.float64)
        iters = np.zeros(n, dtype=np.int32)
        status = np.full(n, RUNNING, dtype=np.int8)
        status[b_np.reshape(n, -1).sum(1) < max(1, cfg.min_brain_pixels)] = SKIPPED
        masks[status == SKIPPED] = False
        t0 = 0
    else:
        masks = resume.masks.copy()
        recon = resume.recon.copy()
        error = resume.error.copy()
        tau = np.full(n, cfg.tau, dtype=np.float64)
        iters = resume.iterations.copy()
        status = resume.status.copy()
        alive = (status != SKIPPED) & masks.reshape(n, -1).any(1)
        status[alive] = RUNNING
        t0 = resume.iteration
    passes = 0 if resume is None else resume.forward_passes
    iters0 = iters.copy()  # the cap counts the iterations of this run (a resume starts afresh)

    decide = np.zeros_like(x_np)  # the map each decision reads (smoothed within the mask)
    report = inner_region(b_np, int(cfg.rim)) if cfg.rim else None  # where `error` may be > 0
    scale = error_scale(x_np, b_np, cfg)
    xf_cache: dict[int, torch.Tensor] = {}
    ctx = _context_arrays(x_np, b_np, ids, cfg, context)

    def xf_of(idx: np.ndarray) -> torch.Tensor:
        missing = [i for i in idx if i not in xf_cache]
        if missing:
            xm = torch.from_numpy(x_np[missing]).to(device)
            for i, xf in zip(missing, high_pass(xm, cfg.radius)):
                xf_cache[i] = xf
        return torch.stack([xf_cache[i] for i in idx])[:, None]

    t = t0
    while (status == RUNNING).any():
        if cancel is not None and cancel.is_set():
            return
        t += 1
        updated = status == RUNNING
        active = np.nonzero(updated)[0]
        # inference mode for the passes only: a generator suspended at its yield must not
        # leave its caller's thread in inference mode (it is thread-local)
        with torch.inference_mode():
            for idx in _chunks(active, cfg.batch_size):
                x = torch.from_numpy(x_np[idx]).to(device)[:, None]
                br = torch.from_numpy(b_np[idx]).to(device)[:, None]
                xf = xf_of(idx)
                if t == 1 and resume is None:
                    out = _first_step(x, xf, br, b_np, idx, ids, f1, f, cfg)
                    passes += len(idx) * _first_passes(cfg)
                else:
                    m, eps = _mask_and_noise(masks, idx, ids, t, cfg.seed, device)
                    nb = _neighbours(ctx, idx, ids, t, cfg, device)
                    out = _reconstruct(x, xf, m, eps, f, cfg, br, nb)
                    passes += len(idx)
                e, full, error[idx] = _reported_error(
                    x, out, br, b_np[idx], None if report is None else report[idx], cfg,
                    None if scale is None else scale[idx])
                recon[idx] = out[:, 0].cpu().numpy()
                if cfg.smoothing > 0 and not (t == 1 and resume is None):
                    decide[idx] = smooth_within(e, masks[idx], cfg.smoothing)
                else:
                    decide[idx] = full
        iters[active] += 1
        for i in active:
            old = masks[i]
            n_old = int(old.sum())
            if t == 1 and resume is None:
                vals = decide[i][b_np[i]]
                cut = np.quantile(vals, cfg.first_unmask) if cfg.first_unmask > 0 else -1.0
                new = b_np[i] & (decide[i] > cut)
                masks[i] = new
                if not new.any():
                    status[i] = CONVERGED
                continue
            new = old & (decide[i] > tau[i])
            masks[i] = new
            n_new = int(new.sum())
            if n_new == 0:
                status[i] = CONVERGED
            elif (n_old - n_new) < cfg.stop_shrink * n_old:
                if cfg.tau_step:
                    tau[i] += cfg.tau_step
                else:
                    status[i] = CONVERGED
        status[(status == RUNNING) & (iters - iters0 >= cfg.max_iter)] = CAPPED
        yield IterationState(
            iteration=t,
            tau=tau.copy(),
            masks=masks.copy(),
            error=error.copy(),
            recon=recon.copy(),
            status=status.copy(),
            iterations=iters.copy(),
            updated=updated,
            forward_passes=passes,
        )


@dataclass
class History:
    """Compact record of a run on the model grid: one bit-packed mask per iteration.

    ``masks(k)`` is the mask after iteration k (0: the brain); ``computed(k)`` the slices that
    iteration k ran through a network (none for 0). With the seed, these are all that
    ``reconstruct_at`` needs to give iteration k's error map again. The final state (error map
    and reconstruction as float32) is kept once, in ``last``.
    """

    shape: tuple[int, int, int]
    packed: list[np.ndarray] = field(default_factory=list)
    taus: list[np.ndarray] = field(default_factory=list)
    volumes: list[int] = field(default_factory=list)  # masked pixels per step (model grid)
    updated: list[np.ndarray] = field(default_factory=list)  # packed (N,) bool per step
    last: IterationState | None = None

    @classmethod
    def start(cls, brain: np.ndarray, tau: float) -> "History":
        hist = cls(shape=tuple(brain.shape))
        hist._push(np.asarray(brain, dtype=bool), np.full(brain.shape[0], tau),
                   np.zeros(brain.shape[0], bool))
        return hist

    def _push(self, masks: np.ndarray, tau: np.ndarray, updated: np.ndarray) -> None:
        self.packed.append(np.packbits(masks, axis=-1))
        self.taus.append(np.asarray(tau, dtype=np.float64).copy())
        self.volumes.append(int(masks.sum()))
        self.updated.append(np.packbits(np.asarray(updated, bool)))

    def record(self, state: IterationState) -> None:
        if state.iteration != len(self.packed):
            raise ValueError(f"history holds {len(self.packed) - 1} iterations; cannot record "
                             f"iteration {state.iteration}")
        self._push(state.masks, state.tau, state.updated)
        self.last = state

    def __len__(self) -> int:
        return len(self.packed)

    def masks(self, k: int) -> np.ndarray:
        return np.unpackbits(self.packed[k], axis=-1, count=self.shape[-1]).astype(bool)

    def computed(self, k: int) -> np.ndarray:
        """(N,) bool: the slices iteration k ran through a network."""
        return np.unpackbits(self.updated[k], count=self.shape[0]).astype(bool)

    def last_computed(self, k: int) -> np.ndarray:
        """(N,) int: per slice, the latest iteration <= k that computed it (0: none)."""
        out = np.zeros(self.shape[0], dtype=np.int64)
        for j in range(1, k + 1):
            out[self.computed(j)] = j
        return out

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.packed) + sum(u.nbytes for u in self.updated)


def reconstruct_at(
    slices: np.ndarray,
    brain: np.ndarray,
    f1: Net,
    f: Net,
    config: EngineConfig,
    history: History,
    k: int,
    *,
    slice_ids: Sequence[int] | None = None,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(error map, reconstruction) of history entry ``k``, (N, H, W) float32, recomputed.

    Each slice gets the reconstruction of its latest iteration j <= k, as the loop made it:
    ``f1(x_f)`` for j = 1, else ``f`` on the mask after j − 1 filled with the noise of
    (seed, slice, j). Slices never computed up to k keep error 0 and the scan itself. Uses
    ``config``'s seed, radius, guidance, smoothing, rim and polarity (τ plays no part).
    """
    x_np = np.ascontiguousarray(slices, dtype=np.float32)
    b_np = np.asarray(brain, dtype=bool)
    n, h, w = x_np.shape
    if not 0 <= k < len(history):
        raise ValueError(f"iteration {k} is not in the history (0..{len(history) - 1})")
    ids = np.arange(n) if slice_ids is None else np.asarray(slice_ids)
    error = np.zeros_like(x_np)
    recon = x_np.copy()
    when = history.last_computed(k)
    for net in (f1, f):
        if isinstance(net, torch.nn.Module):
            net.eval()
    device = _device_of(f)
    cfg = config
    report = inner_region(b_np, int(cfg.rim)) if cfg.rim else None
    scale = error_scale(x_np, b_np, cfg)
    ctx = _context_arrays(x_np, b_np, ids, cfg, context)
    with torch.inference_mode():
        for j in sorted({int(v) for v in when[when > 0]}):
            before = history.masks(j - 1) if j > 1 else None
            for idx in _chunks(np.nonzero(when == j)[0], cfg.batch_size):
                x = torch.from_numpy(x_np[idx]).to(device)[:, None]
                br = torch.from_numpy(b_np[idx]).to(device)[:, None]
                xf = high_pass(x[:, 0], cfg.radius)[:, None]
                if before is None:
                    out = _first_step(x, xf, br, b_np, idx, ids, f1, f, cfg)
                else:
                    m, eps = _mask_and_noise(before, idx, ids, j, cfg.seed, device)
                    nb = _neighbours(ctx, idx, ids, j, cfg, device)
                    out = _reconstruct(x, xf, m, eps, f, cfg, br, nb)
                _, _, error[idx] = _reported_error(
                    x, out, br, b_np[idx], None if report is None else report[idx], cfg,
                    None if scale is None else scale[idx])
                recon[idx] = out[:, 0].cpu().numpy()
    return error, recon


def run_to_end(
    slices: np.ndarray,
    brain: np.ndarray,
    f1: Net,
    f: Net,
    config: EngineConfig,
    *,
    slice_ids: Sequence[int] | None = None,
    keep_history: bool = False,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[IterationState, History | None]:
    """Run the loop to convergence; returns the final state (and the history if asked)."""
    hist = History.start(np.asarray(brain, bool), config.tau) if keep_history else None
    last = None
    for state in run(slices, brain, f1, f, config, slice_ids=slice_ids, context=context):
        if hist is not None:
            hist.record(state)
        last = state
    if last is None:  # nothing to do: every slice was skipped
        n = len(slices)
        status = np.full(n, SKIPPED, dtype=np.int8)
        last = IterationState(
            iteration=0,
            tau=np.full(n, config.tau),
            masks=np.zeros(np.shape(slices), dtype=bool),
            error=np.zeros(np.shape(slices), dtype=np.float32),
            recon=np.asarray(slices, dtype=np.float32).copy(),
            status=status,
            iterations=np.zeros(n, dtype=np.int32),
            updated=np.zeros(n, dtype=bool),
            forward_passes=0,
        )
    return last, hist

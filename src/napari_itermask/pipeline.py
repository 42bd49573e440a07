"""One scan through IterMask²: model grid → shrink loop → error map back on the scan's grid.

The CLI, the napari widget, training's evaluation and the tests all call this module, so each
step has exactly one implementation. ``iterate`` yields the engine's states for interactive use;
``segment_scan`` runs to the end and returns labels on the scan's own grid plus provenance.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch

from . import __version__
from .core.engine import (
    CAPPED,
    SKIPPED,
    EngineConfig,
    History,
    IterationState,
    run,
)
from .core.segmentation import lesion_stats, remove_small
from .models import ModelBundle
from .volume import ModelGridVolume, Scan, to_model_grid

__all__ = ["Job", "SegmentationResult", "engine_config", "prepare", "segment_scan", "pick_device",
           "provenance"]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda if present, then mps, else cpu. Asking for a missing device is an error."""
    from .errors import ItermaskError

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ItermaskError("device 'cuda' was asked for but no CUDA GPU is available")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ItermaskError("device 'mps' was asked for but Apple MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise ItermaskError(f"unknown device {name!r} (auto, cpu, cuda or mps)")
    return torch.device(name)


def prepare(scan: Scan, bundle: ModelBundle, brain_mask: np.ndarray | None = None
            ) -> ModelGridVolume:
    card = bundle.card
    return to_model_grid(scan, grid=card.grid_size, pixel_size_mm=card.pixel_size_mm,
                         normalisation=card.normalisation, brain_mask=brain_mask)


def engine_config(card, *, tau=None, max_iter=None, first_unmask=None, seed: int = 0,
                  batch_size: int = 32, tau_step=None) -> EngineConfig:
    """The loop a model card describes (τ, first step, stop rule, cap, radius, guidance, error
    smoothing, rim and polarity); the keyword arguments override the card where given."""
    return EngineConfig(
        tau=float(card.tau if tau is None else tau),
        first_unmask=float(card.first_unmask if first_unmask is None else first_unmask),
        stop_shrink=card.stop_shrink,
        max_iter=int(card.max_iter if max_iter is None else max_iter),
        batch_size=batch_size,
        seed=int(seed),
        min_brain_pixels=card.min_brain_pixels,
        radius=card.frequency_radius,
        tau_step=tau_step,
        masked_guidance=card.masked_guidance,
        smoothing=card.error_smoothing,
        rim=card.error_rim,
        polarity=card.error_polarity,
    )


@dataclass
class Job:
    """A scan prepared for one model, with everything needed to run and revisit the loop."""

    scan: Scan
    bundle: ModelBundle
    volume: ModelGridVolume
    config: EngineConfig
    history: History | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, scan: Scan, bundle: ModelBundle, *, brain_mask=None, tau=None,
               max_iter=None, first_unmask=None, seed: int = 0, batch_size: int = 32,
               tau_step=None) -> "Job":
        vol = prepare(scan, bundle, brain_mask)
        cfg = engine_config(bundle.card, tau=tau, max_iter=max_iter, first_unmask=first_unmask,
                            seed=seed, batch_size=batch_size, tau_step=tau_step)
        return cls(scan, bundle, vol, cfg)

    def iterate(self, resume: IterationState | None = None, tau: float | None = None):
        """Yield engine states; records each into ``history``. ``tau`` overrides for a resume."""
        if self.history is None:
            self.history = History.start(self.volume.brain, self.config.tau)
        if tau is not None:  # the τ in force from now on (provenance reports it)
            self.config = EngineConfig(**{**self.config.__dict__, "tau": float(tau)})
        self.cancel.clear()
        for state in run(self.volume.x, self.volume.brain, self.bundle.first, self.bundle.masked,
                         self.config, resume=resume, cancel=self.cancel):
            self.history.record(state)
            yield state

    def run_all(self) -> IterationState | None:
        for _ in self.iterate():
            pass
        return self.history.last if self.history else None

    # -- results on the scan's grid ------------------------------------------------------
    def error_on_scan(self, state: IterationState | None = None) -> np.ndarray:
        state = state or self.history.last
        if state is None:
            return np.zeros(self.scan.data.shape, np.float32)
        err = self.volume.geometry.to_scan(state.error, order=1)
        return np.where(self.volume.scan_brain, err, 0.0).astype(np.float32)

    def labels(self, threshold: float, min_size: int = 0, error_scan=None) -> np.ndarray:
        err = self.error_on_scan() if error_scan is None else error_scan
        lab = remove_small((err > threshold) & self.volume.scan_brain, min_size)
        return lab.astype(np.uint8)

    def mask_on_scan(self, k: int) -> np.ndarray:
        """History mask k (0 = brain) on the scan's grid (nearest neighbour)."""
        m = self.history.masks(k).astype(np.uint8)
        return (self.volume.geometry.to_scan(m, order=0) > 0) & self.volume.scan_brain


@dataclass
class SegmentationResult:
    labels: np.ndarray  # uint8, scan shape
    error: np.ndarray  # float32, scan shape
    job: Job
    provenance: dict


def provenance(job: Job, *, threshold: float, min_size: int, labels: np.ndarray,
               iteration: int | None = None) -> dict:
    state = job.history.last if job.history else None
    card = job.bundle.card
    n_les, vol_ml = lesion_stats(labels, job.scan.voxel_volume_mm3)
    status = state.status if state is not None else np.array([], np.int8)
    iters = state.iterations if state is not None else np.array([], np.int32)
    return {
        "software": "napari-itermask",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": str(job.scan.path) if job.scan.path else None,
        "input_sha256": job.scan.sha256,
        "model": card.name,
        "model_path": str(job.bundle.path) if job.bundle.path else None,
        "model_sha256": card.weights_sha256,
        "model_trained": card.trained,
        "tau": float(job.config.tau),
        "threshold": float(threshold),
        "threshold_derivation": card.threshold_derivation,
        "min_lesion_size_voxels": int(min_size),
        "seed": job.config.seed,
        "first_unmask": job.config.first_unmask,
        "max_iter": job.config.max_iter,
        "iteration_shown": iteration,
        "iterations_per_slice": [int(i) for i in iters],
        "slices_skipped": [int(i) for i in np.nonzero(status == SKIPPED)[0]],
        "slices_capped": [int(i) for i in np.nonzero(status == CAPPED)[0]],
        "forward_passes": int(state.forward_passes) if state is not None else 0,
        "lesion_count": n_les,
        "lesion_volume_ml": round(vol_ml, 4),
        "warnings": list(job.scan.notes),
    }


def segment_scan(scan: Scan, bundle: ModelBundle, *, brain_mask=None, threshold=None,
                 min_size: int = 0, max_iter=None, seed: int = 0, batch_size: int = 32,
                 progress=None) -> SegmentationResult:
    """Run the whole loop on one scan and threshold the final error map on the scan's grid."""
    job = Job.create(scan, bundle, brain_mask=brain_mask, max_iter=max_iter, seed=seed,
                     batch_size=batch_size)
    for state in job.iterate():
        if progress is not None:
            progress(state)
    thr = float(bundle.card.threshold if threshold is None else threshold)
    err = job.error_on_scan()
    labels = job.labels(thr, min_size, err)
    prov = provenance(job, threshold=thr, min_size=min_size, labels=labels)
    return SegmentationResult(labels, err, job, prov)

"""One scan through IterMask²: model grid → shrink loop → error map back on the scan's grid.

The CLI, the napari widget, training's evaluation and the tests all call this module, so each
step has exactly one implementation. ``Job.iterate`` yields the engine's states for interactive
use; ``segment_scan`` runs the loop as a ``RunParams`` says and returns the chosen result (by
default the paper's: the last iteration's error above the card's threshold) on the scan's own
grid plus provenance that replays it.

The networks run as ``ModelBundle.nets(precision)`` gives them (BatchNorm folded, pointwise
work fused; bf16 where asked for and calibrated). bf16 asked for on a device without native bf16
runs in fp32 instead, with a notice in ``Job.notices`` and the sidecar's warnings; the
parameters then record fp32, the precision that ran. A run is fp32 unless its parameters ask
for bf16, even for a card calibrated in bf16 too (``ModelCard.precision`` is what evaluation
uses): the validated arithmetic is the default, the faster one a choice.
"""

from __future__ import annotations

import numbers
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
    reconstruct_at,
    run,
)
from .core.precision import usable_precision
from .core.segmentation import lesion_stats, remove_small
from .models import ModelBundle
from .params import ParamsError, RunParams
from .volume import ModelGridVolume, Scan, to_model_grid

__all__ = ["Job", "SegmentationResult", "RunParams", "describe", "engine_config", "prepare",
           "segment_scan", "pick_device", "provenance", "runnable_precision"]


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
                  batch_size: int = 32, tau_step=None, precision=None) -> EngineConfig:
    """The loop a model card describes, the keyword arguments overriding it where given (τ
    from the card's calibration in ``precision``; None: fp32).

    Kept for training/ and benchmarks/; new code builds a ``RunParams`` and calls
    ``EngineConfig.from_card(card, params)``."""
    params = RunParams(tau=tau, max_iter=max_iter, first_unmask=first_unmask, seed=seed,
                       precision=precision)
    return EngineConfig.from_card(card, params.resolve(card), batch_size=_batch(batch_size),
                                  tau_step=tau_step)


def _batch(batch_size) -> int:
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1):
        raise ParamsError(f"batch size must be a whole number >= 1, not {batch_size!r}")
    return int(batch_size)


def _with(params: RunParams | None, **overrides) -> RunParams:
    """``params`` (default: all from the card) with the keyword values that are not None."""
    params = RunParams() if params is None else params
    given = {k: v for k, v in overrides.items() if v is not None}
    return params.replace(**given) if given else params


@dataclass
class Job:
    """A scan prepared for one model, with everything needed to run and revisit the loop.

    ``params`` holds the run's parameters, resolved against the card (τ at the start, first
    step, cap, seed); ``continued`` the (after iteration, τ) of each resume with a higher τ.
    """

    scan: Scan
    bundle: ModelBundle
    volume: ModelGridVolume
    config: EngineConfig
    history: History | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    params: RunParams = field(default_factory=RunParams)
    continued: list = field(default_factory=list)
    brain_mask_source: str | None = None  # where a given brain mask came from; None: automatic
    notices: list = field(default_factory=list)  # one-line notes for the user (and the sidecar)

    @property
    def nets(self):
        """(f1, f) as the run's precision runs them (``ModelBundle.nets``)."""
        return self.bundle.nets(self.params.precision or "fp32")

    @classmethod
    def create(cls, scan: Scan, bundle: ModelBundle, params: RunParams | None = None, *,
               brain_mask=None, brain_mask_source: str | None = None, batch_size: int = 32,
               tau_step=None, tau=None, max_iter=None, first_unmask=None, seed=None) -> "Job":
        """``params`` (None: the card's loop), with the keyword overrides (kept for older
        callers) applied on top; every value is validated once, in ``RunParams``."""
        params = _with(params, tau=tau, max_iter=max_iter, first_unmask=first_unmask, seed=seed)
        params, notices = _runnable(params, bundle)
        cfg = EngineConfig.from_card(bundle.card, params, batch_size=_batch(batch_size),
                                     tau_step=tau_step)
        vol = prepare(scan, bundle, brain_mask)
        if brain_mask is not None and brain_mask_source is None:
            brain_mask_source = "given"
        return cls(scan, bundle, vol, cfg, params=params, brain_mask_source=brain_mask_source,
                   notices=notices)

    @property
    def iterations(self) -> int:
        """Iterations in the history so far (0 before the first)."""
        return len(self.history) - 1 if self.history is not None else 0

    def iterate(self, resume: IterationState | None = None, tau: float | None = None):
        """Engine states, each recorded into ``history`` as it comes. ``tau`` raises τ for a
        resume; the (after iteration, τ) is recorded in ``continued`` at once, so a replay
        does the same. The history and the record start with the call, not the first step."""
        if self.history is None:
            self.history = History.start(self.volume.brain, self.config.tau)
        if tau is not None:  # the τ in force from now on (provenance reports it)
            tau = float(tau)
            if not np.isfinite(tau) or tau <= self.config.tau:
                raise ParamsError(f"τ must rise above {self.config.tau:.4g} to continue, "
                                  f"not {tau:.4g}")
            after = resume.iteration if resume is not None else self.iterations
            self.continued.append((int(after), tau))
            self.config = EngineConfig(**{**self.config.__dict__, "tau": tau})
        self.cancel.clear()
        f1, f = self.nets
        return self._record(run(self.volume.x, self.volume.brain, f1, f, self.config,
                                resume=resume, cancel=self.cancel))

    def _record(self, states):
        for state in states:
            self.history.record(state)
            yield state

    def run_all(self) -> IterationState | None:
        for _ in self.iterate():
            pass
        return self.history.last if self.history else None

    def replay(self, params: RunParams, progress=None) -> None:
        """Run the loop as ``params`` records it: up to the first continue's iteration, then
        resume with each higher τ in turn, and stop after ``run_until`` iterations in all
        (None: at convergence). ``params``' run values must be this job's
        (``Job.create(scan, bundle, params)``); ``progress(state)`` sees every state."""
        if self.history is not None:
            raise ParamsError("replay needs a fresh job")
        steps = list(params.continued)
        stops = [after for after, _ in steps] + [params.run_until]
        for i, stop in enumerate(stops):
            if i == 0:
                gen = self.iterate()
            else:
                after, tau = steps[i - 1]
                if self.iterations != after:
                    raise ParamsError(f"the run stopped after {self.iterations} iterations, "
                                      f"before the recorded continue at iteration {after}")
                gen = self.iterate(resume=self.history.last, tau=tau)
            while stop is None or self.iterations < stop:
                try:
                    state = next(gen)
                except StopIteration:
                    break
                if progress is not None:
                    progress(state)
            gen.close()
        if params.run_until is not None and self.iterations != params.run_until:
            raise ParamsError(f"the run stopped after {self.iterations} iterations, not the "
                              f"{params.run_until} recorded")

    # -- results on the scan's grid ------------------------------------------------------
    def reconstruction_at(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(error map, reconstruction) of history entry k on the model grid.

        The last iteration's come from the loop itself; an earlier one's are recomputed
        (``engine.reconstruct_at``: deterministic, one network pass per slice). Iteration 0
        has no reconstruction: error 0, the scan itself."""
        if self.history is None or not 0 <= k < len(self.history):
            raise ParamsError(f"iteration {k} does not exist: the run has "
                              f"{self.iterations} iteration(s)")
        last = self.history.last
        if k == 0 or last is None:
            return np.zeros_like(self.volume.x), self.volume.x.copy()
        if k == last.iteration:
            return last.error, last.recon
        f1, f = self.nets
        return reconstruct_at(self.volume.x, self.volume.brain, f1, f, self.config,
                              self.history, k)

    def error_on_scan(self, state: IterationState | None = None, *,
                      k: int | None = None) -> np.ndarray:
        """An error map on the scan's grid: of ``state``, of history entry ``k``, or (neither
        given) of the last iteration."""
        if k is not None:
            error = self.reconstruction_at(k)[0]
        else:
            state = state or (self.history.last if self.history is not None else None)
            if state is None:
                return np.zeros(self.scan.data.shape, np.float32)
            error = state.error
        return self._error_to_scan(error)

    def maps_on_scan(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(error map, reconstruction) of history entry k on the scan's grid."""
        error, recon = self.reconstruction_at(k)
        return self._error_to_scan(error), self.volume.geometry.to_scan(recon, order=1)

    def _error_to_scan(self, error: np.ndarray) -> np.ndarray:
        err = self.volume.geometry.to_scan(error, order=1)
        return np.where(self.volume.scan_brain, err, 0.0).astype(np.float32)

    def labels(self, threshold: float, min_size: int = 0, error_scan=None) -> np.ndarray:
        err = self.error_on_scan() if error_scan is None else error_scan
        lab = remove_small((err > threshold) & self.volume.scan_brain, min_size)
        return lab.astype(np.uint8)

    def mask_on_scan(self, k: int) -> np.ndarray:
        """History mask k (0 = brain) on the scan's grid (nearest neighbour)."""
        m = self.history.masks(k).astype(np.uint8)
        return (self.volume.geometry.to_scan(m, order=0) > 0) & self.volume.scan_brain

    def result_params(self, *, iteration: int | None = None, source: str = "error",
                      threshold: float | None = None, min_size: int = 0) -> RunParams:
        """The complete record of a result taken from this job now: its run (with the
        continues and the iterations run) and the chosen iteration (None: the last), source,
        threshold (None: the card's) and minimum size."""
        k = self.iterations if iteration is None else int(iteration)
        if k > self.iterations:
            raise ParamsError(f"iteration {k} does not exist: the run has "
                              f"{self.iterations} iteration(s)")
        return self.params.replace(
            continued=tuple(self.continued), run_until=self.iterations, iteration=k,
            source=source, min_size=min_size,
            threshold=(self.params.threshold if self.params.threshold is not None
                       else self.bundle.card.threshold) if threshold is None else threshold)

    def result(self, params: RunParams, error_scan=None) -> np.ndarray:
        """uint8 labels on the scan's grid for ``result_params``' choice: iteration k's error
        map above the threshold (``error_scan``: that map, if already computed) or its mask,
        minus lesions under the minimum size."""
        k = self.iterations if params.iteration is None else params.iteration
        if params.source == "mask":
            lab = self.mask_on_scan(k)
        else:
            err = self.error_on_scan(k=k) if error_scan is None else error_scan
            lab = (err > params.threshold) & self.volume.scan_brain
        return remove_small(lab, params.min_size).astype(np.uint8)


def _runnable(params: RunParams, bundle: ModelBundle) -> tuple[RunParams, list[str]]:
    """``params`` resolved against the card in the precision that will run, and the notices."""
    used, notice = runnable_precision(params, bundle)
    return params.replace(precision=used).resolve(bundle.card), [notice] if notice else []


def runnable_precision(params: RunParams, bundle: ModelBundle) -> tuple[str, str | None]:
    """(the precision a run of ``params`` uses, a one-line notice or None).

    A precision the card has no calibration for is refused (``ParamsError``, one line): its τ
    and threshold would not hold, and a clinician asking for bf16 should learn that the model
    was not validated in it rather than get another arithmetic silently. bf16 on a device
    without native bf16 runs fp32, with a notice (a replayed τ and threshold, which the
    parameters then hold already, are kept)."""
    card = bundle.card
    asked = params.precision or "fp32"  # bf16 only when asked for, whatever the card prefers
    if asked != "fp32":  # refused before any fallback: a property of the model, not the CPU
        from .errors import ModelError

        try:
            card.calibration(asked)
        except ModelError as exc:
            raise ParamsError(str(exc)) from None
    return usable_precision(asked, bundle.device)


@dataclass
class SegmentationResult:
    labels: np.ndarray  # uint8, scan shape
    error: np.ndarray  # float32, scan shape: the chosen iteration's error map
    job: Job
    provenance: dict
    params: RunParams | None = None  # what produced ``labels`` (also in the provenance)


def describe(params: RunParams) -> str:
    """One line saying what a result is, e.g. 'error of iteration 7 above 0.5'."""
    what = (f"mask after iteration {params.iteration}" if params.source == "mask"
            else f"error of iteration {params.iteration} above {params.threshold:.4g}")
    if params.min_size > 1:
        what += f", lesions of {params.min_size} voxels or more"
    return what


def provenance(job: Job, params: RunParams, labels: np.ndarray) -> dict:
    """The sidecar: what produced ``labels`` (``params``, from ``Job.result_params``), on what
    scan, with which model; ``params`` replays it (``itermask segment --params``)."""
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
        "brain_mask": job.brain_mask_source or "automatic (voxels > 0)",
        "result": describe(params),
        "result_source": params.source,
        "iteration": params.iteration,
        "iterations_run": params.run_until,
        "tau": params.tau,
        "tau_in_force": params.tau_in_force,
        "continued": [[a, t] for a, t in params.continued],
        "threshold": params.threshold,
        "threshold_derivation": card.threshold_derivation,
        "min_lesion_size_voxels": params.min_size,
        "seed": params.seed,
        "first_unmask": params.first_unmask,
        "max_iter": params.max_iter,
        "params": params.to_dict(),
        "iterations_per_slice": [int(i) for i in iters],
        "slices_skipped": [int(i) for i in np.nonzero(status == SKIPPED)[0]],
        "slices_capped": [int(i) for i in np.nonzero(status == CAPPED)[0]],
        "forward_passes": int(state.forward_passes) if state is not None else 0,
        "precision": params.precision or "fp32",
        "lesion_count": n_les,
        "lesion_volume_ml": round(vol_ml, 4),
        "warnings": [*job.scan.notes, *job.notices],
    }


def segment_scan(scan: Scan, bundle: ModelBundle, params: RunParams | None = None, *,
                 brain_mask=None, brain_mask_source: str | None = None, threshold=None,
                 min_size=None, max_iter=None, seed=None, batch_size: int = 32,
                 progress=None) -> SegmentationResult:
    """Run the loop on one scan as ``params`` says (None: the card's, to convergence, the
    paper's final-error segmentation) and take its result on the scan's grid. The keyword
    values override ``params`` where given. The same ``params`` (e.g. a sidecar's) gives the
    same labels."""
    params = _with(params, threshold=threshold, min_size=min_size, max_iter=max_iter,
                   seed=seed)
    job = Job.create(scan, bundle, params, brain_mask=brain_mask,
                     brain_mask_source=brain_mask_source, batch_size=batch_size)
    job.replay(params, progress)
    final = job.result_params(iteration=params.iteration, source=params.source,
                              threshold=params.threshold, min_size=params.min_size)
    err = (job.error_on_scan(k=final.iteration) if final.iteration > 0
           else np.zeros(scan.data.shape, np.float32))
    labels = job.result(final, error_scan=err)
    return SegmentationResult(labels, err, job, provenance(job, final, labels), final)

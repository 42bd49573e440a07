"""One interactive IterMask² run on one napari image layer: state, and the worker's generator.

No Qt here. The widget keeps one ``Session`` per source layer, with that image's review state
(``review.ReviewState``: threshold, minimum size, chosen iteration, result source, next τ); the session holds a reference to
that layer (never the layer combo's current value), so its results can only land on layers
derived from it. ``advance`` runs in a worker thread: it loads the model, prepares the job (the
scan on the model grid), steps the engine and moves *only what will be shown* (the current mask,
the latest error map and reconstruction) to the scan's grid, all off the GUI thread. Everything
is computed by ``pipeline.Job``; this module adds bookkeeping, not maths.

The engine's generator stays alive between Steps and after a Stop, so Step, Step, Run gives
exactly what one Run gives. "Continue with higher τ" resumes from the last state with a new τ
(the engine's ``resume``), which extends the same history.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .core.engine import RUNNING, SKIPPED
from .params import RunParams
from .review import ReviewState, remember_error

__all__ = [
    "RunRequest",
    "StepInfo",
    "Frame",
    "Note",
    "Failure",
    "Finished",
    "Session",
    "advance",
]

log = logging.getLogger(__name__)


@dataclass
class RunRequest:
    """Everything read from the GUI (on the GUI thread) that a run needs."""

    model: str  # bundled/user model name or folder
    device: str  # auto / cpu / cuda / mps
    data: np.ndarray  # the scan array (file's own shape)
    affine: np.ndarray  # RAS, 4×4
    header: Any = None
    name: str = "image"
    brain_mask: np.ndarray | None = None  # scan shape, bool; None = automatic
    brain_mask_source: str | None = None  # e.g. "layer 'brain'" (recorded in the sidecar)
    skull_strip: bool = False  # the brain mask comes from skullstrip.brain_mask (in the worker)
    params: RunParams = field(default_factory=RunParams)  # None values: the model card's


@dataclass
class StepInfo:
    """What the iteration slider says about history entry k (0 = the brain)."""

    iteration: int
    tau: float | None  # None for the start and for the first (fraction-based) step
    volume_ml: float  # masked volume on the scan's grid


@dataclass
class Frame:
    """One history entry, ready to show (arrays on the scan's grid)."""

    step: int  # history index
    info: StepInfo
    mask: np.ndarray  # bool
    error: np.ndarray | None  # float32; None for step 0
    recon: np.ndarray | None  # float32 (normalised intensities); None for step 0
    active: int = 0  # slices still shrinking
    total: int = 0  # slices with brain
    done: bool = False


@dataclass
class Note:
    message: str
    warning: bool = False


@dataclass
class Failure:
    message: str


@dataclass
class Finished:
    reason: str  # "converged", "stopped", "step", "nothing"


@dataclass
class Session:
    source: Any  # the napari layer the run belongs to (unwrapped)
    request: RunRequest
    job: Any = None  # pipeline.Job once prepared
    live: Iterator | None = None  # the engine generator, alive between Steps
    finished: bool = False  # the live generator has run to convergence
    steps: list[StepInfo] = field(default_factory=list)
    tau: float | None = None  # τ in force for the latest iterations
    error_scan: np.ndarray | None = None  # latest error map on the scan's grid
    shown_step: int = 0
    review: ReviewState | None = None  # this image's choices, seeded from the card
    errors: dict = field(default_factory=dict)  # (iteration, is last) → error map (scan grid)
    accepted: Any = None  # review.Accepted once the user accepted a result
    summary: str = ""  # "Lesions: n · v mL" of the result last shown
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards ``errors``
    layers: dict = field(default_factory=dict)  # role → napari layer
    preview_edited: bool = False  # the user painted on the live lesion preview
    key: tuple = ()  # the GUI inputs this run was started with
    stop: threading.Event = field(default_factory=threading.Event)
    consumed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.consumed.set()

    @property
    def card(self):
        return self.job.bundle.card if self.job is not None else None

    @property
    def voxel_ml(self) -> float:
        return self.job.scan.voxel_volume_mm3 / 1000.0

    def apply(self, frame: Frame) -> None:
        """Take a frame on the consumer's (GUI) thread: the slider's steps, the latest error
        map, and that map for the review (the loop's own map of what was then the last
        iteration)."""
        while len(self.steps) <= frame.step:
            self.steps.append(frame.info)
        self.steps[frame.step] = frame.info
        del self.steps[frame.step + 1:]
        self.shown_step = frame.step
        if frame.error is not None:
            self.error_scan = frame.error
            remember_error(self, (frame.step, True), frame.error)

    def close(self) -> None:
        """Stop for good (reset, source layer removed, widget closed)."""
        self.stop.set()
        self.consumed.set()
        if self.job is not None:
            self.job.cancel.set()


def _frame(session: Session, state, k: int) -> Frame:
    job = session.job
    mask = job.mask_on_scan(k)
    tau = None if state.iteration <= 1 and k <= 1 else session.tau
    info = StepInfo(state.iteration, tau, float(mask.sum()) * session.voxel_ml)
    used = state.status != SKIPPED
    error = job.error_on_scan(state)
    return Frame(
        step=k,
        info=info,
        mask=mask,
        error=error,
        recon=job.volume.geometry.to_scan(state.recon, order=1),
        active=int((state.status == RUNNING).sum()),
        total=int(used.sum()),
        done=state.done,
    )


def _wait_consumed(session: Session) -> bool:
    """Throttle: at most one frame waits for the GUI. False if asked to stop meanwhile."""
    while not session.consumed.wait(0.05):
        if session.stop.is_set():
            return False
    return not session.stop.is_set()


def advance(session: Session, *, steps: int | None = None, tau: float | None = None,
            loader: Callable | None = None) -> Iterator:
    """Worker body: yields Note / Frame / Failure / Finished objects for the GUI thread.

    ``steps``: iterations to run (None = until convergence or Stop). ``tau``: continue from
    the last state with this τ. ``loader(model, device)`` returns a model bundle.
    """
    from .errors import ItermaskError

    try:
        session.stop.clear()
        if session.job is None:
            yield from _prepare(session, loader)
        job = session.job
        if tau is not None:
            if job.history is None or job.history.last is None:
                yield Failure("nothing to continue yet: run at least one iteration first")
                return
            if session.live is not None:
                session.live.close()
            session.live = job.iterate(resume=job.history.last, tau=float(tau))
            session.tau = float(tau)
            session.finished = False
        elif session.finished:
            yield Finished("nothing")
            return
        elif session.live is None:
            session.live = job.iterate()
        n = 0
        while True:
            if session.stop.is_set():
                yield Finished("stopped")
                return
            try:
                state = next(session.live)
            except StopIteration:
                session.live, session.finished = None, True
                yield Finished("converged")
                return
            k = len(job.history) - 1
            frame = _frame(session, state, k)
            if not _wait_consumed(session):
                yield Finished("stopped")
                return
            session.consumed.clear()
            yield frame
            n += 1
            if state.done:
                session.live.close()
                session.live, session.finished = None, True
                yield Finished("converged")
                return
            if steps is not None and n >= steps:
                yield Finished("step")
                return
    except ItermaskError as exc:
        yield Failure(str(exc))
    except MemoryError:
        yield Failure("out of memory: try a smaller scan, or a GPU")
    except Exception as exc:  # a bug: keep the traceback in the log, show one line
        log.exception("IterMask² run failed")
        yield Failure(f"unexpected {type(exc).__name__}: {exc}")


def _prepare(session: Session, loader) -> Iterator:
    from .pipeline import Job
    from .volume import ScanWarning, scan_from_array

    req = session.request
    yield Note(f"loading model {req.model} …")
    bundle = loader(req.model, req.device)
    yield Note("preparing the scan on the model grid …")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)  # they are in scan.notes
        scan = scan_from_array(req.data, req.affine, req.header, name=req.name)
    given = req.skull_strip or req.brain_mask is not None
    for msg in scan.notes:
        if not (given and "looks not skull-stripped" in msg):  # a head, but its brain is given or found
            yield Note(msg, warning=True)
    brain_mask, source = req.brain_mask, req.brain_mask_source
    if req.skull_strip:
        from . import skullstrip

        yield Note("skull stripping (the template registered to the scan) …")
        brain_mask, source = skullstrip.brain_mask(scan.data, scan.affine), skullstrip.SOURCE
    job = Job.create(scan, bundle, req.params, brain_mask=brain_mask,
                     brain_mask_source=source)
    session.tau = job.config.tau
    session.review = ReviewState.from_card(bundle.card, req.params)
    session.job = job
    brain = job.volume.scan_brain
    start = Frame(step=0, info=StepInfo(0, None, float(brain.sum()) * session.voxel_ml),
                  mask=brain, error=None, recon=None)
    if not _wait_consumed(session):
        return
    session.consumed.clear()
    yield start

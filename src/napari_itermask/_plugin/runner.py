"""The widget's workers: a run (Run, Step, Continue, Stop), a chosen iteration's maps, lesions,
the lesion table.

A run's worker iterates and reports frames, notes, failures and its end; a short worker fetches
the mask and then the maps of the iteration chosen in the review; another computes the lesions
of a frame or of a chosen iteration; a third the per-lesion table (and Dice) of the result shown.

``Runner`` belongs to one ``IterMaskWidget`` (its *host*) and uses only what the host composes:
the panels (``inputs``, ``run_controls``, ``review_panel``), the ``presenter``, the sessions by
source layer (``_sessions``, ``_current_session()``) and four hooks that bring the panels in
line (``_refresh_review()``, ``_update_lesions(session)``, ``_show_result(session, result)``,
``_show_table(result)``, ``_update_buttons()``) and what it shows by source layer (``_shown``).

Out of memory. A run's networks retry a batch that runs out of memory in halves
(``oom.split_on_oom``, the same result); each retry is shown as a warning notification.

Threads. Model loading, scan preparation, iterations and moving what is shown to the scan's grid
run in napari generator workers (``_session.advance``); the GUI thread only swaps layer data.
One run at a time, in the session of the image it started on: reports of a session that was
reset, or whose image was removed, are dropped.

Review workers. A chosen iteration is shown in two stages by one generator worker: its mask
first (cheap: no network pass), then its error map and reconstruction (a network pass for an
earlier iteration); requests coalesce (while one is computed only the latest waits), and a
request the user has already moved past skips its network pass. A frame's (or a chosen
iteration's) lesions, count, volume and Dice are computed by a second short worker
(``compute_lesions``), coalesced the same way. Whatever a review worker brings back is shown
only if its session is still alive and its review still asks for it (``lesion_state``); a
result the user moved past never overwrites a newer choice. The threshold, minimum size and
source re-threshold a cached map on the GUI thread with the same ``compute_lesions`` (the
controller's ``_update_lesions``), shown at once: tens of milliseconds on a clinical scan
(docs/performance.md), which a worker's hand-over would only add to. A run counts as running
until its last frame's lesions are shown.

The lesion table. The per-lesion table of the result shown and its Dice against the chosen
ground truth (``compute_table``: ``lesion_table.lesion_table`` and ``dice_text``, tens to
hundreds of milliseconds with many lesions) come from a third short worker, coalesced the same
way (while one is computed only the latest request waits); a table is shown only if its session
is alive and current, still shows the very labels it was made of, its review is unchanged and the
same ground truth is chosen (``Runner.table_fresh``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import partial

import numpy as np

from .. import review
from .._layers import from_layer_shape, layer_ras_affine, layer_scan_array
from .._session import Failure, Finished, Frame, Note, RunRequest, Session, advance
from ..oom import BatchLimit
from ..params import RunParams
from .common import notify
from .run_controls import progress_fraction

__all__ = ["FINISHED_TEXT", "Runner", "LesionRequest", "LesionResult", "lesion_state",
           "lesion_request", "compute_lesions", "ground_truth", "dice_text", "TableRequest",
           "TableResult", "table_request", "compute_table"]

log = logging.getLogger(__name__)

FINISHED_TEXT = {
    "converged": "Converged: every slice's mask stopped shrinking.",
    "stopped": "Cancelled: Run or Step continue from here.",
    "step": "Stepped one iteration.",
    "nothing": "Already converged: raise τ and Continue to shrink further.",
}


#: Slices per network pass at the start of a run (halved on out of memory: ``oom``).
BATCH_SIZE = 32


def _batch_limit(sess: Session):
    """The ``oom.BatchLimit`` of a session's job (None before the job exists)."""
    return getattr(getattr(sess.job, "bundle", None), "oom_limit", None)


def _reporting(sess: Session, reports: list, cancelled, **kwargs):
    """``advance`` as the widget runs it: each out-of-memory retry told as a warning Note as
    soon as it happened, a Stop pressed before the worker started still honoured, and an
    iteration computed while Stop was pressed still shown (so the slider's steps are the
    history's, one per iteration)."""
    shown = -1
    for item in advance(sess, **kwargs):
        if cancelled.is_set():  # advance clears a Stop that came before it started
            sess.stop.set()
        while reports:
            yield Note(reports.pop(0), warning=True)
        if isinstance(item, Frame):
            shown = item.step
        elif isinstance(item, Finished) and item.reason == "stopped":
            yield from _unshown_frames(sess, shown)
        yield item
    while reports:
        yield Note(reports.pop(0), warning=True)


def _unshown_frames(sess: Session, shown: int) -> list:
    """Frames the engine computed (and the history recorded) but Stop kept from being shown:
    the start (the brain) if Stop came while the scan was prepared, and the last iteration if
    it came while that iteration ran."""
    from .._session import StepInfo, _frame

    job = sess.job
    if job is None:
        return []
    out = []
    if shown < 0 and not sess.steps:
        brain = job.volume.scan_brain
        out.append(Frame(step=0, info=StepInfo(0, None, float(brain.sum()) * sess.voxel_ml),
                         mask=brain, error=None, recon=None))
    last = job.history.last if job.history is not None else None
    k = len(job.history) - 1 if job.history is not None else 0
    if last is not None and last.iteration == k and k > max(shown, len(sess.steps) - 1):
        out.append(_frame(sess, last, k))
    if out:
        sess.consumed.clear()
    return out


# -- a result's lesions, on any thread ------------------------------------------------------------
def shown_choice(sess: Session) -> int:
    """The history entry the review shows: the chosen one, else the last one on the slider
    (``sess.steps``, what the GUI has taken, which a run's worker may be one iteration ahead
    of)."""
    last = len(sess.steps) - 1
    k = sess.review.iteration
    return last if k is None else min(int(k), last)


def lesion_state(sess: Session) -> tuple:
    """What the shown result depends on in the session's review: (iteration, source, threshold,
    minimum size). A review worker's result made for another state is stale."""
    rv = sess.review
    return shown_choice(sess), rv.source, float(rv.threshold), int(rv.min_size)


def ground_truth(layer, sess: Session) -> tuple:
    """(the ground-truth layer's name, its labels on the scan's grid, or None where it does
    not fit this image); (None, None) without one. A transpose, no copy (GUI thread)."""
    if layer is None:
        return None, None
    try:
        gt = from_layer_shape(np.asarray(layer.data), sess.source).reshape(
            sess.job.scan.data.shape)
    except ValueError:
        return layer.name, None
    return layer.name, gt


def dice_text(labels, name: str | None, gt) -> str | None:
    """The panel's Dice line for labels against a ground truth (``ground_truth``)."""
    from ..core.metrics import dice

    if name is None:
        return None
    if gt is None:
        return f"Dice: '{name}' does not fit this image"
    return f"Dice vs '{name}': {dice(labels > 0, gt > 0):.3f}"


@dataclass(eq=False)
class LesionRequest:
    """Everything a result needs, read on the GUI thread (``lesion_request``)."""

    sess: Session
    state: tuple  # ``lesion_state`` when asked
    params: object  # RunParams of the result, None when the choice makes none
    reason: str | None  # why there is none (e.g. the error of iteration 0)
    error: np.ndarray | None  # the error map to threshold (scan grid), None: not at hand
    truth_layer: object  # the ground-truth layer chosen when asked (None: no Dice)
    truth: tuple  # ``ground_truth(truth_layer, sess)``

    @property
    def needs_network_pass(self) -> bool:
        """Whether the result thresholds an error map not yet computed (a worker's job)."""
        return self.params is not None and self.params.source == "error" and self.error is None


@dataclass(eq=False)
class LesionResult:
    """A result ready to show: labels (scan grid, uint8), "Lesions: n · v mL", whether the
    choice made a result, its Dice line."""

    request: LesionRequest
    labels: np.ndarray
    summary: str
    made: bool
    dice: str | None


def lesion_request(sess: Session, truth_layer=None, k: int | None = None,
                   error: np.ndarray | None = None) -> LesionRequest:
    """The request for the session's current result (GUI thread, no maths): of the iteration
    the slider shows (``k``: a frame's own), thresholding ``error`` (that iteration's map on the
    scan's grid) or else the session's cached map of it; ``needs_network_pass`` says when
    there is none."""
    from ..errors import ItermaskError

    k = shown_choice(sess) if k is None else int(k)
    params, reason = None, None
    try:
        params = review.result_params(sess)
        if params.iteration != k:
            params = params.replace(iteration=k)
    except ItermaskError as exc:
        params, reason = None, str(exc)
    if error is None and params is not None and params.source == "error":
        if k == len(sess.steps) - 1 and k > 0:  # the latest frame's (a run may be one ahead)
            error = sess.error_scan
        if error is None:
            with sess.lock:
                error = sess.errors.get(review.cache_key(sess.job, k))
    return LesionRequest(sess, lesion_state(sess), params, reason, error, truth_layer,
                         ground_truth(truth_layer, sess))


def compute_lesions(req: LesionRequest) -> LesionResult:
    """The result of a request: ``Job.result`` (what Accept, Export and the command line give),
    lesion count and volume, Dice. Runs on any thread; a request that ``needs_network_pass``
    computes its error map (``review.error_map``: one network pass per slice)."""
    from ..core.segmentation import lesion_stats

    sess, params = req.sess, req.params
    job = sess.job
    if params is None:  # no result (e.g. the error of iteration 0): an empty map, no Dice
        return LesionResult(req, np.zeros(job.scan.data.shape, np.uint8),
                            f"Lesions: – ({req.reason})", False, None)
    error = req.error
    if error is None and params.source == "error":
        error = review.error_map(sess, params.iteration)
    labels = job.result(params, error_scan=error)
    n, ml = lesion_stats(labels, job.scan.voxel_volume_mm3)
    return LesionResult(req, labels, f"Lesions: {n} · {ml:.2f} mL", True,
                        dice_text(labels, *req.truth))


@dataclass(eq=False)
class TableRequest:
    """What the lesion table of a result shown needs, read on the GUI thread
    (``table_request``)."""

    sess: Session
    state: tuple  # ``lesion_state`` when asked
    labels: np.ndarray  # the labels shown (scan grid), the very array ``_shown`` holds
    affine: np.ndarray  # the scan's voxel → RAS mm matrix
    image: np.ndarray  # the scan's own values (the table's mean intensity)
    truth_layer: object  # the ground-truth layer chosen when asked (None: no Dice)
    truth: tuple  # ``ground_truth(truth_layer, sess)``


@dataclass(eq=False)
class TableResult:
    """A lesion table ready to show: rows of ``lesion_table.Lesion`` (largest first), the
    Dice line."""

    request: TableRequest
    rows: list
    dice: str | None


def table_request(sess: Session, labels: np.ndarray, truth_layer=None) -> TableRequest:
    """The request for the table of ``labels``, the session's result shown (GUI thread, no
    maths)."""
    scan = sess.job.scan
    return TableRequest(sess, lesion_state(sess), labels, scan.affine, scan.data, truth_layer,
                        ground_truth(truth_layer, sess))


def compute_table(req: TableRequest) -> TableResult:
    """The per-lesion table (``lesion_table.lesion_table``, what Export writes as CSV) and the
    Dice line of a request. Runs on any thread."""
    from ..lesion_table import lesion_table

    return TableResult(req, lesion_table(req.labels, req.affine, req.image),
                       dice_text(req.labels, *req.truth))


class Runner:
    """Starts, stops and listens to the host widget's workers."""

    def __init__(self, host):
        self.host = host
        self.worker = None  # the run's worker, while one runs
        self.busy: Session | None = None  # the session it runs in
        self.mask_worker = None  # the worker fetching an iteration's mask, then its maps
        self.mask_pending: tuple | None = None  # (session, k, lesions) asked for meanwhile
        self.lesion_worker = None  # the worker computing a result's lesions
        self.lesion_pending: LesionRequest | None = None  # the latest asked for meanwhile
        self.table_worker = None  # the worker computing a result's lesion table
        self.table_pending: TableRequest | None = None  # the latest asked for meanwhile
        self._ending = None  # a run's worker that ended while its last lesions were computed
        self.bundles: dict = {}
        self.start_iteration = 0
        self.cancelled = threading.Event()  # Stop pressed during the current run

    def load_bundle(self, model: str, device: str, limit=None):
        """Runs in the worker thread; bundles are cached per (model, device). With ``limit``
        (an ``oom.BatchLimit``), the run's copy retries a batch that runs out of memory in
        halves (``oom.split_on_oom``)."""
        from ..models import load_bundle
        from ..oom import split_on_oom
        from ..pipeline import pick_device

        dev = pick_device(device)
        key = (str(model), str(dev))
        if key not in self.bundles:
            self.bundles[key] = load_bundle(model, device=dev)
        bundle = self.bundles[key]
        return split_on_oom(bundle, limit) if limit is not None else bundle

    # -- starting -----------------------------------------------------------------------------
    def request(self, src) -> RunRequest | None:
        from ..errors import ItermaskError

        inputs = self.host.inputs
        spec = inputs.model_spec
        if not spec:
            notify("error", "choose a model first (none found: use Folder…)")
            return None
        try:
            data = layer_scan_array(src)
            affine = layer_ras_affine(src)
        except ValueError as exc:
            notify("error", str(exc))
            return None
        brain = None
        blayer = inputs.brain_layer
        if blayer is not None:
            try:  # a brain mask drawn on (or derived from) this image, arranged like it
                brain = from_layer_shape(blayer.data, src).reshape(data.shape) > 0
            except ValueError as exc:
                notify("error", f"brain mask '{blayer.name}': {exc}")
                return None
        try:
            params = RunParams(max_iter=inputs.max_iter_value(),
                               first_unmask=inputs.first_unmask_value(),
                               seed=int(inputs.seed.value),
                               min_size=int(self.host.review_panel.min_size_spin.value()))
        except ItermaskError as exc:
            notify("error", str(exc))
            return None
        return RunRequest(
            model=str(spec), device=inputs.device.value, data=data, affine=affine,
            header=(src.metadata or {}).get("header"), name=src.name, brain_mask=brain,
            brain_mask_source=f"layer '{blayer.name}'" if blayer is not None else None,
            skull_strip=inputs.skull_strip, params=params)

    def request_key(self, src) -> tuple:
        """What a run depends on: a Run with other inputs starts a new history."""
        i = self.host.inputs
        brain = i.brain_layer
        return (id(src), str(i.model_spec), i.device.value,
                id(brain) if brain is not None else i.skull_strip, i.max_iter_value(),
                i.first_unmask_value(), int(i.seed.value))

    def start(self, steps=None, tau=None) -> bool:
        from napari.qt.threading import create_worker

        from .. import allocator
        from ..models import untrained_warning

        host = self.host
        allocator.tune()  # process-wide, once: the worker's activations stay on the heap
        if self.worker is not None:
            name = self.busy.source.name if self.busy is not None else "an image"
            notify("warning", f"already running on '{name}'; press Stop first")
            return False
        src = host.inputs.source
        if src is None:
            notify("warning", "open or choose an image layer first")
            return False
        sess = host._current_session()
        if tau is None and (sess is None or sess.key != self.request_key(src)):
            req = self.request(src)
            if req is None:
                return False
            new = Session(src, req, key=self.request_key(src))
            if sess is not None:  # inputs changed: start over, reusing the preview layers
                sess.close()
                new.layers = dict(sess.layers)
                new.preview_edited = sess.preview_edited
            sess = new
            host._sessions[id(src)] = sess
        card = sess.card if sess.card is not None else host.inputs.card()
        warning = untrained_warning(card) if card is not None else None
        if warning:
            notify("warning", warning)
        reports: list[str] = []  # out-of-memory retries, told from the worker thread
        limit = _batch_limit(sess)
        if limit is not None:
            limit.report = reports.append
        else:
            limit = BatchLimit(BATCH_SIZE, reports.append)
        self.cancelled = threading.Event()
        worker = create_worker(_reporting, sess, reports, self.cancelled, steps=steps, tau=tau,
                               loader=partial(self.load_bundle, limit=limit),
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(partial(self._on_yielded, sess))
        worker.errored.connect(lambda exc: notify("error", str(exc)))
        worker.finished.connect(partial(self._on_worker_finished, worker))
        self.worker, self.busy = worker, sess
        self.start_iteration = sess.job.iterations if sess.job is not None else 0
        host.run_controls.started()
        host._update_buttons()
        worker.start()
        return True

    def continue_higher_tau(self, tau: float | None = None) -> bool:
        """Resume from the last iteration with a higher τ; the history grows."""
        sess = self.host._current_session()
        if sess is None or sess.job is None or sess.job.history is None:
            notify("warning", "run IterMask² on this image first")
            return False
        if tau is None and sess.review is not None:
            tau = sess.review.next_tau
        tau = float(self.host.review_panel.tau_spin.value() if tau is None else tau)
        if sess.tau is not None and tau <= sess.tau:
            notify("warning", f"τ must be above the current {sess.tau:.4g}")
            return False
        return self.start(tau=tau)

    def cancel(self) -> None:
        """Stop after the iteration in progress; Run or Step continue from there."""
        if self.busy is not None:
            self.cancelled.set()
            self.busy.stop.set()
            controls = self.host.run_controls
            controls.show_progress(controls.progress.value() / 1000,
                                   "stopping after this iteration …")

    # -- what the run's worker reports --------------------------------------------------------
    def alive(self, sess: Session) -> bool:
        host = self.host
        return host._sessions.get(id(sess.source)) is sess and sess.source in host._viewer.layers

    def _host_gone(self) -> bool:
        """Whether the widget was deleted (its dock closed, the viewer gone) while a worker
        still ran; its sessions are then stopped, and nothing more is shown."""
        try:
            self.host.run_controls.run_btn.objectName()
            return False
        except RuntimeError:  # the Qt object behind it has been deleted
            for sess in list(self.host._sessions.values()):
                sess.close()
            return True

    def _on_yielded(self, sess: Session, item) -> None:
        if self._host_gone():
            sess.close()  # also lets a worker waiting for this frame to be shown go on
            return
        if not isinstance(item, Frame) and not self.alive(sess):
            return  # reset, or its image was removed: nothing to report
        status = self.host.run_controls.status
        try:
            if isinstance(item, Frame):
                try:
                    if self.alive(sess):
                        self._apply_frame(sess, item)
                finally:
                    sess.consumed.set()
            elif isinstance(item, Note):
                status.setText(item.message)
                if item.warning:
                    notify("warning", item.message)
            elif isinstance(item, Failure):
                status.setText(f"Error: {item.message}")
                notify("error", item.message)
                if sess.job is None:  # nothing computed: forget the session
                    self.host._sessions.pop(id(sess.source), None)
            elif isinstance(item, Finished):
                self._on_run_finished(sess, item.reason)
        except Exception as exc:  # never let a display problem kill the run silently
            log.exception("showing a result failed")
            notify("error", f"could not show the result ({exc})")

    def _on_worker_finished(self, worker) -> None:
        if self.worker is worker:
            if self.lesion_worker is not None:  # the run ends when its last result is shown
                self._ending = worker
                return
            self.worker, self.busy = None, None
        if not self._host_gone():
            self.host._update_buttons()

    def _on_run_finished(self, sess: Session, reason: str) -> None:
        text = FINISHED_TEXT[reason]
        if sess.job is not None and sess.job.history is not None and reason == "converged":
            last = sess.job.history.last
            if last is not None:
                from ..core.engine import CAPPED

                capped = int((last.status == CAPPED).sum())
                if capped:
                    text += f" {capped} slice(s) hit the iteration cap."
        controls = self.host.run_controls
        controls.status.setText(text)
        line = {"converged": "converged", "stopped": "stopped", "step": "one iteration done",
                "nothing": "nothing to do"}[reason]
        controls.finished(line, complete=reason == "converged")

    def _apply_frame(self, sess: Session, frame: Frame) -> None:
        host = self.host
        sess.apply(frame)
        following = sess.review is None or sess.review.iteration is None
        if following:  # a chosen earlier iteration stays on screen while the history grows
            host.presenter.show_step(sess, frame.step, frame.mask, frame.error, frame.recon)
        if frame.total:
            it = frame.info.iteration
            frac = progress_fraction(frame.active, frame.total, it, sess.job.config.max_iter,
                                     self.start_iteration)
            host.run_controls.show_progress(
                frac, f"iteration {it} · {frame.active} of {frame.total} slices left")
        host.run_controls.status.setText(f"'{sess.source.name}': iteration "
                                         f"{frame.info.iteration}, masked "
                                         f"{frame.info.volume_ml:.1f} mL")
        if host._current_session() is sess:
            host._refresh_review()
        if following and sess.error_scan is not None:  # its lesions follow, off this thread
            self.request_lesions(sess, k=frame.step, error=frame.error)

    # -- a chosen iteration: its mask, then its maps ------------------------------------------
    def request_step(self, sess: Session, k: int, lesions: bool = True) -> None:
        """Show history entry k on the scan's grid in two stages from one worker: its mask as
        soon as it is on the scan's grid, then its error map and reconstruction (an earlier
        iteration's cost a network pass), then (``lesions``) its result from
        ``request_lesions``. Requests coalesce: while one is computed only the latest waits,
        and one the user has moved past skips its network pass."""
        from napari.qt.threading import create_worker

        if self.mask_worker is not None:
            self.mask_pending = (sess, k, lesions)
            return

        def compute():
            job = sess.job
            yield k, (job.volume.scan_brain if k == 0 else job.mask_on_scan(k))
            if k == 0:
                return k, None, None  # the start: no maps
            if self.mask_pending is not None:
                return None  # the user moved on: no network pass for this one
            return (k, *review.maps_at(sess, k))

        worker = create_worker(compute, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(partial(self._on_mask_ready, sess, lesions))
        worker.returned.connect(partial(self._on_step_ready, sess, lesions))
        worker.errored.connect(lambda exc: notify("error", str(exc)))
        worker.finished.connect(self._on_mask_worker_done)
        self.mask_worker = worker
        worker.start()

    def _still_chosen(self, sess: Session, k: int) -> bool:
        """Whether iteration k of the session is still what the review shows and nothing newer
        waits (else a result for k is stale and dropped)."""
        return (not self._host_gone() and self.mask_pending is None and self.alive(sess)
                and sess.review is not None and shown_choice(sess) == k)

    def _on_mask_ready(self, sess: Session, lesions: bool, item) -> None:
        k, mask = item
        if not self._still_chosen(sess, k):
            return
        self.host.presenter.show_mask(sess, mask)
        if lesions and k != 0 and sess.review.source == "mask":
            self.request_lesions(sess, k=k)  # the mask is the result: no maps needed

    def _on_step_ready(self, sess: Session, lesions: bool, result) -> None:
        if result is None:
            return
        k, error, recon = result
        if not self._still_chosen(sess, k):
            return
        self.host.presenter.show_maps(sess, k, error, recon)
        if lesions and (k == 0 or sess.review.source == "error"):
            self.request_lesions(sess, k=k, error=error)

    def _on_mask_worker_done(self) -> None:
        self.mask_worker = None
        if self.mask_pending is not None:
            sess, k, lesions = self.mask_pending
            self.mask_pending = None
            if self.alive(sess):
                self.request_step(sess, k, lesions)

    # -- a result's lesions -------------------------------------------------------------------
    def request_lesions(self, sess: Session, k: int | None = None,
                        error: np.ndarray | None = None) -> None:
        """Compute the session's current result (``compute_lesions``) in a worker and show it
        (the host's ``_show_result``) if it is still what the review asks for; while one is
        computed only the latest request waits."""
        if sess.job is None or sess.review is None or not sess.steps:
            return
        req = lesion_request(sess, self.host.inputs.truth_layer, k=k, error=error)
        if self.lesion_worker is not None:
            self.lesion_pending = req
            return
        self._start_lesions(req)

    @staticmethod
    def _short_worker(compute, req, ready, done, what: str):
        """A started worker that runs ``compute(req)`` and hands its result to ``ready``; a
        failure is one error notification ("could not compute the <what>"); ``done(worker)``
        when it has ended either way."""
        from napari.qt.threading import create_worker

        worker = create_worker(compute, req, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(ready)
        worker.errored.connect(lambda exc: notify("error", f"could not compute the {what} "
                                                           f"({exc})"))
        worker.finished.connect(partial(done, worker))
        worker.start()
        return worker

    def _start_lesions(self, req: LesionRequest) -> None:
        self.lesion_worker = self._short_worker(compute_lesions, req, self._on_lesions_ready,
                                                self._on_lesion_worker_done, "lesions")

    def _fresh(self, req: LesionRequest) -> bool:
        """Whether a request still fits its session: alive, and its review unchanged."""
        sess = req.sess
        return (not self._host_gone() and self.alive(sess) and sess.review is not None
                and bool(sess.steps) and lesion_state(sess) == req.state)

    def _on_lesions_ready(self, result: LesionResult) -> None:
        if self._fresh(result.request):
            self.host._show_result(result.request.sess, result)

    def _on_lesion_worker_done(self, worker) -> None:
        if self.lesion_worker is worker:
            self.lesion_worker = None
        pending, self.lesion_pending = self.lesion_pending, None
        if pending is not None and self._fresh(pending):
            self._start_lesions(pending)
        elif self._ending is not None:
            ending, self._ending = self._ending, None
            self._on_worker_finished(ending)

    # -- the lesion table of the result shown ---------------------------------------------------
    def request_table(self, req: TableRequest) -> None:
        """Compute a lesion table (``compute_table``) in a worker and show it (the host's
        ``_show_table``) if it is still that of the result shown; while one is computed only
        the latest request waits."""
        if self.table_worker is not None:
            self.table_pending = req
            return
        self._start_table(req)

    def drop_table(self) -> None:
        """Forget a waiting table request (the host has just shown a newer, empty table); one
        in progress is dropped when it comes back, being stale."""
        self.table_pending = None

    @property
    def table_busy(self) -> bool:
        """Whether a lesion table is being computed or waits to be."""
        return self.table_worker is not None or self.table_pending is not None

    def _start_table(self, req: TableRequest) -> None:
        self.table_worker = self._short_worker(compute_table, req, self._on_table_ready,
                                               self._on_table_worker_done, "lesion table")

    def table_fresh(self, req: TableRequest) -> bool:
        """Whether a table request is still that of what the host shows: the widget there, the
        session alive and current, showing the same labels with the same review, and the same
        ground truth chosen."""
        if self._host_gone():
            return False
        sess, host = req.sess, self.host
        if not self.alive(sess) or host._current_session() is not sess or sess.review is None:
            return False
        shown_sess, labels = host._shown.get(id(sess.source), (None, None))
        return (shown_sess is sess and labels is req.labels and bool(sess.steps)
                and lesion_state(sess) == req.state
                and host.inputs.truth_layer is req.truth_layer)

    def _on_table_ready(self, result: TableResult) -> None:
        if self.table_fresh(result.request):
            self.host._show_table(result)

    def _on_table_worker_done(self, worker) -> None:
        if self.table_worker is worker:
            self.table_worker = None
        pending, self.table_pending = self.table_pending, None
        if pending is not None and self.table_fresh(pending):
            self._start_table(pending)

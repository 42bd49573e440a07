"""The widget's workers: a run (Run, Step, Continue, Stop), its reports, an iteration's maps.

A run's worker iterates and reports frames, notes, failures and its end; a short worker fetches
the maps of the iteration chosen in the review.

``Runner`` belongs to one ``IterMaskWidget`` (its *host*) and uses only what the host composes:
the panels (``inputs``, ``run_controls``, ``review_panel``), the ``presenter``, the sessions by
source layer (``_sessions``, ``_current_session()``) and three hooks that bring the panels in
line (``_refresh_review()``, ``_update_lesions(session)``, ``_update_buttons()``).

Out of memory. A run's networks retry a batch that runs out of memory in halves
(``oom.split_on_oom``, the same result); each retry is shown as a warning notification.

Threads. Model loading, scan preparation, iterations and moving what is shown to the scan's grid
run in napari generator workers (``_session.advance``); the GUI thread only swaps layer data.
One run at a time, in the session of the image it started on: reports of a session that was
reset, or whose image was removed, are dropped. Requests for an iteration's maps coalesce: while
one is computed only the latest waits.
"""

from __future__ import annotations

import logging
import threading
from functools import partial

from .. import review
from .._layers import from_layer_shape, layer_ras_affine, layer_scan_array
from .._session import Failure, Finished, Frame, Note, RunRequest, Session, advance
from ..oom import BatchLimit
from ..params import RunParams
from .common import notify
from .run_controls import progress_fraction

__all__ = ["FINISHED_TEXT", "Runner"]

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


class Runner:
    """Starts, stops and listens to the host widget's workers."""

    def __init__(self, host):
        self.host = host
        self.worker = None  # the run's worker, while one runs
        self.busy: Session | None = None  # the session it runs in
        self.mask_worker = None  # the worker fetching an iteration's maps
        self.mask_pending: tuple | None = None  # (session, k) asked for meanwhile
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
        if following and sess.error_scan is not None:
            host._update_lesions(sess)

    # -- a chosen iteration's maps ------------------------------------------------------------
    def request_step(self, sess: Session, k: int) -> None:
        """Get history entry k's mask, error map and reconstruction on the scan's grid in a
        worker (an earlier iteration's maps cost a network pass), coalescing requests."""
        from napari.qt.threading import create_worker

        if self.mask_worker is not None:
            self.mask_pending = (sess, k)
            return

        def compute():
            if k == 0:
                return k, sess.job.volume.scan_brain, None, None
            error, recon = review.maps_at(sess, k)
            return k, sess.job.mask_on_scan(k), error, recon

        worker = create_worker(compute, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(partial(self._on_step_ready, sess))
        worker.errored.connect(lambda exc: notify("error", str(exc)))
        worker.finished.connect(self._on_mask_worker_done)
        self.mask_worker = worker
        worker.start()

    def _on_step_ready(self, sess: Session, result) -> None:
        k, mask, error, recon = result
        if self._host_gone():
            return
        if self.alive(sess) and self.mask_pending is None:
            self.host.presenter.show_step(sess, k, mask, error, recon)
            self.host._update_lesions(sess)

    def _on_mask_worker_done(self) -> None:
        self.mask_worker = None
        if self.mask_pending is not None:
            sess, k = self.mask_pending
            self.mask_pending = None
            if self.alive(sess):
                self.request_step(sess, k)

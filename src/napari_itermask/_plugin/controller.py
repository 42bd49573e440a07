"""The "IterMask² lesion segmentation" dock widget: composes the panels and runs the sessions.

Layers of the plugin, top down: this controller; the panels (``inputs``, ``run_controls``,
``review_panel``) that only show and edit values; the ``presenter`` that draws layers; and
below them, without Qt, ``_session`` (one run per image and its worker generator), ``review``
(the review state, its result, Accept, Export) and ``lesion_table``.

State. The review's values live in each image's ``Session.review``; the controller writes the
review panel's edits there and shows the current image's, so switching images restores each
one's and re-thresholds nothing. What is shown, accepted and exported is ``review.lesions``.

Threads. Model loading, scan preparation, iterations and moving what is shown to the scan's grid
run in napari generator workers (``_session.advance``); the GUI thread only swaps layer data.
The threshold re-thresholds the cached error map (numpy, no model call); choosing another
iteration asks a short worker for its maps. The per-lesion table follows a moment later
(debounced), so dragging the threshold stays smooth.

Safety. A run belongs to its session's source layer; one run at a time; labels the user owns are
never replaced without ``self.confirm(title, text)`` returning True (tests replace it); errors
are notifications, never tracebacks.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QMessageBox, QScrollArea, QVBoxLayout, QWidget

from .. import review
from .._layers import from_layer_shape, layer_ras_affine, layer_scan_array, layer_stem
from .._session import Failure, Finished, Frame, Note, RunRequest, Session, advance
from .._settings import DEFAULTS, load_settings, save_settings
from ..params import RunParams
from .common import notify, unwrap
from .inputs import InputsPanel
from .presenter import LayerPresenter
from .review_panel import ReviewPanel
from .run_controls import RunControls, progress_fraction

__all__ = ["IterMaskWidget", "TITLE"]

log = logging.getLogger(__name__)

TITLE = "IterMask² lesion segmentation"
FINISHED_TEXT = {
    "converged": "Converged: every slice's mask stopped shrinking.",
    "stopped": "Cancelled: Run or Step continue from here.",
    "step": "Stepped one iteration.",
    "nothing": "Already converged: raise τ and Continue to shrink further.",
}


class IterMaskWidget(QWidget):
    """Dock widget; ``napari_viewer`` may be napari's proxy or a viewer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._viewer = unwrap(napari_viewer)
        #: confirm(title, text) -> bool; asked before replacing labels the user owns
        self.confirm = self._ask_user
        #: ask_export_path(default_path) -> str | None
        self.ask_export_path = self._ask_export_path
        self._settings = load_settings()
        self._sessions: dict[int, Session] = {}
        self._worker = None
        self._busy: Session | None = None
        self._mask_worker = None
        self._mask_pending: tuple | None = None
        self._bundles: dict = {}
        self._run_start_iteration = 0
        self._shown: dict[int, tuple] = {}  # id(source) → (session, labels it shows)

        self.inputs = InputsPanel(napari_viewer)
        self.run_controls = RunControls()
        self.review_panel = ReviewPanel()
        self.presenter = LayerPresenter(napari_viewer)
        self._table_timer = QTimer(self)
        self._table_timer.setSingleShot(True)
        self._table_timer.setInterval(150)
        self._table_timer.timeout.connect(self._refresh_table)

        body = QWidget()
        col = QVBoxLayout(body)
        col.setContentsMargins(6, 6, 6, 6)
        for panel in (self.inputs, self.run_controls, self.review_panel):
            col.addWidget(panel)
        col.addStretch(1)
        scroll = QScrollArea()  # a short screen scrolls rather than squeezing the panels
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.addWidget(scroll)
        self.setMinimumWidth(body.minimumSizeHint().width()
                             + scroll.verticalScrollBar().sizeHint().width())
        self._connect()

        self.inputs.load(self._settings)
        with _blocked(self.review_panel.min_size_spin):
            self.review_panel.min_size_spin.setValue(int(self._settings["min_size"]))
        layers = self._viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self._on_layer_removed)
        layers.events.moved.connect(self.reset_choices)
        self.presenter.style_new(layers)
        self.reset_choices()
        self._on_source_changed()
        self._update_buttons()

    def _connect(self) -> None:
        i, r, v = self.inputs, self.run_controls, self.review_panel
        i.image_changed.connect(self._on_source_changed)
        i.model_changed.connect(self._save_settings)
        i.options_changed.connect(self._save_settings)
        i.truth_changed.connect(self._schedule_table)
        r.run_btn.clicked.connect(self.run)
        r.step_btn.clicked.connect(self.step)
        r.cancel_btn.clicked.connect(self.cancel)
        r.reset_btn.clicked.connect(self.reset)
        v.iteration_chosen.connect(self._on_iteration)
        v.threshold_chosen.connect(self._on_threshold)
        v.min_size_chosen.connect(self._on_min_size)
        v.source_chosen.connect(self._on_source)
        v.next_tau_chosen.connect(lambda tau: self._edit_review(next_tau=tau))
        v.continue_clicked.connect(lambda: self.continue_higher_tau())
        v.defaults_clicked.connect(self.restore_defaults)
        v.accept_clicked.connect(self.accept_result)
        v.export_clicked.connect(lambda: self.export_result())

    # -- settings and models ------------------------------------------------------------------
    def _save_settings(self, *_):
        values = {**self.inputs.values(),
                  "min_size": int(self.review_panel.min_size_spin.value())}
        self._settings.update(values)
        save_settings(values)

    def set_model(self, name_or_path) -> bool:
        """Select a bundled/user model by name, or a model folder by path."""
        return self.inputs.set_model(name_or_path)

    def _load_bundle(self, model: str, device: str):
        """Runs in the worker thread; bundles are cached per (model, device)."""
        from ..models import load_bundle
        from ..pipeline import pick_device

        dev = pick_device(device)
        key = (str(model), str(dev))
        if key not in self._bundles:
            self._bundles[key] = load_bundle(model, device=dev)
        return self._bundles[key]

    # -- layers -------------------------------------------------------------------------------
    def reset_choices(self, *_):
        """napari calls this on layer changes (docked widgets); we call it too."""
        self.inputs.reset_choices()

    def _on_layer_inserted(self, event):
        self.presenter.style_new([event.value])
        self.reset_choices()

    def _on_layer_removed(self, event):
        layer = unwrap(event.value)
        sess = self._sessions.pop(id(layer), None)
        if sess is not None and sess.source is layer:
            sess.close()
            if self._busy is sess:
                self.run_controls.status.setText(f"'{layer.name}' was removed: its run stops.")
        else:
            if sess is not None:  # id reused by another object: put it back
                self._sessions[id(sess.source)] = sess
            self.presenter.forget(layer, self._sessions.values())
        self.reset_choices()

    def _current_session(self) -> Session | None:
        src = self.inputs.source
        if src is None:
            return None
        sess = self._sessions.get(id(src))
        return sess if sess is not None and sess.source is src else None

    def _on_source_changed(self, *_):
        self.presenter.radiological_note(self.inputs.source)
        self._refresh_review()
        self._schedule_table()
        self._update_buttons()

    # -- running ------------------------------------------------------------------------------
    def _request(self, src) -> RunRequest | None:
        from ..errors import ItermaskError

        spec = self.inputs.model_spec
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
        blayer = self.inputs.brain_layer
        if blayer is not None:
            try:  # a brain mask drawn on (or derived from) this image, arranged like it
                brain = from_layer_shape(blayer.data, src).reshape(data.shape) > 0
            except ValueError as exc:
                notify("error", f"brain mask '{blayer.name}': {exc}")
                return None
        try:
            params = RunParams(max_iter=self.inputs.max_iter_value(),
                               first_unmask=self.inputs.first_unmask_value(),
                               seed=int(self.inputs.seed.value),
                               min_size=int(self.review_panel.min_size_spin.value()))
        except ItermaskError as exc:
            notify("error", str(exc))
            return None
        return RunRequest(
            model=str(spec), device=self.inputs.device.value, data=data, affine=affine,
            header=(src.metadata or {}).get("header"), name=src.name, brain_mask=brain,
            brain_mask_source=f"layer '{blayer.name}'" if blayer is not None else None,
            params=params)

    def _request_key(self, src) -> tuple:
        """What a run depends on: a Run with other inputs starts a new history."""
        brain = self.inputs.brain_layer
        i = self.inputs
        return (id(src), str(i.model_spec), i.device.value,
                id(brain) if brain is not None else None, i.max_iter_value(),
                i.first_unmask_value(), int(i.seed.value))

    def _start(self, steps=None, tau=None) -> bool:
        from napari.qt.threading import create_worker

        from .. import allocator
        from ..models import untrained_warning

        allocator.tune()  # process-wide, once: the worker's activations stay on the heap
        if self._worker is not None:
            name = self._busy.source.name if self._busy is not None else "an image"
            notify("warning", f"already running on '{name}'; press Stop first")
            return False
        src = self.inputs.source
        if src is None:
            notify("warning", "open or choose an image layer first")
            return False
        sess = self._current_session()
        if tau is None and (sess is None or sess.key != self._request_key(src)):
            req = self._request(src)
            if req is None:
                return False
            new = Session(src, req, key=self._request_key(src))
            if sess is not None:  # inputs changed: start over, reusing the preview layers
                sess.close()
                new.layers = dict(sess.layers)
                new.preview_edited = sess.preview_edited
            sess = new
            self._sessions[id(src)] = sess
        card = sess.card if sess.card is not None else self.inputs.card()
        warning = untrained_warning(card) if card is not None else None
        if warning:
            notify("warning", warning)
        worker = create_worker(advance, sess, steps=steps, tau=tau, loader=self._load_bundle,
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(partial(self._on_yielded, sess))
        worker.errored.connect(lambda exc: notify("error", str(exc)))
        worker.finished.connect(partial(self._on_worker_finished, worker))
        self._worker, self._busy = worker, sess
        self._run_start_iteration = sess.job.iterations if sess.job is not None else 0
        self.run_controls.started()
        self._update_buttons()
        worker.start()
        return True

    def run(self) -> bool:
        """Iterate until convergence (continues a stepped or cancelled run)."""
        return self._start()

    def step(self) -> bool:
        """One iteration."""
        return self._start(steps=1)

    def continue_higher_tau(self, tau: float | None = None) -> bool:
        """Resume from the last iteration with a higher τ; the history grows."""
        sess = self._current_session()
        if sess is None or sess.job is None or sess.job.history is None:
            notify("warning", "run IterMask² on this image first")
            return False
        if tau is None and sess.review is not None:
            tau = sess.review.next_tau
        tau = float(self.review_panel.tau_spin.value() if tau is None else tau)
        if sess.tau is not None and tau <= sess.tau:
            notify("warning", f"τ must be above the current {sess.tau:.4g}")
            return False
        return self._start(tau=tau)

    def cancel(self) -> None:
        """Stop after the iteration in progress; Run or Step continue from there."""
        if self._busy is not None:
            self._busy.stop.set()
            self.run_controls.show_progress(self.run_controls.progress.value() / 1000,
                                            "stopping after this iteration …")

    def reset(self) -> None:
        """Forget the current image's run and remove its preview layers (never accepted ones)."""
        sess = self._current_session()
        if sess is None:
            return
        if sess.preview_edited and not self.confirm(
                "Discard edits?", f"You painted on '{sess.source.name} lesions'. Remove it?"):
            return
        sess.close()
        self._sessions.pop(id(sess.source), None)
        self._shown.pop(id(sess.source), None)
        self.presenter.remove_previews(sess)
        self.run_controls.reset()
        self.run_controls.status.setText("Reset.")
        self._refresh_review()
        self._update_buttons()

    def showEvent(self, event):  # noqa: N802 (Qt name)
        super().showEvent(event)
        QTimer.singleShot(0, self._fit_dock_title)

    def _fit_dock_title(self) -> None:
        """Widen the widget until the dock's title (napari adds the plugin's name) fits."""
        from qtpy.QtWidgets import QDockWidget, QLabel

        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        bar = dock.titleBarWidget() if dock is not None else None
        if bar is None:
            return
        short = max((lbl.sizeHint().width() - lbl.width() for lbl in bar.findChildren(QLabel)
                     if lbl.text() and lbl.width() > 0), default=0)
        if short > 0:
            self.setMinimumWidth(self.width() + short)

    def closeEvent(self, event):  # noqa: N802
        for sess in self._sessions.values():
            sess.close()
        super().closeEvent(event)

    # -- what the worker reports --------------------------------------------------------------
    def _alive(self, sess: Session) -> bool:
        return self._sessions.get(id(sess.source)) is sess and sess.source in self._viewer.layers

    def _on_yielded(self, sess: Session, item) -> None:
        if not isinstance(item, Frame) and not self._alive(sess):
            return  # reset, or its image was removed: nothing to report
        status = self.run_controls.status
        try:
            if isinstance(item, Frame):
                try:
                    if self._alive(sess):
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
                    self._sessions.pop(id(sess.source), None)
            elif isinstance(item, Finished):
                self._on_run_finished(sess, item.reason)
        except Exception as exc:  # never let a display problem kill the run silently
            log.exception("showing a result failed")
            notify("error", f"could not show the result ({exc})")

    def _on_worker_finished(self, worker) -> None:
        if self._worker is worker:
            self._worker, self._busy = None, None
        self._update_buttons()

    def _on_run_finished(self, sess: Session, reason: str) -> None:
        text = FINISHED_TEXT[reason]
        if sess.job is not None and sess.job.history is not None and reason == "converged":
            last = sess.job.history.last
            if last is not None:
                from ..core.engine import CAPPED

                capped = int((last.status == CAPPED).sum())
                if capped:
                    text += f" {capped} slice(s) hit the iteration cap."
        self.run_controls.status.setText(text)
        line = {"converged": "converged", "stopped": "stopped", "step": "one iteration done",
                "nothing": "nothing to do"}[reason]
        self.run_controls.finished(line, complete=reason == "converged")

    def _apply_frame(self, sess: Session, frame: Frame) -> None:
        sess.apply(frame)
        following = sess.review is None or sess.review.iteration is None
        if following:  # a chosen earlier iteration stays on screen while the history grows
            self.presenter.show_step(sess, frame.step, frame.mask, frame.error, frame.recon)
        if frame.total:
            it = frame.info.iteration
            frac = progress_fraction(frame.active, frame.total, it, sess.job.config.max_iter,
                                     self._run_start_iteration)
            self.run_controls.show_progress(
                frac, f"iteration {it} · {frame.active} of {frame.total} slices left")
        self.run_controls.status.setText(f"'{sess.source.name}': iteration "
                                         f"{frame.info.iteration}, masked "
                                         f"{frame.info.volume_ml:.1f} mL")
        if self._current_session() is sess:
            self._refresh_review()
        if following and sess.error_scan is not None:
            self._update_lesions(sess)

    # -- review -------------------------------------------------------------------------------
    def _refresh_review(self) -> None:
        self.review_panel.show_session(self._current_session())

    def _edit_review(self, **changes) -> Session | None:
        """Write the panel's changed values into the current image's review state."""
        from ..errors import ItermaskError

        sess = self._current_session()
        if sess is None or sess.review is None:
            return None
        try:
            sess.review.update(**changes)
        except ItermaskError as exc:
            notify("error", str(exc))
            self._refresh_review()
            return None
        return sess

    def _on_iteration(self, k: int) -> None:
        sess = self._current_session()
        if sess is None or sess.job is None or not (0 <= k < len(sess.steps)):
            return
        last = len(sess.steps) - 1
        if self._edit_review(iteration=None if k == last else int(k)) is None:
            return
        self.review_panel.show_iteration(sess, k)
        if k == 0 or review.cache_key(sess.job, k) in sess.errors:
            self._update_lesions(sess)  # no network pass needed: the result at once
        self._request_step(sess, k)

    def _request_step(self, sess: Session, k: int) -> None:
        """Get history entry k's mask, error map and reconstruction on the scan's grid in a
        worker (an earlier iteration's maps cost a network pass), coalescing requests."""
        from napari.qt.threading import create_worker

        if self._mask_worker is not None:
            self._mask_pending = (sess, k)
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
        self._mask_worker = worker
        worker.start()

    def _on_step_ready(self, sess: Session, result) -> None:
        k, mask, error, recon = result
        if self._alive(sess) and self._mask_pending is None:
            self.presenter.show_step(sess, k, mask, error, recon)
            self._update_lesions(sess)

    def _on_mask_worker_done(self) -> None:
        self._mask_worker = None
        if self._mask_pending is not None:
            sess, k = self._mask_pending
            self._mask_pending = None
            if self._alive(sess):
                self._request_step(sess, k)

    def _on_threshold(self, value: float) -> None:
        sess = self._edit_review(threshold=float(value))
        if sess is not None:
            self.review_panel.show_threshold(sess)
            self._update_lesions(sess)

    def _on_min_size(self, value: int) -> None:
        self._save_settings()
        sess = self._edit_review(min_size=int(value))
        if sess is not None:
            self._update_lesions(sess)

    def _on_source(self, source: str) -> None:
        sess = self._edit_review(source=source)
        if sess is not None:
            self._refresh_review()
            self._update_lesions(sess)

    def _result(self, sess: Session):
        """(labels on the scan's grid, summary line) of the session's review, or an empty map
        with the reason when the choice makes no result (e.g. the error of iteration 0)."""
        from ..core.segmentation import lesion_stats
        from ..errors import ItermaskError

        try:
            labels, _ = review.lesions(sess)
        except ItermaskError as exc:
            return np.zeros(sess.job.scan.data.shape, np.uint8), f"Lesions: – ({exc})"
        n, ml = lesion_stats(labels, sess.job.scan.voxel_volume_mm3)
        return labels, f"Lesions: {n} · {ml:.2f} mL"

    def _update_lesions(self, sess: Session) -> None:
        """Show the session's current result (its own review state) with count and volume."""
        if sess.job is None or sess.review is None or not sess.steps:
            return
        labels, sess.summary = self._result(sess)
        self._shown[id(sess.source)] = (sess, labels)
        self.presenter.show_lesions(sess, labels, self.confirm)
        if self._current_session() is sess:
            self.review_panel.show_result(sess.summary, self._dice_text(sess, labels))
            self._schedule_table()

    def _dice_text(self, sess: Session, labels) -> str | None:
        from ..core.metrics import dice

        truth = self.inputs.truth_layer
        if truth is None:
            return None
        try:
            gt = from_layer_shape(np.asarray(truth.data), sess.source).reshape(labels.shape)
        except ValueError:
            return f"Dice: '{truth.name}' does not fit this image"
        return f"Dice vs '{truth.name}': {dice(labels > 0, gt > 0):.3f}"

    def _schedule_table(self, *_):
        self._table_timer.start()

    def _refresh_table(self) -> None:
        """The per-lesion table (and Dice) of what the current image shows."""
        from ..lesion_table import lesion_table

        sess = self._current_session()
        shown_sess, labels = self._shown.get(id(sess.source), (None, None)) if sess else (
            None, None)
        if shown_sess is not sess or labels is None or sess.job is None:
            self.review_panel.show_table([])
            return
        scan = sess.job.scan
        self.review_panel.show_table(lesion_table(labels, scan.affine, scan.data))
        self.review_panel.show_result(sess.summary, self._dice_text(sess, labels))

    def restore_defaults(self) -> None:
        """Calibrated τ and threshold of the model, the last iteration's error map, default
        options (saved)."""
        self.inputs.restore_defaults(DEFAULTS)
        with _blocked(self.review_panel.min_size_spin):
            self.review_panel.min_size_spin.setValue(DEFAULTS["min_size"])
        self._save_settings()
        sess = self._current_session()
        if sess is None or sess.review is None:
            return
        sess.review.restore_defaults(sess.card)
        self._refresh_review()
        if sess.steps:
            last = len(sess.steps) - 1
            self.review_panel.show_iteration(sess, last)
            self._request_step(sess, last)
            self._update_lesions(sess)

    # -- accept / export ----------------------------------------------------------------------
    def accept_result(self):
        """Copy the current result into an editable '<name> lesions (accepted)' layer."""
        from ..errors import ItermaskError

        sess = self._current_session()
        if sess is None or sess.error_scan is None or sess.review is None:
            notify("warning", "nothing to accept yet: Run first")
            return None
        existing = self.presenter.layer(sess, "accepted")
        if existing is not None and not self.confirm(
                "Replace accepted labels?",
                f"'{existing.name}' may hold your edits. Replace it with the current result?"):
            return None
        try:
            acc = review.accept(sess)
        except ItermaskError as exc:
            notify("error", str(exc))
            return None
        prov = review.provenance(sess, acc.params, acc.labels)
        layer = self.presenter.show_accepted(sess, acc.labels, prov)
        self.run_controls.status.setText(f"Accepted as '{layer.name}' ({prov['result']}): edit "
                                         "it with the brush, then Export.")
        return layer

    def _ask_export_path(self, default: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export lesions", default, "NIfTI (*.nii.gz *.nii)",
            options=QFileDialog.Option.DontConfirmOverwrite)  # we ask (about the sidecar too)
        return path or None

    def export_result(self, path: str | None = None):
        """Write the accepted layer (else the current result) as NIfTI, a JSON sidecar that
        records what produced it (``itermask segment --params`` replays it) and the lesion
        table as CSV."""
        from ..errors import ItermaskError
        from ..export import sidecar_path
        from ..lesion_table import table_path

        sess = self._current_session()
        if sess is None or sess.error_scan is None or sess.review is None:
            notify("warning", "nothing to export yet: Run first")
            return None
        accepted = self.presenter.layer(sess, "accepted")
        labels = None
        if accepted is None:
            sess.accepted = None  # its layer is gone: export what the review shows now
        else:
            labels = from_layer_shape(accepted.data, sess.source).reshape(
                sess.job.scan.data.shape)
        if path is None:
            folder = self._settings.get("export_dir") or str(Path.home())
            meta_path = (sess.source.metadata or {}).get("path")
            stem = layer_stem(meta_path) if meta_path else sess.source.name.replace(" ", "_")
            path = self.ask_export_path(str(Path(folder) / f"{stem}_lesions.nii.gz"))
            if not path:
                return None
        target = Path(path)
        if not target.name.lower().endswith((".nii", ".nii.gz")):
            target = target.with_name(target.name + ".nii.gz")
        existing = [p for p in (target, sidecar_path(target), table_path(target)) if p.exists()]
        if existing and not self.confirm(
                "Replace existing files?",
                "These exist and would be replaced:\n" + "\n".join(map(str, existing))):
            return None
        try:
            written = review.export(sess, target, labels, overwrite=bool(existing))
        except ItermaskError as exc:
            notify("error", str(exc))
            return None
        self._settings["export_dir"] = str(target.parent)
        save_settings({"export_dir": str(target.parent)})
        notify("info", f"saved {Path(written[0]).name}, its sidecar and lesion table in "
                       f"{target.parent}")
        self.run_controls.status.setText(f"Exported {target.name} (+ .json, .csv).")
        return written

    # -- misc ---------------------------------------------------------------------------------
    def _update_buttons(self) -> None:
        busy = self._worker is not None
        self.run_controls.set_busy(busy)
        self.review_panel.set_busy(busy)
        self.inputs.set_enabled(True)

    def _ask_user(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(
            self, title, text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes


def _blocked(widget):
    from .common import signals_blocked

    return signals_blocked(widget)

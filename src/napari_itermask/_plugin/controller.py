"""The "IterMask² lesion segmentation" dock widget: composes the panels and binds them to sessions.

Layers of the plugin, top down: this controller; ``runner`` (the workers: a run and its reports,
a chosen iteration's maps) and ``actions`` (Accept, Export); the panels (``inputs``,
``run_controls``, ``review_panel``) that only show and edit values; the ``presenter`` that draws
layers; and below them, without Qt, ``_session`` (one run per image and its worker generator),
``review`` (the review state, its result, Accept, Export) and ``lesion_table``.

State. The review's values live in each image's ``Session.review``; the controller writes the
review panel's edits there and shows the current image's, so switching images restores each
one's and re-thresholds nothing. What is shown, accepted and exported is ``review.lesions``.

Threads. Model loading, scan preparation, iterations and moving what is shown to the scan's grid
run in napari generator workers (``runner``); the GUI thread only swaps layer data. The
threshold, minimum size and source re-threshold the cached error map here, at once (numpy, no
model call: ``runner.compute_lesions``); choosing another iteration shows its mask from a short
worker, then its maps, then its lesions (computed in another worker, as are each run frame's).
The per-lesion table and its Dice follow a moment after the last change (debounced), computed
by a third worker (``runner.compute_table``, coalesced; a table of a result no longer shown is
dropped), so neither dragging the threshold nor a run's frames wait for it.

Safety. A run belongs to its session's source layer; one run at a time; labels the user owns are
never replaced without ``self.confirm(title, text)`` returning True (tests replace it); errors
are notifications, never tracebacks.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QMessageBox, QScrollArea, QVBoxLayout, QWidget

from .. import review
from .._session import Session
from .._settings import DEFAULTS, load_settings, save_settings
from . import actions
from .common import notify, unwrap
from .inputs import InputsPanel
from .presenter import LayerPresenter
from .review_panel import ReviewPanel
from .run_controls import RunControls
from .runner import (
    FINISHED_TEXT,
    Runner,
    TableResult,
    compute_lesions,
    dice_text,
    ground_truth,
    lesion_request,
    table_request,
)

__all__ = ["FINISHED_TEXT", "TITLE", "IterMaskWidget"]

TITLE = "IterMask² lesion segmentation"


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
        self.runner = Runner(self)
        self._shown: dict[int, tuple] = {}  # id(source) → (session, labels it shows)

        self.inputs = InputsPanel(napari_viewer)
        self.run_controls = RunControls()
        self.review_panel = ReviewPanel()
        self.presenter = LayerPresenter(napari_viewer)
        self._table_timer = _TableTimer(self, lambda: self.runner.table_busy)
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

    # -- running (the workers: runner.Runner) ---------------------------------------------
    def run(self) -> bool:
        """Iterate until convergence (continues a stepped or cancelled run)."""
        return self.runner.start()

    def step(self) -> bool:
        """One iteration."""
        return self.runner.start(steps=1)

    def continue_higher_tau(self, tau: float | None = None) -> bool:
        """Resume from the last iteration with a higher τ; the history grows."""
        return self.runner.continue_higher_tau(tau)

    def cancel(self) -> None:
        """Stop after the iteration in progress; Run or Step continue from there."""
        self.runner.cancel()

    @property
    def _worker(self):
        """The run's worker while one runs, else None."""
        return self.runner.worker

    @property
    def _busy(self) -> Session | None:
        return self.runner.busy

    @property
    def _mask_worker(self):
        """A review worker still at work (a chosen iteration's mask and maps, or a result's
        lesions), else None."""
        return self.runner.mask_worker or self.runner.lesion_worker

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
        cached = k == 0 or review.cache_key(sess.job, k) in sess.errors
        if cached:
            self._update_lesions(sess)  # no network pass needed: the result at once
        # the mask at once from a worker, then the maps (and, unless shown, the lesions)
        self.runner.request_step(sess, k, lesions=not cached)

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

    def _update_lesions(self, sess: Session) -> None:
        """Show the session's current result (its own review state) with count, volume and
        Dice, computed here and now when it re-thresholds a cached map (the threshold,
        minimum size and source controls: milliseconds), else by a worker (an error map not yet
        computed costs a network pass). A run's frames and a chosen iteration's maps ask
        ``runner.request_lesions`` directly: the same computation off this thread."""
        if sess.job is None or sess.review is None or not sess.steps:
            return
        req = lesion_request(sess, self.inputs.truth_layer)
        if req.needs_network_pass:
            self.runner.request_lesions(sess)
            return
        self._show_result(sess, compute_lesions(req))

    def _show_result(self, sess: Session, result) -> None:
        """Put a ``runner.LesionResult`` on screen: the lesion layer, the summary, Dice."""
        sess.summary = result.summary
        # no result (e.g. the error of iteration 0): an empty map on screen, no table, no Dice
        self._shown[id(sess.source)] = (sess, result.labels if result.made else None)
        self.presenter.show_lesions(sess, result.labels, self.confirm)
        if self._current_session() is sess:
            dice = None
            if result.made:  # the ground truth changed since it was asked: the chosen one's
                dice = (result.dice if result.request.truth_layer is self.inputs.truth_layer
                        else self._dice_text(sess, result.labels))
            self.review_panel.show_result(sess.summary, dice)
            self._schedule_table()

    def _dice_text(self, sess: Session, labels) -> str | None:
        return dice_text(labels, *ground_truth(self.inputs.truth_layer, sess))

    def _schedule_table(self, *_):
        self._table_timer.start()

    def _refresh_table(self) -> None:
        """Ask for the per-lesion table (and Dice) of what the current image shows: computed
        by the runner's table worker and shown by ``_show_table`` if still current; with no
        result shown, an empty table at once."""
        sess = self._current_session()
        shown_sess, labels = self._shown.get(id(sess.source), (None, None)) if sess else (
            None, None)
        if (shown_sess is not sess or labels is None or sess.job is None
                or sess.review is None or not sess.steps):
            self.runner.drop_table()
            self.review_panel.show_table([])
            return
        self.runner.request_table(table_request(sess, labels, self.inputs.truth_layer))

    def _show_table(self, result: TableResult) -> None:
        """Put a ``runner.TableResult`` on screen: the table, and the Dice line with it."""
        self.review_panel.show_table(result.rows)
        self.review_panel.show_result(result.request.sess.summary, result.dice)

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
            self.runner.request_step(sess, last, lesions=False)
            self._update_lesions(sess)

    # -- accept / export (actions) ---------------------------------------------------------
    def accept_result(self):
        """Copy the current result into an editable '<name> lesions (accepted)' layer."""
        return actions.accept_result(self)

    def export_result(self, path: str | None = None):
        """Write the accepted layer (else the current result) as NIfTI, its JSON sidecar and
        the lesion table as CSV (``actions.export_result``)."""
        return actions.export_result(self, path)

    def _ask_export_path(self, default: str) -> str | None:
        return actions.ask_export_path(self, default)

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


class _TableTimer(QTimer):
    """The lesion table's debounce. ``isActive()`` also says True while the table it asked for
    is computed or waits for its worker (``busy()``), so that "not active" means, as when the
    table was computed here, that the table on screen is that of the result shown."""

    def __init__(self, parent, busy):
        super().__init__(parent)
        self._busy = busy

    def isActive(self) -> bool:  # noqa: N802 (Qt name)
        return super().isActive() or bool(self._busy())


def _blocked(widget):
    from .common import signals_blocked

    return signals_blocked(widget)

"""The review panel: iteration, source, threshold, minimum size, lesion table, Accept, Export.

It shows one image's ``review.ReviewState`` (``show(session)``) and reports the user's edits as
signals; the controller writes them into that state, so switching images restores each one's
values and re-thresholds nothing. Each value says its unit and what it does, in a tooltip and
in a short line under it. The error map's colours are explained by a colour bar (the same
colours and limits as the error layer), the result by its lesion count and volume, Dice against
a chosen ground truth, and a per-lesion table (``lesion_table``).
"""

from __future__ import annotations

import math
import weakref

import numpy as np
from qtpy.QtCore import QRectF, Qt, Signal
from qtpy.QtGui import QBrush, QColor, QLinearGradient, QPainter, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..params import SOURCES
from .common import MarkedSlider, hint, signals_blocked
from .presenter import ERROR_COLORS, ERROR_CONTROLS, error_limits

__all__ = ["ReviewPanel", "ErrorLegend", "THRESHOLD_STEPS", "TABLE_HEADERS", "TABLE_ROWS"]

THRESHOLD_STEPS = 1000
#: Lesions the dock's table lists at most (the largest); filling thousands of rows on every
#: threshold move froze the window for a second at low thresholds, and the CSV has them all
TABLE_ROWS = 100
SOURCE_TEXTS = ("error > threshold", "the iteration's mask")  # short: the dock is narrow
TABLE_HEADERS = ("#", "mL", "⌀ mm", "RAS mm", "mean")
CENTROID_COLUMN = 3
ERROR_UNIT = "normalised intensity²"

TAU_HELP = ("τ: a pixel whose reconstruction error stays below τ is declared normal and "
            f"unmasked at each iteration ({ERROR_UNIT}); a higher τ shrinks the mask further")
THRESHOLD_HELP = ("Threshold: voxels whose reconstruction error is above it are lesion "
                  f"({ERROR_UNIT}); lower finds more, and more false positives")
MIN_SIZE_HELP = ("Minimum size: lesions with fewer voxels (of the scan's grid, 26-connected) "
                 "are dropped; 0 keeps all")


class ErrorLegend(QWidget):
    """A horizontal colour bar of the error layer's colours over a grey ground (as over a scan),
    with its limits and the threshold marked."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.limits = (0.0, 1.0)
        self.threshold: float | None = None
        self.setMinimumHeight(30)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setToolTip("Error map colours: transparent where the error is low; orange at the "
                        f"threshold; yellow at twice it ({ERROR_UNIT})")

    def set_range(self, limits: tuple[float, float], threshold: float | None) -> None:
        self.limits, self.threshold = (float(limits[0]), float(limits[1])), threshold
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt name)
        p = QPainter(self)
        w = self.width()
        bar = QRectF(4, 2, max(w - 8, 1), 12)
        p.fillRect(bar, QColor(110, 110, 110))
        grad = QLinearGradient(bar.left(), 0, bar.right(), 0)
        for pos, (r, g, b, a) in zip(ERROR_CONTROLS, ERROR_COLORS):
            grad.setColorAt(float(pos), QColor.fromRgbF(r, g, b, a))
        p.fillRect(bar, QBrush(grad))
        p.setPen(QPen(QColor(200, 200, 200)))
        p.drawRect(bar)
        lo, hi = self.limits
        font = p.font()
        font.setPointSizeF(max(font.pointSizeF() * 0.85, 6))
        p.setFont(font)
        y = int(bar.bottom()) + 13
        p.drawText(int(bar.left()), y, f"{lo:.3g}")
        top = f"{hi:.3g}"
        p.drawText(int(bar.right()) - p.fontMetrics().horizontalAdvance(top), y, top)
        if self.threshold is not None and hi > lo:
            x = bar.left() + (self.threshold - lo) / (hi - lo) * bar.width()
            p.setPen(QPen(QColor(255, 200, 0), 2))
            p.drawLine(int(x), int(bar.top()) - 1, int(x), int(bar.bottom()) + 2)
            text = f"threshold {self.threshold:.3g}"
            tw = p.fontMetrics().horizontalAdvance(text)
            p.drawText(int(min(max(x - tw / 2, bar.left() + 30), bar.right() - tw - 30)), y,
                       text)
        p.end()


class ReviewPanel(QGroupBox):
    """The review of one image's run (docs/method.md §8); its values live in its session."""

    iteration_chosen = Signal(int)
    threshold_chosen = Signal(float)
    min_size_chosen = Signal(int)
    source_chosen = Signal(str)
    next_tau_chosen = Signal(float)
    continue_clicked = Signal()
    defaults_clicked = Signal()
    accept_clicked = Signal()
    export_clicked = Signal()

    def __init__(self, parent=None):
        super().__init__("Review (human–AI)", parent)
        self._threshold_max = 1.0
        self._voxel_ml: float | None = None
        self._max_of: tuple | None = None  # (weak reference to an error map, its maximum)
        rv = QVBoxLayout(self)

        self.iter_label = QLabel("Iteration: –")
        self.iter_label.setWordWrap(True)
        rv.addWidget(self.iter_label)
        self.iter_slider = QSlider(Qt.Orientation.Horizontal)
        self.iter_slider.setRange(0, 0)
        self.iter_slider.setToolTip("The iteration whose result is shown, accepted and exported "
                                    "(rightmost: the last, following the run)")
        self.iter_slider.valueChanged.connect(self.iteration_chosen)
        rv.addWidget(self.iter_slider)

        tau_row = QHBoxLayout()
        tau_row.addWidget(QLabel("Next τ"))
        self.tau_spin = QDoubleSpinBox()
        self.tau_spin.setDecimals(4)
        self.tau_spin.setRange(0.0, 1e6)
        self.tau_spin.setSingleStep(0.01)
        self.tau_spin.setToolTip(TAU_HELP)
        self.tau_spin.valueChanged.connect(lambda v: self.next_tau_chosen.emit(float(v)))
        tau_row.addWidget(self.tau_spin, 1)
        rv.addLayout(tau_row)
        self.continue_btn = QPushButton("Continue with higher τ")
        self.continue_btn.setToolTip("Resume from the last iteration with this τ; the history "
                                     "grows (docs/method.md §8)")
        self.continue_btn.clicked.connect(self.continue_clicked)
        rv.addWidget(self.continue_btn)
        self.tau_default_label = hint()
        rv.addWidget(self.tau_default_label)
        rv.addWidget(hint("τ: error below it → unmasked as normal; higher τ shrinks more."))

        source_row = QHBoxLayout()
        source_row.addWidget(QLabel("Lesions from"))
        self.source_combo = QComboBox()
        self.source_combo.setObjectName("itermask-source")
        self.source_combo.addItems(SOURCE_TEXTS)
        self.source_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.source_combo.setMinimumContentsLength(12)
        self.source_combo.setToolTip(
            "The chosen iteration's reconstruction error above the threshold (the paper's "
            "segmentation at the last iteration), or the mask still covering voxels after it")
        self.source_combo.currentIndexChanged.connect(
            lambda i: self.source_chosen.emit(SOURCES[i]))
        source_row.addWidget(self.source_combo, 1)
        rv.addLayout(source_row)

        self.threshold_label = QLabel("Threshold: –")
        self.threshold_label.setWordWrap(True)
        rv.addWidget(self.threshold_label)
        thr = QHBoxLayout()
        self.threshold_slider = MarkedSlider()
        self.threshold_slider.setRange(0, THRESHOLD_STEPS)
        self.threshold_slider.setToolTip(THRESHOLD_HELP + "; the yellow mark is the model's "
                                                          "calibrated value")
        self.threshold_slider.valueChanged.connect(self._on_threshold_slider)
        thr.addWidget(self.threshold_slider, 1)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setDecimals(4)
        self.threshold_spin.setRange(0.0, 1e6)
        self.threshold_spin.setSingleStep(0.01)
        self.threshold_spin.setToolTip(THRESHOLD_HELP)
        self.threshold_spin.valueChanged.connect(self._on_threshold_spin)
        thr.addWidget(self.threshold_spin)
        rv.addLayout(thr)
        self.legend = ErrorLegend()
        rv.addWidget(self.legend)
        self.threshold_default_label = hint()
        rv.addWidget(self.threshold_default_label)
        rv.addWidget(hint(f"Error ({ERROR_UNIT}) above the threshold → lesion; lower finds "
                          "more."))

        size_row = QHBoxLayout()
        size_row.addWidget(QLabel("Minimum size"))
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 1_000_000)
        self.min_size_spin.setSuffix(" voxels")
        self.min_size_spin.setToolTip(MIN_SIZE_HELP)
        self.min_size_spin.valueChanged.connect(self._on_min_size)
        size_row.addWidget(self.min_size_spin, 1)
        rv.addLayout(size_row)
        self.min_size_hint = hint("Smaller lesions are dropped; 0 keeps all.")
        rv.addWidget(self.min_size_hint)

        self.stats_label = QLabel("Lesions: –")
        self.stats_label.setWordWrap(True)
        self.stats_label.setStyleSheet("font-weight: bold;")
        rv.addWidget(self.stats_label)
        self.dice_label = QLabel()
        self.dice_label.setWordWrap(True)
        self.dice_label.hide()
        rv.addWidget(self.dice_label)

        self.table = QTableWidget(0, len(TABLE_HEADERS))
        self.table.setHorizontalHeaderLabels(TABLE_HEADERS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        # numbers keep their width; the centroid column takes what is left (it elides, rather
        # than the table scrolling sideways, on a dock narrower than the default)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(CENTROID_COLUMN, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setMinimumHeight(90)
        self.table.setMaximumHeight(170)
        self.table.setToolTip("One row per lesion, largest first: volume, largest diameter "
                              "(between voxel centres), centroid in scanner RAS mm (whole mm "
                              "here; the CSV has decimals), mean intensity; Export writes it "
                              "as CSV beside the labels")
        rv.addWidget(self.table)
        self.table_note = hint()
        self.table_note.hide()
        rv.addWidget(self.table_note)

        actions = QHBoxLayout()
        self.defaults_btn = QPushButton("Defaults")
        self.defaults_btn.setToolTip("Restore the model's calibrated τ and threshold, the last "
                                     "iteration's error map and the default options")
        self.defaults_btn.clicked.connect(self.defaults_clicked)
        self.accept_btn = QPushButton("Accept")
        self.accept_btn.setToolTip("Copy the lesions into an editable Labels layer")
        self.accept_btn.clicked.connect(self.accept_clicked)
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("Save the lesions as NIfTI on the scan's grid, with a JSON "
                                   "provenance sidecar and the lesion table as CSV")
        self.export_btn.clicked.connect(self.export_clicked)
        for b in (self.defaults_btn, self.accept_btn, self.export_btn):
            actions.addWidget(b)
        rv.addLayout(actions)

    # -- the user's edits ---------------------------------------------------------------------
    def controls(self) -> tuple:
        return (self.iter_slider, self.tau_spin, self.threshold_slider, self.threshold_spin,
                self.min_size_spin, self.source_combo)

    def _to_slider(self, value: float) -> int:
        return int(round(np.clip(value / self._threshold_max, 0.0, 1.0) * THRESHOLD_STEPS))

    def _on_threshold_slider(self, value: int) -> None:
        self.threshold_spin.setValue(value / THRESHOLD_STEPS * self._threshold_max)

    def _on_threshold_spin(self, value: float) -> None:
        with signals_blocked(self.threshold_slider):
            self.threshold_slider.setValue(self._to_slider(float(value)))
        self.threshold_chosen.emit(float(value))

    def _on_min_size(self, value: int) -> None:
        self._show_min_size_ml(value)
        self.min_size_chosen.emit(int(value))

    def _show_min_size_ml(self, value: int) -> None:
        if self._voxel_ml is None or value <= 0:
            self.min_size_hint.setText("Smaller lesions are dropped; 0 keeps all.")
        else:
            self.min_size_hint.setText(f"= {value * self._voxel_ml:.3g} mL on this scan; "
                                       "smaller lesions are dropped.")

    # -- showing a session --------------------------------------------------------------------
    def show_session(self, sess) -> None:
        """Bring the panel in line with a session's review state (no recompute); None or a
        session without results disables it."""
        has = (sess is not None and sess.job is not None and bool(sess.steps)
               and sess.review is not None)
        self.setEnabled(has)
        if not has:
            with signals_blocked(self.iter_slider):
                self.iter_slider.setRange(0, 0)
            self.iter_label.setText("Iteration: –")
            self.stats_label.setText("Lesions: –")
            self.threshold_slider.set_mark(None)
            self.dice_label.hide()
            self.show_table([])
            return
        card, rv = sess.card, sess.review
        self._voxel_ml = sess.voxel_ml
        with signals_blocked(*self.controls()):
            last = len(sess.steps) - 1
            self.iter_slider.setRange(0, last)
            self.iter_slider.setValue(last if rv.iteration is None else min(rv.iteration, last))
            self.tau_spin.setValue(float(rv.next_tau if rv.next_tau is not None else sess.tau))
            self._set_threshold_range(sess)
            self.threshold_spin.setValue(rv.threshold)
            self.threshold_slider.setValue(self._to_slider(rv.threshold))
            self.min_size_spin.setValue(rv.min_size)
            self.source_combo.setCurrentIndex(SOURCES.index(rv.source))
        self._show_min_size_ml(rv.min_size)
        self.show_iteration(sess, self.iter_slider.value())
        self.tau_default_label.setText(f"calibrated τ {card.tau:.4g}; in force {sess.tau:.4g}")
        self.tau_default_label.setToolTip(f"τ: {card.tau_derivation.get('method', '?')}")
        self.show_threshold(sess)
        self.threshold_slider.setEnabled(rv.source == "error")
        self.threshold_spin.setEnabled(rv.source == "error")
        self.stats_label.setText(sess.summary or "Lesions: –")

    def _set_threshold_range(self, sess) -> None:
        card = sess.card
        top = 2.0 * float(card.threshold)
        if sess.error_scan is not None and sess.error_scan.size:
            top = max(top, self._error_max(sess.error_scan))
        self._threshold_max = max(top, 1e-6)
        self.threshold_slider.set_mark(self._to_slider(float(card.threshold)))
        self.legend.set_range(error_limits(card.threshold), float(card.threshold))

    def _error_max(self, error) -> float:
        """The largest error of a map, computed once per map (the panel is shown again on
        every frame and image switch; the map is the session's, kept until it changes)."""
        if self._max_of is None or self._max_of[0]() is not error:
            self._max_of = (weakref.ref(error), float(error.max()))
        return self._max_of[1]

    def show_threshold(self, sess) -> None:
        card = sess.card
        value = float(sess.review.threshold)
        at_default = abs(value - card.threshold) <= 1e-9 * max(1.0, abs(card.threshold))
        mark = " ★ calibrated" if at_default else ""
        self.threshold_label.setText(f"Threshold on the error: {value:.4g}{mark}")
        self.threshold_label.setToolTip(THRESHOLD_HELP)
        self.threshold_default_label.setText(
            f"calibrated threshold {card.threshold:.4g} (yellow mark)")
        self.threshold_default_label.setToolTip(
            f"threshold: {card.threshold_derivation.get('method', '?')}")

    def show_iteration(self, sess, k: int) -> None:
        if not (0 <= k < len(sess.steps)):
            return
        info = sess.steps[k]
        if k == 0:
            what = "start (the brain)"
        elif info.tau is None:
            what = f"iteration {info.iteration}: first step"
        else:
            what = f"iteration {info.iteration}: τ {info.tau:.4g}"
        self.iter_label.setText(f"{what} · masked {info.volume_ml:.1f} mL  "
                                f"[{k}/{len(sess.steps) - 1}]")

    def show_result(self, summary: str, dice: str | None = None) -> None:
        self.stats_label.setText(summary)
        self.dice_label.setText(dice or "")
        self.dice_label.setVisible(bool(dice))

    def show_table(self, rows) -> None:
        """Rows of ``lesion_table.Lesion`` (largest first); beyond ``TABLE_ROWS`` the table
        shows the largest ones and says how many it leaves to the CSV."""
        rows = list(rows)
        shown = rows[:TABLE_ROWS]
        # the header fits its columns to their contents: with that left on, every cell set
        # measures the whole column again (a second for a few hundred rows); fit once instead
        header = self.table.horizontalHeader()
        modes = [header.sectionResizeMode(c) for c in range(self.table.columnCount())]
        self.table.setUpdatesEnabled(False)
        try:
            for c in range(len(modes)):
                header.setSectionResizeMode(c, QHeaderView.ResizeMode.Fixed)
            self._fill_table(shown)
        finally:
            for c, mode in enumerate(modes):
                header.setSectionResizeMode(c, mode)
            self.table.setUpdatesEnabled(True)
        more = len(rows) - len(shown)
        self.table_note.setText(f"… and {more} smaller lesion(s): all are in the CSV that "
                                "Export writes" if more else "")
        self.table_note.setVisible(bool(more))

    def _fill_table(self, rows) -> None:
        self.table.setRowCount(len(rows))
        for r, les in enumerate(rows):
            mean = "" if math.isnan(les.mean_intensity) else f"{les.mean_intensity:.4g}"
            # whole mm for the centroid here, so the table fits the dock; the CSV keeps more
            cells = (str(les.lesion), f"{les.volume_ml:.3f}", f"{les.largest_diameter_mm:.1f}",
                     ", ".join(f"{c:.0f}" for c in les.centroid_mm), mean)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c != CENTROID_COLUMN:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight
                                              | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(r, c, item)

    def set_busy(self, busy: bool) -> None:
        self.continue_btn.setEnabled(not busy)
        self.iter_slider.setEnabled(not busy)

"""The run controls: Run, Step, Stop, Reset, and progress with iteration, slices left and time.

Progress is ``napari_itermask.progress`` (the same arithmetic as the CLI's): the bar shows the
fraction done, the line under it the iteration, the slices left and the time so far; the clock
ticks once a second while a run is in progress.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..progress import format_elapsed, progress_fraction
from .common import hint

__all__ = ["RunControls", "progress_fraction", "format_elapsed"]

STEPS = 1000  # progress bar resolution


class RunControls(QWidget):
    """Buttons, progress bar, a progress line and a status line; no run logic of its own."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.run_btn = QPushButton("Run")
        self.step_btn = QPushButton("Step")
        self.cancel_btn = QPushButton("Stop")
        self.reset_btn = QPushButton("Reset")
        self.run_btn.setToolTip("Iterate until every slice's mask stops shrinking (continues a "
                                "stepped or stopped run)")
        self.step_btn.setToolTip("One iteration")
        self.cancel_btn.setToolTip("Stop after the current iteration (Run or Step continue)")
        self.reset_btn.setToolTip("Forget this image's run and remove its preview layers")
        self.progress = QProgressBar()
        self.progress.setRange(0, STEPS)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.progress_line = hint("idle")
        self.status = hint("Choose an image and press Run.", style="")

        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        buttons = QHBoxLayout()
        for b in (self.run_btn, self.step_btn, self.cancel_btn, self.reset_btn):
            buttons.addWidget(b)
        root.addLayout(buttons)
        root.addWidget(self.progress)
        root.addWidget(self.progress_line)
        root.addWidget(self.status)

        self._t0: float | None = None
        self._line = "idle"
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)

    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def _tick(self) -> None:
        clock = f" · {format_elapsed(self.elapsed())}" if self._t0 is not None else ""
        self.progress_line.setText(self._line + clock)

    def started(self, text: str = "starting …") -> None:
        self._t0 = time.monotonic()
        self._line = text
        self._clock.start()
        self._tick()

    def show_progress(self, fraction: float, text: str) -> None:
        self.progress.setValue(int(round(STEPS * min(max(fraction, 0.0), 1.0))))
        self._line = text
        self._tick()

    def finished(self, text: str, complete: bool = False) -> None:
        """The run ended (converged, stopped, one step): keep the time it took."""
        self._clock.stop()
        if complete:
            self.progress.setValue(STEPS)
        self._line = text
        self._tick()
        self._t0 = None

    def reset(self) -> None:
        self._clock.stop()
        self._t0 = None
        self.progress.setValue(0)
        self._line = "idle"
        self._tick()

    def set_busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.step_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

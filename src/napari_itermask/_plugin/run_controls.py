"""The run controls: Run, Step, Stop, Reset, and progress with iteration, slices left and time.

Progress. A slice is done when its mask stops shrinking (or it hits the iteration cap); the
fraction counts done slices fully and each slice still shrinking by how far its iterations have
gone towards the cap (``progress_fraction``). It never goes back during a run and reaches 1 when
every slice is done. The line under the bar says the iteration, the slices left and the time
so far; the clock ticks once a second while a run is in progress.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget

from .common import hint

__all__ = ["RunControls", "progress_fraction", "format_elapsed"]

STEPS = 1000  # progress bar resolution


def progress_fraction(active: int, total: int, iteration: int, max_iter: int,
                      start_iteration: int = 0) -> float:
    """Share of the run done: finished slices count 1, shrinking ones iterations/cap (from the
    iteration this run started at, so a Continue starts a fresh bar)."""
    if total <= 0:
        return 0.0
    span = max_iter - start_iteration if max_iter > start_iteration else max(max_iter, 1)
    along = min(1.0, max(0.0, (iteration - start_iteration) / span))
    done = total - active
    return min(1.0, (done + active * along) / total)


def format_elapsed(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


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

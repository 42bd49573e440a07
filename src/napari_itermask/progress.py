"""How far a run is: the fraction done, and the one-line report the widget and the CLI show.

A slice is done when its mask stopped shrinking (or it was skipped); a slice still shrinking
counts by the iterations it has had towards the iteration cap. The fraction therefore never goes
back during a run and reaches 1 when every slice has converged. Pure arithmetic, no Qt.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Printer", "format_elapsed", "progress_fraction", "progress_line"]


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
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(active: int, total: int, iteration: int, max_iter: int, seconds: float,
                  start_iteration: int = 0) -> str:
    """``"43 % · iteration 4 · 12 of 40 slices left · 0:23"``."""
    frac = progress_fraction(active, total, iteration, max_iter, start_iteration)
    return (f"{100 * frac:.0f} % · iteration {iteration} · {active} of {total} slices left · "
            f"{format_elapsed(seconds)}")


class Printer:
    """The terminal's progress report of a run (``itermask segment`` and ``demo --headless``):
    ``label: progress_line(...)`` on stderr, at most once per ``interval`` seconds plus the final
    state; one line overwritten in place on a terminal, one line per report otherwise (logs)."""

    def __init__(self, label: str, max_iter: int, interval: float = 2.0, stream=None,
                 clock=time.monotonic):
        self.label, self.max_iter, self.interval = label, int(max_iter), interval
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.start = clock()
        self.last: float | None = None
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False  # a terminal line is waiting for its newline

    def __call__(self, state) -> None:
        now = self.clock()
        done = not bool(state.active.any())
        if not (self.last is None or now - self.last >= self.interval or done):
            return
        self.last = now
        line = f"{self.label}: " + progress_line(int(state.active.sum()), int(state.active.size),
                                                 state.iteration, self.max_iter, now - self.start)
        if self.tty:
            print(f"\r{line} ", end="\n" if done else "", file=self.stream, flush=True)
            self._open = not done
        else:
            print(line, file=self.stream, flush=True)

    def finish(self) -> None:
        """End an overwritten terminal line (a run stopped before every slice converged)."""
        if self._open:
            print(file=self.stream, flush=True)
            self._open = False

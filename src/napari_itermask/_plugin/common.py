"""Small Qt pieces the panels share: signal blocking, notifications, hint labels, the marked slider.

Nothing here knows about sessions or models; the panels and the controller build on it.
"""

from __future__ import annotations

from contextlib import contextmanager

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QLabel, QSlider, QStyle, QStyleOptionSlider

__all__ = ["unwrap", "signals_blocked", "notify", "hint", "MarkedSlider"]


def unwrap(obj):
    """napari hands plugins a proxy of the viewer; identity checks need the real objects."""
    return getattr(obj, "__wrapped__", obj)


@contextmanager
def signals_blocked(*widgets):
    """Set controls from the review state without their handlers writing it back."""
    for w in widgets:
        w.blockSignals(True)
    try:
        yield
    finally:
        for w in widgets:
            w.blockSignals(False)


def notify(kind: str, message: str) -> None:
    """A napari notification ("error", "warning" or "info"), always prefixed with the plugin."""
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(f"napari-itermask: {message}")


def hint(text: str = "", style: str = "color: #a0a0a0; font-size: 11px;") -> QLabel:
    """A word-wrapped one-line explanation under a control (wraps instead of clipping)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet(style)
    return label


class MarkedSlider(QSlider):
    """A horizontal slider with a small mark at a chosen value (the calibrated default)."""

    def __init__(self, parent=None):
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.mark: int | None = None

    def set_mark(self, value: int | None) -> None:
        self.mark = value
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt name)
        super().paintEvent(event)
        if self.mark is None:
            return
        opt = QStyleOptionSlider()
        self.initStyleOption(opt)
        handle = self.style().subControlRect(
            QStyle.ComplexControl.CC_Slider, opt, QStyle.SubControl.SC_SliderHandle, self)
        span = self.width() - handle.width()
        x = QStyle.sliderPositionFromValue(self.minimum(), self.maximum(), self.mark, span)
        x += handle.width() // 2
        p = QPainter(self)
        p.setPen(QPen(QColor(255, 200, 0), 2))
        p.drawLine(x, 0, x, 5)
        p.drawLine(x, self.height() - 6, x, self.height())
        p.end()

"""The question a DICOM folder (or zip) of several series asks: which one to open.

One line per series (its description, series number, number of images and modality, as
``dicom.SeriesInfo`` has them), plus "all of them, one layer each". The reader
(``_reader.ask_series``) shows it when napari opens such a folder in a window; tests replace
``exec`` to answer it.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QVBoxLayout,
)

__all__ = ["ALL_SERIES", "SeriesDialog", "series_text"]

ALL_SERIES = "All series (one layer each)"


def series_text(info) -> str:
    """``'t2_flair_sag' · series 3 · 176 images · MR``: what tells two series apart."""
    parts = [info.description]
    if info.series_number is not None:
        parts.append(f"series {info.series_number}")
    parts.append(f"{info.n_images} image{'s' if info.n_images != 1 else ''}")
    if info.modality:
        parts.append(info.modality)
    return " · ".join(parts)


class SeriesDialog(QDialog):
    """Which series of ``name`` to open; ``choice()`` asks and returns the chosen series'
    indexes (from 1), all of them, or None when cancelled."""

    def __init__(self, name: str, infos, parent=None):
        super().__init__(parent)
        self.infos = list(infos)
        self.setWindowTitle("Open DICOM series")
        col = QVBoxLayout(self)
        text = QLabel(f"'{name}' holds {len(self.infos)} DICOM series. Which one to open?")
        text.setWordWrap(True)
        col.addWidget(text)
        self.combo = QComboBox()
        for info in self.infos:
            self.combo.addItem(series_text(info), info.index)
        self.combo.addItem(ALL_SERIES, None)
        col.addWidget(self.combo)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        col.addWidget(buttons)

    def choice(self) -> list[int] | None:
        if self.exec() != QDialog.DialogCode.Accepted:
            return None
        index = self.combo.currentData()
        return [i.index for i in self.infos] if index is None else [int(index)]

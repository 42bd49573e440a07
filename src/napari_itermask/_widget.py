"""The "IterMask² lesion segmentation" dock widget.

Layout, top to bottom: inputs (image layer, model, device, brain mask, advanced options), the
run controls (Run, Step, Cancel, Reset, progress), and the review panel of the paper's
human–AI collaboration (§3): an iteration slider over the stored history, "continue with higher
τ", a segmentation-threshold slider with the model's calibrated value marked, a minimum lesion
size, the lesion count and volume, Restore defaults, Accept and Export.

State. The review's values (chosen iteration, lesion source, threshold, minimum size, next τ)
live in each image's ``Session.review`` (``review.ReviewState``, Qt-free); the controls only
display and edit the current image's, so switching images restores each one's and re-thresholds
nothing. What is shown, accepted and exported is ``review.lesions``: the chosen iteration's
error map above the threshold, or its mask; Export's sidecar records it as ``RunParams``.

Threads. Model loading, scan preparation, iterations and moving what is shown to the scan's
grid run in napari generator workers (``_session.advance``); the GUI thread only swaps layer
data. The threshold slider thresholds the cached scan-grid error map of the chosen iteration
(cheap numpy), so it redraws with no model call. The iteration slider asks a short worker for
that iteration's mask and maps on the scan's grid (an earlier iteration's error map is
recomputed from the history: one network pass).

Safety. Every run belongs to a ``Session`` holding its source layer; results go to that
layer's derived layers whatever the combo shows later. One run at a time: a second Run, Step or
Continue is refused while one runs. The accepted lesion layer, and a live preview the user
painted on, are never replaced without ``self.confirm(title, text)`` returning True (tests may
replace it). Errors become napari notifications, never tracebacks.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QStyle,
    QStyleOptionSlider,
    QVBoxLayout,
    QWidget,
)

from . import review
from ._layers import (
    RADIOLOGICAL_NOTE,
    derived_kwargs,
    from_layer_shape,
    layer_ras_affine,
    layer_scan_array,
    layer_stem,
    to_layer_shape,
)
from ._session import Failure, Finished, Frame, Note, RunRequest, Session, advance
from ._settings import DEFAULTS, load_settings, save_settings
from .params import SOURCES, RunParams

__all__ = ["IterMaskWidget"]

log = logging.getLogger(__name__)

TITLE = "IterMask² lesion segmentation"
DEVICES = ("auto", "cpu", "cuda", "mps")
AUTO_BRAIN = "automatic (voxels > 0)"
THRESHOLD_STEPS = 1000
MASK_COLOR = {None: "transparent", 0: "transparent", 1: (0.0, 0.85, 1.0, 1.0)}
LESION_COLOR = {None: "transparent", 0: "transparent", 1: (1.0, 0.2, 0.1, 1.0)}


def _unwrap(obj):
    """napari hands plugins a proxy of the viewer; identity checks need the real objects."""
    return getattr(obj, "__wrapped__", obj)


@contextmanager
def _signals_blocked(*widgets):
    """Set controls from the review state without their handlers writing it back."""
    for w in widgets:
        w.blockSignals(True)
    try:
        yield
    finally:
        for w in widgets:
            w.blockSignals(False)


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)


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


class IterMaskWidget(QWidget):
    """Dock widget; ``napari_viewer`` may be napari's proxy or a viewer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._viewer = _unwrap(napari_viewer)
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
        self._image_layers: list = []
        self._label_layers: list = []
        self._threshold_max = 1.0
        self._build_ui()
        self._load_settings_into_ui()
        layers = self._viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layer_removed)
        layers.events.moved.connect(self._on_layers_changed)
        self._refresh_layer_combos()
        self._on_source_changed()

    # ------------------------------------------------------------------ UI ----------------
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)

        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_source_changed)
        form.addRow("Image", self.image_combo)

        model_row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.browse_btn = QPushButton("Folder…")
        self.browse_btn.setToolTip("Use a model folder (card.json + weights.safetensors)")
        self.browse_btn.clicked.connect(self._browse_model)
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_btn)
        form.addRow("Model", model_row)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        form.addRow("", self.model_info)
        self.untrained_note = QLabel()
        self.untrained_note.setWordWrap(True)
        self.untrained_note.setStyleSheet("color: #ff6060; font-weight: bold;")
        self.untrained_note.hide()
        form.addRow("", self.untrained_note)

        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.currentIndexChanged.connect(self._on_device_changed)
        form.addRow("Device", self.device_combo)
        self.device_note = QLabel()
        self.device_note.setWordWrap(True)
        self.device_note.setStyleSheet("color: #ffa040;")
        form.addRow("", self.device_note)

        self.brain_combo = QComboBox()
        self.brain_combo.setToolTip("Brain mask: automatic (skull-stripped scan) or a Labels layer")
        form.addRow("Brain mask", self.brain_combo)
        root.addLayout(form)

        from superqt import QCollapsible

        self.advanced = QCollapsible("Advanced options")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        self.max_iter_spin = QSpinBox()
        self.max_iter_spin.setRange(0, 500)
        self.max_iter_spin.setSpecialValueText("model card")
        self.max_iter_spin.setToolTip("Iteration cap per slice (0 = the model card's)")
        adv_form.addRow("Iteration cap", self.max_iter_spin)
        self.unmask_spin = QDoubleSpinBox()
        self.unmask_spin.setRange(-0.05, 0.95)
        self.unmask_spin.setSingleStep(0.05)
        self.unmask_spin.setDecimals(2)
        self.unmask_spin.setSpecialValueText("model card")
        self.unmask_spin.setToolTip("Share of the brain declared normal by the first step")
        adv_form.addRow("First-step unmask", self.unmask_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Noise seed: the same seed gives the same result")
        adv_form.addRow("Seed", self.seed_spin)
        self.advanced.addWidget(adv)
        root.addWidget(self.advanced)
        for w in (self.max_iter_spin, self.unmask_spin, self.seed_spin):
            w.valueChanged.connect(self._save_ui_settings)

        buttons = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.step_btn = QPushButton("Step")
        self.cancel_btn = QPushButton("Cancel")
        self.reset_btn = QPushButton("Reset")
        self.run_btn.setToolTip("Iterate until every slice's mask stops shrinking")
        self.step_btn.setToolTip("One iteration")
        self.cancel_btn.setToolTip("Stop after the current iteration (Run or Step continue)")
        self.reset_btn.setToolTip("Forget this image's run and remove its preview layers")
        self.run_btn.clicked.connect(self.run)
        self.step_btn.clicked.connect(self.step)
        self.cancel_btn.clicked.connect(self.cancel)
        self.reset_btn.clicked.connect(self.reset)
        for b in (self.run_btn, self.step_btn, self.cancel_btn, self.reset_btn):
            buttons.addWidget(b)
        root.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        root.addWidget(self.progress)
        self.status = QLabel("Choose an image and press Run.")
        self.status.setWordWrap(True)
        root.addWidget(self.status)

        review = QGroupBox("Review (human–AI)")
        rv = QVBoxLayout(review)
        self.iter_label = QLabel("Iteration: –")
        rv.addWidget(self.iter_label)
        self.iter_slider = QSlider(Qt.Orientation.Horizontal)
        self.iter_slider.setRange(0, 0)
        self.iter_slider.setToolTip("The iteration whose result is shown, accepted and exported "
                                    "(rightmost: the last, following the run)")
        self.iter_slider.valueChanged.connect(self._on_iteration_slider)
        rv.addWidget(self.iter_slider)

        cont = QHBoxLayout()
        cont.addWidget(QLabel("τ"))
        self.tau_spin = QDoubleSpinBox()
        self.tau_spin.setDecimals(4)
        self.tau_spin.setRange(0.0, 1e6)
        self.tau_spin.setSingleStep(0.01)
        self.tau_spin.valueChanged.connect(self._on_next_tau)
        cont.addWidget(self.tau_spin, 1)
        self.continue_btn = QPushButton("Continue with higher τ")
        self.continue_btn.setToolTip("Resume from the last iteration with this τ; the history "
                                     "grows (paper §3)")
        self.continue_btn.clicked.connect(self.continue_higher_tau)
        cont.addWidget(self.continue_btn)
        rv.addLayout(cont)
        self.tau_default_label = QLabel()
        self.tau_default_label.setWordWrap(True)
        rv.addWidget(self.tau_default_label)

        source_row = QHBoxLayout()
        source_row.addWidget(QLabel("Lesions from"))
        self.source_combo = QComboBox()
        self.source_combo.addItems(["error map above the threshold", "mask of the iteration"])
        self.source_combo.setToolTip(
            "The chosen iteration's reconstruction error above the threshold (the paper's "
            "segmentation at the last iteration), or the mask still covering voxels after it")
        self.source_combo.currentIndexChanged.connect(self._on_result_source)
        source_row.addWidget(self.source_combo, 1)
        rv.addLayout(source_row)

        self.threshold_label = QLabel("Threshold: –")
        rv.addWidget(self.threshold_label)
        thr = QHBoxLayout()
        self.threshold_slider = MarkedSlider()
        self.threshold_slider.setRange(0, THRESHOLD_STEPS)
        self.threshold_slider.setToolTip("Segmentation threshold on the last error map; the "
                                         "yellow mark is the model's calibrated value")
        self.threshold_slider.valueChanged.connect(self._on_threshold_slider)
        thr.addWidget(self.threshold_slider, 1)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setDecimals(4)
        self.threshold_spin.setRange(0.0, 1e6)
        self.threshold_spin.setSingleStep(0.01)
        self.threshold_spin.valueChanged.connect(self._on_threshold_spin)
        thr.addWidget(self.threshold_spin)
        rv.addLayout(thr)
        self.threshold_default_label = QLabel()
        self.threshold_default_label.setWordWrap(True)
        rv.addWidget(self.threshold_default_label)

        size_row = QHBoxLayout()
        size_row.addWidget(QLabel("Minimum lesion size (voxels)"))
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 1_000_000)
        self.min_size_spin.valueChanged.connect(self._on_min_size)
        size_row.addWidget(self.min_size_spin)
        rv.addLayout(size_row)
        self.stats_label = QLabel("Lesions: –")
        self.stats_label.setStyleSheet("font-weight: bold;")
        rv.addWidget(self.stats_label)

        actions = QHBoxLayout()
        self.defaults_btn = QPushButton("Restore defaults")
        self.defaults_btn.setToolTip("Calibrated τ and threshold of the model; default options")
        self.defaults_btn.clicked.connect(self.restore_defaults)
        self.accept_btn = QPushButton("Accept")
        self.accept_btn.setToolTip("Copy the lesions into an editable Labels layer")
        self.accept_btn.clicked.connect(self.accept_result)
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("Save lesions as NIfTI (source affine) + JSON provenance")
        self.export_btn.clicked.connect(lambda: self.export_result())
        for b in (self.defaults_btn, self.accept_btn, self.export_btn):
            actions.addWidget(b)
        rv.addLayout(actions)
        root.addWidget(review)
        self.review_box = review
        root.addStretch(1)
        self._update_buttons()

    # ------------------------------------------------------------- settings --------------
    def _load_settings_into_ui(self) -> None:
        s = self._settings
        widgets = (self.device_combo, self.max_iter_spin, self.unmask_spin, self.seed_spin,
                   self.min_size_spin)
        for w in widgets:
            w.blockSignals(True)
        self.device_combo.setCurrentText(s["device"] if s["device"] in DEVICES else "auto")
        self.max_iter_spin.setValue(int(s["max_iter"] or 0))
        fu = s["first_unmask"]
        self.unmask_spin.setValue(float(fu) if isinstance(fu, (int, float)) else -0.05)
        self.seed_spin.setValue(int(s["seed"]))
        self.min_size_spin.setValue(int(s["min_size"]))
        for w in widgets:
            w.blockSignals(False)
        self._refresh_models(select=s["model"])
        self._on_device_changed()

    def _save_ui_settings(self, *_):
        values = {
            "device": self.device_combo.currentText(),
            "max_iter": self._max_iter(),
            "first_unmask": self._first_unmask(),
            "seed": int(self.seed_spin.value()),
            "min_size": int(self.min_size_spin.value()),
        }
        spec = self.model_combo.currentData()
        if spec:
            values["model"] = spec
        self._settings.update(values)
        save_settings(values)

    def _max_iter(self):
        v = int(self.max_iter_spin.value())
        return v if v > 0 else None

    def _first_unmask(self):
        v = float(self.unmask_spin.value())
        return v if v >= 0 else None

    # --------------------------------------------------------------- models --------------
    def _refresh_models(self, select: str | None = None) -> None:
        from .models import list_models

        select = select or self.model_combo.currentData()
        keep = [(self.model_combo.itemText(i), self.model_combo.itemData(i))
                for i in range(self.model_combo.count())
                if Path(str(self.model_combo.itemData(i))).is_absolute()]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for m in list_models():
            if "modality" not in m:  # an unreadable card (list_models gives name + error)
                continue
            state = "" if m.get("trained") else ", untrained"
            self.model_combo.addItem(f"{m['name']} ({m['source']}{state})", m["name"])
        for text, data in keep:
            self.model_combo.addItem(text, data)
        self.model_combo.blockSignals(False)
        if select and not self._select_model(select) and Path(str(select)).is_absolute():
            self._add_model_folder(str(select), quiet=True)
        self._on_model_changed()

    def _select_model(self, spec: str) -> bool:
        for i in range(self.model_combo.count()):
            if str(self.model_combo.itemData(i)) == str(spec):
                self.model_combo.setCurrentIndex(i)
                return True
        return False

    def _add_model_folder(self, folder: str, quiet: bool = False) -> bool:
        from .errors import ItermaskError
        from .models import read_card, resolve_model

        try:
            path = resolve_model(folder)
            card = read_card(path)
        except ItermaskError as exc:
            if not quiet:
                _notify("error", f"napari-itermask: {exc}")
            return False
        spec = str(Path(path).resolve())
        if not self._select_model(spec):
            state = "" if card.trained else ", untrained"
            self.model_combo.addItem(f"{card.name} (folder{state})", spec)
            self.model_combo.setItemData(self.model_combo.count() - 1, spec,
                                         Qt.ItemDataRole.ToolTipRole)
            self.model_combo.setCurrentIndex(self.model_combo.count() - 1)
        return True

    def set_model(self, name_or_path) -> bool:
        """Select a bundled/user model by name, or a model folder by path."""
        spec = str(name_or_path)
        if self._select_model(spec):
            return True
        self._refresh_models()
        if self._select_model(spec):
            return True
        return self._add_model_folder(spec)

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (card.json + weights)")
        if folder:
            self.set_model(folder)

    def _current_card(self):
        from .errors import ItermaskError
        from .models import read_card, resolve_model

        spec = self.model_combo.currentData()
        if not spec:
            return None
        try:
            return read_card(resolve_model(spec))
        except ItermaskError:
            return None

    def _on_model_changed(self, *_):
        card = self._current_card()
        if self.model_combo.count() == 0:
            self.model_info.setText("No model found: choose a model folder.")
            self.untrained_note.hide()
        elif card is None:
            self.model_info.setText("This model cannot be read.")
            self.untrained_note.hide()
        else:
            from .models import polarity_note

            sided = polarity_note(card.error_polarity)
            self.model_info.setText(
                f"{card.modality.upper()}, preset {card.preset}; calibrated τ {card.tau:.4g}, "
                f"threshold {card.threshold:.4g}" + (f"; {sided}" if sided else ""))
            self.untrained_note.setText(
                f"⚠ Model '{card.name}' is UNTRAINED (a placeholder): its segmentations mean "
                "nothing.")
            self.untrained_note.setVisible(not card.trained)
        self._save_ui_settings()

    # --------------------------------------------------------------- device ---------------
    def _on_device_changed(self, *_):
        from .errors import ItermaskError
        from .pipeline import pick_device

        choice = self.device_combo.currentText()
        try:
            dev = pick_device(choice)
        except ItermaskError as exc:
            self.device_note.setText(f"⚠ {exc}")
            self.device_note.show()
        else:
            cpu = dev.type == "cpu"
            self.device_note.setText("⚠ Running on CPU: expect minutes per scan; a GPU (cuda, "
                                     "mps) is much faster." if cpu else f"Running on {dev}.")
            self.device_note.setStyleSheet("color: #ffa040;" if cpu else "")
            self.device_note.show()
        self._save_ui_settings()

    def _load_bundle(self, model: str, device: str):
        """Runs in the worker thread; bundles are cached per (model, device)."""
        from .models import load_bundle
        from .pipeline import pick_device

        dev = pick_device(device)
        key = (str(model), str(dev))
        if key not in self._bundles:
            self._bundles[key] = load_bundle(model, device=dev)
        return self._bundles[key]

    # --------------------------------------------------------------- layers ---------------
    def _is_derived(self, layer) -> bool:
        md = getattr(layer, "metadata", None) or {}
        return "source_layer" in md

    def _on_layers_changed(self, *_):
        self._refresh_layer_combos()

    def _on_layer_removed(self, event):
        layer = _unwrap(event.value)
        sess = self._sessions.pop(id(layer), None)
        if sess is not None and sess.source is layer:
            sess.close()
            if self._busy is sess:
                self.status.setText(f"'{layer.name}' was removed: its run stops.")
        else:
            if sess is not None:  # id reused by another object: put it back
                self._sessions[id(sess.source)] = sess
            for s in self._sessions.values():
                for role, lyr in list(s.layers.items()):
                    if lyr is layer:
                        del s.layers[role]
        self._refresh_layer_combos()

    def _refresh_layer_combos(self) -> None:
        from napari.layers import Image, Labels

        current = self._current_source()
        current_brain = self._current_brain_layer()
        layers = [_unwrap(lyr) for lyr in self._viewer.layers]
        self._image_layers = [lyr for lyr in layers
                              if isinstance(lyr, Image) and not self._is_derived(lyr)
                              and lyr.ndim in (2, 3) and not lyr.rgb]
        for lyr in layers:  # keep the combos' names current (no-op if already connected)
            lyr.events.name.connect(self._on_layers_changed)
        self._label_layers = [lyr for lyr in layers if isinstance(lyr, Labels)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for lyr in self._image_layers:
            self.image_combo.addItem(lyr.name)
        if current is not None and current in self._image_layers:
            self.image_combo.setCurrentIndex(self._image_layers.index(current))
        self.image_combo.blockSignals(False)
        self.brain_combo.clear()
        self.brain_combo.addItem(AUTO_BRAIN)
        for lyr in self._label_layers:
            self.brain_combo.addItem(lyr.name)
        if current_brain is not None and current_brain in self._label_layers:
            self.brain_combo.setCurrentIndex(self._label_layers.index(current_brain) + 1)
        if self._current_source() is not current:
            self._on_source_changed()

    def _current_source(self):
        i = self.image_combo.currentIndex()
        if 0 <= i < len(self._image_layers):
            return self._image_layers[i]
        return None

    def _current_brain_layer(self):
        i = self.brain_combo.currentIndex() - 1
        if 0 <= i < len(self._label_layers):
            return self._label_layers[i]
        return None

    def _current_session(self) -> Session | None:
        src = self._current_source()
        if src is None:
            return None
        sess = self._sessions.get(id(src))
        return sess if sess is not None and sess.source is src else None

    def _on_source_changed(self, *_):
        src = self._current_source()
        overlay = _text_overlay(self._viewer)
        if src is not None and (src.metadata or {}).get("display"):
            overlay.text = RADIOLOGICAL_NOTE
            overlay.position = "top_center"
            overlay.font_size = 10
            overlay.visible = True
        self._refresh_review()
        self._update_buttons()

    # ------------------------------------------------------------ running -----------------
    def _request(self, src) -> RunRequest | None:
        spec = self.model_combo.currentData()
        if not spec:
            _notify("error", "napari-itermask: choose a model first (none found: use Folder…)")
            return None
        try:
            data = layer_scan_array(src)
            affine = layer_ras_affine(src)
        except ValueError as exc:
            _notify("error", f"napari-itermask: {exc}")
            return None
        brain = None
        blayer = self._current_brain_layer()
        if blayer is not None:
            try:  # a brain mask drawn on (or derived from) this image, arranged like it
                brain = from_layer_shape(blayer.data, src).reshape(data.shape) > 0
            except ValueError as exc:
                _notify("error", f"napari-itermask: brain mask '{blayer.name}': {exc}")
                return None
        from .errors import ItermaskError

        try:
            params = RunParams(max_iter=self._max_iter(), first_unmask=self._first_unmask(),
                               seed=int(self.seed_spin.value()),
                               min_size=int(self.min_size_spin.value()))
        except ItermaskError as exc:
            _notify("error", f"napari-itermask: {exc}")
            return None
        return RunRequest(
            model=str(spec), device=self.device_combo.currentText(), data=data,
            affine=affine, header=(src.metadata or {}).get("header"), name=src.name,
            brain_mask=brain,
            brain_mask_source=f"layer '{blayer.name}'" if blayer is not None else None,
            params=params)

    def _request_key(self, src) -> tuple:
        """What a run depends on: a Run with other inputs starts a new history."""
        brain = self._current_brain_layer()
        return (id(src), str(self.model_combo.currentData()), self.device_combo.currentText(),
                id(brain) if brain is not None else None, self._max_iter(),
                self._first_unmask(), int(self.seed_spin.value()))

    def _start(self, steps=None, tau=None) -> bool:
        from napari.qt.threading import create_worker

        from . import allocator

        allocator.tune()  # process-wide, once: the worker's activations stay on the heap

        if self._worker is not None:
            name = self._busy.source.name if self._busy is not None else "an image"
            _notify("warning", f"napari-itermask: already running on '{name}'; press Cancel "
                               "first")
            return False
        src = self._current_source()
        if src is None:
            _notify("warning", "napari-itermask: open or choose an image layer first")
            return False
        sess = self._current_session()
        if tau is None and (sess is None or sess.key != self._request_key(src)):
            req = self._request(src)
            if req is None:
                return False
            new = Session(src, req, key=self._request_key(src))
            if sess is not None:  # inputs changed: start over, reusing the preview layers
                sess.close()
                new.layers = {r: lyr for r, lyr in sess.layers.items()}
                new.preview_edited = sess.preview_edited
            sess = new
            self._sessions[id(src)] = sess
        if sess.card is not None and not sess.card.trained:
            _notify("warning", f"napari-itermask: model '{sess.card.name}' is UNTRAINED; "
                               "results are meaningless")
        elif sess.card is None:
            card = self._current_card()
            if card is not None and not card.trained:
                _notify("warning", f"napari-itermask: model '{card.name}' is UNTRAINED; "
                                   "results are meaningless")
        worker = create_worker(advance, sess, steps=steps, tau=tau, loader=self._load_bundle,
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(partial(self._on_yielded, sess))
        worker.errored.connect(partial(self._on_worker_error, sess))
        worker.finished.connect(partial(self._on_worker_finished, worker))
        self._worker, self._busy = worker, sess
        self.progress.setFormat("starting …")
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
            _notify("warning", "napari-itermask: run IterMask² on this image first")
            return False
        if tau is None:
            tau = sess.review.next_tau if sess.review is not None else None
        tau = float(self.tau_spin.value() if tau is None else tau)
        if sess.tau is not None and tau <= sess.tau:
            _notify("warning", f"napari-itermask: τ must be above the current {sess.tau:.4g}")
            return False
        return self._start(tau=tau)

    def cancel(self) -> None:
        """Stop after the iteration in progress; Run or Step continue from there."""
        if self._busy is not None:
            self._busy.stop.set()
            self.progress.setFormat("cancelling …")

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
        for role, layer in list(sess.layers.items()):
            if role != "accepted" and layer in self._viewer.layers:
                self._viewer.layers.remove(layer)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.status.setText("Reset.")
        self._refresh_review()
        self._update_buttons()

    def closeEvent(self, event):  # noqa: N802
        for sess in self._sessions.values():
            sess.close()
        super().closeEvent(event)

    # ----------------------------------------------------- results from the worker ---------
    def _alive(self, sess: Session) -> bool:
        return self._sessions.get(id(sess.source)) is sess and sess.source in self._viewer.layers

    def _on_yielded(self, sess: Session, item) -> None:
        if not isinstance(item, Frame) and not self._alive(sess):
            return  # reset, or its image was removed: nothing to report
        try:
            if isinstance(item, Frame):
                try:
                    if self._alive(sess):
                        self._apply_frame(sess, item)
                finally:
                    sess.consumed.set()
            elif isinstance(item, Note):
                self.status.setText(item.message)
                if item.warning:
                    _notify("warning", f"napari-itermask: {item.message}")
            elif isinstance(item, Failure):
                self.status.setText(f"Error: {item.message}")
                _notify("error", f"napari-itermask: {item.message}")
                if sess.job is None:  # nothing computed: forget the session
                    self._sessions.pop(id(sess.source), None)
            elif isinstance(item, Finished):
                self._on_run_finished(sess, item.reason)
        except Exception as exc:  # never let a display problem kill the run silently
            log.exception("showing a result failed")
            _notify("error", f"napari-itermask: could not show the result ({exc})")

    def _on_worker_error(self, sess: Session, exc) -> None:  # advance() catches; belt and braces
        _notify("error", f"napari-itermask: {exc}")

    def _on_worker_finished(self, worker) -> None:
        if self._worker is worker:
            self._worker, self._busy = None, None
        self._update_buttons()

    def _on_run_finished(self, sess: Session, reason: str) -> None:
        text = {
            "converged": "Converged: every slice's mask stopped shrinking.",
            "stopped": "Cancelled: Run or Step continue from here.",
            "step": "Stepped one iteration.",
            "nothing": "Already converged: raise τ and Continue to shrink further.",
        }[reason]
        if sess.job is not None and sess.job.history is not None and reason == "converged":
            last = sess.job.history.last
            if last is not None:
                from .core.engine import CAPPED

                capped = int((last.status == CAPPED).sum())
                if capped:
                    text += f" {capped} slice(s) hit the iteration cap."
        self.status.setText(text)
        if reason == "converged":
            self.progress.setValue(1000)
            self.progress.setFormat("converged")
        elif reason == "stopped":
            self.progress.setFormat("cancelled")

    def _layer(self, sess: Session, role: str):
        layer = sess.layers.get(role)
        if layer is not None and layer in self._viewer.layers:
            return layer
        return None

    def _show(self, sess: Session, role: str, data, kind: str, **kwargs):
        """Create or update one of the session's preview layers (bound to its source)."""
        layer = self._layer(sess, role)
        data = to_layer_shape(data, sess.source)
        if layer is None:
            kw = derived_kwargs(sess.source, role, **kwargs)
            layer = _unwrap(getattr(self._viewer, f"add_{kind}")(data, **kw))
            sess.layers[role] = layer
            if role == "lesions":
                layer.events.paint.connect(partial(self._on_preview_painted, sess))
            # keep the source selected: the preview layers are not what one edits
            self._viewer.layers.selection.active = sess.source
        else:
            layer.data = data
        return layer

    def _apply_frame(self, sess: Session, frame: Frame) -> None:
        sess.apply(frame)
        following = sess.review is None or sess.review.iteration is None
        if following:  # a chosen earlier iteration stays on screen while the history grows
            self._show_step(sess, frame.step, frame.mask, frame.error, frame.recon)
        if frame.total:
            done = frame.total - frame.active
            self.progress.setValue(int(1000 * done / frame.total))
            self.progress.setFormat(f"iteration {frame.info.iteration}: {frame.active} of "
                                    f"{frame.total} slices still shrinking")
        self.status.setText(f"'{sess.source.name}': iteration {frame.info.iteration}, "
                            f"masked {frame.info.volume_ml:.1f} mL")
        if self._current_session() is sess:
            self._refresh_review()
        if following and sess.error_scan is not None:
            self._update_lesions(sess)

    def _show_step(self, sess: Session, k: int, mask, error, recon) -> None:
        """Show history entry k's mask, error map and reconstruction (scan grid)."""
        sess.shown_step = k
        self._show(sess, "mask", mask.astype(np.uint8), "labels", opacity=0.35,
                   colormap=_labels_cmap(MASK_COLOR))
        if recon is not None:
            self._show(sess, "reconstruction", recon, "image", colormap="gray",
                       visible=False, contrast_limits=(-3.0, 3.5))
        if error is not None:
            thr = max(float(sess.card.threshold), 1e-6)
            self._show(sess, "error", error, "image", colormap="inferno",
                       blending="additive", opacity=0.7, contrast_limits=(0.0, 2.0 * thr))

    # ------------------------------------------------------------- review ------------------
    # The review's values live in the current image's ``Session.review`` (review.ReviewState);
    # the controls below only display and edit them, so switching images restores each one's.
    def _review_controls(self) -> tuple:
        return (self.iter_slider, self.tau_spin, self.threshold_slider, self.threshold_spin,
                self.min_size_spin, self.source_combo)

    def _refresh_review(self) -> None:
        """Bring the review panel in line with the current image's session (no recompute)."""
        sess = self._current_session()
        has = (sess is not None and sess.job is not None and bool(sess.steps)
               and sess.review is not None)
        self.review_box.setEnabled(has)
        if not has:
            with _signals_blocked(self.iter_slider):
                self.iter_slider.setRange(0, 0)
            self.iter_label.setText("Iteration: –")
            self.stats_label.setText("Lesions: –")
            self.threshold_slider.set_mark(None)
            return
        card, rv = sess.card, sess.review
        with _signals_blocked(*self._review_controls()):
            last = len(sess.steps) - 1
            self.iter_slider.setRange(0, last)
            self.iter_slider.setValue(last if rv.iteration is None else min(rv.iteration, last))
            self.tau_spin.setValue(float(rv.next_tau if rv.next_tau is not None else sess.tau))
            self._set_threshold_range(sess)
            self.threshold_spin.setValue(rv.threshold)
            self.threshold_slider.setValue(self._to_slider(rv.threshold))
            self.min_size_spin.setValue(rv.min_size)
            self.source_combo.setCurrentIndex(SOURCES.index(rv.source))
        self._update_iteration_label(sess, self.iter_slider.value())
        self.tau_default_label.setText(f"calibrated τ: {card.tau:.4g}; in force: {sess.tau:.4g}")
        self.tau_default_label.setToolTip(f"τ: {card.tau_derivation.get('method', '?')}")
        self._update_threshold_label(sess)
        self.threshold_slider.setEnabled(rv.source == "error")
        self.threshold_spin.setEnabled(rv.source == "error")
        self.stats_label.setText(sess.summary or "Lesions: –")

    def _set_threshold_range(self, sess: Session) -> None:
        card = sess.card
        top = 2.0 * float(card.threshold)
        if sess.error_scan is not None and sess.error_scan.size:
            top = max(top, float(sess.error_scan.max()))
        self._threshold_max = max(top, 1e-6)
        self.threshold_slider.set_mark(self._to_slider(float(card.threshold)))

    def _to_slider(self, value: float) -> int:
        return int(round(np.clip(value / self._threshold_max, 0.0, 1.0) * THRESHOLD_STEPS))

    def _update_threshold_label(self, sess: Session) -> None:
        card = sess.card
        value = float(sess.review.threshold)
        at_default = abs(value - card.threshold) <= 1e-9 * max(1.0, abs(card.threshold))
        mark = " ★ calibrated default" if at_default else ""
        self.threshold_label.setText(f"Threshold on the error map: {value:.4g}{mark}")
        self.threshold_default_label.setText(
            f"calibrated threshold: {card.threshold:.4g} — yellow mark")
        self.threshold_default_label.setToolTip(
            f"threshold: {card.threshold_derivation.get('method', '?')}")

    def _update_iteration_label(self, sess: Session, k: int) -> None:
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

    def _edit_review(self, **changes) -> Session | None:
        """Write the changed control values into the current image's review state."""
        from .errors import ItermaskError

        sess = self._current_session()
        if sess is None or sess.review is None:
            return None
        try:
            sess.review.update(**changes)
        except ItermaskError as exc:
            _notify("error", f"napari-itermask: {exc}")
            self._refresh_review()
            return None
        return sess

    def _on_iteration_slider(self, k: int) -> None:
        sess = self._current_session()
        if sess is None or sess.job is None or not (0 <= k < len(sess.steps)):
            return
        last = len(sess.steps) - 1
        if self._edit_review(iteration=None if k == last else int(k)) is None:
            return
        self._update_iteration_label(sess, k)
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
        worker.errored.connect(lambda exc: _notify("error", f"napari-itermask: {exc}"))
        worker.finished.connect(self._on_mask_worker_done)
        self._mask_worker = worker
        worker.start()

    def _on_step_ready(self, sess: Session, result) -> None:
        k, mask, error, recon = result
        if self._alive(sess) and self._mask_pending is None:
            self._show_step(sess, k, mask, error, recon)
            self._update_lesions(sess)

    def _on_mask_worker_done(self) -> None:
        self._mask_worker = None
        if self._mask_pending is not None:
            sess, k = self._mask_pending
            self._mask_pending = None
            if self._alive(sess):
                self._request_step(sess, k)

    def _on_threshold_slider(self, value: int) -> None:
        self.threshold_spin.setValue(value / THRESHOLD_STEPS * self._threshold_max)

    def _on_threshold_spin(self, value: float) -> None:
        with _signals_blocked(self.threshold_slider):
            self.threshold_slider.setValue(self._to_slider(float(value)))
        sess = self._edit_review(threshold=float(value))
        if sess is not None:
            self._update_threshold_label(sess)
            self._update_lesions(sess)

    def _on_min_size(self, value: int) -> None:
        self._save_ui_settings()
        sess = self._edit_review(min_size=int(value))
        if sess is not None:
            self._update_lesions(sess)

    def _on_result_source(self, index: int) -> None:
        sess = self._edit_review(source=SOURCES[index])
        if sess is not None:
            self._refresh_review()
            self._update_lesions(sess)

    def _on_next_tau(self, value: float) -> None:
        self._edit_review(next_tau=float(value))

    def _on_preview_painted(self, sess: Session, *_):
        sess.preview_edited = True

    def _update_lesions(self, sess: Session) -> None:
        """Show the session's current result (its own review state) with count and volume."""
        from .core.segmentation import lesion_stats
        from .errors import ItermaskError

        if sess.job is None or sess.review is None or not sess.steps:
            return
        try:
            labels, _ = review.lesions(sess)
        except ItermaskError as exc:  # e.g. the error map of iteration 0
            labels = np.zeros(sess.job.scan.data.shape, np.uint8)
            sess.summary = f"Lesions: – ({exc})"
        else:
            n, ml = lesion_stats(labels, sess.job.scan.voxel_volume_mm3)
            sess.summary = f"Lesions: {n} · {ml:.2f} mL"
        if sess.preview_edited and self._layer(sess, "lesions") is not None:
            if not self.confirm("Replace edited labels?",
                                f"You painted on '{sess.source.name} lesions'. Replace your "
                                "edits with the new result?"):
                # keep the user's edits as a layer of their own, then start a fresh preview
                old = sess.layers.pop("lesions")
                old.name = f"{old.name} (edited)"
                old.metadata = {k: v for k, v in old.metadata.items() if k != "source_layer"}
            sess.preview_edited = False
        self._show(sess, "lesions", labels, "labels", colormap=_labels_cmap(LESION_COLOR))
        if self._current_session() is sess:
            self.stats_label.setText(sess.summary)

    def restore_defaults(self) -> None:
        """Calibrated τ and threshold of the model, the last iteration's error map, default
        options (saved)."""
        d = DEFAULTS
        self.device_combo.setCurrentText(d["device"])
        self.max_iter_spin.setValue(0)
        self.unmask_spin.setValue(self.unmask_spin.minimum())
        self.seed_spin.setValue(d["seed"])
        with _signals_blocked(self.min_size_spin):
            self.min_size_spin.setValue(d["min_size"])
        self._save_ui_settings()
        sess = self._current_session()
        if sess is None or sess.review is None:
            return
        sess.review.restore_defaults(sess.card)
        self._refresh_review()
        if sess.steps:
            last = len(sess.steps) - 1
            self._update_iteration_label(sess, last)
            self._request_step(sess, last)
            self._update_lesions(sess)

    # ------------------------------------------------------- accept / export -------------
    def accept_result(self):
        """Copy the current result into an editable '<name> lesions (accepted)' layer."""
        from .errors import ItermaskError

        sess = self._current_session()
        if sess is None or sess.error_scan is None or sess.review is None:
            _notify("warning", "napari-itermask: nothing to accept yet: Run first")
            return None
        existing = self._layer(sess, "accepted")
        if existing is not None and not self.confirm(
                "Replace accepted labels?",
                f"'{existing.name}' may hold your edits. Replace it with the current result?"):
            return None
        try:
            acc = review.accept(sess)
        except ItermaskError as exc:
            _notify("error", f"napari-itermask: {exc}")
            return None
        prov = review.provenance(sess, acc.params, acc.labels)
        data = to_layer_shape(acc.labels, sess.source)
        if existing is not None:
            existing.data = data
            existing.metadata = {**existing.metadata, "provenance": prov}
            layer = existing
        else:
            kw = derived_kwargs(sess.source, "lesions (accepted)",
                                colormap=_labels_cmap(LESION_COLOR),
                                metadata={"provenance": prov})
            layer = _unwrap(self._viewer.add_labels(data.copy(), **kw))
            sess.layers["accepted"] = layer
        self._viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.status.setText(f"Accepted as '{layer.name}' ({prov['result']}): edit it with the "
                            "brush, then Export.")
        return layer

    def _ask_export_path(self, default: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export lesions", default, "NIfTI (*.nii.gz *.nii)",
            options=QFileDialog.Option.DontConfirmOverwrite)  # we ask (about the sidecar too)
        return path or None

    def export_result(self, path: str | None = None):
        """Write the accepted layer (else the current result) as NIfTI + a JSON sidecar that
        records what produced it (``itermask segment --params`` replays it)."""
        from .errors import ItermaskError
        from .export import sidecar_path

        sess = self._current_session()
        if sess is None or sess.error_scan is None or sess.review is None:
            _notify("warning", "napari-itermask: nothing to export yet: Run first")
            return None
        accepted = self._layer(sess, "accepted")
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
        existing = [p for p in (target, sidecar_path(target)) if p.exists()]
        if existing and not self.confirm(
                "Replace existing files?",
                "These exist and would be replaced:\n" + "\n".join(map(str, existing))):
            return None
        try:
            written = review.export(sess, target, labels, overwrite=bool(existing))
        except ItermaskError as exc:
            _notify("error", f"napari-itermask: {exc}")
            return None
        self._settings["export_dir"] = str(target.parent)
        save_settings({"export_dir": str(target.parent)})
        _notify("info", f"napari-itermask: saved {written[0]} and its JSON sidecar")
        self.status.setText(f"Exported {target.name}.")
        return written

    # --------------------------------------------------------------- misc -----------------
    def _update_buttons(self) -> None:
        busy = self._worker is not None
        self.run_btn.setEnabled(not busy)
        self.step_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        self.continue_btn.setEnabled(not busy)
        self.iter_slider.setEnabled(not busy)
        for w in (self.image_combo, self.model_combo, self.browse_btn, self.device_combo,
                  self.brain_combo, self.advanced):
            w.setEnabled(True)

    def _ask_user(self, title: str, text: str) -> bool:
        answer = QMessageBox.question(
            self, title, text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes


def _text_overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "text"):
        return overlays.text
    return viewer.text_overlay


def _labels_cmap(colors: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=colors)

"""The inputs panel: image, model, device, brain mask, ground truth and the run's advanced options.

The layer choices are magicgui ``ComboBox`` widgets whose choices are read from the viewer's
layers each time ``reset_choices`` runs (napari calls it on a docked widget when layers change;
the controller also calls it, for a widget that is not docked), so they follow the viewer and
keep their value while it exists. Values persist between sessions in the plugin's settings file
(``_settings``), not magicgui's own store, so tests and users have one place to look.

What this panel says about the choice, beside it: the model's contrast and calibrated values,
the one untrained-model warning (``models.untrained_warning``), a warning when the image's
contrast (its layer metadata ``modality``, else its file name, as ``itermask segment`` reads
it) differs from the model's, and whether the run is on the CPU.

**Open DICOM…** beside the image: a series folder or a ``.zip`` of one, read by the plugin's
own DICOM reader (``_reader.read_dicom``: the same checks and placement as File ▸ Open, and the
series dialog when the folder holds several); the new Image layer(s) join the viewer and the
first becomes the image. What cannot be read gives one error notification, no layer.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, FloatSpinBox, SpinBox
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QFormLayout, QHBoxLayout, QMenu, QPushButton, QWidget

from .common import hint, notify, signals_blocked, unwrap

__all__ = ["InputsPanel", "DEVICES", "AUTO_BRAIN", "SKULL_STRIP", "image_contrast",
           "contrast_warning"]

DEVICES = ("auto", "cpu", "cuda", "mps")
AUTO_BRAIN = "automatic (voxels > 0)"
SKULL_STRIP = "automatic skull strip"  # the choice's text and its value (skullstrip.py)
NO_TRUTH = "none"
WARN = "color: #ff6060; font-weight: bold;"
CAUTION = "color: #ffa040;"


def _is_derived(layer) -> bool:
    md = getattr(layer, "metadata", None) or {}
    return "source_layer" in md


def image_contrast(layer) -> tuple[str | None, str]:
    """(the image's contrast or None, where that came from): the layer's ``modality``
    metadata (sample data, our reader's sidecars), else its file name's contrast word."""
    from ..cli import contrast_hints

    md = getattr(layer, "metadata", None) or {}
    modality = md.get("modality")
    if isinstance(modality, str) and modality:
        return modality.lower(), "layer metadata"
    name = md.get("path") or getattr(layer, "name", "") or ""
    hints = contrast_hints(name)
    if len(hints) == 1:
        return next(iter(hints)), "file name"
    return None, ""


def contrast_warning(layer, card) -> str | None:
    """One line when the image looks like another contrast than the model is for."""
    if layer is None or card is None:
        return None
    contrast, why = image_contrast(layer)
    if contrast is None or contrast == card.modality.lower():
        return None
    return (f"⚠ '{layer.name}' looks like {contrast.upper()} ({why}) but model '{card.name}' "
            f"is for {card.modality.upper()}: choose a {contrast.upper()} model if there is one.")


class InputsPanel(QWidget):
    """What a run starts from; ``changed`` fires when any of it changes."""

    image_changed = Signal()
    model_changed = Signal()
    truth_changed = Signal()
    options_changed = Signal()

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self._viewer = unwrap(viewer)
        self._models: list[tuple[str, str]] = []  # (text, spec) of bundled/user models
        self._folders: list[tuple[str, str]] = []  # model folders added by the user

        self.image = ComboBox(choices=self._image_choices,
                              tooltip="The scan to segment (an Image layer)")
        self.model = ComboBox(choices=self._model_choices,
                              tooltip="Bundled or user model; Folder… for a model folder")
        self.device = ComboBox(choices=DEVICES, value="auto",
                               tooltip="Where the networks run; auto: a GPU if there is one")
        self.brain = ComboBox(choices=self._brain_choices,
                              tooltip="Brain mask: automatic (a skull-stripped scan's voxels > 0),"
                                      " automatic skull strip (a head with skull: the bundled "
                                      "template registered to it, offline) or a Labels layer "
                                      "on this image")
        self.truth = ComboBox(choices=self._truth_choices,
                              tooltip="A ground-truth Labels layer: the review shows Dice "
                                      "against it (none: no Dice)")
        self.browse_btn = QPushButton("Folder…")
        self.browse_btn.setToolTip("Use a model folder (card.json + weights.safetensors)")
        self.browse_btn.clicked.connect(self._browse_model)
        self.dicom_btn = QPushButton("Open DICOM…")
        self.dicom_btn.setToolTip("Open a DICOM series (a folder, or a .zip of one) as the image")
        dicom_menu = QMenu(self.dicom_btn)
        self.dicom_folder_action = dicom_menu.addAction("Series folder…")
        self.dicom_folder_action.triggered.connect(lambda *_: self._browse_dicom(archive=False))
        self.dicom_zip_action = dicom_menu.addAction("Zip archive…")
        self.dicom_zip_action.triggered.connect(lambda *_: self._browse_dicom(archive=True))
        self.dicom_btn.setMenu(dicom_menu)

        self.max_iter = SpinBox(min=0, max=500, tooltip="Iteration cap per slice (0 = the "
                                                        "model card's)")
        self.first_unmask = FloatSpinBox(min=-0.05, max=0.95, step=0.05, value=-0.05,
                                         tooltip="Share of the brain the first step declares "
                                                 "normal (the lowest value = the card's)")
        self.first_unmask.native.setDecimals(2)
        self.first_unmask.native.setSpecialValueText("model card")
        self.seed = SpinBox(min=0, max=2**31 - 1, tooltip="Noise seed: the same seed gives the "
                                                          "same result")

        self.model_info = hint()
        self.untrained_note = hint(style=WARN)
        self.untrained_note.hide()
        self.contrast_note = hint(style=WARN)
        self.contrast_note.hide()
        self.device_note = hint(style=CAUTION)

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        image_row = QHBoxLayout()
        image_row.addWidget(self.image.native, 1)
        image_row.addWidget(self.dicom_btn)
        form.addRow("Image", image_row)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model.native, 1)
        model_row.addWidget(self.browse_btn)
        form.addRow("Model", model_row)
        form.addRow(self.model_info)
        form.addRow(self.untrained_note)
        form.addRow(self.contrast_note)
        form.addRow("Device", self.device.native)
        form.addRow(self.device_note)
        form.addRow("Brain mask", self.brain.native)
        form.addRow("Ground truth", self.truth.native)

        from superqt import QCollapsible

        self.advanced = QCollapsible("Advanced options")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.addRow("Iteration cap (0: card)", self.max_iter.native)
        adv_form.addRow("First-step unmask", self.first_unmask.native)
        adv_form.addRow("Seed", self.seed.native)
        self.advanced.addWidget(adv)
        form.addRow(self.advanced)

        self.image.changed.connect(self._on_image)
        self.model.changed.connect(self._on_model)
        self.device.changed.connect(self._on_device)
        self.truth.changed.connect(lambda *_: self.truth_changed.emit())
        for w in (self.max_iter, self.first_unmask, self.seed):
            w.changed.connect(lambda *_: self.options_changed.emit())

    # -- layer choices ------------------------------------------------------------------------
    def _layers(self):
        return [unwrap(lyr) for lyr in self._viewer.layers]

    def _image_choices(self, _widget=None):
        from napari.layers import Image

        return [(lyr.name, lyr) for lyr in self._layers()
                if isinstance(lyr, Image) and not _is_derived(lyr) and lyr.ndim in (2, 3)
                and not lyr.rgb]

    def _labels(self):
        from napari.layers import Labels

        return [(lyr.name, lyr) for lyr in self._layers() if isinstance(lyr, Labels)]

    def _brain_choices(self, _widget=None):
        return [(AUTO_BRAIN, None), (SKULL_STRIP, SKULL_STRIP), *self._labels()]

    def _truth_choices(self, _widget=None):
        return [(NO_TRUTH, None), *self._labels()]

    def reset_choices(self, *_):
        """Read the layer lists again (keeps each current value while its layer exists)."""
        for lyr in self._layers():  # renames change the texts (no-op if already connected)
            lyr.events.name.connect(self.reset_choices)
        for combo in (self.image, self.brain, self.truth):
            combo.reset_choices()
        self._pick_truth()

    @property
    def source(self):
        """The image layer chosen (unwrapped), or None."""
        return self.image.value

    @property
    def brain_layer(self):
        """The Labels layer chosen as brain mask, or None (automatic or skull strip)."""
        value = self.brain.value
        return None if value is None or value == SKULL_STRIP else value

    @property
    def skull_strip(self) -> bool:
        """Whether the brain mask is to come from the automatic skull strip."""
        return self.brain.value == SKULL_STRIP

    @property
    def truth_layer(self):
        return self.truth.value

    def select_image(self, name: str) -> None:
        self.image.value = next(lyr for text, lyr in self._image_choices() if text == name)

    # -- DICOM in -----------------------------------------------------------------------------
    def _browse_dicom(self, archive: bool) -> None:
        if archive:
            path, _ = QFileDialog.getOpenFileName(self, "DICOM series as a zip", "",
                                                  "Zip archives (*.zip *.ZIP);;All files (*)")
        else:
            path = QFileDialog.getExistingDirectory(self, "DICOM series folder")
        if path:
            self.open_dicom(path)

    def open_dicom(self, path) -> list:
        """Open a DICOM folder or zip with the plugin's reader, add its Image layer(s) to the
        viewer and choose the first as the image. Returns the new layers (empty when nothing
        was opened: the reader or this method has said why, in one notification)."""
        from .._reader import read_dicom

        path = Path(path)
        try:
            found = read_dicom(str(path))  # notifies itself about what it cannot read
        except Exception as exc:  # noqa: BLE001 - a button must not crash the widget
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            notify("error", f"cannot open {path.name} as DICOM: {first}")
            return []
        added = []
        for item in found:
            if len(item) != 3:  # the reader's "nothing to show" (an error it reported, or a
                continue        # cancelled series choice)
            data, kwargs, kind = item
            added.append(unwrap(getattr(self._viewer, f"add_{kind}")(data, **kwargs)))
        if added:
            self.reset_choices()
            images = [lyr for _, lyr in self._image_choices()]
            first = next((lyr for lyr in added if any(lyr is i for i in images)), None)
            if first is not None:
                self.image.value = first
        return added

    def _pick_truth(self) -> None:
        """With none chosen, take the image's own ground truth (a sample's) if there is one."""
        src = self.source
        if src is None or self.truth.value is not None:
            return
        for name, lyr in self._labels():
            md = lyr.metadata or {}
            if md.get("ground_truth") and (md.get("source_layer") == src.name
                                           or name == f"{src.name} ground truth"):
                self.truth.value = lyr
                return

    def _on_image(self, *_):
        self._pick_truth()
        self.update_contrast_note()
        self.image_changed.emit()

    # -- models -------------------------------------------------------------------------------
    def _model_choices(self, _widget=None):
        return [*self._models, *self._folders]

    @property
    def model_spec(self) -> str | None:
        return self.model.value

    def refresh_models(self, select: str | None = None) -> None:
        from ..models import list_models

        select = select or self.model.value
        self._models = [
            (f"{m['name']} ({m['source']}{'' if m.get('trained') else ', untrained'})",
             m["name"])
            for m in list_models() if "modality" in m]  # no modality: an unreadable card
        with signals_blocked(self.model.native):
            self.model.reset_choices()
        if select and not self._select_model(select) and Path(str(select)).is_absolute():
            self._add_model_folder(str(select), quiet=True)
        self._on_model()

    def _select_model(self, spec: str) -> bool:
        for _, data in self._model_choices():
            if str(data) == str(spec):
                self.model.value = data
                return True
        return False

    def _add_model_folder(self, folder: str, quiet: bool = False) -> bool:
        from ..errors import ItermaskError
        from ..models import read_card, resolve_model

        try:
            path = resolve_model(folder)
            card = read_card(path)
        except ItermaskError as exc:
            if not quiet:
                notify("error", str(exc))
            return False
        spec = str(Path(path).resolve())
        if not self._select_model(spec):
            state = "" if card.trained else ", untrained"
            self._folders.append((f"{card.name} (folder{state})", spec))
            self.model.reset_choices()
            self.model.value = spec
        return True

    def set_model(self, name_or_path) -> bool:
        """Select a bundled/user model by name, or a model folder by path."""
        spec = str(name_or_path)
        if self._select_model(spec):
            return True
        self.refresh_models()
        if self._select_model(spec):
            return True
        return self._add_model_folder(spec)

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (card.json + weights)")
        if folder:
            self.set_model(folder)

    def card(self):
        """The chosen model's card (None if none or unreadable)."""
        from ..errors import ItermaskError
        from ..models import read_card, resolve_model

        spec = self.model.value
        if not spec:
            return None
        try:
            return read_card(resolve_model(spec))
        except ItermaskError:
            return None

    def _on_model(self, *_):
        from ..models import options_note, untrained_warning

        card = self.card()
        self.untrained_note.hide()
        if not self._model_choices():
            self.model_info.setText("No model found: choose a model folder.")
        elif card is None:
            self.model_info.setText("This model cannot be read.")
        else:
            sided = options_note(card)
            self.model_info.setText(
                f"{card.modality.upper()}, preset {card.preset}; calibrated τ {card.tau:.4g}, "
                f"threshold {card.threshold:.4g}" + (f"; {sided}" if sided else ""))
            warning = untrained_warning(card)
            if warning:
                self.untrained_note.setText(f"⚠ {warning[0].upper()}{warning[1:]}.")
                self.untrained_note.show()
        self.update_contrast_note(card)
        self.model_changed.emit()

    def update_contrast_note(self, card=None) -> None:
        text = contrast_warning(self.source, card if card is not None else self.card())
        self.contrast_note.setText(text or "")
        self.contrast_note.setVisible(bool(text))

    # -- device -------------------------------------------------------------------------------
    def _on_device(self, *_):
        from ..errors import ItermaskError
        from ..pipeline import pick_device

        try:
            dev = pick_device(self.device.value)
        except ItermaskError as exc:
            self.device_note.setText(f"⚠ {exc}")
            self.device_note.setStyleSheet(CAUTION)
        else:
            cpu = dev.type == "cpu"
            self.device_note.setText("⚠ Running on CPU: expect minutes per scan; a GPU (cuda, "
                                     "mps) is much faster." if cpu else f"Running on {dev}.")
            self.device_note.setStyleSheet(CAUTION if cpu else "")
        self.device_note.show()
        self.options_changed.emit()

    # -- options and settings -----------------------------------------------------------------
    def max_iter_value(self) -> int | None:
        v = int(self.max_iter.value)
        return v if v > 0 else None

    def first_unmask_value(self) -> float | None:
        v = float(self.first_unmask.value)
        return v if v >= 0 else None

    def load(self, settings: dict) -> None:
        """Show stored settings (without announcing each one as a change)."""
        natives = [w.native for w in (self.device, self.max_iter, self.first_unmask, self.seed)]
        with signals_blocked(*natives):
            self.device.value = settings["device"] if settings["device"] in DEVICES else "auto"
            self.max_iter.value = int(settings["max_iter"] or 0)
            fu = settings["first_unmask"]
            self.first_unmask.value = float(fu) if isinstance(fu, (int, float)) else -0.05
            self.seed.value = int(settings["seed"])
        self.refresh_models(select=settings["model"])
        self._on_device()

    def values(self) -> dict:
        """What persists: device, options and the model (if one is chosen)."""
        out = {"device": self.device.value, "max_iter": self.max_iter_value(),
               "first_unmask": self.first_unmask_value(), "seed": int(self.seed.value)}
        if self.model.value:
            out["model"] = self.model.value
        return out

    def restore_defaults(self, defaults: dict) -> None:
        self.device.value = defaults["device"]
        self.max_iter.value = 0
        self.first_unmask.value = -0.05
        self.seed.value = defaults["seed"]

    def set_enabled(self, enabled: bool) -> None:
        for w in (self.image.native, self.dicom_btn, self.model.native, self.browse_btn,
                  self.device.native,
                  self.brain.native, self.truth.native, self.advanced):
            w.setEnabled(enabled)

"""The layer presenter: each session's mask, error map, reconstruction and lesion layers.

Every layer it makes is derived from the session's own source layer (``_layers.derived_kwargs``:
same placement and scan metadata), so results land on the image they came from whatever the
inputs panel shows later. It draws; it computes nothing beyond reshaping arrays to the layer.

How things look. The error map is drawn *translucent* with its own colour map: transparent
where the error is low, purple → orange at the model's threshold → yellow at twice it, over the
grey scan, with napari's colour bar on the canvas (the review panel's legend shows the same
colours). The mask is a light cyan wash, the lesions red, a ground truth a green outline that
is never left selected (so one does not paint on it by accident).
"""

from __future__ import annotations

import weakref
from functools import partial

import numpy as np

from .._layers import RADIOLOGICAL_NOTE, derived_kwargs, to_layer_shape
from .common import unwrap

__all__ = ["LayerPresenter", "ERROR_CONTROLS", "ERROR_COLORS", "error_limits",
           "error_colormap", "style_ground_truth", "MASK_COLOR", "LESION_COLOR"]

MASK_COLOR = {None: "transparent", 0: "transparent", 1: (0.0, 0.85, 1.0, 1.0)}
LESION_COLOR = {None: "transparent", 0: "transparent", 1: (1.0, 0.2, 0.1, 1.0)}
#: Error colour map stops over the layer's contrast limits (0, 2 × threshold): the threshold
#: sits at the middle, orange; below a quarter of it nothing is drawn.
ERROR_CONTROLS = (0.0, 0.125, 0.5, 0.75, 1.0)
ERROR_COLORS = ((0.0, 0.0, 0.0, 0.0), (0.35, 0.0, 0.6, 0.0), (1.0, 0.45, 0.0, 0.85),
                (1.0, 0.75, 0.0, 0.95), (1.0, 1.0, 0.45, 1.0))
GT_CONTOUR = 2


def error_limits(threshold: float) -> tuple[float, float]:
    """Contrast limits of the error layer: 0 to twice the calibrated threshold."""
    return 0.0, 2.0 * max(float(threshold), 1e-6)


def error_colormap():
    from napari.utils.colormaps import Colormap

    return Colormap(colors=np.array(ERROR_COLORS), controls=np.array(ERROR_CONTROLS),
                    name="itermask error", interpolation="linear")


def labels_cmap(colors: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=colors)


def is_ground_truth(layer) -> bool:
    md = getattr(layer, "metadata", None) or {}
    return bool(md.get("ground_truth"))


def style_ground_truth(viewer, layer) -> None:
    """A ground truth opens as an outline and hands the selection back to its image."""
    from qtpy.QtCore import QTimer

    layer.contour = int((layer.metadata or {}).get("contour", GT_CONTOUR))
    name = (layer.metadata or {}).get("source_layer")

    def reselect():  # napari selects a layer right after inserting it: wait for that
        if name in viewer.layers and viewer.layers.selection.active is layer:
            viewer.layers.selection.active = viewer.layers[name]

    QTimer.singleShot(0, reselect)


def _text_overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "text"):
        return overlays.text
    return viewer.text_overlay


class LayerPresenter:
    """Creates and updates the preview layers of sessions (``session.layers``: role → layer)."""

    def __init__(self, viewer):
        self._viewer = unwrap(viewer)
        # id(layer) → the array this presenter gave that layer as its own (weakly held)
        self._buffers: dict[int, weakref.ref] = {}

    def layer(self, sess, role: str):
        layer = sess.layers.get(role)
        if layer is not None and layer in self._viewer.layers:
            return layer
        return None

    def show(self, sess, role: str, data, kind: str, **kwargs):
        """Create or update one of the session's preview layers (bound to its source)."""
        layer = self.layer(sess, role)
        data = to_layer_shape(data, sess.source)
        if layer is None:
            kw = derived_kwargs(sess.source, role, **kwargs)
            layer = unwrap(getattr(self._viewer, f"add_{kind}")(data, **kw))
            sess.layers[role] = layer
            if role == "lesions":
                layer.events.paint.connect(partial(self._on_painted, sess))
            # keep the source selected: the preview layers are not what one edits
            self._viewer.layers.selection.active = sess.source
        else:
            self._update(layer, data)
        return layer

    def _update(self, layer, data) -> None:
        """New data for an existing preview layer, shown as fast as napari allows.

        napari's data setter also recomputes every layer's extent and the viewer's dims (tens
        of milliseconds per slider move on a clinical volume, for a shape that did not change).
        So the first update gives the layer an array of its own, and later updates of the same
        shape and dtype are copied into it and the view re-sliced; anything else (another
        shape, a layer whose data someone else replaced) goes through the setter. The layer
        never shares memory with the caller's array: results and cached error maps stay
        untouched by what is shown or painted."""
        ref = self._buffers.get(id(layer))
        own = ref() if ref is not None else None
        data = np.asarray(data)
        if (own is not None and layer.data is own and own.shape == data.shape
                and np.can_cast(data.dtype, own.dtype, "safe")):
            np.copyto(own, data)
            layer.refresh(extent=False)
            return
        layer.data = np.array(data, copy=True)
        own = layer.data  # napari may have converted it (e.g. bool labels to integers)
        if isinstance(own, np.ndarray) and not np.may_share_memory(own, data):
            self._buffers[id(layer)] = weakref.ref(own)

    @staticmethod
    def _on_painted(sess, *_):
        sess.preview_edited = True

    def show_mask(self, sess, mask):
        """Show a mask (scan grid) in the session's mask layer. A boolean mask is read as its
        own bytes (0/1), so the GUI thread converts nothing: it copies them into the layer's
        array (``_update``)."""
        mask = np.asarray(mask)
        mask = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8, copy=False)
        return self.show(sess, "mask", mask, "labels", opacity=0.3,
                         colormap=labels_cmap(MASK_COLOR))

    def show_step(self, sess, k: int, mask, error, recon) -> None:
        """Show history entry k's mask, error map and reconstruction (scan grid)."""
        self.show_mask(sess, mask)
        self.show_maps(sess, k, error, recon)

    def show_maps(self, sess, k: int, error, recon) -> None:
        """Show history entry k's error map and reconstruction (scan grid; None: leave that
        layer as it is); ``sess.shown_step`` says whose maps are on screen."""
        sess.shown_step = k
        if recon is not None:
            self.show(sess, "reconstruction", recon, "image", colormap="gray",
                      visible=False, contrast_limits=(-3.0, 3.5))
        if error is not None:
            fresh = self.layer(sess, "error") is None
            layer = self.show(sess, "error", error, "image", colormap=error_colormap(),
                              blending="translucent", opacity=0.9,
                              contrast_limits=error_limits(sess.card.threshold))
            if fresh:
                layer.colorbar.visible = True

    def show_lesions(self, sess, labels, confirm) -> None:
        """Show a result as the live lesion preview; a preview the user painted on is replaced
        only if ``confirm`` says so (else it is kept as a layer of its own)."""
        if sess.preview_edited and self.layer(sess, "lesions") is not None:
            if not confirm("Replace edited labels?",
                           f"You painted on '{sess.source.name} lesions'. Replace your edits "
                           "with the new result?"):
                old = sess.layers.pop("lesions")
                old.name = f"{old.name} (edited)"
                old.metadata = {k: v for k, v in old.metadata.items() if k != "source_layer"}
            sess.preview_edited = False
        self.show(sess, "lesions", labels, "labels", opacity=0.6,
                  colormap=labels_cmap(LESION_COLOR))

    def show_accepted(self, sess, labels, prov: dict):
        """The accepted result as an editable '<name> lesions (accepted)' layer, selected in
        paint mode."""
        data = to_layer_shape(labels, sess.source)
        existing = self.layer(sess, "accepted")
        if existing is not None:
            existing.data = data
            existing.metadata = {**existing.metadata, "provenance": prov}
            layer = existing
        else:
            kw = derived_kwargs(sess.source, "lesions (accepted)",
                                colormap=labels_cmap(LESION_COLOR),
                                metadata={"provenance": prov})
            layer = unwrap(self._viewer.add_labels(data.copy(), **kw))
            sess.layers["accepted"] = layer
        self._viewer.layers.selection.active = layer
        layer.mode = "paint"
        return layer

    def remove_previews(self, sess) -> None:
        """Remove a session's preview layers (never its accepted one)."""
        for role, layer in list(sess.layers.items()):
            if role != "accepted" and layer in self._viewer.layers:
                self._viewer.layers.remove(layer)

    def forget(self, layer, sessions) -> None:
        """A removed layer is no longer any session's."""
        for s in sessions:
            for role, lyr in list(s.layers.items()):
                if lyr is layer:
                    del s.layers[role]

    def style_new(self, layers) -> None:
        """Outline ground truths (sample data) as they arrive."""
        for lyr in layers:
            lyr = unwrap(lyr)
            if is_ground_truth(lyr) and not getattr(lyr, "_itermask_styled", False):
                lyr._itermask_styled = True
                style_ground_truth(self._viewer, lyr)

    def radiological_note(self, src) -> None:
        if src is not None and (src.metadata or {}).get("display"):
            overlay = _text_overlay(self._viewer)
            overlay.text = RADIOLOGICAL_NOTE
            overlay.position = "top_center"
            overlay.font_size = 10
            overlay.visible = True

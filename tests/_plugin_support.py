"""Fixtures shared by the napari plugin tests (imported by tests/test_plugin_*.py).

Isolation: every test gets its own napari settings object that is never written to disk, and
its own napari-itermask settings folder (ITERMASK_CONFIG_DIR), so tests neither read nor change
a developer's preferences.

Speed: a tiny random model on a 64 × 64 model grid and a synthetic brain at 3 mm voxels keep a
full run to a few seconds on two CPU cores.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

TAU = 4.0  # about the median error of the random model below: masks shrink visibly
THRESHOLD = 9.0  # about the 90th percentile: a few "lesions"
VOXEL_MM = 3.0


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch, tmp_path):
    import napari.settings as napari_settings
    from napari.settings import NapariSettings

    fresh = NapariSettings(config_path=None)
    monkeypatch.setattr(napari_settings, "_SETTINGS", fresh)
    monkeypatch.setenv("ITERMASK_CONFIG_DIR", str(tmp_path / "itermask-config"))
    monkeypatch.setenv("ITERMASK_MODEL_DIR", str(tmp_path / "no-user-models"))
    return fresh


def make_tiny_model(folder, *, trained=False, seed=0):
    """A random (non-zero output) tiny model saved as a bundle folder."""
    from napari_itermask.models import ModelBundle, new_card, save_bundle

    torch.manual_seed(seed)
    card = new_card("tiny", "flair", "tiny", grid_size=64, pixel_size_mm=3.75,
                    min_brain_pixels=20, max_iter=6, tau=TAU, threshold=THRESHOLD,
                    trained=trained)
    bundle = ModelBundle.fresh(card)
    for net in (bundle.first, bundle.masked):
        torch.nn.init.normal_(net.out.weight, std=0.05)
    return save_bundle(bundle, folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def small_case():
    from napari_itermask import synth

    return synth.make_case("flair", 12345, voxel_size=VOXEL_MM)


def add_case(viewer, case, name=None):
    """Add a synthetic case like File ▸ Open Sample does; returns (image, labels) layers."""
    from napari_itermask._sample_data import case_layers

    out = []
    for data, kwargs, kind in case_layers(case):
        if name is not None:
            kwargs = {**kwargs, "name": name if kind == "image" else f"{name} ground truth"}
        out.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return out


def nifti(path, data, affine, qcode=1, scode=2):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return path


RUN_TIMEOUT_MS = 60_000


def make_widget(viewer, model, qtbot=None):
    """The IterMask² widget on ``viewer`` with ``model`` on the CPU; any question fails."""
    from napari_itermask._plugin import IterMaskWidget

    w = IterMaskWidget(viewer)
    assert w.set_model(str(model))
    w.inputs.device.value = "cpu"
    w.confirm = lambda title, text: pytest.fail(f"unexpected question: {title}")
    if qtbot is not None:
        qtbot.addWidget(w)
    return w


def wait_idle(qtbot, w, timeout=RUN_TIMEOUT_MS):
    """Until the widget's run (and its iteration-maps worker) has ended."""
    qtbot.waitUntil(lambda: w._worker is None and w._mask_worker is None, timeout=timeout)


HOLD_S = 30  # a held worker gives up after this long (a failed test never hangs)


def on_gui_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Gate:
    """Wraps a function: records each call (its arguments and whether it ran on the GUI
    thread) and, while armed, holds calls from worker threads until opened."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list = []
        self.armed = False
        self.held = threading.Event()  # a worker is waiting at the gate
        self.opened = threading.Event()

    def __call__(self, *args, **kwargs):
        self.calls.append((args, on_gui_thread()))
        if self.armed and not on_gui_thread():
            self.held.set()
            self.opened.wait(HOLD_S)
        return self.fn(*args, **kwargs)

    def arm(self):
        self.armed, self.calls = True, []
        self.held.clear()
        self.opened.clear()

    def open(self):
        self.armed = False
        self.opened.set()

    def method(self):
        """The gate as a method to patch into a class (a plain function binds ``self``)."""
        def gated(*args, **kwargs):
            return self(*args, **kwargs)

        return gated

"""The inputs panel's "Open DICOM…" button: a series folder or zip goes through the plugin's
DICOM reader (the same geometry and checks as File ▸ Open, the series dialog for several) and
the new layer becomes the widget's image; bad input is one error notification and no layer.

File dialogs are patched (no real dialog opens); series are written with pydicom from synthetic
volumes (``test_dicom.write_series``). Under Xvfb (QT_QPA_PLATFORM=xcb QT_API=pyqt6).
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("pydicom")

from _plugin_support import isolated_settings, make_widget, tiny_model  # noqa: E402,F401
from test_dicom import ORIENTATIONS, _bad, _two_series, volume, write_series  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_model):  # noqa: F811
    viewer = make_napari_viewer()
    return viewer, make_widget(viewer, tiny_model, qtbot)


def _answer_folder(monkeypatch, path):
    from qtpy.QtWidgets import QFileDialog

    asked = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        lambda *a, **k: asked.append("folder") or str(path))
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *a, **k: pytest.fail("the zip dialog was not asked for"))
    return asked


def _answer_zip(monkeypatch, path):
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *a, **k: (str(path), "Zip archives (*.zip *.ZIP)"))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        lambda *a, **k: pytest.fail("the folder dialog was not asked for"))


def test_a_series_folder_becomes_the_image_placed_by_its_affine(widget, tmp_path, notes,
                                                                 monkeypatch):
    viewer, w = widget
    data, aff = volume(), ORIENTATIONS["oblique"]
    write_series(tmp_path / "flair", data, aff)
    asked = _answer_folder(monkeypatch, tmp_path / "flair")
    changed = []
    w.inputs.image_changed.connect(lambda: changed.append(True))

    w.inputs.dicom_folder_action.trigger()

    assert asked == ["folder"] and not notes["error"]
    (layer,) = viewer.layers
    assert layer.name == "flair" and w.inputs.source is layer and changed
    md = layer.metadata
    np.testing.assert_allclose(md["affine"], aff, atol=1e-5, rtol=0)
    assert md["dicom"]["n_images"] == 9
    # the layer's array is the series' voxels, in the reader's axis order
    np.testing.assert_array_equal(np.asarray(layer.data), data.transpose(md["scan_axes"]))
    assert w.inputs.dicom_btn.isEnabled()


def test_a_zip_of_a_series_opens_the_same_way_and_keeps_earlier_layers(widget, tmp_path,
                                                                        notes, monkeypatch):
    viewer, w = widget
    data, aff = volume(seed=3), ORIENTATIONS["sagittal"]
    write_series(tmp_path / "s", data, aff)
    archive = tmp_path / "sag_t2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "s").iterdir()):
            zf.write(f, f"exam/{f.name}")
    earlier = viewer.add_image(np.ones((8, 8, 8), np.float32), name="earlier")
    w.reset_choices()
    assert w.inputs.source is earlier
    _answer_zip(monkeypatch, archive)

    w.inputs.dicom_zip_action.trigger()

    assert not notes["error"]
    assert [lyr.name for lyr in viewer.layers] == ["earlier", "sag_t2"]
    assert w.inputs.source is viewer.layers["sag_t2"]
    np.testing.assert_allclose(w.inputs.source.metadata["affine"], aff, atol=1e-5, rtol=0)


@pytest.mark.parametrize("answer", ["second", "all", "cancel"])
def test_several_series_ask_which_and_the_first_opened_becomes_the_image(
        widget, tmp_path, notes, monkeypatch, answer):
    from qtpy.QtWidgets import QDialog

    from napari_itermask._plugin.series_dialog import SeriesDialog

    viewer, w = widget
    folder, a, b = _two_series(tmp_path)
    _answer_folder(monkeypatch, folder)
    asked = []

    def exec_(dialog):
        asked.append(dialog.combo.count())
        if answer == "cancel":
            return QDialog.DialogCode.Rejected
        dialog.combo.setCurrentIndex(1 if answer == "second" else dialog.combo.count() - 1)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(SeriesDialog, "exec", exec_)
    added = w.inputs.open_dicom(folder)  # the action's own path, without the file dialog

    assert asked == [3] and not notes["error"]  # two series and "all"
    names = [lyr.name for lyr in viewer.layers]
    if answer == "second":
        assert names == ["t2_flair_sag"] and w.inputs.source is added[0]
        assert added[0].metadata["dicom"]["series_uid"] == b
    elif answer == "all":
        assert names == ["t1_mprage", "t2_flair_sag"]
        assert w.inputs.source is viewer.layers["t1_mprage"]
    else:
        assert names == [] and added == [] and w.inputs.source is None


@pytest.mark.parametrize("which", ["not dicom", "non-uniform spacing", "not a zip"])
def test_bad_input_is_one_error_notification_and_no_layer(widget, tmp_path, notes,
                                                         monkeypatch, which):
    viewer, w = widget
    earlier = viewer.add_image(np.ones((8, 8, 8), np.float32), name="earlier")
    w.reset_choices()
    if which == "not dicom":
        path = tmp_path / "photos"
        path.mkdir()
        (path / "readme.txt").write_text("no images here")
        _answer_folder(monkeypatch, path)
        w.inputs.dicom_folder_action.trigger()
        expect = "no DICOM images"
    elif which == "non-uniform spacing":
        path = _bad(tmp_path, which)
        _answer_folder(monkeypatch, path)
        w.inputs.dicom_folder_action.trigger()
        expect = "non-uniform slice spacing"
    else:
        path = tmp_path / "exam.zip"
        path.write_bytes(b"PK\x03\x04 this is not really a zip")
        _answer_zip(monkeypatch, path)
        w.inputs.dicom_zip_action.trigger()
        expect = "not a readable zip"
    assert len(notes["error"]) == 1, notes["error"]
    (msg,) = notes["error"]
    assert msg.startswith("napari-itermask:") and expect in msg and "\n" not in msg
    assert [lyr.name for lyr in viewer.layers] == ["earlier"] and w.inputs.source is earlier


def test_an_unexpected_failure_in_the_reader_is_one_line_too(widget, tmp_path, notes,
                                                            monkeypatch):
    from napari_itermask import _reader

    viewer, w = widget

    def broken(path, series=None):
        raise MemoryError("cannot allocate 12 GiB\nsecond line")

    monkeypatch.setattr(_reader, "read_dicom", broken)
    assert w.inputs.open_dicom(tmp_path / "big") == []
    assert notes["error"] == ["napari-itermask: cannot open big as DICOM: cannot allocate "
                              "12 GiB"]
    assert len(viewer.layers) == 0


def test_a_cancelled_file_dialog_does_nothing(widget, tmp_path, notes, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    viewer, w = widget
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: "")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))
    w.inputs.dicom_folder_action.trigger()
    w.inputs.dicom_zip_action.trigger()
    assert len(viewer.layers) == 0 and not notes["error"]


def test_the_button_is_disabled_with_the_other_inputs_during_a_run(widget):
    _, w = widget
    w.inputs.set_enabled(False)
    assert not w.inputs.dicom_btn.isEnabled()
    w.inputs.set_enabled(True)
    assert w.inputs.dicom_btn.isEnabled()

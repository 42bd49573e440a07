"""napari plugin: manifest, NIfTI reader and writer, preferred reader, sample data.

Run under Xvfb (see docs): QT_QPA_PLATFORM=xcb QT_API=pyqt6 xvfb-run -a python -m pytest
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from _plugin_support import isolated_settings, nifti  # noqa: E402,F401

from napari_itermask import _writer  # noqa: E402
from napari_itermask._layers import RAS_TO_WORLD  # noqa: E402
from napari_itermask._reader import napari_get_reader  # noqa: E402

PLUGIN = "napari-itermask"


def _brain(shape=(24, 28, 20), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = zz**2 + yy**2 + xx**2 < 0.8
    return np.where(inside, 100 + 10 * rng.standard_normal(shape), 0).astype(np.float32)


def _oblique_affine():
    ang = np.deg2rad(10)
    rot = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-1.2, 1.1, 2.5])
    aff[:3, 3] = [40.0, -35.0, -30.0]
    return aff


@pytest.fixture
def errors(monkeypatch):
    """Notifications shown by the plugin, by kind (napari's show_* replaced by recorders)."""
    from napari.utils import notifications

    seen = {"error": [], "warning": [], "info": []}
    for kind in seen:
        monkeypatch.setattr(notifications, f"show_{kind}", seen[kind].append)
    return seen


def test_manifest_is_valid_and_complete():
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution(PLUGIN)
    c = mf.contributions
    assert mf.display_name == "napari-itermask"
    assert {"*.nii", "*.nii.gz"} <= set(c.readers[0].filename_patterns)
    assert c.writers[0].layer_types == ["labels"] and ".nii.gz" in c.writers[0].filename_extensions
    assert {s.key for s in c.sample_data} == {"flair", "t1", "t2", "t1ce", "flair_subtle"}
    assert c.widgets[0].display_name == "IterMask² lesion segmentation"


def test_reader_places_scan_by_affine_and_writer_round_trips(make_napari_viewer, tmp_path,
                                                            errors, monkeypatch):
    aff = _oblique_affine()
    src = nifti(tmp_path / "scan.nii.gz", _brain(), aff, qcode=1, scode=2)
    assert napari_get_reader(str(src)) is not None
    assert napari_get_reader(str(tmp_path / "scan.tif")) is None

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(src), plugin=PLUGIN)
    assert layer.name == "scan"
    # placed by the affine alone (relabelled to the (S, P, L) world), never scale/translate:
    # every voxel lands at its RAS position, and the file's slice axis is napari's slider
    np.testing.assert_allclose(layer.scale, 1.0)
    np.testing.assert_allclose(layer.translate, 0.0)
    assert layer.axis_labels == ("S", "P", "L")
    data = np.asarray(nib.load(str(src)).dataobj)
    axes = layer.metadata["scan_axes"]
    assert axes[0] == 2 and layer.data.shape == tuple(data.shape[a] for a in axes)
    for v in [(0, 0, 0), (5, 20, 7), (23, 27, 19)]:
        lv = tuple(v[a] for a in axes)
        ras = (aff @ np.array([*v, 1.0]))[:3]
        np.testing.assert_allclose(layer.data_to_world(lv), (RAS_TO_WORLD[:3, :3] @ ras),
                                   atol=1e-5)
        assert layer.data[lv] == data[v]
    md = layer.metadata
    np.testing.assert_allclose(md["affine"], aff, atol=1e-6)
    assert md["path"] == str(src) and md["scan_shape"] == (24, 28, 20)
    assert int(md["header"]["sform_code"]) == 2
    # an oblique scan cannot be drawn exactly in napari's 2-D view: visible warning
    assert any("oblique" in w for w in errors["warning"])

    # a labels layer derived from the scan, saved through napari's writer machinery
    from napari_itermask._layers import derived_kwargs

    lab = np.zeros((24, 28, 20), np.uint8)  # on the file's grid
    lab[5:9, 10:14, 3:6] = 1
    lab[15, 20, 10] = 3
    labels = viewer.add_labels(lab.transpose(axes), **derived_kwargs(layer, "lesions"))
    np.testing.assert_allclose(labels.affine.affine_matrix, layer.affine.affine_matrix)
    out = tmp_path / "lesions.nii.gz"
    written = labels.save(str(out), plugin=PLUGIN)
    assert written == [str(out)] or str(out) in written
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj), lab)
    assert json.loads((tmp_path / "lesions.json").read_text())["source_scan"] == str(src)

    # the writer never replaces a file unless confirmed
    asked = []
    monkeypatch.setattr(_writer, "confirm_overwrite", lambda p: asked.append(p) or False)
    lab2 = lab.copy()
    lab2[:] = 0
    with pytest.raises(Exception, match="exists"):
        _writer.write_labels(str(out), lab2, {"metadata": labels.metadata, "name": "x"})
    assert asked and np.asarray(nib.load(str(out)).dataobj).any()
    monkeypatch.setattr(_writer, "confirm_overwrite", lambda p: True)
    _writer.write_labels(str(out), lab2, {"metadata": labels.metadata, "name": "x"})
    assert not np.asarray(nib.load(str(out)).dataobj).any()
    assert not list(tmp_path.glob(".itermask-*"))  # atomic: no temporary files left

    # reopened labels land exactly where they were
    (back,) = viewer.open(str(out), plugin=PLUGIN)
    assert type(back).__name__ == "Labels"  # a label map (sidecar) reopens as labels
    np.testing.assert_allclose(back.affine.affine_matrix, labels.affine.affine_matrix, atol=1e-5)


def test_reader_2d_and_rejects_4d_with_one_line(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    aff = np.diag([0.9, 0.9, 3.0, 1.0])
    img2d = _brain((30, 26, 3))[:, :, 1]
    p2 = nifti(tmp_path / "slice.nii", img2d, aff)
    (layer,) = viewer.open(str(p2), plugin=PLUGIN)
    assert layer.data.shape == (1, 26, 30) and layer.metadata["scan_shape"] == (30, 26)

    p4 = nifti(tmp_path / "series.nii.gz", np.stack([_brain()] * 3, axis=-1), aff)
    added = viewer.open(str(p4), plugin=PLUGIN)
    assert added == [] and len(viewer.layers) == 1
    assert len(errors["error"]) == 1 and "4-D" in errors["error"][0]
    assert "\n" not in errors["error"][0]


def test_preferred_reader_registered_without_overriding_user(make_napari_viewer, tmp_path,
                                                            isolated_settings):
    from napari_itermask._preferences import offer_nifti_reader_preference

    src = nifti(tmp_path / "scan.nii.gz", _brain(), np.eye(4))
    # a choice the user made is kept
    isolated_settings.plugins.extension2reader = {"*.nii.gz": "napari"}
    assert offer_nifti_reader_preference() == ["*.nii"]
    prefs = isolated_settings.plugins.extension2reader
    assert prefs["*.nii.gz"] == "napari" and prefs["*.nii"] == PLUGIN
    # offered once only: a preference the user removes later is not put back
    isolated_settings.plugins.extension2reader = {}
    assert offer_nifti_reader_preference() == []
    assert isolated_settings.plugins.extension2reader == {}

    # napari 0.9 without a preference: two readers claim the file, napari asks (the GUI's
    # dialog; viewer.open(plugin=None), the GUI's code path, raises)
    from napari.errors import MultipleReaderError

    from napari_itermask import _settings

    viewer = make_napari_viewer()  # (resets napari's settings)
    with pytest.raises(MultipleReaderError):
        viewer.open(str(src), plugin=None)
    # after the offer (fresh settings, no choice yet) the same call picks this plugin
    _settings.save_settings({"reader_preference_offered": False})
    assert set(offer_nifti_reader_preference()) == {"*.nii", "*.nii.gz"}
    (layer,) = viewer.open(str(src), plugin=None)
    assert "affine" in layer.metadata and layer.source.reader_plugin == PLUGIN


def test_sample_opens_with_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "flair")
    assert [type(lyr).__name__ for lyr in layers] == ["Image", "Labels"]
    img, gt = layers
    assert img.name == "sample FLAIR" and gt.name == "sample FLAIR ground truth"
    assert np.asarray(gt.data).any() and np.asarray(img.data).max() > 0
    assert gt.data.shape == img.data.shape  # voxel for voxel on the image
    assert (np.asarray(img.data)[np.asarray(gt.data) > 0] > 0).all()  # lesions in the brain
    np.testing.assert_allclose(gt.affine.affine_matrix, img.affine.affine_matrix)
    np.testing.assert_allclose(img.metadata["affine"], gt.metadata["affine"])
    assert img.metadata["synthetic"] and img.metadata["display"]
    assert img.metadata["stratum"] == "glioma"  # the paper's case is the default sample

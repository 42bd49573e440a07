"""napari plugin: the IterMask² widget (runs, sliders, safety, export, settings, screenshot).

A tiny random model on a 3 mm synthetic brain: the results mean nothing, the mechanics are
what is tested. Run under Xvfb (see docs/headless-gui): QT_QPA_PLATFORM=xcb QT_API=pyqt6.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from _plugin_support import (  # noqa: E402,F401
    THRESHOLD,
    add_case,
    isolated_settings,
    make_tiny_model,
    make_widget as _widget,
    small_case,
    tiny_model,
)

RUN_TIMEOUT = 60_000  # ms


def _wait_idle(qtbot, w, timeout=RUN_TIMEOUT):
    qtbot.waitUntil(lambda: w._worker is None, timeout=timeout)


def _layer(viewer, name):
    return viewer.layers[name]


def test_full_run_sliders_accept_export(make_napari_viewer, qtbot, tiny_model, small_case,
                                        tmp_path, notes):
    viewer = make_napari_viewer()
    img, _gt = add_case(viewer, small_case)
    w = _widget(viewer, tiny_model, qtbot)
    assert w.inputs.untrained_note.isVisibleTo(w) and "UNTRAINED" in w.inputs.untrained_note.text()
    assert "CPU" in w.inputs.device_note.text()

    assert w.run()
    assert not w.run()  # a second Run while one runs is refused, with a notification
    assert any("already running" in m for m in notes["warning"])
    _wait_idle(qtbot, w)
    assert not notes["error"], notes["error"]
    sess = w._current_session()
    assert sess.finished and len(sess.steps) >= 3
    for suffix in ("mask", "error", "reconstruction", "lesions"):
        layer = _layer(viewer, f"sample FLAIR {suffix}")
        np.testing.assert_allclose(layer.affine.affine_matrix, img.affine.affine_matrix)
        assert layer.data.shape == img.data.shape
        np.testing.assert_allclose(layer.metadata["affine"], small_case.affine)
    assert w.run_controls.progress.value() == 1000

    # iteration slider: back to the brain redraws the (larger) mask
    mask = _layer(viewer, "sample FLAIR mask")
    last = np.asarray(mask.data).copy()
    assert "mL" in w.review_panel.iter_label.text()
    w.review_panel.iter_slider.setValue(0)
    qtbot.waitUntil(lambda: np.asarray(mask.data).sum() > last.sum(), timeout=10_000)
    assert "start" in w.review_panel.iter_label.text()
    np.testing.assert_array_equal(np.asarray(mask.data) > 0,
                                  small_case.brain.transpose(img.metadata["scan_axes"]))
    # iteration 0 has no reconstruction: no lesions from its error map, and the panel says so
    lesions = _layer(viewer, "sample FLAIR lesions")
    assert not np.asarray(lesions.data).any() and "iteration 0" in w.review_panel.stats_label.text()
    w.review_panel.iter_slider.setValue(w.review_panel.iter_slider.maximum())  # back to the last: the paper's result
    assert sess.review.iteration is None and np.asarray(lesions.data).any()

    # threshold slider: lower threshold → more lesion voxels, at once, with stats
    assert "★" in w.review_panel.threshold_label.text() and w.review_panel.threshold_slider.mark is not None
    before = int((np.asarray(lesions.data) > 0).sum())
    stats_before = w.review_panel.stats_label.text()
    w.review_panel.threshold_slider.setValue(w.review_panel.threshold_slider.value() // 2)
    after = int((np.asarray(lesions.data) > 0).sum())
    assert after > before and w.review_panel.stats_label.text() != stats_before
    assert "mL" in w.review_panel.stats_label.text() and "★" not in w.review_panel.threshold_label.text()
    w.review_panel.min_size_spin.setValue(50)
    assert int((np.asarray(lesions.data) > 0).sum()) < after
    w.restore_defaults()
    assert w.review_panel.threshold_spin.value() == pytest.approx(THRESHOLD)
    assert "★" in w.review_panel.threshold_label.text() and w.review_panel.min_size_spin.value() == 0

    # accept → an editable layer; a second accept asks first and respects "no"
    acc = w.accept_result()
    assert acc.name == "sample FLAIR lesions (accepted)" and acc.mode == "paint"
    edited = np.asarray(acc.data).copy()
    edited[tuple(s // 2 for s in edited.shape)] = 2  # the user's edit
    acc.data = edited
    asked = []
    w.confirm = lambda title, text: asked.append(title) or False
    w.review_panel.threshold_slider.setValue(1)
    assert w.accept_result() is None and asked
    np.testing.assert_array_equal(np.asarray(acc.data), edited)

    # export writes the accepted (edited) labels with the source affine + provenance
    out = tmp_path / "result.nii.gz"
    written = w.export_result(str(out))
    assert [str(p) for p in written] == [str(out), str(tmp_path / "result.json"),
                                         str(tmp_path / "result.csv")]
    nii = nib.load(str(out))
    np.testing.assert_allclose(nii.affine, small_case.affine, atol=1e-5)
    saved = np.asarray(nii.dataobj)
    assert saved.shape == small_case.image.shape and saved.dtype == np.uint8
    np.testing.assert_array_equal(saved.transpose(img.metadata["scan_axes"]), edited)
    side = json.loads((tmp_path / "result.json").read_text())
    for key in ("model", "model_sha256", "tau", "threshold", "iteration", "result_source",
                "params", "version", "created"):
        assert key in side
    assert side["model"] == "tiny" and len(side["model_sha256"]) == 64
    assert side["edited_by_user"] is True
    # never silently overwritten: "no" keeps the file
    asked.clear()
    assert w.export_result(str(out)) is None and asked
    # reloaded through the reader, it lands on the scan
    (back,) = viewer.open(str(out), plugin="napari-itermask")
    np.testing.assert_allclose(back.affine.affine_matrix, img.affine.affine_matrix, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.data), edited)


def test_step_continue_cancel_and_gui_stays_free(make_napari_viewer, qtbot, tiny_model,
                                                small_case, notes):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    add_case(viewer, small_case)
    w = _widget(viewer, tiny_model, qtbot)

    assert w.step()
    _wait_idle(qtbot, w)
    sess = w._current_session()
    assert len(sess.steps) == 2 and sess.steps[1].iteration == 1  # start + one iteration
    assert "sample FLAIR mask" in viewer.layers
    assert w.step()
    _wait_idle(qtbot, w)
    assert len(sess.steps) == 3 and not sess.finished

    # Cancel mid-run: stops between iterations; the GUI thread ticks meanwhile
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    assert w.run()
    qtbot.waitUntil(lambda: len(sess.steps) >= 4, timeout=RUN_TIMEOUT)
    w.cancel()
    _wait_idle(qtbot, w)
    timer.stop()
    assert len(ticks) > 0  # the window never froze
    assert not sess.finished and "Cancelled" in w.run_controls.status.text()
    n = len(sess.steps)
    assert w.run()  # continues where it stopped
    _wait_idle(qtbot, w)
    assert sess.finished and len(sess.steps) > n

    # continue with a higher τ extends the history
    n = len(sess.steps)
    assert not w.continue_higher_tau(sess.tau)  # must be higher
    assert w.continue_higher_tau(sess.tau * 1.5)
    _wait_idle(qtbot, w)
    assert len(sess.steps) > n and sess.steps[-1].tau == pytest.approx(sess.tau)
    assert w.review_panel.iter_slider.maximum() == len(sess.steps) - 1
    assert not notes["error"], notes["error"]


def test_results_stay_on_their_layer_when_switching(make_napari_viewer, qtbot, tiny_model,
                                                   small_case, notes):
    viewer = make_napari_viewer()
    add_case(viewer, small_case, name="A")
    add_case(viewer, small_case, name="B")
    w = _widget(viewer, tiny_model, qtbot)
    w.inputs.select_image("A")
    assert w.run()
    w.inputs.select_image("B")  # switch mid-run
    assert not w.run()  # refused while A runs
    _wait_idle(qtbot, w)
    names = [lyr.name for lyr in viewer.layers]
    assert "A mask" in names and "A lesions" in names
    assert not any(n.startswith("B ") and "ground truth" not in n for n in names)
    assert w._current_session() is None and not w.review_panel.isEnabled()
    w.inputs.select_image("A")
    assert w.review_panel.isEnabled()
    # Reset removes A's previews but never an accepted layer
    w.accept_result()
    w.reset()
    names = [lyr.name for lyr in viewer.layers]
    assert "A mask" not in names and "A lesions" not in names
    assert "A lesions (accepted)" in names and w._current_session() is None


def test_chosen_iteration_is_the_result_and_each_image_keeps_its_review(
        make_napari_viewer, qtbot, tiny_model, small_case, tmp_path, notes):
    from napari_itermask import review
    from napari_itermask.params import RunParams

    viewer = make_napari_viewer()
    add_case(viewer, small_case, name="A")
    add_case(viewer, small_case, name="B")
    w = _widget(viewer, tiny_model, qtbot)
    w.inputs.select_image("A")
    assert w.run()
    _wait_idle(qtbot, w)
    a = w._current_session()
    assert a.job.iterations >= 3
    # choose an earlier iteration: the lesions (and the error layer) become that iteration's
    k = 2
    w.review_panel.iter_slider.setValue(k)
    err_k = a.job.error_on_scan(k=k)
    err_layer = _layer(viewer, "A error")
    qtbot.waitUntil(lambda: np.array_equal(np.asarray(err_layer.data),
                                           err_k.transpose(a.source.metadata["scan_axes"])),
                    timeout=20_000)
    assert a.review.iteration == k
    w.review_panel.threshold_spin.setValue(0.5 * THRESHOLD)
    lesions = _layer(viewer, "A lesions")
    want = ((err_k > 0.5 * THRESHOLD) & a.job.volume.scan_brain).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(lesions.data),
                                  want.transpose(a.source.metadata["scan_axes"]))
    a.preview_edited = True  # as if the user painted on A's preview

    # image B: its own review, seeded from the card; no question when switching
    w.inputs.select_image("B")
    assert w.run()
    _wait_idle(qtbot, w)
    b = w._current_session()
    assert b is not a and b.review.threshold == THRESHOLD and b.review.iteration is None
    assert w.review_panel.threshold_spin.value() == pytest.approx(THRESHOLD)
    assert w.review_panel.iter_slider.value() == len(b.steps) - 1
    w.review_panel.min_size_spin.setValue(5)
    assert b.review.min_size == 5 and a.review.min_size == 0
    w.inputs.select_image("A")  # back: A's own values, nothing re-thresholded
    assert w.review_panel.threshold_spin.value() == pytest.approx(0.5 * THRESHOLD)
    assert w.review_panel.iter_slider.value() == k and w.review_panel.min_size_spin.value() == 0
    # the mask as the result (a real change: now the painted preview may be replaced)
    asked = []
    w.confirm = lambda title, text: asked.append(title) or True
    w.review_panel.source_combo.setCurrentIndex(1)
    assert asked == ["Replace edited labels?"]
    assert a.review.source == "mask" and not w.review_panel.threshold_spin.isEnabled()
    np.testing.assert_array_equal(np.asarray(_layer(viewer, "A lesions").data) > 0,
                                  a.job.mask_on_scan(k).transpose(a.source.metadata["scan_axes"]))
    # back to the error map, then export: the sidecar records exactly that choice
    w.review_panel.source_combo.setCurrentIndex(0)
    out = tmp_path / "a.nii.gz"
    w.export_result(str(out))
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["iteration"] == k and side["result_source"] == "error"
    assert side["threshold"] == pytest.approx(0.5 * THRESHOLD)
    p = RunParams.from_dict(side["params"])
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), a.job.result(p))
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj),
                                  review.lesions(a)[0])
    assert not notes["error"], notes["error"]


def test_errors_are_notifications_and_settings_persist(make_napari_viewer, qtbot, tiny_model,
                                                      small_case, notes, tmp_path):
    from napari_itermask._plugin import IterMaskWidget

    viewer = make_napari_viewer()
    add_case(viewer, small_case)
    w = _widget(viewer, tiny_model, qtbot)
    # bundled models are offered
    offered = list(w.inputs.model.choices)
    assert {"flair", "t1", "t2"} <= set(offered)
    # a one-sided model says so beside its τ and threshold
    assert w.set_model("t1") and "dark deviations only" in w.inputs.model_info.text()
    assert w.set_model("flair") and "deviations" not in w.inputs.model_info.text()
    assert w.set_model(str(tiny_model))
    # a broken model folder: one-line error notification, no traceback, nothing running
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "card.json").write_text("{not json")
    assert not w.set_model(str(bad))
    assert notes["error"] and "\n" not in notes["error"][-1]
    # settings survive a new widget (a new session)
    w.inputs.seed.value = 7
    w.inputs.max_iter.value = 3
    w.inputs.device.value = "cpu"
    w2 = IterMaskWidget(viewer)
    qtbot.addWidget(w2)
    assert w2.inputs.seed.value == 7 and w2.inputs.max_iter.value == 3
    assert w2.inputs.model.value == str(tiny_model.resolve())
    w2.restore_defaults()
    w3 = IterMaskWidget(viewer)
    qtbot.addWidget(w3)
    assert w3.inputs.seed.value == 0 and w3.inputs.max_iter.value == 0
    assert w3.inputs.device.value == "auto"


def test_screenshot_shows_canvas_and_dock(make_napari_viewer, qtbot, tiny_model, small_case,
                                          tmp_path):
    viewer = make_napari_viewer(show=True)
    add_case(viewer, small_case)
    from napari_itermask._plugin import TITLE, IterMaskWidget

    # as from the Plugins menu: napari builds the widget and hands it a viewer proxy
    dock, w = viewer.window.add_plugin_dock_widget("napari-itermask", TITLE)
    assert isinstance(w, IterMaskWidget) and w._viewer is viewer
    w.set_model(str(tiny_model))
    w.inputs.device.value = "cpu"
    qtbot.waitUntil(dock.isVisible, timeout=10_000)
    assert w.step()
    _wait_idle(qtbot, w)
    qtbot.wait(200)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    full = viewer.screenshot(str(tmp_path / "shot.png"), canvas_only=False, flash=False)
    rgb = canvas[..., :3].astype(float)
    assert rgb.mean() > 5 and rgb.std() > 10  # a drawn brain, not a black canvas
    assert full.shape[1] > canvas.shape[1]  # the dock is in the window shot
    assert (tmp_path / "shot.png").stat().st_size > 10_000

"""The review's workers: a chosen iteration's mask before its maps, each frame's lesions off the GUI
thread, and nothing stale ever shown over a newer choice.

A tiny random model on a 3 mm synthetic brain (``_plugin_support``): the maps mean nothing, the
order and the threads of what is shown are tested. Slow steps are held where they run (a worker
thread) by a gate the test opens, so each test sees the moment between two stages. Run under
Xvfb: QT_QPA_PLATFORM=xcb QT_API=pyqt6.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from _plugin_support import (  # noqa: E402,F401
    Gate,
    THRESHOLD,
    add_case,
    isolated_settings,
    make_widget,
    small_case,
    tiny_model,
    wait_idle,
)

from napari_itermask import pipeline, review  # noqa: E402
from napari_itermask._layers import to_layer_shape  # noqa: E402

RUN_TIMEOUT_MS = 180_000  # a run on a busy two-core machine


@pytest.fixture
def ran(make_napari_viewer, qtbot, tiny_model, small_case, notes):
    """A widget whose run on the small case has ended: (viewer, widget, session)."""
    viewer = make_napari_viewer()
    add_case(viewer, small_case)
    w = make_widget(viewer, tiny_model, qtbot)
    w.inputs.max_iter.value = 3  # three iterations: the start, two earlier ones, the last
    assert w.run()
    wait_idle(qtbot, w, timeout=RUN_TIMEOUT_MS)
    sess = w._current_session()
    assert sess.finished and sess.job.iterations >= 3 and not notes["error"], notes["error"]
    return viewer, w, sess


def _on_layer(sess, arr):
    return to_layer_shape(arr, sess.source)


def _expected_lesions(sess, k, threshold):
    """Iteration k's map above the threshold (minimum size 0), arranged like the layer."""
    err = sess.errors[review.cache_key(sess.job, k)]
    return _on_layer(sess, ((err > threshold) & sess.job.volume.scan_brain).astype(np.uint8))


def test_the_chosen_iterations_mask_shows_before_its_maps_and_lesions(ran, qtbot, monkeypatch,
                                                                      notes):
    viewer, w, sess = ran
    last, k = sess.job.iterations, 1
    assert review.cache_key(sess.job, k) not in sess.errors  # its maps cost a network pass
    gate = Gate(review.maps_at)
    monkeypatch.setattr(review, "maps_at", gate)
    mask, error, lesions = (sess.layers[r] for r in ("mask", "error", "lesions"))
    error_before = np.asarray(error.data).copy()
    lesions_before = np.asarray(lesions.data).copy()
    want_mask = _on_layer(sess, sess.job.mask_on_scan(k)).astype(bool)
    gate.arm()
    try:
        w.review_panel.iter_slider.setValue(k)
        # the mask comes at once, while the network pass for the maps is held
        qtbot.waitUntil(lambda: np.array_equal(np.asarray(mask.data) > 0, want_mask),
                        timeout=10_000)
        qtbot.waitUntil(gate.held.is_set, timeout=20_000)
        assert gate.calls == [((sess, k), False)]  # the maps are made in a worker
        np.testing.assert_array_equal(np.asarray(error.data), error_before)
        np.testing.assert_array_equal(np.asarray(lesions.data), lesions_before)
        assert sess.shown_step == last
    finally:
        gate.open()
    # then the maps, and the lesions of k's map
    qtbot.waitUntil(lambda: sess.shown_step == k and w._mask_worker is None, timeout=20_000)
    err_k = sess.errors[review.cache_key(sess.job, k)]
    np.testing.assert_array_equal(np.asarray(error.data), _on_layer(sess, err_k))
    np.testing.assert_array_equal(np.asarray(lesions.data),
                                  _expected_lesions(sess, k, THRESHOLD))
    labels, _ = review.lesions(sess)  # what Accept and Export take: the same
    np.testing.assert_array_equal(np.asarray(lesions.data), _on_layer(sess, labels))
    assert sess.review.iteration == k and not notes["error"], notes["error"]


def test_iterations_passed_through_cost_no_network_pass_and_never_show(ran, qtbot,
                                                                       monkeypatch, notes):
    viewer, w, sess = ran
    last = sess.job.iterations
    job_cls = type(sess.job)
    masks = Gate(job_cls.mask_on_scan)
    monkeypatch.setattr(job_cls, "mask_on_scan", masks.method())
    maps = Gate(review.maps_at)
    monkeypatch.setattr(review, "maps_at", maps)
    shown_masks, shown_maps = [], []
    show_mask, show_maps = w.presenter.show_mask, w.presenter.show_maps
    monkeypatch.setattr(w.presenter, "show_mask",
                        lambda s, m: shown_masks.append(np.asarray(m).copy()) or show_mask(s, m))
    monkeypatch.setattr(w.presenter, "show_maps",
                        lambda s, k, e, r: shown_maps.append(k) or show_maps(s, k, e, r))
    maps.calls.clear()
    masks.arm()
    try:
        w.review_panel.iter_slider.setValue(1)  # its worker is held making the mask of 1
        qtbot.waitUntil(masks.held.is_set, timeout=20_000)
        w.review_panel.iter_slider.setValue(2)  # waits ...
        w.review_panel.iter_slider.setValue(last)  # ... and is replaced by the last
    finally:
        masks.open()
    qtbot.waitUntil(lambda: w._mask_worker is None and sess.shown_step == last
                    and len(shown_maps) > 0, timeout=20_000)
    qtbot.wait(50)
    # 1 was passed: no network pass for its maps, its mask never shown; 2 never computed
    assert [args[1] for args, _ in maps.calls] == [last]
    assert [args[1] for args, _ in masks.calls] == [1, last]
    want = sess.job.mask_on_scan(last)
    assert len(shown_masks) == 1 and np.array_equal(shown_masks[0], want)
    assert shown_maps == [last]
    np.testing.assert_array_equal(np.asarray(sess.layers["mask"].data) > 0,
                                  _on_layer(sess, want).astype(bool))
    assert sess.review.iteration is None and not notes["error"], notes["error"]


def test_a_runs_frames_are_labelled_off_the_gui_thread_and_the_threshold_at_once(
        make_napari_viewer, qtbot, tiny_model, small_case, monkeypatch, notes):
    viewer = make_napari_viewer()
    add_case(viewer, small_case)
    w = make_widget(viewer, tiny_model, qtbot)
    w.inputs.max_iter.value = 3
    labelling = Gate(pipeline.Job.result)
    monkeypatch.setattr(pipeline.Job, "result", labelling.method())
    assert w.run()
    # the run ends only once its last frame's lesions are shown
    qtbot.waitUntil(lambda: w._worker is None, timeout=RUN_TIMEOUT_MS)
    sess = w._current_session()
    assert sess.finished and not notes["error"], notes["error"]
    assert labelling.calls and not any(gui for _, gui in labelling.calls), \
        "a frame's lesions were computed on the GUI thread"
    lesions = sess.layers["lesions"]
    labels, _ = review.lesions(sess)
    np.testing.assert_array_equal(np.asarray(lesions.data), _on_layer(sess, labels))
    assert sess.summary.startswith("Lesions: ") and "mL" in sess.summary
    assert w.review_panel.stats_label.text() == sess.summary
    # the threshold re-thresholds the cached map here and now: shown before the call returns
    labelling.calls.clear()
    w.review_panel.threshold_spin.setValue(0.5 * THRESHOLD)
    assert [gui for _, gui in labelling.calls] == [True]
    np.testing.assert_array_equal(np.asarray(lesions.data),
                                  _expected_lesions(sess, sess.job.iterations, 0.5 * THRESHOLD))


def test_a_lesion_result_the_user_moved_past_is_dropped(ran, qtbot, monkeypatch, notes):
    viewer, w, sess = ran
    labelling = Gate(pipeline.Job.result)
    monkeypatch.setattr(pipeline.Job, "result", labelling.method())
    lesions = sess.layers["lesions"]
    # iteration 1: its maps come, then its lesions (held in their worker) ...
    labelling.arm()
    try:
        w.review_panel.iter_slider.setValue(1)
        qtbot.waitUntil(labelling.held.is_set, timeout=20_000)  # the GUI loop runs meanwhile
        # ... while the user lowers the threshold on 1's map (now cached): shown at once
        w.review_panel.threshold_spin.setValue(0.5 * THRESHOLD)
        want = _expected_lesions(sess, 1, 0.5 * THRESHOLD)
        np.testing.assert_array_equal(np.asarray(lesions.data), want)
        summary = w.review_panel.stats_label.text()
    finally:
        labelling.open()
    # the held result (the calibrated threshold) comes back and is dropped
    qtbot.waitUntil(lambda: w._mask_worker is None, timeout=20_000)
    qtbot.wait(50)
    assert [gui for _, gui in labelling.calls] == [False, True]
    np.testing.assert_array_equal(np.asarray(lesions.data), want)
    assert w.review_panel.stats_label.text() == summary == sess.summary
    assert not notes["error"], notes["error"]

    # a result for a session that is gone (Reset) brings no layer back
    labelling.arm()
    try:
        w.review_panel.iter_slider.setValue(2)
        qtbot.waitUntil(labelling.held.is_set, timeout=20_000)
        w.reset()
        assert "sample FLAIR lesions" not in [lyr.name for lyr in viewer.layers]
    finally:
        labelling.open()
    qtbot.waitUntil(lambda: w._mask_worker is None, timeout=20_000)
    qtbot.wait(50)
    names = [lyr.name for lyr in viewer.layers]
    assert not any(n.startswith("sample FLAIR ") and "ground truth" not in n for n in names)
    assert w._current_session() is None and not notes["error"], notes["error"]

"""The review's sliders: the fast connected components give exactly the voxel-by-voxel result,
and the widget's pieces that run on every move stay cheap (table, mask frames).

The components are compared with ``scipy.ndimage.label`` under full connectivity on random
masks of every density and on the cases a run-length method can get wrong: runs that touch only
at a corner, in the next slice, across the end of a line (they must not connect), a full array.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_itermask.core.segmentation import lesion_stats, remove_small, segment


def _reference(labels, min_size):
    labels = np.asarray(labels, bool)
    comp, n = ndimage.label(labels, structure=np.ones((3,) * labels.ndim))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[comp], n


@pytest.mark.parametrize("shape", [(7,), (1, 9), (6, 11), (5, 8, 9), (12, 17, 13), (3, 1, 20)])
@pytest.mark.parametrize("density", [0.03, 0.2, 0.5, 0.8])
def test_remove_small_and_count_match_voxel_labelling(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    for _ in range(4):
        labels = rng.random(shape) < density
        for min_size in (2, 3, 5, 12):
            want, n = _reference(labels, min_size)
            got = remove_small(labels, min_size)
            np.testing.assert_array_equal(got, want)
        assert lesion_stats(labels, 2.0) == (n, labels.sum() * 2.0 / 1000.0)


def test_smooth_blobs_of_a_clinical_looking_map():
    rng = np.random.default_rng(3)
    err = ndimage.gaussian_filter(rng.standard_normal((30, 40, 36)), 1.2)
    for q in (0.7, 0.9, 0.99):
        labels = err > np.quantile(err, q)
        for min_size in (2, 10, 40):
            want, n = _reference(labels, min_size)
            np.testing.assert_array_equal(segment(err, np.quantile(err, q), min_size), want)
        assert lesion_stats(labels, 1.0)[0] == n


def test_corner_touches_connect_and_line_ends_do_not():
    a = np.zeros((3, 4, 5), bool)
    a[0, 0, 4] = True  # end of line 0 ...
    a[0, 1, 0] = True  # ... and start of line 1: neighbours in memory, not in space
    assert lesion_stats(a, 1.0)[0] == 2
    assert not remove_small(a, 2).any()
    b = np.zeros((3, 4, 5), bool)
    b[0, 0, 0] = b[1, 1, 1] = b[2, 2, 2] = True  # a diagonal through the slices: one lesion
    assert lesion_stats(b, 1.0)[0] == 1
    np.testing.assert_array_equal(remove_small(b, 3), b)
    assert not remove_small(b, 4).any()
    c = np.zeros((2, 3, 6), bool)
    c[0, 0, 0:2] = True
    c[0, 0, 3:5] = True  # one empty voxel between: two lesions in one line
    c[1, 1, 2] = True  # touches both runs at a corner in the next slice: one lesion again
    assert lesion_stats(c[:1], 1.0)[0] == 2 and lesion_stats(c, 1.0)[0] == 1


def test_edge_cases_keep_their_contract():
    empty = np.zeros((4, 5, 6), bool)
    assert not remove_small(empty, 3).any() and lesion_stats(empty, 1.0) == (0, 0.0)
    full = np.ones((4, 5, 6), bool)
    np.testing.assert_array_equal(remove_small(full, 120), full)
    assert not remove_small(full, 121).any() and lesion_stats(full, 1.0)[0] == 1
    mask = np.random.default_rng(0).random((4, 5, 6)) < 0.3
    assert remove_small(mask, 1) is not None and np.array_equal(remove_small(mask, 0), mask)
    # the input is never changed, and the result is a boolean map of its shape
    before = mask.copy()
    out = remove_small(mask, 3)
    np.testing.assert_array_equal(mask, before)
    assert out.dtype == bool and out.shape == mask.shape
    four = np.random.default_rng(1).random((3, 3, 4, 5)) < 0.4  # more than 3-D: voxel labels
    np.testing.assert_array_equal(remove_small(four, 3), _reference(four, 3)[0])
    assert lesion_stats(four, 1.0)[0] == _reference(four, 3)[1]
    # non-contiguous input (a layer's transposed view) gives the same answer
    view = np.random.default_rng(2).random((6, 7, 8)).transpose(2, 0, 1) < 0.3
    np.testing.assert_array_equal(remove_small(view, 3), _reference(view, 3)[0])


# -- the widget's pieces that run on every move (Qt, under Xvfb) --------------------------------
@pytest.fixture
def qt(request):
    """pytest-qt's qtbot, or a skip where napari / pytest-qt are not installed."""
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    return request.getfixturevalue("qtbot")


@pytest.fixture
def viewer(qt, request):
    return request.getfixturevalue("make_napari_viewer")()


def _lesion(i, voxels):
    from napari_itermask.lesion_table import Lesion

    return Lesion(i, voxels, voxels / 1000.0, 1.0 * i, 2.0, 3.0, 4.5, 0.5)


def test_lesion_table_lists_the_largest_and_says_how_many_more(qt):
    from napari_itermask._plugin.review_panel import TABLE_ROWS, ReviewPanel

    panel = ReviewPanel()
    qt.addWidget(panel)
    panel.show()
    rows = [_lesion(i + 1, 1000 - i) for i in range(TABLE_ROWS + 37)]  # largest first
    panel.show_table(rows)
    assert panel.table.rowCount() == TABLE_ROWS
    assert panel.table.item(0, 0).text() == "1"
    assert panel.table.item(TABLE_ROWS - 1, 0).text() == str(TABLE_ROWS)
    assert panel.table_note.isVisibleTo(panel) and "37" in panel.table_note.text()
    assert "CSV" in panel.table_note.text()
    # the header still fits its columns to their contents after the fill
    from qtpy.QtWidgets import QHeaderView

    header = panel.table.horizontalHeader()
    assert header.sectionResizeMode(0) == QHeaderView.ResizeMode.ResizeToContents
    assert header.sectionResizeMode(3) == QHeaderView.ResizeMode.Stretch
    panel.show_table(rows[:3])  # few lesions: all listed, no note
    assert panel.table.rowCount() == 3 and not panel.table_note.isVisibleTo(panel)
    panel.show_table([])
    assert panel.table.rowCount() == 0 and not panel.table_note.isVisibleTo(panel)


def test_threshold_range_is_measured_once_per_error_map(qt):
    from napari_itermask._plugin.review_panel import ReviewPanel

    class CountingMap(np.ndarray):
        calls = 0

        def max(self, *a, **k):
            CountingMap.calls += 1
            return super().max(*a, **k)

    panel = ReviewPanel()
    qt.addWidget(panel)
    err = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 2).view(CountingMap)
    assert panel._error_max(err) == pytest.approx(11.5)
    assert panel._error_max(err) == pytest.approx(11.5) and CountingMap.calls == 1
    other = (err * 2).view(CountingMap)  # a new map (the next frame): measured again
    assert panel._error_max(other) == pytest.approx(23.0) and CountingMap.calls == 2


def test_preview_layers_are_updated_in_place_and_own_their_arrays(viewer):
    from types import SimpleNamespace

    from napari_itermask._plugin.presenter import LayerPresenter

    src = viewer.add_image(np.zeros((4, 5, 6), np.float32), name="scan")
    sess = SimpleNamespace(source=src, layers={}, shown_step=None)
    presenter = LayerPresenter(viewer)
    masks = [np.zeros((4, 5, 6), bool) for _ in range(3)]
    masks[0][1:3, 2:4, 1:5] = True
    masks[1][2, 2, 2] = True  # the next iterations' (smaller) masks
    masks[2][2, 3, 3] = True
    layer = presenter.show_mask(sess, masks[0])
    assert sess.layers["mask"] is layer and layer.data.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(layer.data), masks[0].astype(np.uint8))
    presenter.show_mask(sess, masks[1])
    own = layer.data
    assert sess.layers["mask"] is layer  # the same layer, new data, an array of its own
    assert not np.shares_memory(np.asarray(own), masks[1])
    np.testing.assert_array_equal(np.asarray(own), masks[1].astype(np.uint8))
    # later frames are copied into that array: no data event (napari's setter would emit one
    # and recompute every layer's extent), and the slice on screen is the new one
    seen = []
    layer.events.data.connect(lambda e: seen.append(e))
    viewer.dims.set_point(0, 2)
    presenter.show_mask(sess, masks[2])
    assert layer.data is own and seen == []
    np.testing.assert_array_equal(np.asarray(own), masks[2].astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), masks[2][2].astype(np.uint8))
    # painting on the layer never writes into the caller's array
    own[0, 0, 0] = 7
    assert not masks[2][0, 0, 0]
    # an array the layer was given by someone else is replaced through the setter, not written
    foreign = np.zeros((4, 5, 6), np.uint8)
    layer.data = foreign
    presenter.show_mask(sess, masks[1])
    assert not foreign.any() and layer.data is not foreign
    np.testing.assert_array_equal(np.asarray(layer.data), masks[1].astype(np.uint8))

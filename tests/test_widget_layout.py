"""What a clinician sees in the widget: nothing clipped at the dock's default width (with a saved
screenshot), the error map's colours explained, units and help on τ / threshold / minimum size,
the per-lesion table, Dice against the ground truth, a contrast warning, the ground truth as an
outline, and a progress line that moves. Under Xvfb (QT_QPA_PLATFORM=xcb QT_API=pyqt6).

Set ITERMASK_SCREENSHOT_DIR to keep the screenshots (they go to tmp_path otherwise).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from _plugin_support import add_case, small_case, tiny_model  # noqa: E402,F401

RUN_TIMEOUT = 60_000


def _clipped(root) -> list[str]:
    """Visible labels and buttons whose text needs more room than they were given."""
    from qtpy.QtWidgets import QAbstractButton, QLabel

    out = []
    for w in root.findChildren(QLabel) + root.findChildren(QAbstractButton):
        if not w.isVisible() or not w.text() or w.width() == 0:
            continue
        if isinstance(w, QLabel) and w.wordWrap():
            if w.heightForWidth(w.width()) > w.height() + 1:
                out.append(f"{type(w).__name__} {w.text()!r}: wraps taller than its "
                           f"{w.height()} px")
        elif w.sizeHint().width() > w.width():
            out.append(f"{type(w).__name__} {w.text()!r}: needs {w.sizeHint().width()} px, "
                       f"has {w.width()}")
    return out


def _combo_clipped(root) -> list[str]:
    """Visible combo boxes whose shown text (all items, for the review's short source list) is
    wider than their text field."""
    from qtpy.QtWidgets import QComboBox, QStyle, QStyleOptionComboBox

    out = []
    for combo in root.findChildren(QComboBox):
        if not combo.isVisible() or combo.width() == 0:
            continue
        opt = QStyleOptionComboBox()
        combo.initStyleOption(opt)
        field = combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                             QStyle.SubControl.SC_ComboBoxEditField, combo)
        every = combo.objectName() == "itermask-source"
        texts = [combo.itemText(i) for i in range(combo.count())] if every else [
            combo.currentText()]
        out += [f"QComboBox {t!r}: needs {combo.fontMetrics().horizontalAdvance(t)} px, has "
                f"{field.width()}" for t in texts
                if combo.fontMetrics().horizontalAdvance(t) > field.width()]
    return out


def _assert_table_fits(panel, qtbot) -> None:
    """Every column of the lesion table fits, without sideways scrolling or eliding, with values
    as wide as a real scan's (the tiny model's are narrower)."""
    from napari_itermask.lesion_table import Lesion

    table = panel.table
    panel.show_table([Lesion(i + 1, 40_000, 160.301, -120.4, -101.2, -133.9, 171.8, 1234.5678)
                      for i in range(3)])
    qtbot.wait(50)
    widths = [table.columnWidth(c) for c in range(table.columnCount())]
    assert table.horizontalScrollBar().maximum() == 0, widths
    for c in range(table.columnCount()):
        need = max(table.sizeHintForColumn(c), table.horizontalHeader().sectionSizeHint(c))
        assert widths[c] >= need, (c, widths, need)


def _keep(path: Path) -> Path:
    folder = os.environ.get("ITERMASK_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)
    return path


def test_progress_fraction_moves_and_ends_at_one():
    from napari_itermask.progress import format_elapsed, progress_fraction

    # 10 slices, cap 6: a run where slices finish one by one
    seq = [progress_fraction(active, 10, it, 6) for it, active in
           [(1, 10), (2, 9), (3, 7), (4, 4), (5, 1), (6, 0)]]
    assert seq[0] > 0 and all(a < b for a, b in zip(seq, seq[1:])) and seq[-1] == 1.0
    assert progress_fraction(5, 10, 7, 6, start_iteration=6) < 1.0  # a Continue starts afresh
    assert progress_fraction(0, 0, 1, 6) == 0.0
    assert format_elapsed(83) == "1:23" and format_elapsed(3723) == "1:02:03"


def test_nothing_clipped_at_the_default_width_and_screenshot(make_napari_viewer, qtbot,
                                                             tiny_model, small_case, tmp_path):
    from napari_itermask._plugin import TITLE, IterMaskWidget

    viewer = make_napari_viewer(show=True)
    add_case(viewer, small_case)
    dock, w = viewer.window.add_plugin_dock_widget("napari-itermask", TITLE)
    assert isinstance(w, IterMaskWidget)
    qtbot.waitUntil(dock.isVisible, timeout=10_000)
    w.set_model(str(tiny_model))
    w.inputs.device.value = "cpu"
    w.inputs.advanced.expand(animate=False)
    assert w.run()
    qtbot.waitUntil(lambda: w._worker is None, timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: w.review_panel.table.rowCount() > 0, timeout=5_000)
    qtbot.wait(300)
    # the dock is as wide as napari gives it by default; everything fits that width
    assert not _clipped(dock), "\n".join(_clipped(dock))
    assert not _combo_clipped(dock), "\n".join(_combo_clipped(dock))
    _assert_table_fits(w.review_panel, qtbot)
    from qtpy.QtWidgets import QLabel

    assert any(TITLE in lbl.text() for lbl in dock.findChildren(QLabel) if lbl.isVisible())
    path = tmp_path / "widget-default-width.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    _keep(path)
    from qtpy.QtWidgets import QApplication

    dock_shot = tmp_path / "widget-dock.png"
    QApplication.processEvents()
    assert dock.grab().save(str(dock_shot))
    _keep(dock_shot)
    review_shot = tmp_path / "widget-review-panel.png"  # below the fold of the scroll area
    assert w.review_panel.grab().save(str(review_shot))
    _keep(review_shot)
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    assert canvas.mean() > 5 and canvas.std() > 10  # a drawn brain, not a black canvas


def test_nothing_clipped_when_docked_as_the_demo_docks_it(make_napari_viewer, qtbot,
                                                          small_case):
    """``itermask demo`` and scripts/screenshots.py dock the widget under its bare title, which
    gives a narrower dock than the Plugins menu (whose title adds the plugin's name)."""
    from napari_itermask._plugin import TITLE, IterMaskWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    add_case(viewer, small_case)
    w = IterMaskWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name=TITLE, area="right")
    qtbot.waitUntil(dock.isVisible, timeout=10_000)
    qtbot.wait(300)
    assert not _clipped(dock), "\n".join(_clipped(dock))
    assert not _combo_clipped(dock), "\n".join(_combo_clipped(dock))
    _assert_table_fits(w.review_panel, qtbot)


def test_what_a_clinician_sees(make_napari_viewer, qtbot, tiny_model, small_case):
    from napari_itermask._plugin import IterMaskWidget
    from napari_itermask.core.metrics import dice
    from napari_itermask.lesion_table import lesion_table

    viewer = make_napari_viewer()
    img, gt = add_case(viewer, small_case)
    w = IterMaskWidget(viewer)
    qtbot.addWidget(w)
    # the ground truth is an outline, and its image is what is selected
    qtbot.waitUntil(lambda: viewer.layers.selection.active is img, timeout=2_000)
    assert gt.contour == 2
    # the sample's own ground truth is chosen for Dice
    assert w.inputs.truth_layer is gt
    # a T1 model on the FLAIR sample: warned, naming both contrasts
    assert w.set_model("t1")
    note = w.inputs.contrast_note
    assert note.isVisibleTo(w) and "FLAIR" in note.text() and "T1" in note.text()
    assert w.set_model(str(tiny_model))  # a FLAIR model: no warning
    assert not note.isVisibleTo(w)
    w.inputs.device.value = "cpu"
    # units and plain help on τ, threshold and minimum size
    rp = w.review_panel
    for control in (rp.tau_spin, rp.threshold_spin, rp.threshold_slider):
        assert "normalised intensity²" in control.toolTip()
    assert "voxels" in rp.min_size_spin.toolTip() and rp.min_size_spin.suffix() == " voxels"

    lines = []
    w.run_controls.progress_line.setText = lambda t, _f=w.run_controls.progress_line.setText: (
        lines.append(t), _f(t))[-1]
    values = []
    w.run_controls.progress.valueChanged.connect(values.append)
    assert w.run()
    qtbot.waitUntil(lambda: w._worker is None, timeout=RUN_TIMEOUT)
    # a real fraction that moves, with iteration, slices left and the time so far
    assert any(0 < v < 1000 for v in values) and values[-1] == 1000
    assert values == sorted(values)
    assert any("slices left" in t and "iteration" in t and ":" in t.split("·")[-1]
               for t in lines)

    sess = w._current_session()
    err = viewer.layers["sample FLAIR error"]
    assert err.colorbar.visible and err.blending == "translucent"
    assert err.contrast_limits == pytest.approx([0.0, 2 * sess.card.threshold])
    assert rp.legend.threshold == pytest.approx(sess.card.threshold)
    # lesion table and Dice follow the result shown
    qtbot.waitUntil(lambda: rp.table.rowCount() > 0 and not w._table_timer.isActive(),
                    timeout=5_000)
    lesions = np.asarray(viewer.layers["sample FLAIR lesions"].data)
    scan_labels = lesions.transpose(np.argsort(img.metadata["scan_axes"]))
    table = lesion_table(scan_labels, small_case.affine, small_case.image)
    assert rp.table.rowCount() == len(table)
    assert rp.table.item(0, 1).text() == f"{table[0].volume_ml:.3f}"
    want = dice(scan_labels > 0, small_case.label > 0)
    assert rp.dice_label.isVisibleTo(w) and f"{want:.3f}" in rp.dice_label.text()
    rp.min_size_spin.setValue(10**6)  # nothing that large: an empty table, Dice 0
    qtbot.waitUntil(lambda: rp.table.rowCount() == 0, timeout=5_000)
    assert "0.000" in rp.dice_label.text() and "mL" in rp.min_size_hint.text()
    # iteration 0 has no error map: no result, so neither a table nor a Dice of 0
    rp.min_size_spin.setValue(0)
    qtbot.waitUntil(lambda: rp.table.rowCount() > 0, timeout=5_000)
    rp.iter_slider.setValue(0)
    qtbot.waitUntil(lambda: w._mask_worker is None and rp.table.rowCount() == 0
                    and not w._table_timer.isActive(), timeout=10_000)
    assert "iteration 0" in rp.stats_label.text() and not rp.dice_label.isVisibleTo(w)

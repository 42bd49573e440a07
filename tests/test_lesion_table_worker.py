"""The review's lesion table (and its Dice) off the GUI thread: coalesced, a stale table never
shown, a widget or viewer closed mid-computation harmless (issue #18).

A tiny random model on a 3 mm synthetic brain (``_plugin_support``), as in
``test_review_workers``: the lesions mean nothing, the thread and the order of what is shown are
tested. ``lesion_table.lesion_table`` is wrapped by a gate that records the thread of each call
and, while armed, holds calls from worker threads until the test opens it, so a test sees the
moment while a table is computed. Run under Xvfb: QT_QPA_PLATFORM=xcb QT_API=pyqt6.
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

from napari_itermask import lesion_table as lesion_table_module  # noqa: E402
from napari_itermask._layers import from_layer_shape  # noqa: E402
from napari_itermask.core.metrics import dice  # noqa: E402

HELD_MS = 10_000  # how long a test waits for a table worker to reach the gate
RUN_TIMEOUT_MS = 180_000  # a run on a busy two-core machine
REAL_TABLE = lesion_table_module.lesion_table


@pytest.fixture
def ran(make_napari_viewer, qtbot, tiny_model, small_case, notes):
    """A widget whose run on the small case has ended and whose table is shown:
    (viewer, widget, session)."""
    viewer = make_napari_viewer()
    add_case(viewer, small_case)
    w = make_widget(viewer, tiny_model, qtbot)
    w.inputs.max_iter.value = 1  # one iteration: a result and its table, in little time
    assert w.run()
    wait_idle(qtbot, w, timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: table_settled(w), timeout=10_000)
    sess = w._current_session()
    assert sess.finished and not notes["error"], notes["error"]
    return viewer, w, sess


@pytest.fixture
def gate(monkeypatch):
    g = Gate(REAL_TABLE)
    monkeypatch.setattr(lesion_table_module, "lesion_table", g)
    yield g
    g.open()  # never leave a worker held


@pytest.fixture
def shown_tables(ran, monkeypatch):
    """Every table the review panel is given, as lists of rows."""
    _, w, _ = ran
    seen: list = []
    show = w.review_panel.show_table
    monkeypatch.setattr(w.review_panel, "show_table",
                        lambda rows: seen.append(list(rows)) or show(rows))
    return seen


def table_settled(w) -> bool:
    """No table waits for its debounce or its worker."""
    return (not w._table_timer.isActive()
            and getattr(w.runner, "table_worker", None) is None
            and getattr(w.runner, "table_pending", None) is None)


def expected_table(sess):
    """The labels the lesion layer shows (scan grid) and their table, computed here."""
    labels = from_layer_shape(np.asarray(sess.layers["lesions"].data), sess.source).reshape(
        sess.job.scan.data.shape)
    return labels, REAL_TABLE(labels, sess.job.scan.affine, sess.job.scan.data)


def deleted(qobject) -> bool:
    try:
        qobject.objectName()
        return False
    except RuntimeError:  # the Qt object behind it has been deleted
        return True


def rows_of(panel) -> list[str]:
    return [panel.table.item(r, 1).text() for r in range(panel.table.rowCount())]


def test_the_table_and_its_dice_are_computed_off_the_gui_thread(ran, gate, qtbot, small_case,
                                                                 notes):
    viewer, w, sess = ran
    rp = w.review_panel
    gate.calls.clear()  # not armed: calls are recorded, none held
    w.review_panel.threshold_spin.setValue(0.5 * THRESHOLD)  # a new result, at once
    qtbot.waitUntil(lambda: bool(gate.calls) and table_settled(w), timeout=10_000)
    assert gate.calls and not any(gui for _, gui in gate.calls), \
        "the lesion table was computed on the GUI thread"
    labels, table = expected_table(sess)
    assert len(table) > 1 and rp.table.rowCount() == min(len(table), 100)
    assert rows_of(rp)[:3] == [f"{row.volume_ml:.3f}" for row in table[:3]]
    want = dice(labels > 0, small_case.label > 0)
    assert rp.dice_label.isVisibleTo(w) and f"{want:.3f}" in rp.dice_label.text()
    # another ground truth chosen: the table's worker brings its Dice, off this thread
    gate.calls.clear()
    other = viewer.add_labels(np.flip(np.asarray(sess.layers["lesions"].data), axis=-1).copy(),
                              name="other truth")
    w.inputs.truth.value = other
    qtbot.waitUntil(lambda: bool(gate.calls) and table_settled(w), timeout=10_000)
    assert not any(gui for _, gui in gate.calls)
    gt = from_layer_shape(np.asarray(other.data), sess.source).reshape(labels.shape)
    assert f"Dice vs 'other truth': {dice(labels > 0, gt > 0):.3f}" == rp.dice_label.text()
    assert not notes["error"], notes["error"]


def test_a_table_of_a_result_no_longer_shown_is_dropped(ran, gate, shown_tables, qtbot,
                                                        notes):
    viewer, w, sess = ran
    rp = w.review_panel
    before = rows_of(rp)
    gate.arm()
    rp.threshold_spin.setValue(0.5 * THRESHOLD)  # its table is held in its worker ...
    qtbot.waitUntil(gate.held.is_set, timeout=HELD_MS)
    assert rows_of(rp) == before  # the GUI goes on; the old table stays meanwhile
    held_labels = gate.calls[0][0][0]  # (args, on the GUI thread): labels come first
    rp.threshold_spin.setValue(1.5 * THRESHOLD)  # ... while the user moves on
    gate.open()
    qtbot.waitUntil(lambda: table_settled(w), timeout=10_000)
    qtbot.wait(50)
    # the held table (of 0.5 × the threshold) never shown; the latest is
    labels, table = expected_table(sess)
    assert not np.array_equal(held_labels, labels)
    assert [len(t) for t in shown_tables] == [len(table)]
    assert rows_of(rp) == [f"{row.volume_ml:.3f}" for row in table[:100]]
    assert [args[0] is held_labels for args, _ in gate.calls] == [True, False]
    assert not notes["error"], notes["error"]

    # a table of a session that is gone (Reset) is dropped: the table stays empty
    gate.arm()
    rp.threshold_spin.setValue(THRESHOLD)
    qtbot.waitUntil(gate.held.is_set, timeout=HELD_MS)
    w.reset()
    assert rp.table.rowCount() == 0
    shown_tables.clear()
    gate.open()
    qtbot.waitUntil(lambda: table_settled(w), timeout=10_000)
    qtbot.wait(50)
    assert rp.table.rowCount() == 0 and all(t == [] for t in shown_tables)
    assert w._current_session() is None and not notes["error"], notes["error"]


def test_table_requests_coalesce_while_one_is_computed(ran, gate, shown_tables, qtbot, notes):
    viewer, w, sess = ran
    rp = w.review_panel
    gate.arm()
    rp.threshold_spin.setValue(0.5 * THRESHOLD)
    qtbot.waitUntil(gate.held.is_set, timeout=HELD_MS)
    moves = [0.6, 0.7, 0.8, 0.9, 1.1]
    for f in moves:  # each move's table asked for while the first is held
        rp.threshold_spin.setValue(f * THRESHOLD)
        w._table_timer.stop()
        w._refresh_table()
        assert w._table_timer.isActive()  # a table is on its way
    gate.open()
    qtbot.waitUntil(lambda: table_settled(w), timeout=10_000)
    qtbot.wait(50)
    # the held one and the latest: the moves between never computed, none but the last shown
    assert len(gate.calls) == 2 < 1 + len(moves)
    assert not any(gui for _, gui in gate.calls)
    labels, table = expected_table(sess)
    np.testing.assert_array_equal(gate.calls[-1][0][0], labels)
    assert [len(t) for t in shown_tables] == [len(table)]
    assert not notes["error"], notes["error"]


@pytest.mark.parametrize("close", ["viewer", "widget"])
def test_closing_mid_table_is_harmless(make_napari_viewer, qtbot, tiny_model, small_case,
                                       gate, notes, close):
    viewer = make_napari_viewer()
    add_case(viewer, small_case)
    # a widget deleted here is not handed to qtbot (which would close it again)
    w = make_widget(viewer, tiny_model, qtbot if close == "viewer" else None)
    w.inputs.max_iter.value = 1
    assert w.run()
    wait_idle(qtbot, w, timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: table_settled(w), timeout=10_000)
    gate.arm()
    w.review_panel.threshold_spin.setValue(0.5 * THRESHOLD)
    qtbot.waitUntil(gate.held.is_set, timeout=HELD_MS)
    worker = w.runner.table_worker
    ended = []
    worker.finished.connect(lambda: ended.append(True))
    runner = w.runner
    if close == "viewer":
        viewer.close()
    else:
        w.close()
        w.deleteLater()  # its dock closed: the widget's Qt objects go while the table is held
        qtbot.waitUntil(lambda: deleted(w), timeout=5_000)
    gate.open()
    qtbot.waitUntil(lambda: bool(ended), timeout=10_000)
    qtbot.wait(50)
    assert runner.table_worker is None and not notes["error"], notes["error"]

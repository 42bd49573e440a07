"""`itermask demo`: headless Dice report, and the viewer with the sample and the widget docked."""

import napari
import pytest

from napari_itermask.cli import main


def test_demo_headless_prints_dice(capsys, tiny_model_dir):
    assert main(["demo", "--headless", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "Dice" in out and "sample: synthetic flair, glioma stratum" in out


@pytest.mark.gui
def test_demo_opens_viewer_with_sample_and_widget(make_napari_viewer, monkeypatch, qtbot,
                                                  isolated_home):
    viewer = make_napari_viewer(show=True)
    monkeypatch.setattr(napari, "Viewer", lambda **kw: viewer)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    assert main(["demo", "--modality", "t1"]) == 0
    names = [layer.name for layer in viewer.layers]
    assert any("sample T1" == n for n in names) and any("ground truth" in n for n in names)
    docks = viewer.window.dock_widgets
    assert any("IterMask" in name for name in docks)
    inner = next(w for name, w in docks.items() if "IterMask" in name)
    qtbot.waitUntil(inner.parent().isVisible, timeout=5000)
    # the widget remembers the demo's model in this test's own settings folder, not the user's
    import json

    stored = json.loads((isolated_home.itermask_config / "settings.json").read_text())
    assert stored["model"] == "t1"

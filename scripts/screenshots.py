"""Regenerate the README screenshots of the napari workflow into docs/.

    QT_QPA_PLATFORM=xcb QT_API=pyqt6 xvfb-run -a -s "-screen 0 1920x1080x24" \\
        python scripts/screenshots.py [--model flair] [--out docs]

Opens the synthetic FLAIR sample with the IterMask² widget docked, runs the shrink loop and
captures the whole window (``viewer.screenshot(path, canvas_only=False)``) three times:

1. ``workflow-1-initial-mask.png``: iteration 0, the mask covers the brain;
2. ``workflow-2-middle-iteration.png``: a middle iteration of the stored history;
3. ``workflow-3-final-segmentation.png``: the last iteration, lesions thresholded on the error
   map, with the review sliders.

The model is the bundled one if it is trained; otherwise (until trained models land) a random
tiny model is used and the widget says so: the images then show the mechanics, not results.
PNGs are re-encoded with a palette when needed to stay under 300 KB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 300_000


def _random_model(folder: Path) -> Path:
    import torch

    from napari_itermask.models import ModelBundle, new_card, save_bundle

    torch.manual_seed(0)
    card = new_card("random-tiny", "flair", "tiny", tau=4.0, threshold=9.0, max_iter=8)
    bundle = ModelBundle.fresh(card)
    for net in (bundle.first, bundle.masked):
        torch.nn.init.normal_(net.out.weight, std=0.05)
    return save_bundle(bundle, folder / "random-tiny", overwrite=True)


def _pick_model(name: str, tmp: Path) -> str:
    from napari_itermask.errors import ItermaskError
    from napari_itermask.models import read_card, resolve_model

    try:
        if read_card(resolve_model(name)).trained:
            return name
        why = "is untrained"
    except ItermaskError as exc:
        why = f"is unavailable ({exc})"
    print(f"model {name!r} {why}: using a random tiny model (mechanics only)", file=sys.stderr)
    return str(_random_model(tmp))


def _shrink_png(path: Path) -> None:
    if path.stat().st_size <= LIMIT:
        return
    from PIL import Image

    img = Image.open(path).convert("RGB")
    for colors in (256, 128, 64):
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= LIMIT:
            return
    w, h = img.size
    img = img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS)
    img.quantize(colors=128).save(path, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flair")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_itermask import synth
    from napari_itermask._sample_data import SAMPLE_STRATUM, case_layers, sample_seed
    from napari_itermask._widget import TITLE, IterMaskWidget

    tmp = Path(tempfile.mkdtemp(prefix="itermask-shots-"))
    model = _pick_model(args.model, tmp)
    case = synth.make_case("flair", sample_seed(), stratum=SAMPLE_STRATUM)
    viewer = napari.Viewer(title="napari-itermask", show=True)
    viewer.window.resize(1500, 950)
    layers = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in case_layers(case)]
    image, truth = layers
    truth.visible = False
    widget = IterMaskWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name=TITLE, area="right")
    widget.confirm = lambda *a: True
    widget.set_model(model)
    widget.device_combo.setCurrentText(args.device)

    app = QApplication.instance()

    def wait(cond, what, timeout_s=900):
        import time

        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - t0 > timeout_s:
                raise SystemExit(f"timed out waiting for {what}")

    wait(dock.isVisible, "the dock")
    # show the axial slice through the largest lesion
    if case.lesions:
        biggest = max(case.lesions, key=lambda les: les.get("volume_ml", 0.0))
        viewer.dims.set_point(0, float(biggest["centre_mm"][2]))  # world S = RAS z
    widget.run()
    wait(lambda: widget._worker is None, "the run")
    sess = widget._current_session()
    n = len(sess.steps) - 1
    mask = viewer.layers[f"{image.name} mask"]

    def show_step(k):
        before = np.asarray(mask.data).copy()
        widget.iter_slider.setValue(k)
        wait(lambda: widget._mask_worker is None, "the mask")
        app.processEvents()
        return before

    def shot(name):
        for _ in range(10):
            app.processEvents()
        path = out / name
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        _shrink_png(path)
        print(f"{path}  {path.stat().st_size / 1000:.0f} KB")

    viewer.layers[f"{image.name} error"].visible = False
    viewer.layers[f"{image.name} lesions"].visible = False
    show_step(0)
    shot("workflow-1-initial-mask.png")
    show_step(max(1, n // 2))
    shot("workflow-2-middle-iteration.png")
    show_step(n)
    viewer.layers[f"{image.name} error"].visible = True
    viewer.layers[f"{image.name} lesions"].visible = True
    mask.visible = False
    truth.visible = True
    truth.contour = 2  # ground truth as a green outline, on top
    truth.opacity = 1.0
    viewer.layers.move(viewer.layers.index(truth), len(viewer.layers))
    viewer.layers.selection.active = image
    shot("workflow-3-final-segmentation.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the README screenshots of the napari workflow into docs/.

    QT_QPA_PLATFORM=xcb QT_API=pyqt6 xvfb-run -a -s "-screen 0 1920x1080x24" \\
        python scripts/screenshots.py [--model flair] [--iteration K] [--out docs]

Opens the default synthetic FLAIR sample (glioma) with the IterMask² widget docked, runs the
shrink loop to convergence and captures the whole window (``viewer.screenshot(path,
canvas_only=False)``) four times, on the axial slice through the largest lesion:

1. ``workflow-1-initial-mask.png``: iteration 0 chosen, the mask (cyan) covers the brain;
2. ``workflow-2-middle-iteration.png``: a middle iteration (``--iteration``, default half the
   history) chosen as the result: the slider short of its end, the lesion layer (red) that
   iteration's reconstruction error above the threshold, with the ground truth as a green
   outline;
3. ``workflow-4-lesion-table.png``: the same result with the dock scrolled to the review
   panel's lesion count, Dice against the ground truth and per-lesion table;
4. ``workflow-3-final-segmentation.png``: the last iteration (the paper's default result),
   its lesions over its error map (translucent, with the colour bar).

The model is the bundled one if it is trained; otherwise a random tiny model is used and the
widget says so: the images then show the mechanics, not results. PNGs are re-encoded with a
palette when needed to stay under 300 KB.
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--iteration", type=int, default=None,
                        help="the middle iteration to choose (default: half the history)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import time

    tmp = Path(tempfile.mkdtemp(prefix="itermask-shots-"))
    # the widget and napari persist their choices: keep both in the temporary folder, never in
    # the developer's own settings (napari reads NAPARI_CONFIG once, when first imported)
    os.environ["ITERMASK_CONFIG_DIR"] = str(tmp / "config")
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari" / "settings.yaml")
    import napari
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_itermask import synth
    from napari_itermask._plugin import TITLE, IterMaskWidget
    from napari_itermask._sample_data import SAMPLE_STRATUM, case_layers, sample_seed

    model = _pick_model(args.model, tmp)
    case = synth.make_case("flair", sample_seed(), stratum=SAMPLE_STRATUM)
    viewer = napari.Viewer(title="napari-itermask", show=True)
    viewer.window.resize(1600, 1000)
    layers = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in case_layers(case)]
    image, truth = layers
    widget = IterMaskWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name=TITLE, area="right")
    widget.confirm = lambda *a: True
    widget.set_model(model)
    widget.inputs.device.value = args.device
    panel = widget.review_panel
    scroll = widget.findChild(QScrollArea)

    app = QApplication.instance()

    def wait(cond, what, timeout_s=1800):
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - t0 > timeout_s:
                raise SystemExit(f"timed out waiting for {what}")

    def settle(ms=400):
        t0 = time.monotonic()
        while time.monotonic() - t0 < ms / 1000:
            app.processEvents()
            time.sleep(0.02)

    wait(dock.isVisible, "the dock")
    # show the axial slice through the largest lesion
    if case.lesions:
        biggest = max(case.lesions, key=lambda les: les.get("volume_ml", 0.0))
        viewer.dims.set_point(0, float(biggest["centre_mm"][2]))  # world S = RAS z
    t0 = time.monotonic()
    if not widget.run():
        raise SystemExit("the run did not start")
    wait(lambda: widget._worker is None, "the run")
    sess = widget._current_session()
    if sess is None or not sess.steps:
        raise SystemExit("the run produced nothing")
    n = len(sess.steps) - 1
    print(f"run: {n} iterations in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    names = {role: f"{image.name} {role}" for role in ("mask", "error", "lesions")}

    def choose(k):
        """Move the review's iteration slider to k and wait for its maps and its table."""
        panel.iter_slider.setValue(k)
        wait(lambda: widget._mask_worker is None, f"iteration {k}'s maps")
        settle()
        wait(lambda: not widget._table_timer.isActive(), "the lesion table")
        settle()

    def visible(**shown):
        for role, on in shown.items():
            viewer.layers[names[role]].visible = on
        viewer.layers.selection.active = image

    def shot(name):
        settle(600)
        path = out / name
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        _shrink_png(path)
        print(f"{path}  {path.stat().st_size / 1000:.0f} KB")
        return path

    # the ground truth: a green outline on top of everything
    truth.contour = 2
    truth.opacity = 1.0
    viewer.layers.move(viewer.layers.index(truth), len(viewer.layers))

    scroll.verticalScrollBar().setValue(0)
    choose(0)
    visible(mask=True, error=False, lesions=False)
    truth.visible = False
    shot("workflow-1-initial-mask.png")

    k = args.iteration if args.iteration is not None else max(1, n // 2)
    k = min(max(k, 1), n - 1) if n > 1 else n
    choose(k)
    # the lesions alone (red) against the ground truth's outline: over the error map's own
    # orange they would be hard to tell apart
    visible(mask=False, error=False, lesions=True)
    truth.visible = True
    shot("workflow-2-middle-iteration.png")
    scroll.ensureWidgetVisible(panel.export_btn, 0, 0)
    scroll.ensureWidgetVisible(panel.table, 0, 6)
    shot("workflow-4-lesion-table.png")

    scroll.verticalScrollBar().setValue(0)
    choose(n)
    visible(mask=False, error=True, lesions=True)  # with the error map and its colour bar
    shot("workflow-3-final-segmentation.png")
    print(f"chosen middle iteration: {k} of {n}", file=sys.stderr)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

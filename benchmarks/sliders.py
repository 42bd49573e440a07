"""The review's sliders and a run's per-iteration frames, timed through the widget's own code.

A real napari window (run it under Xvfb), the IterMask² dock widget, a synthetic FLAIR brain of
clinical size and a real run (bundled ``flair`` by default, ``--max-iter`` iterations) through
the widget's Run button. Then, in interleaved rounds, each path (``today``: the code before the
sliders work, put back for the round; ``sync``: the package with only its review workers put
back as they were, the mask shown with the maps and every result computed on the GUI thread;
``setter``: the package with its preview layers updated through napari's data setter, as before
session 17; ``new``: the package as it is) is driven the way a user drives it:

- ``threshold``: the threshold slider moved step by step over a range around the calibrated
  value (minimum size 0), and ``threshold, min size``: the same with a minimum lesion size
  (both on the GUI thread, at once); ``threshold (lesion worker)``, new path only: the same
  moves with each result computed by the lesion worker, as an asynchronous threshold would;
- ``min size``: the minimum-size control stepped up and down;
- ``iteration``: the iteration slider moved between iterations, timed until the *mask* layer
  shows the chosen iteration (``iteration (mask shown)``) and until its error map,
  reconstruction and lesions are shown too (``iteration (maps, lesions)``);
- ``frame``: each iteration's frame of the run, recorded as the run reported it, handed again
  to the widget's frame handler: ``frame (GUI thread)`` until the handler has returned and the
  canvas is redrawn (the GUI is blocked that long), ``frame (lesions shown)`` until the frame's
  lesions are on screen too (the same for paths that compute them on the GUI thread).

Every time runs from the control's change until the layer data are updated *and* the canvas
is redrawn (pending Qt events processed, the canvas repainted, the GL pipeline finished).
Before the rounds, both paths are checked to give the same lesion layer for the same values.

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/sliders.py --rounds 3
    xvfb-run -a ... python benchmarks/sliders.py --paths sync,new --actions iteration,frame

Times from a loaded machine (a training job beside it) say nothing about the targets.

Settings of the widget and of napari go to a temporary folder, never the user's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- today's path, put back for the "today" rounds ------------------------------------------------
def _sync_patches():
    """(class, attribute, that function as it was) for what the review workers replaced: a
    chosen iteration's mask shown with its maps, and every result (a frame's, a chosen
    iteration's) computed on the GUI thread."""
    from functools import partial

    import numpy as np

    from napari_itermask import review
    from napari_itermask._plugin import controller, runner
    from napari_itermask._plugin.common import notify

    def request_step(self, sess, k, lesions=True):
        from napari.qt.threading import create_worker

        if self.mask_worker is not None:
            self.mask_pending = (sess, k, lesions)
            return

        def compute():
            if k == 0:
                return k, sess.job.volume.scan_brain, None, None
            error, recon = review.maps_at(sess, k)
            return k, sess.job.mask_on_scan(k), error, recon

        worker = create_worker(compute, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(partial(on_step_ready, self, sess))
        worker.errored.connect(lambda exc: notify("error", str(exc)))
        worker.finished.connect(self._on_mask_worker_done)
        self.mask_worker = worker
        worker.start()

    def on_step_ready(self, sess, result):
        k, mask, error, recon = result
        if self._host_gone():
            return
        if self.alive(sess) and self.mask_pending is None:
            self.host.presenter.show_step(sess, k, mask, error, recon)
            self.host._update_lesions(sess)

    real_apply = runner.Runner._apply_frame

    def apply_frame(self, sess, frame):
        ask = self.request_lesions
        self.request_lesions = lambda s, **kw: self.host._update_lesions(s)
        try:
            real_apply(self, sess, frame)
        finally:
            self.request_lesions = ask

    def on_iteration(self, k):
        sess = self._current_session()
        if sess is None or sess.job is None or not (0 <= k < len(sess.steps)):
            return
        last = len(sess.steps) - 1
        if self._edit_review(iteration=None if k == last else int(k)) is None:
            return
        self.review_panel.show_iteration(sess, k)
        if k == 0 or review.cache_key(sess.job, k) in sess.errors:
            self._update_lesions(sess)
        self.runner.request_step(sess, k)

    def update_lesions(self, sess):
        from napari_itermask.core.segmentation import lesion_stats
        from napari_itermask.errors import ItermaskError

        if sess.job is None or sess.review is None or not sess.steps:
            return
        try:
            labels, _ = review.lesions(sess)
            n, ml = lesion_stats(labels, sess.job.scan.voxel_volume_mm3)
            sess.summary, made = f"Lesions: {n} · {ml:.2f} mL", True
        except ItermaskError as exc:
            labels = np.zeros(sess.job.scan.data.shape, np.uint8)
            sess.summary, made = f"Lesions: – ({exc})", False
        self._shown[id(sess.source)] = (sess, labels if made else None)
        self.presenter.show_lesions(sess, labels, self.confirm)
        if self._current_session() is sess:
            dice = self._dice_text(sess, labels) if made else None
            self.review_panel.show_result(sess.summary, dice)
            self._schedule_table()

    return [(runner.Runner, "request_step", request_step),
            (runner.Runner, "_apply_frame", apply_frame),
            (controller.IterMaskWidget, "_on_iteration", on_iteration),
            (controller.IterMaskWidget, "_update_lesions", update_lesions)]


def _today_patches():
    """(module, attribute, today's function) for every function the sliders work replaced
    (the review workers' too: ``_sync_patches``)."""
    import numpy as np
    from scipy import ndimage

    from napari_itermask import pipeline
    from napari_itermask._plugin import presenter, review_panel
    from napari_itermask.core import segmentation

    def remove_small(labels, min_size):
        labels = np.asarray(labels, bool)
        if min_size <= 1 or not labels.any():
            return labels
        comp, n = ndimage.label(labels, structure=np.ones((3,) * labels.ndim))
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        return keep[comp]

    def lesion_stats(labels, voxel_volume_mm3):
        labels = np.asarray(labels, bool)
        if not labels.any():
            return 0, 0.0
        _, n = ndimage.label(labels, structure=np.ones((3,) * labels.ndim))
        return int(n), float(labels.sum()) * voxel_volume_mm3 / 1000.0

    def show(self, sess, role, data, kind, **kwargs):
        layer = self.layer(sess, role)
        data = presenter.to_layer_shape(data, sess.source)
        if layer is None:
            kw = presenter.derived_kwargs(sess.source, role, **kwargs)
            layer = presenter.unwrap(getattr(self._viewer, f"add_{kind}")(data, **kw))
            sess.layers[role] = layer
            if role == "lesions":
                layer.events.paint.connect(presenter.partial(self._on_painted, sess))
            self._viewer.layers.selection.active = sess.source
        else:
            layer.data = data
        return layer

    def show_step(self, sess, k, mask, error, recon):
        sess.shown_step = k
        self.show(sess, "mask", mask.astype(np.uint8), "labels", opacity=0.3,
                  colormap=presenter.labels_cmap(presenter.MASK_COLOR))
        if recon is not None:
            self.show(sess, "reconstruction", recon, "image", colormap="gray",
                      visible=False, contrast_limits=(-3.0, 3.5))
        if error is not None:
            fresh = self.layer(sess, "error") is None
            layer = self.show(sess, "error", error, "image",
                              colormap=presenter.error_colormap(), blending="translucent",
                              opacity=0.9,
                              contrast_limits=presenter.error_limits(sess.card.threshold))
            if fresh:
                layer.colorbar.visible = True

    def show_table(self, rows):
        self.table.setRowCount(len(rows))
        for r, les in enumerate(rows):
            mean = "" if review_panel.math.isnan(les.mean_intensity) else (
                f"{les.mean_intensity:.4g}")
            cells = (str(les.lesion), f"{les.volume_ml:.3f}", f"{les.largest_diameter_mm:.1f}",
                     ", ".join(f"{c:.0f}" for c in les.centroid_mm), mean)
            for c, text in enumerate(cells):
                item = review_panel.QTableWidgetItem(text)
                if c != review_panel.CENTROID_COLUMN:
                    item.setTextAlignment(int(review_panel.Qt.AlignmentFlag.AlignRight
                                              | review_panel.Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(r, c, item)

    def error_max(self, error):
        return float(error.max())

    patches = [(segmentation, "remove_small", remove_small),
               (review_panel.ReviewPanel, "_error_max", error_max),
               (review_panel.ReviewPanel, "show_table", show_table),
               (segmentation, "lesion_stats", lesion_stats),
               (pipeline, "remove_small", remove_small),
               (pipeline, "lesion_stats", lesion_stats),
               (presenter.LayerPresenter, "show", show),
               (presenter.LayerPresenter, "show_step", show_step)]
    return patches + _sync_patches()


def _setter_patches():
    """The preview layers updated through napari's data setter, as before session 17 (the
    package's ``LayerPresenter._update`` copies into the layer's own array instead)."""
    from napari_itermask._plugin import presenter

    def update(self, layer, data):
        layer.data = data

    return [(presenter.LayerPresenter, "_update", update)]


class Paths:
    """Switches between today's functions, the package's own but for its review workers
    (``sync``), the package's own but for its in-place layer updates (``setter``) and the
    package's own (``new``), by patching attributes."""

    def __init__(self):
        self._sets = {"today": _today_patches(), "sync": _sync_patches(),
                      "setter": _setter_patches()}
        names = {(obj, name) for patches in self._sets.values() for obj, name, _ in patches}
        self._new = [(obj, name, obj.__dict__[name]) for obj, name in names]

    def use(self, which: str) -> None:
        for obj, name, fn in self._new:
            setattr(obj, name, fn)
        for obj, name, fn in self._sets.get(which, []):
            setattr(obj, name, fn)


TARGETED = ("threshold", "threshold, min size", "min size", "iteration (mask shown)",
            "frame (GUI thread)", "frame (lesions shown)")


def _tiny_model(folder):
    """A random tiny model (the GUI tests' kind): a quick run whose maps mean nothing."""
    import torch

    from napari_itermask.models import ModelBundle, new_card, save_bundle

    torch.manual_seed(0)
    card = new_card("tiny", "flair", "tiny", grid_size=64, pixel_size_mm=3.75,
                    min_brain_pixels=20, max_iter=6, tau=4.0, threshold=9.0, trained=False)
    bundle = ModelBundle.fresh(card)
    for net in (bundle.first, bundle.masked):
        torch.nn.init.normal_(net.out.weight, std=0.05)
    return save_bundle(bundle, folder)


def core_table(args) -> int:
    """Threshold + minimum size + lesion count, today's functions and the new ones, interleaved,
    on a smooth random error map inside an ellipsoid brain of the clinical grid."""
    import numpy as np
    from scipy import ndimage

    from napari_itermask.core import segmentation

    today = {name: fn for obj, name, fn in _today_patches() if obj is segmentation}
    new = {"remove_small": segmentation.remove_small, "lesion_stats": segmentation.lesion_stats}
    shape = tuple(round(s * 1.2 / args.voxel_mm) for s in (164, 194, 158))
    rng = np.random.default_rng(0)
    zz, yy, xx = np.ogrid[tuple(slice(0, s) for s in shape)]
    brain = sum(((g - s / 2) / (0.45 * s)) ** 2 for g, s in zip((zz, yy, xx), shape)) < 1
    err = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    err = np.where(brain, err, 0)
    inside = err[brain]
    print(f"\nsmooth random error map {shape[0]}×{shape[1]}×{shape[2]}, threshold at a share "
          f"of the brain, minimum size {args.min_size}; median of {args.rounds} interleaved "
          f"rounds × 5\n")
    print("| share above the threshold | lesions | today ms | new ms | speed-up | same |")
    print("|---|---|---|---|---|---|")
    for share in (0.001, 0.01, 0.05, 0.2):
        thr = float(np.quantile(inside, 1 - share))
        times = {"today": [], "new": []}
        outs = {}
        for r in range(args.rounds):
            for which, fns in (("today", today), ("new", new))[:: 1 if r % 2 == 0 else -1]:
                for _ in range(5):
                    t = time.perf_counter()
                    lab = fns["remove_small"]((err > thr) & brain, args.min_size)
                    n, _ = fns["lesion_stats"](lab.astype(np.uint8), 1.0)
                    times[which].append(time.perf_counter() - t)
                outs[which] = (lab, n)
        same = np.array_equal(outs["today"][0], outs["new"][0]) and (
            outs["today"][1] == outs["new"][1])
        a, b = (1000 * statistics.median(times[k]) for k in ("today", "new"))
        print(f"| {share:.1%} | {outs['new'][1]} | {a:.1f} | {b:.1f} | {a / b:.1f}× | "
              f"{'yes' if same else 'NO'} |", flush=True)
    return 0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the run ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="flair",
                   help="bundled model name, model folder, or 'tiny' (a random 64² model "
                        "built here: quick, its maps mean nothing)")
    p.add_argument("--voxel-mm", type=float, default=1.2,
                   help="voxel size of the synthetic brain (1.2: 164 x 194 x 158 voxels; the "
                        "demo sample is 1.5)")
    p.add_argument("--max-iter", type=int, default=3, help="iterations of the run")
    p.add_argument("--moves", type=int, default=30, help="slider moves per action and round")
    p.add_argument("--min-size", type=int, default=20,
                   help="minimum lesion size (voxels) of the 'threshold, min size' rows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paths", default="today,sync,setter,new",
                   help="today, sync, setter, new (comma-separated; see above)")
    p.add_argument("--actions", default="threshold,min size,iteration,frame",
                   help="which actions to time (comma-separated)")
    p.add_argument("--core", action="store_true",
                   help="no window: time only the numpy part of a threshold move (threshold, "
                        "minimum-size filter, lesion count) on a smooth synthetic error map")
    p.add_argument("--profile", default=None, help="cProfile the new path's moves to this file")
    args = p.parse_args(argv)
    if args.core:
        return core_table(args)

    tmp = Path(tempfile.mkdtemp(prefix="itermask-sliders-"))
    os.environ["ITERMASK_CONFIG_DIR"] = str(tmp / "config")
    os.environ["ITERMASK_MODEL_DIR"] = str(tmp / "models")
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari" / "settings.yaml")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_itermask import synth
    from napari_itermask._plugin import TITLE, IterMaskWidget
    from napari_itermask._sample_data import SAMPLE_STRATUM, case_layers, sample_seed
    from napari_itermask._session import Frame

    paths = Paths()
    case = synth.make_case("flair", sample_seed(), stratum=SAMPLE_STRATUM,
                           voxel_size=args.voxel_mm)
    viewer = napari.Viewer(title="sliders benchmark", show=True)
    for data, kw, kind in case_layers(case):
        getattr(viewer, f"add_{kind}")(data, **kw)
    w = IterMaskWidget(viewer)
    viewer.window.add_dock_widget(w, name=TITLE, area="right")
    w.confirm = lambda *a: True
    if args.model == "tiny":
        args.model = str(_tiny_model(tmp / "tiny"))
    if not w.set_model(args.model):
        raise SystemExit(f"model {args.model!r} not found")
    w.inputs.device.value = "cpu"
    w.inputs.max_iter.value = args.max_iter
    app = QApplication.instance()
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    panel = w.review_panel

    def wait(cond, what, timeout_s=1800.0):
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.002)
            if time.monotonic() - t0 > timeout_s:
                raise SystemExit(f"timed out waiting for {what}")

    def redraw():
        app.processEvents()
        canvas.native.repaint()
        canvas.context.finish()

    # the run, its frames recorded as the widget received them
    frames: list = []
    on_yielded = w.runner._on_yielded

    def record(sess, item):
        if isinstance(item, Frame):
            frames.append(item)
        on_yielded(sess, item)

    w.runner._on_yielded = record
    paths.use("new")
    t0 = time.perf_counter()
    assert w.run()
    wait(lambda: w._worker is None, "the run")
    run_s = time.perf_counter() - t0
    say(f"run: {run_s:.0f} s")
    w.runner._on_yielded = on_yielded
    sess = w._current_session()
    shape = sess.job.scan.data.shape
    thr0 = float(sess.card.threshold)
    lesions = sess.layers["lesions"]
    mask_layer = sess.layers["mask"]
    redraw()
    say(f"canvas {canvas.size[0]}×{canvas.size[1]} px")
    t = time.perf_counter()
    for _ in range(10):
        canvas.update()
        redraw()
    floor_ms = (time.perf_counter() - t) / 10 * 1000

    # the actions: each returns the seconds of one move
    ramp = np.linspace(0.6, 1.6, args.moves) * thr0

    def set_threshold(value):
        panel.threshold_spin.setValue(float(value))

    def threshold_moves(min_size):
        panel.min_size_spin.setValue(min_size)
        set_threshold(ramp[0])
        redraw()
        out = []
        for v in list(ramp[1:]) + list(ramp[-2::-1]):
            t = time.perf_counter()
            panel.threshold_slider.setValue(panel._to_slider(v))
            redraw()
            out.append(time.perf_counter() - t)
        t = time.perf_counter()
        w._table_timer.stop()
        w._refresh_table()
        # the table comes from a worker: the timer counts as active until it is shown
        wait(lambda: not w._table_timer.isActive(), "the lesion table")
        redraw()
        tables.append(time.perf_counter() - t)
        return out

    tables: list = []
    sizes = [int(s) for s in np.linspace(0, 4 * args.min_size, args.moves).round()]

    def min_size_moves():
        set_threshold(thr0)
        panel.min_size_spin.setValue(0)
        redraw()
        out = []
        for s in sizes[1:] + sizes[-2::-1]:
            t = time.perf_counter()
            panel.min_size_spin.setValue(s)
            redraw()
            out.append(time.perf_counter() - t)
        return out

    last = len(sess.steps) - 1

    mask_set = []  # when the mask layer last got new data
    mask_layer.events.data.connect(lambda *_: mask_set.append(time.perf_counter()))

    def iteration_moves():
        panel.min_size_spin.setValue(0)
        set_threshold(thr0)
        mask_out, maps_out = [], []
        # one earlier iteration (its maps cost a network pass), the start (none), the last
        for k in dict.fromkeys([max(last - 1, 0), 0, last]):
            if k == panel.iter_slider.value():
                continue
            mask_set.clear()
            t = time.perf_counter()
            panel.iter_slider.setValue(k)
            wait(lambda: mask_set, "the chosen mask")
            redraw()
            mask_out.append(time.perf_counter() - t)
            # the maps, then the lesions (their worker: _mask_worker is either review worker)
            wait(lambda k=k: w._mask_worker is None and sess.shown_step == k, "the maps")
            redraw()
            maps_out.append(time.perf_counter() - t)
            if not np.array_equal(np.asarray(mask_layer.data) > 0, mask_at(k)):
                raise SystemExit(f"the mask layer does not show iteration {k}")
        panel.iter_slider.setValue(last)
        wait(lambda: w._mask_worker is None and sess.shown_step == last, "the last maps")
        return mask_out, maps_out

    masks_at = {}

    def mask_at(k):
        if k not in masks_at:
            from napari_itermask._layers import to_layer_shape

            mask = sess.job.volume.scan_brain if k == 0 else sess.job.mask_on_scan(k)
            masks_at[k] = to_layer_shape(mask, sess.source)
        return masks_at[k]

    def frame_moves():
        gui, shown = [], []
        for f in frames:
            t = time.perf_counter()
            w.runner._on_yielded(sess, f)
            redraw()
            gui.append(time.perf_counter() - t)
            wait(lambda: w._mask_worker is None, "the frame's lesions")
            redraw()
            shown.append(time.perf_counter() - t)
        return gui, shown

    def threshold_worker_moves():
        """The threshold ramp with each result from the lesion worker (an asynchronous
        threshold path), timed until the lesions are shown."""
        panel.min_size_spin.setValue(0)
        set_threshold(ramp[0])
        redraw()
        out = []
        for v in list(ramp[1:]) + list(ramp[-2::-1]):
            t = time.perf_counter()
            sess.review.update(threshold=float(v))
            w.runner.request_lesions(sess)
            wait(lambda: w._mask_worker is None, "the lesions")
            redraw()
            out.append(time.perf_counter() - t)
        set_threshold(thr0)
        return out

    # the same lesion layer from both paths, for a few values
    check = []
    for which in args.paths.split(","):
        paths.use(which)
        panel.min_size_spin.setValue(1)  # away from the values below: each one is a change
        set_threshold(2 * thr0)
        got = []
        for thr, ms in ((thr0, 0), (0.7 * thr0, args.min_size), (1.3 * thr0, 3)):
            panel.min_size_spin.setValue(ms)
            set_threshold(thr)
            got.append(np.asarray(lesions.data).copy())
        check.append(got)
    same = True
    for c, which in zip(check[1:], args.paths.split(",")[1:]):
        for i, (a, b) in enumerate(zip(check[0], c)):
            if not np.array_equal(a, b):
                same = False
                say(f"setting {i}: {which} differs from {args.paths.split(',')[0]} on "
                    f"{int((a != b).sum())} voxels")

    actions = {a.strip() for a in args.actions.split(",")}
    rows: dict[tuple, list] = {}
    def report(done_rounds):
        print(f"\nscan {shape[0]}×{shape[1]}×{shape[2]} ({np.prod(shape) / 1e6:.1f} M voxels, "
              f"{args.voxel_mm:g} mm), model {args.model}, run of {last} iteration(s) in "
              f"{run_s:.0f} s, threshold {thr0:.4g}, {done_rounds} interleaved round(s), "
              f"{args.moves} moves per action; same lesion layer on every path: "
              f"{'yes' if same else 'NO'}; canvas {canvas.size[0]}×{canvas.size[1]} px, a redraw "
              f"with no change {floor_ms:.0f} ms\n")
        print("| action | path | moves | median ms | p90 ms | target |")
        print("|---|---|---|---|---|---|")
        for action in dict.fromkeys(a for a, _ in rows):
            for which in names:
                ts = rows.get((action, which), [])
                if not ts:
                    continue
                ms = sorted(1000 * t for t in ts)
                p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
                target = "≤ 50 ms median" if action in TARGETED else ""
                print(f"| {action} | {which} | {len(ms)} | {statistics.median(ms):.1f} | "
                      f"{p90:.1f} | {target} |", flush=True)

    names = args.paths.split(",")
    prof = None
    for r in range(args.rounds):
        for which in (names if r % 2 == 0 else names[::-1]):
            paths.use(which)
            if args.profile and which == "new" and prof is None:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            if "threshold" in actions:
                rows.setdefault(("threshold", which), []).extend(threshold_moves(0))
                rows.setdefault(("threshold, min size", which), []).extend(
                    threshold_moves(args.min_size))
                rows.setdefault(("lesion table, after a drag", which), []).extend(tables)
                tables.clear()
                if which == "new":
                    rows.setdefault(("threshold (lesion worker)", which), []).extend(
                        threshold_worker_moves())
            if "min size" in actions:
                rows.setdefault(("min size", which), []).extend(min_size_moves())
            if "iteration" in actions:
                m, mp = iteration_moves()
                rows.setdefault(("iteration (mask shown)", which), []).extend(m)
                rows.setdefault(("iteration (maps, lesions)", which), []).extend(mp)
            if "frame" in actions:
                gui, shown = frame_moves()
                rows.setdefault(("frame (GUI thread)", which), []).extend(gui)
                rows.setdefault(("frame (lesions shown)", which), []).extend(shown)
            if prof is not None and which == "new":
                prof.disable()
                prof.dump_stats(args.profile)
            say(f"round {r + 1}, {which}: done")
        report(r + 1)
    paths.use("new")
    viewer.close()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""``itermask demo``: the embedded default end to end.

With a screen: napari opens with a synthetic sample scan and the IterMask² widget docked.
Headless: the sample is segmented with a bundled model and Dice against its ground truth printed,
with progress on stderr (a CPU run takes minutes; silence reads as a hang).

Without a display Qt does not raise: it aborts the whole process (exit 134) with a hint about
libxcb-cursor that sends users the wrong way. So the display is checked before any Qt object
exists, and the error names ``--headless``.
"""

from __future__ import annotations

import os
import sys
import time

from .errors import ItermaskError
from .progress import Printer

#: Seconds between two progress lines of a headless run (the last state is always shown).
PROGRESS_INTERVAL_S = 1.0
#: Qt platform plugins that draw through a display server (X11 or Wayland).
_SERVER_PLATFORMS = ("xcb", "wayland")


def display_problem(env=None, platform: str | None = None) -> str | None:
    """Why napari's window cannot open here, or None when it can (as far as can be told).

    Only Linux is checked: there Qt needs ``DISPLAY`` (X11) or ``WAYLAND_DISPLAY`` unless
    ``QT_QPA_PLATFORM`` names a platform without a display server (offscreen, minimal, eglfs…).
    """
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    wanted = [p.split(":")[0].strip().lower()
              for p in env.get("QT_QPA_PLATFORM", "").split(";") if p.strip()]
    if wanted and not all(p.startswith(_SERVER_PLATFORMS) for p in wanted):
        return None  # e.g. offscreen or minimal: Qt needs no display server
    return ("no display to open napari on (DISPLAY and WAYLAND_DISPLAY are unset); run "
            "'itermask demo --headless' for the text report, or start napari in a desktop "
            "session or under xvfb-run")


def run_demo(headless: bool = False, modality: str = "flair", seed: int | None = None,
             model: str | None = None, device: str = "auto", stratum: str = "glioma") -> int:
    if not headless:  # first: before seconds of imports, and before Qt can abort the process
        problem = display_problem()
        if problem:
            raise ItermaskError(problem)
    from . import synth
    from .core.metrics import dice, precision, sensitivity
    from .models import load_bundle, untrained_warning
    from .pipeline import pick_device, segment_scan
    from .volume import scan_from_array

    from ._sample_data import sample_seed

    seed = sample_seed(stratum) if seed is None else int(seed)
    case = synth.make_case(modality, seed, stratum=stratum)
    if not headless:
        return _open_viewer(case, model or modality)
    bundle = load_bundle(model or modality, device=pick_device(device))
    warning = untrained_warning(bundle.card)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    scan = scan_from_array(case.image, case.affine, name=f"sample {modality}")
    t0 = time.perf_counter()
    res = segment_scan(scan, bundle, progress=Printer("demo", bundle.card.max_iter,
                                                      interval=PROGRESS_INTERVAL_S))
    dt = time.perf_counter() - t0
    gt = case.label > 0
    pred = res.labels > 0
    prov = res.provenance
    print(f"sample: synthetic {modality}, {stratum} stratum, seed {seed}, "
          f"{len(case.lesions)} lesion(s), "
          f"{gt.sum() * scan.voxel_volume_mm3 / 1000:.2f} mL true lesion volume")
    print(f"model: {bundle.name} (sha256 {bundle.sha256[:12]}…), tau={prov['tau']:.4g}, "
          f"threshold={prov['threshold']:.4g}, {prov['forward_passes']} forward passes, "
          f"{dt:.1f} s on {bundle.device}")
    print(f"found {prov['lesion_count']} lesion(s), {prov['lesion_volume_ml']:.2f} mL")
    print(f"Dice {dice(pred, gt):.3f}  sensitivity {sensitivity(pred, gt):.3f}  "
          f"precision {precision(pred, gt):.3f}")
    return 0


def _open_viewer(case, model: str) -> int:
    try:
        import napari
    except Exception as exc:  # pragma: no cover - environment problem
        raise ItermaskError(f"napari cannot start here ({exc}); try --headless") from None
    from ._sample_data import case_layers
    from ._widget import IterMaskWidget

    viewer = napari.Viewer(title="napari-itermask demo")
    for data, kwargs, kind in case_layers(case):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = IterMaskWidget(viewer)
    viewer.window.add_dock_widget(widget, name="IterMask² lesion segmentation", area="right")
    widget.set_model(model)
    napari.run()
    return 0

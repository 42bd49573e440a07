"""``itermask demo``: the embedded default end to end.

With a screen: napari opens with a synthetic sample scan and the IterMask² widget docked.
Headless: the sample is segmented with a bundled model and Dice against its ground truth printed.
"""

from __future__ import annotations

import sys
import time

from .errors import ItermaskError


def run_demo(headless: bool = False, modality: str = "flair", seed: int = 12345,
             model: str | None = None, device: str = "auto", stratum: str = "glioma") -> int:
    from . import synth
    from .core.metrics import dice, precision, sensitivity
    from .models import load_bundle
    from .pipeline import pick_device, segment_scan
    from .volume import scan_from_array

    case = synth.make_case(modality, seed, stratum=stratum)
    if not headless:
        return _open_viewer(case, model or modality)
    bundle = load_bundle(model or modality, device=pick_device(device))
    if not bundle.card.trained:
        print(f"WARNING: model {bundle.name!r} is an UNTRAINED placeholder; Dice is meaningless",
              file=sys.stderr)
    scan = scan_from_array(case.image, case.affine, name=f"sample {modality}")
    t0 = time.perf_counter()
    res = segment_scan(scan, bundle)
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

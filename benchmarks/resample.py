"""Model grid → scan grid: scipy's ``map_coordinates`` slice by slice (the path before session
22) beside the separable gather of ``Geometry.model_to_canonical``, in the same run.

Every run result goes back onto the scan's grid this way: a history mask (nearest neighbour:
each iteration frame, the iteration slider, the mask as the result) and an error map or a
reconstruction (linear: frames, results, the clinical protocol). Each row is one scan
geometry; both paths are timed ``--repeats`` times, interleaved, after one untimed warm-up,
with the allocator tuned as the CLI and the widget tune it. The last column checks the
contract: nearest neighbour identical, linear within float32 rounding of scipy's.

    python benchmarks/resample.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from napari_itermask import allocator
from napari_itermask.volume import Geometry

# (label, scan shape, affine's diagonal: voxel sizes with signs (LPS flips), model grid)
GEOMETRIES = {
    "164×194×157, 1 mm (the slider benchmark's brain)": ((164, 194, 157), (1, 1, 1), 128),
    "240×240×155, 1 mm (BraTS-sized)": ((240, 240, 155), (1, 1, 1), 128),
    "128×128×62, 2×2×3 mm, LPS (ITK's subject)": ((128, 128, 62), (-2, -2, 3), 128),
}
SMALL = {"24×20×6, 1 mm (test size)": ((24, 20, 6), (1, 1, 1), 16)}


def measure(shape, diag, grid, repeats: int, seed: int = 0) -> list[dict]:
    geo = Geometry.for_scan(shape, np.diag([*map(float, diag), 1.0]), 1.875, grid)
    rng = np.random.default_rng(seed)
    n = geo.n_slices
    inputs = {"mask, nearest (order 0)": (0, rng.integers(0, 2, (n, grid, grid), np.uint8)),
              "error map, linear (order 1)": (1, rng.random((n, grid, grid), np.float32))}
    rows = []
    for what, (order, slices) in inputs.items():
        out, times = {}, {"scipy": [], "separable": []}
        for method in times:  # warm-up, and the outputs the agreement column compares
            out[method] = geo.to_scan(slices, order=order, method=method)
        for _ in range(repeats):
            for method, ts in times.items():
                t = time.perf_counter()
                geo.to_scan(slices, order=order, method=method)
                ts.append(time.perf_counter() - t)
        ref, new = out["scipy"], out["separable"]
        if order == 0:
            agree = "identical" if np.array_equal(ref, new) else "DIFFERENT"
        else:
            rel = float(np.max(np.abs(new - ref) / np.maximum(np.abs(ref), 1e-30)))
            agree = f"max rel. diff {rel:.1e}" + ("" if rel <= 2e-7 else " (OUT OF BOUNDS)")
        rows.append({"what": what, "scipy": statistics.median(times["scipy"]) * 1e3,
                     "separable": statistics.median(times["separable"]) * 1e3,
                     "agreement": agree})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--small", action="store_true", help="one tiny geometry (the test's)")
    args = p.parse_args(argv)
    allocator.tune()
    print(f"\nmedian of {args.repeats} interleaved runs, ms\n")
    print("| scan grid | resampling | scipy per slice (before) | separable (now) | speed-up | "
          "agreement |")
    print("|---|---|---|---|---|---|")
    for label, (shape, diag, grid) in (SMALL if args.small else GEOMETRIES).items():
        for r in measure(shape, diag, grid, args.repeats):
            print(f"| {label} | {r['what']} | {r['scipy']:.1f} | {r['separable']:.1f} | "
                  f"{r['scipy'] / r['separable']:.1f}× | {r['agreement']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

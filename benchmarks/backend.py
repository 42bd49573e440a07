"""Inference backends in one run: today's eager UNet against the fused fp32 and the bf16 nets.

Two tables, every row measured in the same run, rounds interleaved (medians):

1. The masked network alone (the bundled model's ``f``, B slices of the model grid per call):
   slices per second at a few batch sizes, and the largest absolute difference of its output
   to today's eager output on the same input. "eager (today)" is ``bundle.masked`` as the
   engine called it before ``core.fuse``; "fused fp32" and "bf16" are ``bundle.nets(...)``.
   bf16 rows appear only where the CPU has native bf16 (``core.precision``). ONNX Runtime and
   OpenVINO rows appear only if those packages are importable (nothing requires them).
2. ``itermask segment`` on the demo volume (``benchmarks/allocator.py``'s), the real CLI in its
   own process per row under ``/usr/bin/time``: wall time, peak RSS, forwards, and whether the
   labels equal the eager run's (else their Dice against it). The eager row replaces
   ``ModelBundle.nets`` by the trained networks themselves, inside the benchmark's process
   only. The bf16 row needs a model calibrated in bf16 (``--bf16-model``; training/README).

    python benchmarks/backend.py --batches 8 32 --repeats 3 --segment-repeats 1 \\
        --bf16-model models/exp/flair_bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

EAGER_CLI = ("import sys; from napari_itermask.models import bundle as b; "
             "b.ModelBundle.nets = lambda self, precision='fp32': (self.first, self.masked); "
             "from napari_itermask.cli import main; sys.exit(main(sys.argv[1:]))")
FUSED_CLI = "import sys; from napari_itermask.cli import main; sys.exit(main(sys.argv[1:]))"


def optional_backends(net, example):
    """(name, callable) for ONNX Runtime / OpenVINO fp32 where importable; else nothing."""
    out = []
    try:
        import onnxruntime as ort  # noqa: F401
    except ImportError:
        print("(ONNX Runtime not installed: no row)")
    else:  # pragma: no cover - not installed on the development machines
        import io

        import torch

        buf = io.BytesIO()
        torch.onnx.export(net, example, buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
        sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        out.append(("ONNX Runtime fp32",
                    lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])))
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("(OpenVINO not installed: no row)")
    return out


def throughput(args) -> list[str]:
    import torch

    from napari_itermask import allocator
    from napari_itermask.core.precision import bf16_supported
    from napari_itermask.models import load_bundle

    allocator.tune()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    eager = bundle.masked.eval()
    rows = [("eager (today)", eager), ("fused fp32", bundle.nets("fp32")[1])]
    if bf16_supported("cpu"):
        rows.append(("bf16 (fused)", bundle.nets("bf16")[1]))
    else:
        print("(no native bf16 on this CPU: no bf16 row)")
    g = torch.Generator().manual_seed(0)
    grid = bundle.card.grid_size
    example = torch.randn(2, 2, grid, grid, generator=g)
    rows += optional_backends(eager, example)
    lines = [f"Masked net of `{args.model}`, {args.threads} thread(s), median of {args.repeats} "
             "interleaved rounds", "",
             "| backend | " + " | ".join(f"B = {b} slices/s" for b in args.batches)
             + " | max abs diff to eager |", "|---" * (len(args.batches) + 2) + "|"]
    speed = {name: {} for name, _ in rows}
    diff = {name: 0.0 for name, _ in rows}
    with torch.inference_mode():
        for b in args.batches:
            x = torch.randn(b, 2, grid, grid, generator=g)
            ref = eager(x)
            for name, net in rows:  # warm-up, and the output check
                diff[name] = max(diff[name], float((net(x).float() - ref).abs().max()))
            times = {name: [] for name, _ in rows}
            for _ in range(args.repeats):
                for name, net in rows:
                    t = time.perf_counter()
                    net(x)
                    times[name].append(time.perf_counter() - t)
            for name, _ in rows:
                speed[name][b] = b / statistics.median(times[name])
    for name, _ in rows:
        lines.append(f"| {name} | " + " | ".join(f"{speed[name][b]:.1f}" for b in args.batches)
                     + f" | {diff[name]:.1e} |")
    return lines


def segment_row(scan: Path, out: Path, code: str, model: str, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    stats = out.with_suffix(".time")
    cmd = ["/usr/bin/time", "-o", str(stats), "-f", "%e %M", sys.executable, "-c", code,
           "segment", str(scan), "-o", str(out), "--model", model, "-q", "--overwrite", *extra]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall, rss_kb = stats.read_text().split()[-2:]
    import nibabel as nib

    side = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    return {"wall": float(wall), "rss_gb": int(rss_kb) / 2**20,
            "labels": np.asarray(nib.load(str(out)).dataobj) > 0,
            "forwards": side["forward_passes"], "precision": side["precision"]}


def segment_table(args) -> list[str]:
    from allocator import demo_volume

    from napari_itermask.core.precision import bf16_supported

    tmp = Path(tempfile.mkdtemp(prefix="itermask-backend-"))
    scan = demo_volume(tmp)
    configs = [("eager (today)", EAGER_CLI, args.model, []),
               ("fused fp32", FUSED_CLI, args.model, [])]
    if args.bf16_model and bf16_supported("cpu"):
        configs.append(("bf16 (fused)", FUSED_CLI, args.bf16_model, ["--precision", "bf16"]))
    runs = {name: [] for name, *_ in configs}
    for r in range(args.segment_repeats):
        for i, (name, code, model, extra) in enumerate(configs):
            runs[name].append(segment_row(scan, tmp / f"out{i}_{r}.nii.gz", code, model, extra))
    ref = runs[configs[0][0]][0]
    lines = [f"`itermask segment` on the demo volume, median of {args.segment_repeats} "
             "round(s)", "",
             "| backend | model | wall s | speed-up | peak RSS GB | forwards | labels vs eager |",
             "|---|---|---|---|---|---|---|"]
    base = statistics.median(r["wall"] for r in runs[configs[0][0]])
    for name, _, model, _ in configs:
        rs = runs[name]
        wall = statistics.median(r["wall"] for r in rs)
        lab = rs[0]["labels"]
        if np.array_equal(lab, ref["labels"]):
            same = "identical"
        else:
            inter = np.logical_and(lab, ref["labels"]).sum()
            dice = 2 * inter / max(1, lab.sum() + ref["labels"].sum())
            same = f"Dice {dice:.3f} ({np.sum(lab != ref['labels'])} voxels differ)"
        lines.append(f"| {name} | {Path(model).name} | {wall:.1f} | {base / wall:.2f}× | "
                     f"{statistics.median(r['rss_gb'] for r in rs):.2f} | {rs[0]['forwards']} | "
                     f"{same} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="flair")
    p.add_argument("--bf16-model", default=None,
                   help="a model calibrated in bf16 for the segment table's bf16 row")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--segment-repeats", type=int, default=1, help="0: no segment table")
    args = p.parse_args(argv)
    print("\n".join(throughput(args)))
    if args.segment_repeats > 0:
        print()
        print("\n".join(segment_table(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`itermask segment` on the demo volume with glibc's default allocator against
`napari_itermask.allocator`'s settings, at two batch sizes, in one run.

Each configuration runs the real CLI in its own process under `/usr/bin/time` (wall time, peak
RSS, minor page faults, user and system CPU time); the labels of every run are compared byte
for byte with the first row's. "default allocator" is the path before the settings
(`ITERMASK_NO_ALLOCATOR_TUNING=1`). Rows are interleaved over ``--repeats`` rounds; medians.

    python benchmarks/allocator.py --repeats 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("default allocator", False, 32), ("default allocator", False, 8),
           ("tuned allocator", True, 32), ("tuned allocator", True, 8)]


def demo_volume(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    import nibabel as nib

    from napari_itermask import synth
    from napari_itermask._sample_data import SAMPLE_STRATUM, sample_seed

    case = synth.make_case("flair", sample_seed(), stratum=SAMPLE_STRATUM)
    path = folder / "demo_flair.nii.gz"
    nib.save(nib.Nifti1Image(case.image.astype("float32"), case.affine), str(path))
    return path


def run_one(scan: Path, out: Path, tuned: bool, batch: int, model: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ITERMASK_NO_ALLOCATOR_TUNING"}
    if not tuned:
        env["ITERMASK_NO_ALLOCATOR_TUNING"] = "1"
    env["PYTHONPATH"] = str(ROOT / "src")
    stats = out.with_suffix(".time")
    cmd = ["/usr/bin/time", "-o", str(stats), "-f", "%e %M %R %U %S", sys.executable, "-m",
           "napari_itermask.cli", "segment", str(scan), "-o", str(out), "--model", model,
           "--batch-size", str(batch), "-q", "--overwrite"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall, rss_kb, faults, user, system = stats.read_text().split()[-5:]
    digest = hashlib.sha256(__import__("nibabel").load(str(out)).get_fdata().tobytes())
    return {"wall": float(wall), "rss_gb": int(rss_kb) / 2**20, "faults": int(faults),
            "user": float(user), "sys": float(system), "labels": digest.hexdigest()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--model", default="flair")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="itermask-alloc-"))
    scan = demo_volume(tmp)
    rows: dict[int, list[dict]] = {i: [] for i in range(len(CONFIGS))}
    for _ in range(args.repeats):
        for i, (_, tuned, batch) in enumerate(CONFIGS):
            rows[i].append(run_one(scan, tmp / f"out{i}.nii.gz", tuned, batch, args.model))
    ref_labels = rows[0][0]["labels"]
    ref_wall = statistics.median(r["wall"] for r in rows[0])
    print(f"\n`itermask segment` on the demo volume, model {args.model}, median of "
          f"{args.repeats} round(s)\n")
    print("| allocator | batch | wall s | speed-up | peak RSS GB | minor faults | user s | "
          "sys s | labels = first row |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, (name, _, batch) in enumerate(CONFIGS):
        med = {k: statistics.median(r[k] for r in rows[i])
               for k in ("wall", "rss_gb", "faults", "user", "sys")}
        same = all(r["labels"] == ref_labels for r in rows[i])
        print(f"| {name} | {batch} | {med['wall']:.1f} | {ref_wall / med['wall']:.2f}× | "
              f"{med['rss_gb']:.2f} | {med['faults'] / 1e6:.2f} M | {med['user']:.1f} | "
              f"{med['sys']:.1f} | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

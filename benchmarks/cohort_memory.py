"""Memory of a cohort run: the process's RSS after each of N synthetic scans (default 20).

Each scan goes through ``cohort.segment_case``, the function ``itermask segment`` runs for
every case of a cohort (serial, shard or Dask), with a tiny random model (the point is the
memory the pipeline keeps between cases, not the model's quality). The scans are generated and
written before the first measurement, so their making does not count. Reported per scan: the
resident set (VmRSS) after the case, and the peak so far (VmHWM); then the growth from scan 2 to
scan N (scan 1 pays the one-off costs: the model, torch's kernels) and the least-squares slope per scan over scans 2…N. Bounded memory means the slope is
a small fraction of one scan's arrays.

    python benchmarks/cohort_memory.py                 # 20 scans at 3 mm, one torch thread
    python benchmarks/cohort_memory.py --scans 40 --voxel-size 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB, from /proc (Linux)."""
    now = peak = float("nan")
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:  # not Linux: the peak only
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return now, peak


def tiny_model(folder: Path) -> Path:
    """A tiny random model whose output is not all zeros (so the loop really iterates)."""
    import torch

    from napari_itermask.models import ModelBundle, new_card, save_bundle

    torch.manual_seed(0)
    bundle = ModelBundle.fresh(new_card("tiny", "flair", "tiny"))
    for net in (bundle.first, bundle.masked):
        torch.nn.init.normal_(net.out.weight, std=0.05)
        torch.nn.init.constant_(net.out.bias, -1.0)
    bundle.card.tau, bundle.card.threshold, bundle.card.min_brain_pixels = 0.5, 2.0, 20
    return save_bundle(bundle, folder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", type=int, default=20)
    p.add_argument("--voxel-size", type=float, default=3.0, help="isotropic mm (3: ~66×78×63)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)

    import torch

    from napari_itermask import allocator, cohort, synth

    torch.set_num_threads(args.threads)
    allocator.tune()  # as the command line does, before the first tensor
    with tempfile.TemporaryDirectory(prefix="itermask-cohort-memory-") as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "model")
        (tmp / "scans").mkdir()
        (tmp / "out").mkdir()
        cases = []
        for i in range(args.scans):
            case = synth.make_case("flair", 1000 + i, voxel_size=args.voxel_size)
            synth.write_case(case, tmp / "scans", f"case{i:02d}")
            cases.append(cohort.Case(f"case{i:02d}", str(tmp / "scans" /
                                                          f"case{i:02d}_flair.nii.gz")))
            shape = case.image.shape
            del case
        options = cohort.CaseOptions(str(tmp / "out"), str(model), device="cpu")
        start_rss, _ = rss_mib()
        scan_mib = int(np.prod(shape)) * 4 / 2**20
        print(f"{args.scans} synthetic FLAIR scans of {shape} at {args.voxel_size} mm "
              f"(float32 {scan_mib:.1f} MiB each), tiny model, {args.threads} torch thread(s); "
              f"RSS before the first scan {start_rss:.0f} MiB\n")
        print("| scan | seconds | iterations | lesions | RSS MiB | peak RSS MiB |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        rss = []
        for k, case in enumerate(cases, start=1):
            t = time.perf_counter()
            res = cohort.segment_case(case, options)
            if res.status != "ok":
                print(f"case {case.name} {res.status}: {res.message}", file=sys.stderr)
                return 1
            now, peak = rss_mib()
            rss.append(now)
            print(f"| {k} | {time.perf_counter() - t:.1f} | {res.iterations} | "
                  f"{res.lesion_count} | {now:.1f} | {peak:.1f} |", flush=True)
    later = np.array(rss[1:])
    slope = float(np.polyfit(np.arange(2, len(rss) + 1), later, 1)[0]) if len(later) > 1 else 0.0
    print(f"\ngrowth from scan 2 to scan {len(rss)}: {rss[-1] - rss[1]:+.1f} MiB "
          f"(least-squares slope {slope:+.2f} MiB per scan; one scan's float32 array is "
          f"{scan_mib:.1f} MiB); after scan 1 the RSS was {rss[0]:.0f} MiB, "
          f"{rss[0] - start_rss:+.1f} MiB against before it (model and torch's kernels "
          "loaded, the heap freed since trimmed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

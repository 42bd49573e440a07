"""Start-up of the command line: wall time of `itermask --help`, `itermask models` and
`itermask segment --help`, beside a bare Python and `import torch` in the same run.

Each command runs ``--repeats`` times, interleaved; the median is reported. The reference rows
say what the floor is (the interpreter) and what importing torch alone costs, which is what a
command that does not need the networks must not pay.

    python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

ROWS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
    "itermask --help": [sys.executable, "-m", "napari_itermask.cli", "--help"],
    "itermask models": [sys.executable, "-m", "napari_itermask.cli", "models"],
    "itermask segment --help": [sys.executable, "-m", "napari_itermask.cli", "segment", "--help"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {k: [] for k in ROWS}
    for _ in range(args.repeats):
        for name, cmd in ROWS.items():
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times[name].append(time.perf_counter() - t)
    print(f"\nmedian of {args.repeats} interleaved runs\n")
    print("| command | wall s | target |")
    print("|---|---|---|")
    for name, ts in times.items():
        target = "< 1 s" if name.startswith("itermask") else ""
        print(f"| {name} | {statistics.median(ts):.2f} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

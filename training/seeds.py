"""How much IterMask²'s result depends on the loop's noise draws: the same cases scored under
several loop seeds (``evaluate --loop-seed``), per case and overall.

Input: the results.json of ``evaluate`` runs that differ only in ``--loop-seed`` (same model,
cases, protocol). Output: a Markdown table (mean Dice per seed; per-case standard deviation and
range across seeds, median and worst; the share of cases whose Dice moves by more than 0.05) for
the paper protocol's honest-threshold IterMask² Dice, and the per-case rows with ``--cases``.

    python -m training.seeds results/s10/glioma_flair_ablations results/s10/seed_glioma_flair_*
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load_runs(paths) -> tuple[list[int], list[str], np.ndarray]:
    """(seeds, case names, Dice array of shape (seeds, cases)); the runs must score the same
    cases on the same slices and use distinct loop seeds."""
    seeds, table, cases, slices = [], [], None, None
    for p in paths:
        res = json.loads((Path(p) / "results.json").read_text())
        rows = res["paper"]["cases"]
        names = [r["case"] for r in rows]
        sl = [r["slice"] for r in rows]
        if cases is None:
            cases, slices = names, sl
        elif names != cases or sl != slices:
            raise SystemExit(f"{p}: other cases or slices than {paths[0]}")
        seeds.append(int(res.get("loop_seed", 0)))
        table.append([r["itermask"]["honest"]["dice"] for r in rows])
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"runs share a loop seed: {seeds}")
    return seeds, cases, np.asarray(table, float)


def summary(seeds, cases, dice: np.ndarray, threshold: float = 0.05) -> str:
    sd = dice.std(axis=0, ddof=1)
    rng = dice.max(axis=0) - dice.min(axis=0)
    means = dice.mean(axis=1)
    lines = [
        f"{len(cases)} cases × {len(seeds)} loop seeds ({', '.join(map(str, seeds))}); "
        "IterMask², paper protocol, honest threshold",
        "",
        "| quantity | value |",
        "|---|---|",
        "| mean Dice per seed | " + ", ".join(f"{m:.3f}" for m in means) + " |",
        f"| spread of the mean over seeds (max − min) | {means.max() - means.min():.3f} |",
        f"| per-case SD across seeds: median / max | {np.median(sd):.3f} / {sd.max():.3f} |",
        f"| per-case range across seeds: median / max | {np.median(rng):.3f} / {rng.max():.3f} "
        f"({cases[int(rng.argmax())]}) |",
        f"| cases whose Dice moves by more than {threshold} | {(rng > threshold).sum()} of "
        f"{len(cases)} |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="evaluate output folders (results.json)")
    p.add_argument("--cases", action="store_true", help="also the per-case rows")
    args = p.parse_args(argv)
    seeds, cases, dice = load_runs(args.runs)
    print(summary(seeds, cases, dice))
    if args.cases:
        print("\n| case | " + " | ".join(f"seed {s}" for s in seeds) + " | range |")
        print("|---|" + "---|" * (len(seeds) + 1))
        for j, c in enumerate(cases):
            col = dice[:, j]
            print(f"| {c} | " + " | ".join(f"{v:.3f}" for v in col)
                  + f" | {col.max() - col.min():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

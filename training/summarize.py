"""Compact tables of several ``training.evaluate`` runs, for the README (one row per method).

Reads each run's ``results.json`` and prints, per run, the paper protocol's honest Dice ± SE with
IterMask²'s paired-bootstrap difference and verdict, the Dice tuned on the test labels and the
per-image best; and, where the run has it, the clinical protocol's 3-D Dice ± SE with its
difference and verdict. Nothing is recomputed: the figures are exactly the runs'.

  python -m training.summarize results/s9/glioma_flair results/s9/glioma_flair_sri24
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"itermask": "IterMask²", "no-iteration": "no iterations (f1 only)",
          "itermask -freq": "without x_f (-freq)", "intensity": "intensity threshold"}


def _cell(stat: dict | None) -> str:
    return "–" if not stat else f"{stat['mean']:.3f} ± {stat['se']:.3f}"


def _diff(stat: dict | None) -> str:
    vs = (stat or {}).get("vs_reference")
    if not vs or vs.get("verdict") in (None, "n/a"):
        return "—"
    return f"{vs['diff']:+.3f} [{vs['lo']:+.3f}, {vs['hi']:+.3f}] {vs['verdict']}"


def paper_table(res: dict) -> list[str]:
    modes = res["paper"]["statistics"]["modes"]
    ssim = res["paper"]["statistics"].get("ssim_normal", {})
    rows = ["| method | honest Dice ± SE | IterMask² − method [95 % CI] | *tuned on test labels* "
            "| *per-image best* | SSIM |", "|---|---|---|---|---|---|"]
    for m in modes["honest"]:
        s = ssim.get(m)
        s = f"{s['mean']:.3f}" if isinstance(s, dict) else ("–" if s is None else f"{s:.3f}")
        rows.append(f"| {LABELS.get(m, m)} | {_cell(modes['honest'][m])} | "
                    f"{_diff(modes['honest'][m])} | {_cell(modes['tuned'].get(m))} | "
                    f"{_cell(modes['best'].get(m))} | {s} |")
    return rows


def clinical_table(res: dict) -> list[str]:
    stats = res.get("statistics") or {}
    if not stats:
        return []
    rows = ["| method | 3-D Dice ± SE (honest) | IterMask² − method [95 % CI] |", "|---|---|---|"]
    for m, s in stats.items():
        if isinstance(s, dict) and "mean" in s:
            rows.append(f"| {LABELS.get(m, m)} | {_cell(s)} | {_diff(s)} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="folders holding results.json")
    args = p.parse_args(argv)
    for run in args.runs:
        res = json.loads((Path(run) / "results.json").read_text())
        head = (f"**{res['modality'].upper()}, {res.get('stratum', 'subtle')} stratum"
                f"{', anatomy ' + res['anatomy'] if res.get('anatomy') else ''}** — model "
                f"`{res['model']}`")
        print(head)
        if res.get("paper"):
            n = len(res["paper"]["cases"])
            print(f"\nPaper protocol, {n} cases ({len(res['paper']['dropped'])} dropped):\n")
            print("\n".join(paper_table(res)))
        rows = clinical_table(res)
        if rows:
            print(f"\nClinical protocol, {res['n_volumes']} volumes:\n")
            print("\n".join(rows))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

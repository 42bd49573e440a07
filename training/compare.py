"""Paired comparison of two paper-protocol runs of ``training.evaluate`` (design decisions).

``python -m training.compare NEW[:METHOD] OLD[:METHOD]`` reads two ``results.json`` files (or
their folders), pairs their cases by name and prints, for each scoring mode (honest threshold,
the global threshold tuned on the run's own labels, the per-image best), both means and the
paired bootstrap 95 % interval of NEW − OLD with its verdict ("tie" when the interval covers 0).
METHOD defaults to ``itermask``; any method column of the file may be named (``no-iteration``,
``DAE``, a ``--variant`` label).

This is how one model or option is judged against another when they cannot share one
``evaluate`` run (a ``--variant`` must share the main model's smoothing, rim and grid): both
runs must be on the same split, stratum and seeds, which is checked. Only validation runs
should decide anything (``--split val``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from training.protocols import mean_se, paired_bootstrap

MODES = ("honest", "tuned", "best")
MODE_NAMES = {"honest": "honest", "tuned": "tuned on the run's labels", "best": "per-image best"}


def _load(spec: str) -> tuple[dict, str, str]:
    path, _, method = spec.partition(":")
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        res = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"compare: cannot read {p}: {exc}") from None
    if "paper" not in res:
        raise SystemExit(f"compare: {p} has no paper-protocol results")
    return res, method or "itermask", str(p)


def per_case(res: dict, method: str, mode: str) -> dict[str, float]:
    """Case name → Dice of ``method`` in ``mode`` (skipped cases left out)."""
    out = {}
    for c in res["paper"]["cases"]:
        if c.get("skipped"):
            continue
        if method not in c:
            names = sorted(k for k, v in c.items() if isinstance(v, dict) and "honest" in v)
            raise SystemExit(f"compare: no method '{method}' (there are: {', '.join(names)})")
        out[c["case"]] = float(c[method][mode]["dice"])
    return out


def compare(new: dict, new_method: str, old: dict, old_method: str) -> dict:
    """Per mode: {'new': (mean, se), 'old': (mean, se), 'diff': Bootstrap dict, 'n': pairs}."""
    for key in ("split", "stratum", "modality", "anatomy"):
        if new.get(key) != old.get(key):
            raise SystemExit(f"compare: the runs differ in {key} ({new.get(key)!r} vs "
                             f"{old.get(key)!r})")
    out = {}
    for mode in MODES:
        a, b = per_case(new, new_method, mode), per_case(old, old_method, mode)
        common = sorted(set(a) & set(b))
        if not common:
            raise SystemExit("compare: the runs share no case")
        va, vb = [a[k] for k in common], [b[k] for k in common]
        out[mode] = {"new": mean_se(va), "old": mean_se(vb),
                     "diff": paired_bootstrap(va, vb).as_dict(), "n": len(common)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", help="results.json (or its folder), optionally :METHOD")
    ap.add_argument("old", help="the run to compare against, optionally :METHOD")
    args = ap.parse_args(argv)
    new, nm, npath = _load(args.new)
    old, om, opath = _load(args.old)
    table = compare(new, nm, old, om)
    print(f"NEW {npath} [{nm}]  vs  OLD {opath} [{om}]  "
          f"({new.get('split')} split, {new.get('stratum')}, {new.get('modality')})")
    print("| mode | NEW | OLD | NEW − OLD [95 % paired interval] | verdict | cases |")
    print("|---|---|---|---|---|---|")
    for mode, r in table.items():
        d = r["diff"]
        print(f"| {MODE_NAMES[mode]} | {r['new'][0]:.3f} ± {r['new'][1]:.3f} | "
              f"{r['old'][0]:.3f} ± {r['old'][1]:.3f} | {d['diff']:+.3f} [{d['lo']:+.3f}, "
              f"{d['hi']:+.3f}] | {d['verdict']} | {r['n']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

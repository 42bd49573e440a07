"""`training.summarize`: README rows come straight from a run's figures, verdicts included."""

from __future__ import annotations

import json

from training import summarize


def _stat(mean, se, vs=None):
    s = {"mean": mean, "se": se, "n": 40}
    if vs:
        s["vs_reference"] = dict(zip(("diff", "lo", "hi", "verdict"), vs))
    return s


def test_paper_and_clinical_rows(tmp_path, capsys):
    res = {"modality": "flair", "stratum": "glioma", "anatomy": "sri24", "model": "flair",
           "n_volumes": 40,
           "statistics": {"itermask": _stat(0.7, 0.02),
                          "DAE": _stat(0.68, 0.03, (0.02, -0.01, 0.05, "tie"))},
           "paper": {"cases": [{}] * 39, "dropped": ["x"],
                     "statistics": {"ssim_normal": {"itermask": {"mean": 0.95, "se": 0.01}},
                                    "modes": {
                                        "honest": {"itermask": _stat(0.85, 0.02),
                                                   "intensity": _stat(
                                                       0.70, 0.04, (0.15, 0.09, 0.21, "better"))},
                                        "tuned": {"itermask": _stat(0.87, 0.01),
                                                  "intensity": _stat(0.83, 0.02)},
                                        "best": {"itermask": _stat(0.9, 0.01),
                                                 "intensity": _stat(0.91, 0.01)}}}}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert summarize.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "anatomy sri24" in out and "39 cases (1 dropped)" in out
    assert "| IterMask² | 0.850 ± 0.020 | — | 0.870 ± 0.010 | 0.900 ± 0.010 | 0.950 |" in out
    assert "| intensity threshold | 0.700 ± 0.040 | +0.150 [+0.090, +0.210] better |" in out
    assert "| DAE | 0.680 ± 0.030 | +0.020 [-0.010, +0.050] tie |" in out

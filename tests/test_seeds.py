"""training.seeds: the per-case spread of IterMask²'s Dice over loop seeds, on known numbers."""

import json

import numpy as np
import pytest

from training import seeds


def _run(folder, seed, dice, cases=("a", "b", "c"), slices=(10, 11, 12)):
    folder.mkdir()
    rows = [{"case": c, "slice": s, "itermask": {"honest": {"dice": d}}}
            for c, s, d in zip(cases, slices, dice)]
    (folder / "results.json").write_text(json.dumps({"loop_seed": seed,
                                                     "paper": {"cases": rows}}))
    return folder


def test_spread_over_seeds_on_known_numbers(tmp_path, capsys):
    r0 = _run(tmp_path / "s0", 0, [0.9, 0.5, 0.7])
    r1 = _run(tmp_path / "s1", 1, [0.9, 0.3, 0.7])
    r2 = _run(tmp_path / "s2", 2, [0.9, 0.4, 0.72])
    s, cases, dice = seeds.load_runs([r0, r1, r2])
    assert s == [0, 1, 2] and cases == ["a", "b", "c"] and dice.shape == (3, 3)
    text = seeds.summary(s, cases, dice)
    assert "0.700, 0.633, 0.673" in text  # mean per seed
    assert "0.200 (b)" in text  # the widest case and its range
    assert "| 1 of 3 |" in text  # only b moves by more than 0.05
    assert f"{np.median([0.0, 0.1, np.std([0.7, 0.7, 0.72], ddof=1)]):.3f} / 0.100" in text
    seeds.main([str(r0), str(r1), "--cases"])
    out = capsys.readouterr().out
    assert "| b | 0.500 | 0.300 | 0.200 |" in out


def test_runs_must_score_the_same_cases_with_distinct_seeds(tmp_path):
    r0 = _run(tmp_path / "s0", 0, [0.9, 0.5, 0.7])
    other = _run(tmp_path / "x", 1, [0.9, 0.5, 0.7], slices=(10, 11, 13))
    same_seed = _run(tmp_path / "s0b", 0, [0.8, 0.5, 0.7])
    with pytest.raises(SystemExit, match="other cases or slices"):
        seeds.load_runs([r0, other])
    with pytest.raises(SystemExit, match="share a loop seed"):
        seeds.load_runs([r0, same_seed])

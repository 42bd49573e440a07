"""training.compare: two evaluate runs paired by case, per scoring mode."""

import json

import pytest

from training import compare


def _run(tmp_path, name, dices, split="val", method="itermask"):
    cases = [{"case": f"synth{i}", "skipped": False,
              method: {m: {"dice": d + off} for m, off in
                       (("honest", 0.0), ("tuned", 0.1), ("best", 0.2))}}
             for i, d in enumerate(dices)]
    cases.append({"case": "dropped", "skipped": True})
    res = {"split": split, "stratum": "glioma", "modality": "t2", "anatomy": None,
           "paper": {"cases": cases}}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def test_a_known_shift_is_found_in_every_mode_and_named_better(tmp_path, capsys):
    base = [0.1, 0.4, 0.2, 0.5, 0.3, 0.6, 0.2, 0.1]
    new = _run(tmp_path, "new", [d + 0.05 for d in base])
    old = _run(tmp_path, "old", base)
    table = compare.compare(*compare._load(str(new))[:2], *compare._load(str(old))[:2])
    for mode in compare.MODES:
        d = table[mode]["diff"]
        assert d["diff"] == pytest.approx(0.05) and d["verdict"] == "better"
        assert table[mode]["n"] == 8  # the skipped case is left out
    assert compare.main([str(new), str(old)]) == 0
    assert "+0.050" in capsys.readouterr().out


def test_noise_around_zero_is_a_tie_and_another_method_can_be_named(tmp_path):
    base = [0.1, 0.4, 0.2, 0.5, 0.3, 0.6, 0.2, 0.1]
    jitter = [0.02, -0.02, 0.01, -0.01, 0.03, -0.03, 0.0, 0.0]
    new = _run(tmp_path, "new", [d + j for d, j in zip(base, jitter)], method="DAE")
    old = _run(tmp_path, "old", base)
    table = compare.compare(*compare._load(f"{new}:DAE")[:2], *compare._load(str(old))[:2])
    assert table["honest"]["diff"]["verdict"] == "tie"


def test_runs_on_different_splits_are_refused(tmp_path):
    new = _run(tmp_path, "new", [0.1, 0.2], split="test")
    old = _run(tmp_path, "old", [0.1, 0.2])
    with pytest.raises(SystemExit, match="differ in split"):
        compare.main([str(new), str(old)])


def test_a_missing_method_names_the_ones_there(tmp_path):
    run = _run(tmp_path, "run", [0.1, 0.2])
    with pytest.raises(SystemExit, match="there are: itermask"):
        compare.main([f"{run}:DAE", str(run)])

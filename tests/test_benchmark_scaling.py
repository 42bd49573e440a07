"""The scaling benchmark runs each configuration in its own process and reports its row."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scaling", ROOT / "benchmarks/scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_configuration_row_counts_its_forwards_and_memory(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rc = _bench().main(["--presets", "small", "--grids", "64", "--slices", "3",
                        "--threads", "1", "--max-iter", "2", "--batch-size", "2",
                        "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())
    # every slice gets its first-step forward; the cap allows one masked forward more at most
    assert 3 <= row["forwards"] <= 6
    assert row["grid"] == 64 and row["slices"] == 3 and row["threads"] == 1
    assert row["peak_mib"] >= row["baseline_mib"] > 0
    assert "| small | 64 | 3 | 1 |" in capsys.readouterr().out


def test_a_failing_configuration_is_a_row_and_a_non_zero_exit(capsys):
    # an unknown preset fails inside its child; the run reports it and goes on
    rc = _bench().main(["--presets", "nonesuch", "--grids", "64", "--slices", "2",
                        "--threads", "1", "--max-iter", "2"])
    assert rc == 1
    assert "failed: ValueError: unknown preset 'nonesuch'" in capsys.readouterr().out

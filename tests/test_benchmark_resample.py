"""The resampling benchmark's table: both paths on one tiny geometry, and its agreement column."""

from __future__ import annotations

import importlib.util

from conftest import ROOT


def test_the_table_compares_both_paths_and_they_agree(capsys):
    spec = importlib.util.spec_from_file_location("bench_resample",
                                                  ROOT / "benchmarks/resample.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--small", "--repeats", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 24×20×6")]
    assert len(rows) == 2
    nearest, linear = rows
    assert "nearest" in nearest and nearest.rstrip(" |").endswith("identical")
    assert "linear" in linear and "max rel. diff" in linear and "OUT OF BOUNDS" not in linear

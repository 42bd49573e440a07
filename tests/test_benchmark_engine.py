"""The engine benchmark's reference-style loop agrees with the engine for any card options."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT, perturbed_bundle


def _bench():
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "benchmarks/engine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("guidance,smoothing,rim,polarity",
                         [(True, 0.0, 0, "both"), (False, 1.5, 2, "bright")])
def test_naive_loop_matches_engine(tmp_path, capsys, guidance, smoothing, rim, polarity):
    from napari_itermask.models import save_bundle

    bundle = perturbed_bundle(tau=0.3)
    bundle.card.masked_guidance = guidance
    bundle.card.error_smoothing = smoothing
    bundle.card.error_rim = rim
    bundle.card.error_polarity = polarity
    path = save_bundle(bundle, tmp_path / "m")
    # main() asserts that both loops give the same masks, iterations and segmentation
    assert _bench().main(["--model", str(path), "--slices", "3", "--max-iter", "4",
                          "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "| engine |" in table and "| naive |" in table

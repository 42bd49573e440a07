"""The GPU benchmark's rows: on a machine without CUDA it says so and runs the CPU rows."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import torch
from conftest import ROOT


def _small_scan():
    """Six axial slices of a bright disc (3 mm voxels): seconds, not the demo's minutes."""
    from napari_itermask.volume import scan_from_array

    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 20 ** 2).astype(np.float32)
    data = np.repeat(disc[:, :, None], 6, axis=2) * np.linspace(1, 2, 48)[None, :, None]
    return scan_from_array(data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks/gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_row_is_the_reference_and_cuda_rows_need_a_gpu(tiny_model_dir, tmp_path, capsys,
                                                           monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "demo_scan", _small_scan)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "rows.json"
    rc = bench.main(["--presets", "small", "--devices", "cpu", "cuda", "--cpu-repeats", "1",
                     "--model", str(tiny_model_dir), "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())
    assert row["device"] == "cpu" and row["labels"] == "reference" and row["forwards"] > 0
    printed = capsys.readouterr().out
    assert "no CUDA GPU here" in printed and "| small | cpu | fp32 | 32 |" in printed


def test_a_tf32_row_leaves_fp32_strict_afterwards(tiny_model_dir):
    from napari_itermask.core import fuse
    from napari_itermask.models import load_bundle

    bench = _bench()
    scan = _small_scan()
    bundle = load_bundle(tiny_model_dir)
    _, walls, fwd, labels = bench.run_row(scan, bundle, torch.device("cpu"), "tf32", 32, 1)
    assert fuse.CUDA_TF32 is False and len(walls) == 1 and fwd > 0
    assert labels.shape == scan.data.shape

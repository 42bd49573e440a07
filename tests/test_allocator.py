"""The allocator settings (napari_itermask.allocator): once per process, off by request, and
without any effect on what is computed."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_itermask import allocator

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import hashlib, sys
sys.path[:0] = [{tests!r}]
import numpy as np
from napari_itermask import allocator
state = allocator.tune()
from conftest import perturbed_bundle, phantom
from napari_itermask.pipeline import segment_scan
from napari_itermask.volume import scan_from_array
b = perturbed_bundle()
b.card.grid_size, b.card.pixel_size_mm, b.card.min_brain_pixels = 64, 3.75, 50
img, _ = phantom(shape=(40, 48, 24))
res = segment_scan(scan_from_array(img, np.diag([3.75, 3.75, 3.75, 1.0])), b, batch_size=4)
print(state, hashlib.sha256(np.ascontiguousarray(res.labels).tobytes()).hexdigest(),
      hashlib.sha256(np.ascontiguousarray(res.error).tobytes()).hexdigest())
"""


def _run(env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV_OFF, "LD_PRELOAD")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _CHILD.format(tests=str(ROOT / "tests"))],
                         capture_output=True, text=True, env=env, check=False, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_tuned_and_default_allocators_give_identical_labels_and_error_maps():
    tuned = _run({})
    default = _run({allocator.ENV_OFF: "1"})
    assert default[0] == "disabled"
    if sys.platform.startswith("linux"):
        assert tuned[0] == "tuned"
    assert tuned[1:] == default[1:]


def test_tuning_is_once_per_process_and_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv(allocator.ENV_OFF, "1")
    assert allocator.tune() == "disabled"
    monkeypatch.delenv(allocator.ENV_OFF)
    assert allocator.tune() == "disabled"  # decided once per process
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc.so.4")
    assert allocator.tune() == "external"
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.delenv("LD_PRELOAD")
    assert allocator.tune() in ("tuned", "unsupported")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_cli_tunes_the_allocator_before_it_runs(monkeypatch, capsys):
    from napari_itermask import cli

    monkeypatch.setattr(allocator, "_state", None)
    calls = []
    monkeypatch.setattr(allocator, "tune", lambda: calls.append(1) or "tuned")
    cli.main(["models"])
    assert calls == [1]

"""Shared fixtures: every test isolated from the user's files, tiny models, phantom scans.

Isolation: the suite runs on developers' machines, so no test may read or change a user's
napari-itermask settings, their model folder or napari's own settings (a stray ``"model"`` in the
real settings file silently changes what the widget preselects afterwards). The autouse
``isolated_home`` fixture points HOME, the XDG folders, the plugin's ``ITERMASK_CONFIG_DIR`` /
``ITERMASK_MODEL_DIR`` and napari's settings at the test's own ``tmp_path``; the session-wide
``real_home_untouched`` check fails the run (as a teardown error) when anything under the real
locations changed anyway.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the training/ scripts live at the repository root
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


# -- isolation from the user's files -------------------------------------------------------------
def real_locations(env) -> list[Path]:
    """Where the plugin and napari keep a user's state, computed from the unpatched ``env``.

    Called once at import, before any fixture redirects HOME or the XDG folders.
    """
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    cache = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    # napari writes its theme files under the cache folder when it is imported
    places = [config / "napari-itermask", data / "napari-itermask", cache / "napari"]
    for var in ("ITERMASK_CONFIG_DIR", "ITERMASK_MODEL_DIR", "NAPARI_CONFIG"):
        if env.get(var):
            places.append(Path(env[var]))
    try:  # napari's settings file for this interpreter (napari keys it by the environment)
        from napari.utils._base import _DEFAULT_CONFIG_PATH
    except ImportError:  # pragma: no cover - napari missing or changed: the rest still counts
        return places
    return [*places, Path(_DEFAULT_CONFIG_PATH).parent]


def snapshot(places) -> dict[str, tuple]:
    """Every file and folder under ``places`` with its size and modification time."""
    out: dict[str, tuple] = {}
    for place in map(Path, places):
        if not place.exists():
            out[str(place)] = ("absent",)
            continue
        items = [place] + (sorted(place.rglob("*")) if place.is_dir() else [])
        for item in items:
            try:
                st = item.stat()
            except OSError:
                continue
            out[str(item)] = ("dir",) if item.is_dir() else ("file", st.st_size, st.st_mtime_ns)
    return out


def changes(before: dict, after: dict) -> list[str]:
    """Readable differences between two snapshots (created, removed or modified paths)."""
    out = []
    for path in sorted(set(before) | set(after)):
        b, a = before.get(path, ("absent",)), after.get(path, ("absent",))
        if b == a:
            continue
        if b == ("absent",):
            out.append(f"created {path}")
        elif a == ("absent",):
            out.append(f"removed {path}")
        else:
            out.append(f"modified {path}")
    return out


_REAL_ENV = dict(os.environ)
REAL_HOME = Path(_REAL_ENV.get("HOME") or os.path.expanduser("~"))
# napari reads NAPARI_CONFIG once, when napari.settings is first imported: pointing it at a
# scratch file here covers anything that imports napari before a test's fixtures run.
_SESSION_SCRATCH = Path(tempfile.mkdtemp(prefix="itermask-tests-"))
os.environ["NAPARI_CONFIG"] = str(_SESSION_SCRATCH / "napari" / "settings.yaml")
# and its cache (theme files, keyed by the environment) is written on import, under
# XDG_CACHE_HOME: a scratch folder too, set before anything here imports napari
os.environ["XDG_CACHE_HOME"] = str(_SESSION_SCRATCH / "cache")
REAL_LOCATIONS = real_locations(_REAL_ENV)


@pytest.fixture(scope="session", autouse=True)
def real_home_untouched():
    """Fail the run when any test created, changed or removed a user's settings or models."""
    before = snapshot(REAL_LOCATIONS)
    yield REAL_LOCATIONS
    shutil.rmtree(_SESSION_SCRATCH, ignore_errors=True)
    diff = changes(before, snapshot(REAL_LOCATIONS))
    if diff:
        pytest.fail("tests wrote to the user's real files:\n  " + "\n  ".join(diff[:20]),
                    pytrace=False)


@pytest.fixture(autouse=True)
def isolated_home(monkeypatch, tmp_path_factory):
    """This test's own HOME, XDG folders, plugin settings/model folders and napari settings.

    They live in a fresh folder beside (not inside) ``tmp_path``, which tests may expect empty.
    """
    root = tmp_path_factory.mktemp("isolated-home")
    home = root / "home"
    paths = SimpleNamespace(
        root=root,
        home=home,
        config=home / ".config",
        data=home / ".local" / "share",
        itermask_config=root / "itermask-config",
        models=root / "itermask-models",
        napari_config=root / "napari" / "settings.yaml",
        napari_settings=None,
    )
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(paths.config))
    monkeypatch.setenv("XDG_DATA_HOME", str(paths.data))
    monkeypatch.setenv("ITERMASK_CONFIG_DIR", str(paths.itermask_config))
    monkeypatch.setenv("ITERMASK_MODEL_DIR", str(paths.models))
    monkeypatch.setenv("NAPARI_CONFIG", str(paths.napari_config))  # for child processes
    if "napari.settings" in sys.modules:  # else the NAPARI_CONFIG above is what napari reads
        napari_settings = sys.modules["napari.settings"]
        fresh = napari_settings.NapariSettings(config_path=None)  # never read or written
        monkeypatch.setattr(napari_settings, "_SETTINGS", fresh)
        monkeypatch.setattr(napari_settings, "_PLUGIN_SETTINGS", {})
        monkeypatch.setattr(napari_settings, "_CFG_PATH", str(paths.napari_config))
        paths.napari_settings = fresh
    return paths


def phantom(shape=(60, 70, 40), lesion=True, value=100.0, lesion_value=220.0, seed=0):
    """An ellipsoidal 'brain' with mild texture and an optional bright spherical lesion."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    c = [(s - 1) / 2 for s in shape]
    r = [s * 0.42 for s in shape]
    brain = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
    img = np.where(brain, value * (1 + 0.05 * rng.standard_normal(shape)), 0).astype(np.float32)
    img[brain] = np.maximum(img[brain], 1.0)
    lab = np.zeros(shape, np.uint8)
    if lesion:
        ball = ((zz - c[0] - 5) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 6**2
        lab[ball & brain] = 1
        img[lab > 0] = lesion_value
    return img, lab


def ball_cases(folder):
    """A folder of one labelled evaluation case (``ball.nii.gz`` + ``ball_label.nii.gz``): a
    bright ball that any intensity threshold finds exactly. Returns the folder."""
    import nibabel as nib

    img, lab = phantom(shape=(40, 48, 30), lesion_value=400.0)
    aff = np.diag([3.75, 3.75, 3.75, 1.0])
    folder.mkdir()
    nib.save(nib.Nifti1Image(img, aff), str(folder / "ball.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(folder / "ball_label.nii.gz"))
    return folder


class InputRecorder(torch.nn.Module):
    """A masked net that keeps every input it is given and reconstructs nothing (zeros)."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, inp):
        self.inputs.append(inp.clone())
        return inp[:, :1] * 0.0


def perturbed_bundle(preset="tiny", seed=0, tau=0.5, threshold=2.0):
    """A random (not zero-output) model: untrained nets output zeros, which tests nothing."""
    from napari_itermask.models import ModelBundle, new_card

    torch.manual_seed(seed)
    bundle = ModelBundle.fresh(new_card("tiny", "flair", preset))
    for net in (bundle.first, bundle.masked):
        torch.nn.init.normal_(net.out.weight, std=0.05)
        torch.nn.init.constant_(net.out.bias, -1.0)
    bundle.card.tau = tau
    bundle.card.threshold = threshold
    bundle.card.min_brain_pixels = 20
    return bundle.to("cpu")


@pytest.fixture
def notes(monkeypatch):
    """Notifications the plugin shows, by kind (napari's show_error/warning/info replaced by
    recorders), so that a test can say what the user was told."""
    pytest.importorskip("napari")
    from napari.utils import notifications

    seen = {"error": [], "warning": [], "info": []}
    for kind in seen:
        monkeypatch.setattr(notifications, f"show_{kind}", seen[kind].append)
    return seen


@pytest.fixture
def tiny_bundle():
    return perturbed_bundle()


@pytest.fixture
def tiny_model_dir(tmp_path):
    from napari_itermask.models import save_bundle

    return save_bundle(perturbed_bundle(), tmp_path / "tinymodel")


@pytest.fixture
def phantom_nifti(tmp_path):
    """A phantom scan saved with an oblique LPS-like affine, and its lesion label."""
    import nibabel as nib

    img, lab = phantom()
    ang = np.deg2rad(8)
    rot = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    lin = rot @ np.diag([-1.2, -1.1, 2.0])  # L→R flipped, P→A flipped, thick slices
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = [40.0, 35.0, -30.0]
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(path))
    lpath = tmp_path / "scan_label.nii.gz"
    nib.save(nib.Nifti1Image(lab, aff), str(lpath))
    return path, lpath, aff


def _bf16_kernels() -> bool:
    from napari_itermask.core.precision import cpu_flags

    f = cpu_flags()
    return {"avx512bw", "avx512vl", "avx512dq"} <= f or "avx_ne_convert" in f


# torch's CPU bf16 convolution needs these instructions; without them the bf16 path cannot run
# at all (the fp32 fallback is tested on its own)
needs_bf16_kernels = pytest.mark.skipif(not _bf16_kernels(),
                                        reason="this CPU has no bf16 convolution kernels")

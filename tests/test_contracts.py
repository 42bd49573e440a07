"""One implementation of each contract: the untrained-model warning, NIfTI names, the masked input.

Each shared step has one function; these tests pin what its callers rely on.
"""

from __future__ import annotations

from napari_itermask.models import new_card, untrained_warning


def test_untrained_warning_names_the_model_and_is_silent_for_a_trained_one():
    card = new_card("mine", "flair")
    text = untrained_warning(card)
    assert text is not None and "'mine'" in text and "UNTRAINED" in text
    card.trained = True
    assert untrained_warning(card) is None
    # list_models entries are dicts: same wording
    assert untrained_warning({"name": "mine", "trained": False}) == text
    assert untrained_warning({"name": "mine", "trained": True}) is None


# -- the masked network's input: one function for training, calibration and inference ----------
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from napari_itermask.core import masked_input  # noqa: E402
from napari_itermask.core.engine import EngineConfig, run, slice_noise  # noqa: E402
from conftest import InputRecorder  # noqa: E402

G = 32


def _slices(n=3, seed=0):
    """``n`` distinct slices with a square brain, float32 on a G×G grid."""
    rng = np.random.default_rng(seed)
    brain = np.zeros((n, G, G), bool)
    brain[:, 6:26, 6:26] = True
    x = np.where(brain, rng.normal(0.0, 1.0, (n, G, G)), -3.0).astype(np.float32)
    return x, brain


class _Fixed:
    """Stands in for a MaskSampler (always ``mask``) and for the Batcher's generator (slices in
    order, always ``noise``), so that training draws exactly the engine's mask and noise."""

    def __init__(self, mask, noise=None):
        self.mask, self.noise = mask, noise

    def sample_batch(self, brain, rng):
        assert brain.shape == self.mask.shape
        return self.mask

    def integers(self, low, high, size):
        return np.arange(size)

    def standard_normal(self, shape):
        assert tuple(shape) == self.noise.shape
        return self.noise


def _engine_input(x, brain, guidance, seed=7):
    """The masked net's input at the engine's iteration 2, with the mask and noise it used."""
    class First(torch.nn.Module):  # a fixed reconstruction: the error is known, not zero
        def forward(self, xf):
            return xf * 0.5

    f = InputRecorder()
    cfg = EngineConfig(tau=1e9, max_iter=2, seed=seed, masked_guidance=guidance)
    states = list(run(x, brain, First(), f, cfg))
    assert len(f.inputs) == 1 and len(states) == 2  # one batch at iteration 2
    mask = states[0].masks  # the mask iteration 2 fills with noise
    assert 0 < mask.sum() < brain.sum()
    noise = torch.stack([slice_noise(seed, i, 2, (G, G)) for i in range(len(x))]).numpy()
    assert cfg.radius == 15.0  # the Batchers below use the same x_f radius
    return f.inputs[0], mask, noise


@pytest.mark.parametrize("guidance", [True, False])
def test_training_and_inference_build_identical_masked_inputs(guidance):
    from training.common import SliceSet
    from training.train import Batcher

    x, brain = _slices()
    engine_in, mask, noise = _engine_input(x, brain, guidance)
    b = Batcher(SliceSet(x=x, brain=brain, meta={}), "masked", _Fixed(mask), 15.0, seed=0,
                guidance=guidance)
    b.rng = _Fixed(mask, noise)
    train_in, target = b.get(len(x))
    assert train_in.dtype == engine_in.dtype == torch.float32
    assert torch.equal(train_in, engine_in)  # bit for bit, noise, x_f and all
    assert torch.equal(target[:, 0], torch.from_numpy(x))
    second = train_in[:, 1]
    assert (second.abs().max() > 0) == guidance  # "-freq": zeros where x_f would be


@pytest.mark.parametrize("guidance", [True, False])
def test_calibration_builds_the_training_input(monkeypatch, guidance):
    from types import SimpleNamespace

    from training import calibrate
    from training.common import SliceSet
    from training.train import Batcher

    x, brain = _slices()
    mask = brain.copy()
    mask[:, 6:16] = False
    monkeypatch.setattr(calibrate, "MaskSampler", lambda size: _Fixed(mask))
    net = InputRecorder()
    card = new_card("c", "flair", masked_guidance=guidance)
    calibrate.calibrate_tau(SimpleNamespace(card=card, masked=net),
                            SliceSet(x=x, brain=brain, meta={}), 50.0, seed=3, n_masks=1)
    # the sampler above draws nothing, so the noise is the generator's first draw
    noise = np.random.default_rng(3).standard_normal((len(x), 1, G, G)).astype(np.float32)
    b = Batcher(SliceSet(x=x, brain=brain, meta={}), "masked", _Fixed(mask), 15.0, seed=0,
                guidance=guidance)
    b.rng = _Fixed(mask, noise[:, 0])
    assert len(net.inputs) == 1 and torch.equal(net.inputs[0], b.get(len(x))[0])


def test_masked_input_fills_the_mask_with_noise_and_guides_with_x_f():
    x = torch.zeros(1, 1, 4, 4)
    noise = torch.full((1, 1, 4, 4), 5.0)
    xf = torch.full((1, 1, 4, 4), 2.0)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True
    out = masked_input(x, mask, noise, xf)
    assert out.shape == (1, 2, 4, 4)
    assert torch.equal(out[:, 0], torch.where(mask, 5.0, 0.0)[:, 0])
    assert torch.equal(out[:, 1], xf[:, 0])
    assert not masked_input(x, mask, noise, xf, guidance=False)[:, 1].any()
    with pytest.raises(ValueError, match="bool"):
        masked_input(x, mask.float(), noise, xf)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        masked_input(x[0], mask[0], noise[0], xf[0])


# -- file names: one helper strips and adds the NIfTI suffixes ---------------------------------
from pathlib import Path  # noqa: E402

from napari_itermask.names import is_nifti, nifti_stem, scan_stem, tagged_nifti  # noqa: E402


@pytest.mark.parametrize("name, nifti, scan", [
    ("scan.nii.gz", "scan", "scan"),
    ("dir/Scan.NII.GZ", "Scan", "Scan"),
    ("scan.nii", "scan", "scan"),
    ("scan.v2.nii.gz", "scan.v2", "scan.v2"),  # only the NIfTI suffix goes
    ("series.zip", None, "series"),
    ("1.2.840.113619.2", None, "1.2.840.113619.2"),  # a DICOM folder named by a UID: whole
    ("notes.gz", None, "notes.gz"),
    (".nii.gz", None, ".nii.gz"),  # nothing left: not a scan name
])
def test_stems(name, nifti, scan):
    assert nifti_stem(name) == nifti and is_nifti(name) == (nifti is not None)
    assert scan_stem(name) == scan


def test_every_shell_names_results_by_the_same_stem():
    from napari_itermask._layers import layer_stem
    from napari_itermask.cli import _error_map_path, _out_name
    from napari_itermask.export import sidecar_path

    for scan in ("case_7.NII.GZ", "case_7.nii", "case_7.zip", "case_7"):
        assert layer_stem(scan) == "case_7"
        assert _out_name(Path(scan)) == "case_7_lesions.nii.gz"
    assert sidecar_path("o/case_7_lesions.nii.gz") == Path("o/case_7_lesions.json")
    assert sidecar_path("o/odd.name") == Path("o/odd.name.json")
    assert _error_map_path(Path("o/x.nii.gz")) == Path("o/x_error.nii.gz")
    assert tagged_nifti("o/x.NII", "_label") == Path("o/x_label.NII")
    with pytest.raises(ValueError):
        tagged_nifti("o/x.zip", "_label")


# -- atomic writes: their own module, the usual file mode --------------------------------------
def test_atomic_write_gives_the_usual_mode_and_leaves_no_temporary(tmp_path):
    import os
    import stat

    from napari_itermask import export
    from napari_itermask.atomic import atomic_write_bytes

    assert export.atomic_write_bytes is atomic_write_bytes  # the old import keeps working
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.txt", b"one")
        atomic_write_bytes(tmp_path / "a.txt", b"two")  # replaces
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_bytes() == b"two"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# -- every third-party package the package imports is declared ---------------------------------
def test_every_imported_package_is_a_declared_dependency():
    import ast
    import sys
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    # required dependencies, and the optional extras (imported only by the feature they name,
    # with a one-line error saying which extra to install when it is missing)
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    declared = {d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
                .lower().replace("-", "_") for d in requirements}
    imported = set()
    for file in (root / "src" / "napari_itermask").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    ours = ("napari_itermask", "__future__")
    # import names compared like distribution names (SimpleITK is declared as simpleitk)
    third_party = {m.lower() for m in imported
                   if m not in sys.stdlib_module_names and m not in ours}
    assert "torch" in third_party  # the scan found the imports at all
    assert sorted(third_party - declared) == []


# -- every document the code cites is in the repository, down to the section -------------------
def test_cited_documents_and_sections_exist():
    import re

    root = Path(__file__).resolve().parents[1]
    cited = re.compile(r"docs/([\w./-]+\.md)(?:\s+§(\d+)(?:[–-](\d+))?)?")
    bare = re.compile(r"(?<![\w/])(method|architecture|findings)\.md|\.\./shared/")
    files = [f for d in ("src", "training", "benchmarks", "tests", "scripts")
             for f in (root / d).rglob("*") if f.suffix in (".py", ".md", ".sh", ".yaml")]
    seen, problems = 0, []
    for f in files:
        if f.name == "test_contracts.py":
            continue
        text = f.read_text(encoding="utf-8")
        for m in bare.finditer(text):
            problems.append(f"{f.relative_to(root)}: {m.group(0)!r} is not a repository path")
        for m in cited.finditer(text):
            doc = root / "docs" / m.group(1)
            if not doc.is_file():
                problems.append(f"{f.relative_to(root)}: docs/{m.group(1)} does not exist")
                continue
            seen += 1
            first = m.group(2)
            for n in filter(None, (first, m.group(3))):
                if not re.search(rf"^## {n}\. ", doc.read_text(encoding="utf-8"), re.M):
                    problems.append(f"{f.relative_to(root)}: docs/{m.group(1)} has no §{n}")
    assert seen > 10  # the scan found the citations at all
    assert problems == []

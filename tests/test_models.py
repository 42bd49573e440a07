import json
import pickle

import pytest
import torch
from conftest import perturbed_bundle

from napari_itermask.errors import ModelError
from napari_itermask.models import (
    CARD_NAME,
    WEIGHTS_NAME,
    list_models,
    load_bundle,
    save_bundle,
    sha256_file,
)


def test_round_trip_keeps_weights_and_card(tmp_path):
    b = perturbed_bundle()
    folder = save_bundle(b, tmp_path / "m")
    card = json.loads((folder / CARD_NAME).read_text())
    for key in ("preset", "modality", "normalisation", "grid_size", "pixel_size_mm",
                "min_brain_pixels", "frequency_radius", "error", "tau", "threshold",
                "threshold_derivation", "training", "weights_sha256", "intended_use"):
        assert key in card
    assert card["error"] == "squared"
    assert card["weights_sha256"] == sha256_file(folder / WEIGHTS_NAME)
    loaded = load_bundle(folder)
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.masked(x), b.masked.eval()(x))
    assert not loaded.masked.training and not loaded.first.training


def test_half_precision_storage_is_smaller_and_loads_as_float32(tmp_path):
    b = perturbed_bundle(preset="small")
    full = save_bundle(b, tmp_path / "full")
    b.card.training["weights_dtype"] = "float16"
    half = save_bundle(b, tmp_path / "half")
    assert (half / WEIGHTS_NAME).stat().st_size < 0.6 * (full / WEIGHTS_NAME).stat().st_size
    loaded = load_bundle(half)
    assert next(loaded.masked.parameters()).dtype == torch.float32


def test_tampered_weights_are_refused(tmp_path):
    folder = save_bundle(perturbed_bundle(), tmp_path / "m")
    w = folder / WEIGHTS_NAME
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_bundle(folder)


def test_corrupt_weights_with_matching_hash_give_a_clear_error(tmp_path):
    folder = save_bundle(perturbed_bundle(), tmp_path / "m")
    w = folder / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:100])
    card = json.loads((folder / CARD_NAME).read_text())
    card["weights_sha256"] = sha256_file(w)
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="cannot read weights"):
        load_bundle(folder)


class _Boom:
    def __reduce__(self):
        import os

        return (os.mkdir, ("/tmp/itermask_pickle_was_loaded",))


def test_pickles_are_never_loaded(tmp_path):
    import os
    import shutil

    shutil.rmtree("/tmp/itermask_pickle_was_loaded", ignore_errors=True)
    for name in ("model.pt", "model.pth", "weights.pkl", "model.ckpt"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps(_Boom()))
        with pytest.raises(ModelError, match="pickle"):
            load_bundle(p)
    assert not os.path.exists("/tmp/itermask_pickle_was_loaded")


def test_missing_and_unknown_models(tmp_path):
    with pytest.raises(ModelError, match="no model named"):
        load_bundle("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="card.json"):
        load_bundle(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CARD_NAME).write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        load_bundle(bad)
    card = {"name": "r", "modality": "flair", "preset": "tiny", "unet": {}}
    for rim in (-1, 1.5, "2", True):
        (bad / CARD_NAME).write_text(json.dumps({**card, "error_rim": rim}))
        with pytest.raises(ModelError, match="error_rim"):
            load_bundle(bad)
    for pol in ("Bright", "", 1, None):
        (bad / CARD_NAME).write_text(json.dumps({**card, "error_polarity": pol}))
        with pytest.raises(ModelError, match="error_polarity"):
            load_bundle(bad)


def test_bundled_models_are_listed_and_load():
    names = {m["name"]: m for m in list_models()}
    for name in ("flair", "t1", "t2", "t1ce"):
        assert name in names and names[name]["source"] in ("bundled", "user")
        b = load_bundle(name)
        assert b.card.modality == name


def test_user_models_shadow_bundled(tmp_path, monkeypatch):
    monkeypatch.setenv("ITERMASK_MODEL_DIR", str(tmp_path))
    b = perturbed_bundle()
    b.card.name = "flair"
    save_bundle(b, tmp_path / "flair")
    listed = {m["name"]: m for m in list_models()}
    assert listed["flair"]["source"] == "user"
    assert load_bundle("flair").card.tau == b.card.tau


def test_saved_bundle_files_get_the_usual_file_mode(tmp_path):
    folder = save_bundle(perturbed_bundle(), tmp_path / "m")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    for name in (CARD_NAME, WEIGHTS_NAME):
        assert (folder / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_saving_into_an_impossible_folder_is_one_clear_error_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(ModelError, match="cannot create"):
        save_bundle(perturbed_bundle(seed=1), blocker / "model")
    out = save_bundle(perturbed_bundle(seed=1), tmp_path / "m")
    before = (out / "weights.safetensors").read_bytes()
    with pytest.raises(ModelError, match="already exists"):
        save_bundle(perturbed_bundle(seed=2), out)
    assert (out / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "weights.safetensors"]


def test_bundled_models_are_trained_calibrated_and_say_what_they_are():
    from napari_itermask.models import bundled_dir

    for name in ("flair", "t1", "t2", "t1ce"):
        b = load_bundle(bundled_dir() / name)
        card = b.card
        assert card.trained and card.preset == "small" and card.modality == name
        assert card.tau_derivation["method"] != "uncalibrated"
        assert card.threshold_derivation["false_positive_rate"] == 0.001
        assert card.threshold_derivation["data"]["lesions"] is False  # healthy data only
        assert "synthetic" in card.intended_use and "your own healthy scans" in card.intended_use
        assert (bundled_dir() / name / WEIGHTS_NAME).stat().st_size < 5_000_000


def test_listing_models_and_help_do_not_import_torch():
    """`itermask --help` and `itermask models` start without torch (its import is most of a
    second); the networks load it only when a bundle is opened."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from napari_itermask import cli\n"
            "assert cli.main(['models']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "from napari_itermask.models import load_bundle\n"
            "assert 'torch' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]

"""Model files from untrusted places: each bad file is refused with one clear line, nothing runs.

A model may come from anywhere (a download, a colleague's folder), so the loader reads the card
as JSON and the weights as safetensors only. Here every way such a file can be bad — a pickle
or torch file where a model is expected, corrupt safetensors, a card of a newer format, weights
that do not match their card's sha256, a card with wrong field types — is checked through
``load_bundle`` and through ``itermask segment --model``: one ``ModelError`` subclass, one
line on stderr, exit code 1, no output file, and the pickle's marker file never appears.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import perturbed_bundle, phantom

from napari_itermask.cli import EXIT_ERROR, main
from napari_itermask.errors import (
    ItermaskError,
    ModelError,
    ModelFormatError,
    ModelIntegrityError,
    UnsafeModelError,
)
from napari_itermask.models import CARD_NAME, WEIGHTS_NAME, load_bundle, save_bundle, sha256_file


class Payload:
    """Unpickling this writes ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.write_text, (self.marker, "a pickle was loaded"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER-pickle-was-loaded"
    yield path
    assert not path.exists(), "a pickle from a model path was unpickled"


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Any attempt at unpickling during a test fails it, even a 'safe' weights_only load."""

    def tripwire(*args, **kwargs):
        raise AssertionError("something tried to unpickle a model file")

    monkeypatch.setattr(torch, "load", tripwire)
    monkeypatch.setattr(pickle, "load", tripwire)
    monkeypatch.setattr(pickle, "loads", tripwire)


def pickle_bytes(marker: Path, protocol: int = 4) -> bytes:
    return pickle.dumps({"state_dict": Payload(marker)}, protocol=protocol)


def torch_file(path: Path, marker: Path) -> Path:
    torch.save({"model": Payload(marker)}, path)  # a zip archive with the pickle inside
    return path


def rehash(folder: Path) -> None:
    """Make the card's sha256 match whatever the weights file now holds."""
    card = json.loads((folder / CARD_NAME).read_text())
    card["weights_sha256"] = sha256_file(folder / WEIGHTS_NAME)
    (folder / CARD_NAME).write_text(json.dumps(card))


def edit_card(folder: Path, **changes) -> Path:
    card = json.loads((folder / CARD_NAME).read_text())
    card.update(changes)
    (folder / CARD_NAME).write_text(json.dumps(card))
    return folder


def test_the_payload_is_live(tmp_path):
    """The marker test can fail: unpickling the payload really writes the marker."""
    target = tmp_path / "live-marker"
    pickle._loads(pickle_bytes(target))  # the pure-Python unpickler, not the patched name
    assert target.read_text() == "a pickle was loaded"


# -- the bad files, one builder per case ----------------------------------------------------------
def good_bundle(root: Path) -> Path:
    return save_bundle(perturbed_bundle(), root / "model")


def case_pt_file(root, marker):
    return torch_file(root / "model.pt", marker)


def case_pickle_file(root, marker):
    p = root / "weights.pkl"
    p.write_bytes(pickle_bytes(marker))
    return p


def case_pickle_without_suffix(root, marker):
    p = root / "mymodel"
    p.write_bytes(pickle_bytes(marker, protocol=2))
    return p


def case_protocol0_pickle_without_suffix(root, marker):
    p = root / "mymodel.dat"
    p.write_bytes(pickle.dumps(Payload(marker), protocol=0))
    return p


def case_folder_of_pickles(root, marker):
    folder = root / "downloaded-model"
    folder.mkdir()
    torch_file(folder / "checkpoint.pth", marker)
    return folder


def case_pickle_as_weights(root, marker):
    folder = good_bundle(root)
    torch_file(folder / WEIGHTS_NAME, marker)
    rehash(folder)  # even with a matching hash, the pickle is refused unread
    return folder


def case_pickle_as_weights_given_by_file(root, marker):
    folder = case_pickle_as_weights(root, marker)
    return folder / WEIGHTS_NAME


def case_pickle_as_card(root, marker):
    folder = good_bundle(root)
    (folder / CARD_NAME).write_bytes(pickle_bytes(marker))
    return folder


def case_truncated_safetensors(root, marker):
    folder = good_bundle(root)
    w = folder / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:300])
    rehash(folder)
    return folder


def case_garbage_safetensors(root, marker):
    folder = good_bundle(root)
    (folder / WEIGHTS_NAME).write_bytes(np.random.default_rng(0).bytes(4096))
    rehash(folder)
    return folder


def case_empty_safetensors(root, marker):
    folder = good_bundle(root)
    (folder / WEIGHTS_NAME).write_bytes(b"")
    rehash(folder)
    return folder


def case_safetensors_offsets_out_of_range(root, marker):
    folder = good_bundle(root)
    header = json.dumps({"first.out.weight": {"dtype": "F32", "shape": [1000, 1000],
                                              "data_offsets": [0, 4_000_000]}}).encode()
    (folder / WEIGHTS_NAME).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    rehash(folder)
    return folder


def case_sha256_mismatch(root, marker):
    folder = good_bundle(root)
    w = folder / WEIGHTS_NAME
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    w.write_bytes(bytes(data))
    return folder


def case_weights_of_another_model(root, marker):
    folder = good_bundle(root)
    other = save_bundle(perturbed_bundle(seed=7), root / "other")
    (folder / WEIGHTS_NAME).write_bytes((other / WEIGHTS_NAME).read_bytes())
    return folder


def case_no_sha256(root, marker):
    return edit_card(good_bundle(root), weights_sha256="")


def case_newer_card_format(root, marker):
    return edit_card(good_bundle(root), format="napari-itermask-bundle/2")


def case_foreign_card_format(root, marker):
    return edit_card(good_bundle(root), format="some-other-tool/1")


def case_newer_weights_format(root, marker):
    from safetensors.torch import save_file

    folder = good_bundle(root)
    state = load_bundle(folder)
    tensors = {f"{p}.{k}": v.contiguous() for p, net in (("first", state.first),
                                                         ("masked", state.masked))
               for k, v in net.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "napari-itermask-bundle/9"})
    rehash(folder)
    return folder


def case_wrong_field_type(root, marker):
    return edit_card(good_bundle(root), tau="0.5")


def case_nan_threshold(root, marker):
    folder = good_bundle(root)
    text = (folder / CARD_NAME).read_text().replace('"threshold": 2.0', '"threshold": NaN')
    assert "NaN" in text
    (folder / CARD_NAME).write_text(text)
    return folder


def case_unbuildable_unet(root, marker):
    folder = good_bundle(root)
    card = json.loads((folder / CARD_NAME).read_text())
    return edit_card(folder, unet={**card["unet"], "widths": [-4, 8]})


CASES = {
    # name: (builder, error class, words the message must hold)
    "pt-file": (case_pt_file, UnsafeModelError, ["model.pt", "never loaded"]),
    "pickle-file": (case_pickle_file, UnsafeModelError, ["weights.pkl", "never loaded"]),
    "pickle-no-suffix": (case_pickle_without_suffix, UnsafeModelError, ["a pickle"]),
    "pickle-protocol-0": (case_protocol0_pickle_without_suffix, UnsafeModelError, ["a pickle"]),
    "folder-of-pickles": (case_folder_of_pickles, UnsafeModelError,
                          ["checkpoint.pth", "never loaded", "card.json"]),
    "pickle-as-weights": (case_pickle_as_weights, UnsafeModelError, ["not safetensors"]),
    "pickle-as-weights-file": (case_pickle_as_weights_given_by_file, UnsafeModelError,
                               ["not safetensors"]),
    "pickle-as-card": (case_pickle_as_card, UnsafeModelError, ["not JSON"]),
    "truncated-safetensors": (case_truncated_safetensors, ModelIntegrityError,
                              ["cannot read weights", "corrupt or truncated"]),
    "garbage-safetensors": (case_garbage_safetensors, ModelIntegrityError,
                            ["cannot read weights"]),
    "empty-safetensors": (case_empty_safetensors, ModelIntegrityError, ["cannot read weights"]),
    "offsets-out-of-range": (case_safetensors_offsets_out_of_range, ModelIntegrityError,
                             ["cannot read weights"]),
    "sha256-mismatch": (case_sha256_mismatch, ModelIntegrityError,
                        ["do not match the sha256"]),
    "weights-of-another-model": (case_weights_of_another_model, ModelIntegrityError,
                                 ["do not match the sha256"]),
    "no-sha256": (case_no_sha256, ModelIntegrityError, ["no weights_sha256"]),
    "newer-card-format": (case_newer_card_format, ModelFormatError,
                          ["format version 2", "reads up to version 1", "upgrade"]),
    "foreign-card-format": (case_foreign_card_format, ModelFormatError,
                            ["not a napari-itermask bundle"]),
    "newer-weights-format": (case_newer_weights_format, ModelFormatError,
                             ["format version 9", "upgrade"]),
    "wrong-field-type": (case_wrong_field_type, ModelError, ["tau must be a finite number"]),
    "nan-threshold": (case_nan_threshold, ModelError, ["threshold must be a finite number"]),
    "unbuildable-unet": (case_unbuildable_unet, ModelError, ["no buildable UNet"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_bundle_refuses_with_one_clear_line(tmp_path, marker, name):
    build, cls, words = CASES[name]
    path = build(tmp_path, marker)
    with pytest.raises(cls) as info:
        load_bundle(path)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ModelError)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"


def small_scan(path: Path) -> Path:
    img, _ = phantom(shape=(24, 28, 10))
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("name", ["pt-file", "folder-of-pickles", "pickle-as-weights",
                                  "pickle-as-card", "truncated-safetensors", "sha256-mismatch",
                                  "newer-card-format", "wrong-field-type"])
def test_cli_prints_one_line_and_exits_with_the_error_code(tmp_path, capsys, marker, name):
    build, _, words = CASES[name]
    model = build(tmp_path, marker)
    scan = small_scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "out" / "lesions.nii.gz"
    code = main(["segment", str(scan), "-o", str(out), "--model", str(model)])
    _, stderr = capsys.readouterr()
    errors = [ln for ln in stderr.splitlines() if ln.startswith("itermask: error:")]
    assert code == EXIT_ERROR
    assert len(errors) == 1 and all(w in errors[0] for w in words), stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == errors[0]
    assert not out.exists() and not out.with_name("lesions.json").exists()


def test_a_folder_of_pickles_in_the_user_model_folder_is_refused_by_name(
        tmp_path, marker, isolated_home):
    folder = isolated_home.models / "evil"
    folder.mkdir(parents=True)
    torch_file(folder / "model.pt", marker)
    with pytest.raises(UnsafeModelError, match="model.pt"):
        load_bundle("evil")


def test_models_listing_shows_a_newer_user_model_as_unusable(tmp_path, capsys, isolated_home):
    folder = save_bundle(perturbed_bundle(), isolated_home.models / "future")
    edit_card(folder, format="napari-itermask-bundle/3")
    assert main(["models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("future"))
    assert "unusable" in line and "format version 3" in line


def test_a_good_bundle_still_loads_and_old_cards_without_format_are_version_1(tmp_path):
    folder = good_bundle(tmp_path)
    assert load_bundle(folder).card.format == "napari-itermask-bundle/1"
    card = json.loads((folder / CARD_NAME).read_text())
    del card["format"]
    (folder / CARD_NAME).write_text(json.dumps(card))
    assert load_bundle(folder).card.tau == 0.5


def test_every_refusal_is_an_itermask_error():
    for _, cls, _ in CASES.values():
        assert issubclass(cls, ModelError) and issubclass(cls, ItermaskError)

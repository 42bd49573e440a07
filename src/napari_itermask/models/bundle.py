"""The model bundle: both networks with their card; saving and verified loading (safetensors).

A bundle is a folder holding ``card.json`` and ``weights.safetensors``. The weights file holds
both networks (``first.*`` for f1, ``masked.*`` for f); the sha256 of the weights, written into
the card on saving, is checked on every load. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._hash import sha256_file
from ..atomic import temp_file_in, usual_mode
from ..core.net_input import masked_channels
from ..core.unet import UNet
from ..errors import ModelError, ModelIntegrityError, UnsafeModelError
from .card import CARD_NAME, FORMAT, ModelCard, check_format, read_card
from .locations import WEIGHTS_NAME, resolve_model
from .untrusted import pickle_kind, safetensors_header

__all__ = ["ModelBundle", "load_bundle", "save_bundle"]


@dataclass
class ModelBundle:
    card: ModelCard
    first: UNet
    masked: UNet
    path: Path | None = None
    _inference: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sha256(self) -> str:
        return self.card.weights_sha256

    def to(self, device) -> ModelBundle:
        """Move both networks (channels-last weights, eval mode) to ``device``."""
        for net in (self.first, self.masked):
            net.to(device).to(memory_format=torch.channels_last).eval()
        self._inference.clear()
        return self

    def nets(self, precision: str = "fp32") -> tuple[torch.nn.Module, torch.nn.Module]:
        """(f1, f) for inference in ``precision``: BatchNorm folded and pointwise work fused
        (``core.fuse``), weights in bfloat16 for "bf16". Built from the trained networks and
        kept until their weights change (in place or replaced). Which τ and threshold hold for
        a precision is the card's business (``ModelCard.calibration``)."""
        from ..core.fuse import InferenceNet

        stamp = tuple((t.data_ptr(), t._version) for net in (self.first, self.masked)
                      for t in net.state_dict(keep_vars=True).values())
        held = self._inference.get(precision)
        if held is None or held[0] != stamp:
            held = (stamp, (InferenceNet(self.first, precision),
                            InferenceNet(self.masked, precision)))
            self._inference[precision] = held
        return held[1]

    @property
    def device(self) -> torch.device:
        return next(self.masked.parameters()).device

    @classmethod
    def fresh(cls, card: ModelCard) -> ModelBundle:
        """Untrained networks built from a card (zero-initialised output: they output zeros)."""
        return cls(card, *_networks(card)).to("cpu")


def _networks(card: ModelCard) -> tuple[UNet, UNet]:
    """f1 (input x_f) and f (input x̂, x_f) as the card describes them."""
    try:
        return (UNet(card.unet_config(1)),
                UNet(card.unet_config(masked_channels(bool(card.radius_conditioning),
                                                     card.context_slices))))
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model card of {card.name!r} describes no buildable UNet: {reason}"
                         ) from None


def _state(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """Both networks' tensors; floating ones stored as float16 when the card asks for it."""
    half = bundle.card.training.get("weights_dtype") == "float16"
    out = {}
    for prefix, net in (("first.", bundle.first), ("masked.", bundle.masked)):
        for k, v in net.state_dict().items():
            v = v.detach().cpu()
            if half and v.is_floating_point():
                v = v.half()
            out[prefix + k] = v.contiguous()
    return out


def save_bundle(bundle: ModelBundle, folder, *, overwrite: bool = False) -> Path:
    """Write ``card.json`` and ``weights.safetensors`` into ``folder`` (atomically per file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if (folder / CARD_NAME).exists() and not overwrite:
        raise ModelError(f"a model already exists in {folder} (pass overwrite=True to replace it)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {folder}: {exc.strerror or exc}") from None
    tmp_w = temp_file_in(folder, ".safetensors.tmp", ModelError)
    tmp_c = None
    try:
        save_file(_state(bundle), str(tmp_w), metadata={"format": FORMAT})
        usual_mode(tmp_w)  # safetensors writes the file anew
        bundle.card.weights_sha256 = sha256_file(tmp_w)
        if not bundle.card.version:
            from .. import __version__

            bundle.card.version = __version__
        tmp_c = temp_file_in(folder, ".json.tmp", ModelError)
        tmp_c.write_text(json.dumps(bundle.card.to_dict(), indent=2) + "\n")
        os.replace(tmp_w, folder / WEIGHTS_NAME)
        os.replace(tmp_c, folder / CARD_NAME)
    finally:
        for p in (tmp_w, tmp_c):
            if p is not None:
                p.unlink(missing_ok=True)
    bundle.path = folder
    return folder


def load_bundle(name_or_path, device="cpu") -> ModelBundle:
    """Load and verify a bundle; raises ModelError (or a subclass) with a one-line reason.

    The weights are read once into memory, hashed, and parsed from those same bytes, so the
    file that is checked is the file that is used. Nothing is unpickled: the card is JSON and
    the weights are safetensors, both plain data.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    folder = resolve_model(name_or_path)
    card = read_card(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {weights}: {exc.strerror or exc}") from None
    header = safetensors_header(data)
    if header is None and (kind := pickle_kind(data[:64])):
        raise UnsafeModelError(
            f"weights of model {card.name!r} ({weights.name}) are {kind}, not safetensors; "
            "pickles are never loaded, as unpickling can run code")
    if not card.weights_sha256:
        raise ModelIntegrityError(
            f"model card of {card.name!r} has no weights_sha256; refusing to load")
    if hashlib.sha256(data).hexdigest() != card.weights_sha256.lower():
        raise ModelIntegrityError(
            f"weights of model {card.name!r} do not match the sha256 in its card "
            "(corrupt or modified file)"
        )
    if header is None:
        raise ModelIntegrityError(
            f"cannot read weights of model {card.name!r}: {weights.name} is not a safetensors "
            "file (corrupt or truncated)")
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and "format" in meta:
        check_format(meta["format"], card.name)
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelIntegrityError(
            f"cannot read weights of model {card.name!r}: {reason}") from None
    del data
    stray = sorted(k for k in state if not k.startswith(("first.", "masked.")))
    if stray:
        raise ModelError(
            f"weights of model {card.name!r} hold tensors of no network ({', '.join(stray[:3])})")
    bundle = ModelBundle(card, *_networks(card), folder)
    for prefix, net in (("first.", bundle.first), ("masked.", bundle.masked)):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"weights of model {card.name!r} do not fit its card: {first}") from None
    return bundle.to(device)

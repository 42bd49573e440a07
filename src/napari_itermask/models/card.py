"""The model card: the JSON description of a bundle, read as data and checked before any use.

The card says how to build both networks (architecture preset and UNet description), how a scan
must be prepared for them (normalisation, model grid, pixel size), the calibrated τ and
segmentation threshold with how each was derived, the training details, the sha256 of the
weights and the intended use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.segmentation import POLARITIES
from ..core.unet import PRESETS, UNetConfig
from ..errors import ModelError

__all__ = ["CARD_NAME", "FORMAT", "ModelCard", "new_card", "polarity_note", "read_card"]

CARD_NAME = "card.json"
FORMAT = "napari-itermask-bundle/1"


@dataclass
class ModelCard:
    """Everything needed to use a model and to judge its results (architecture.md)."""

    name: str
    modality: str
    preset: str
    unet: dict
    normalisation: str = "p90"  # "p90": 6·x/p90 − 3 (reference); "zscore": (x − μ)/σ in brain
    grid_size: int = 128
    pixel_size_mm: float = 1.875
    min_brain_pixels: int = 328  # 2 % of a 128² slice
    frequency_radius: float = 15.0
    masked_guidance: bool = True  # False only for the "-freq" ablation (f sees no x_f)
    error: str = "squared"
    error_smoothing: float = 0.0  # σ (model-grid px) of the error smoothing; 0 = the paper
    error_rim: int = 0  # outer brain pixels (model grid) the segmentation ignores; 0 = the paper
    error_polarity: str = "both"  # deviations that count as error: both (the paper), bright, dark
    first_unmask: float = 0.4
    stop_shrink: float = 0.01
    max_iter: int = 20
    tau: float = 1.0
    tau_derivation: dict = field(default_factory=lambda: {"method": "uncalibrated"})
    threshold: float = 1.0
    threshold_derivation: dict = field(default_factory=lambda: {"method": "uncalibrated"})
    trained: bool = False
    training: dict = field(default_factory=dict)
    weights_sha256: str = ""
    intended_use: str = (
        "Research and demonstration only; not a medical device. Trained on synthetic brains made "
        "from one template: train on your own healthy scans for real use."
    )
    format: str = FORMAT
    version: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        if not isinstance(d, dict):
            raise ModelError("model card is not a JSON object")
        fields = cls.__dataclass_fields__
        missing = [k for k in ("name", "modality", "preset", "unet") if k not in d]
        if missing:
            raise ModelError(f"model card lacks {', '.join(missing)}")
        rim = d.get("error_rim", 0)
        if isinstance(rim, bool) or not isinstance(rim, int) or rim < 0:
            raise ModelError("model card: error_rim must be a whole number of pixels >= 0")
        if d.get("error_polarity", "both") not in POLARITIES:
            raise ModelError(f"model card: error_polarity must be one of {', '.join(POLARITIES)}")
        return cls(**{k: v for k, v in d.items() if k in fields})

    def unet_config(self, in_channels: int) -> UNetConfig:
        try:
            return UNetConfig.from_dict({**self.unet, "in_channels": in_channels})
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model card has an invalid UNet description: {exc}") from None


def polarity_note(polarity: str) -> str:
    """What users should be told about a card's ``error_polarity``: nothing for the paper's
    two-sided error, else which deviations alone count."""
    return "" if polarity == "both" else f"error counts {polarity} deviations only"


def new_card(name: str, modality: str, preset: str = "small", **kw) -> ModelCard:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}")
    unet = PRESETS[preset].to_dict()
    unet.pop("in_channels", None)
    return ModelCard(name=name, modality=modality, preset=preset, unet=unet, **kw)


def read_card(folder: Path) -> ModelCard:
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelError(f"{folder} has no {CARD_NAME}")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model card {card_path} is not valid JSON ({exc})") from None
    return ModelCard.from_dict(data)

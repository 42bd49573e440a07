"""The model card: a JSON description of a bundle, read as data and checked before any use.

The card says how to build both networks (architecture preset and UNet description), how a scan
must be prepared for them (normalisation, model grid, pixel size), the calibrated τ and
segmentation threshold with how each was derived, the training details, the sha256 of the
weights and the intended use. A card comes from a file a user may have downloaded, so it is
parsed with ``json`` only and every field the code relies on is checked here: a bad card is one
``ModelError`` line, never a traceback later on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.conditioning import RadiusConditioning
from ..core.context_gap import check_context_gap
from ..core.context_slices import check_context_slices
from ..core.polarity import POLARITIES
from ..core.first_step import COMPLEMENTARY_MASKS, FIRST_STEPS
from ..core.precision import DEFAULT_PRECISION, PRECISIONS
from ..core.residual import ResidualScale
from ..core.unet_config import PRESETS, UNetConfig
from ..errors import ModelError, ModelFormatError, UnsafeModelError
from .untrusted import pickle_kind

__all__ = [
    "CARD_NAME",
    "FORMAT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelCard",
    "new_card",
    "polarity_note",
    "options_note",
    "read_card",
    "untrained_warning",
]

CARD_NAME = "card.json"
FORMAT_NAME = "napari-itermask-bundle"
FORMAT_VERSION = 1  # the newest bundle format this code reads; older ones stay readable
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
_FORMAT_RE = re.compile(rf"^{re.escape(FORMAT_NAME)}/(\d+)$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

# Fields whose type the code relies on: a wrong type is refused when the card is read.
_NUMBERS = ("pixel_size_mm", "frequency_radius", "error_smoothing", "first_unmask",
            "stop_shrink", "tau", "threshold")
_COUNTS = ("grid_size", "max_iter", "complementary_masks")  # whole numbers >= 1
_SIZES = ("min_brain_pixels", "context_gap", "context_slices")  # whole numbers >= 0
CARD_MAX_BYTES = 4 << 20  # a card is a few kB; anything this large is not one
_TEXTS = ("name", "modality", "preset", "normalisation", "error", "weights_sha256", "first_step",
          "intended_use", "format", "version", "precision")
_FLAGS = ("masked_guidance", "trained")
_DICTS = ("unet", "tau_derivation", "threshold_derivation", "training", "radius_conditioning",
          "residual_scale", "calibrations")


@dataclass
class ModelCard:
    """Everything needed to use a model and to judge its results (docs/architecture.md §3)."""

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
    # radius-conditioned masked net (core.conditioning.RadiusConditioning); {} = the paper's fixed
    # radius and a two-channel masked net
    radius_conditioning: dict = field(default_factory=dict)
    error: str = "squared"
    error_smoothing: float = 0.0  # σ (model-grid px) of the error smoothing; 0 = the paper
    error_rim: int = 0  # outer brain pixels (model grid) the segmentation ignores; 0 = the paper
    error_polarity: str = "both"  # deviations that count as error: both (the paper), bright, dark
    # standardised residual (core.residual.ResidualScale): the expected healthy error per pixel
    # kind that every squared error is divided by; {} = the paper's plain squared error
    residual_scale: dict = field(default_factory=dict)
    # the loop's first step (core.engine): f1 (the paper), complementary (the masked net on
    # complementary blob masks) or both (per pixel the larger error)
    first_step: str = "f1"
    complementary_masks: int = 3
    context_gap: int = 0  # px around the mask also hidden from the masked net; 0 = the paper
    # 2.5-D: axial neighbours per side the masked net sees, each under its own loop mask
    # (core.net_input); 0 = the paper's 2-D masked net
    context_slices: int = 0
    first_unmask: float = 0.4
    stop_shrink: float = 0.01
    max_iter: int = 20
    tau: float = 1.0
    tau_derivation: dict = field(default_factory=lambda: {"method": "uncalibrated"})
    threshold: float = 1.0
    threshold_derivation: dict = field(default_factory=lambda: {"method": "uncalibrated"})
    # τ and threshold calibrated in other precisions than fp32 (the fields above), e.g.
    # {"bf16": {"tau": ..., "threshold": ..., "tau_derivation": {...}, ...}}; {} = fp32 only
    calibrations: dict = field(default_factory=dict)
    # the precision the model was calibrated to be run in by preference (evaluation runs it so);
    # the CLI and the widget run fp32 unless bf16 is asked for
    precision: str = DEFAULT_PRECISION
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
        check_format(d.get("format", FORMAT), d.get("name"))
        fields = cls.__dataclass_fields__
        missing = [k for k in ("name", "modality", "preset", "unet") if k not in d]
        if missing:
            raise ModelError(f"model card lacks {', '.join(missing)}")
        rim = d.get("error_rim", 0)
        if isinstance(rim, bool) or not isinstance(rim, int) or rim < 0:
            raise ModelError("model card: error_rim must be a whole number of pixels >= 0")
        if d.get("error_polarity", "both") not in POLARITIES:
            raise ModelError(f"model card: error_polarity must be one of {', '.join(POLARITIES)}")
        _check_types(d)
        try:
            RadiusConditioning.from_dict(d.get("radius_conditioning"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card: radius_conditioning is invalid ({exc})") from None
        if d.get("first_step", "f1") not in FIRST_STEPS:
            raise ModelError(f"model card: first_step must be one of {', '.join(FIRST_STEPS)}")
        try:
            check_context_gap(d.get("context_gap", 0))
            check_context_slices(d.get("context_slices", 0))
        except ValueError as exc:
            raise ModelError(f"model card: {exc}") from None
        if d.get("context_slices", 0) and d.get("first_step", "f1") != "f1":
            raise ModelError("model card: context_slices (2.5-D) goes with first_step f1 only")
        if d.get("complementary_masks", 3) not in COMPLEMENTARY_MASKS:
            raise ModelError("model card: complementary_masks must be a whole number from "
                             f"{COMPLEMENTARY_MASKS[0]} to {COMPLEMENTARY_MASKS[-1]}")
        try:
            ResidualScale.from_dict(d.get("residual_scale"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card: residual_scale is invalid ({exc})") from None
        _check_calibrations(d)
        sha = d.get("weights_sha256", "")
        if sha and not _SHA256_RE.match(sha):
            raise ModelError("model card: weights_sha256 is not a sha256 (64 hex digits)")
        return cls(**{k: v for k, v in d.items() if k in fields})

    def calibration(self, precision: str | None = None) -> dict:
        """τ and threshold (with their derivations) calibrated in ``precision`` (None: the
        card's own ``precision``): {"tau", "threshold", "tau_derivation",
        "threshold_derivation"}. fp32 is the card's top-level fields; another precision must be
        in ``calibrations``, else ``ModelError`` — a τ calibrated in one precision does not
        hold in another."""
        precision = self.precision if precision is None else precision
        if precision not in PRECISIONS:
            raise ModelError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
        if precision == "fp32":
            return {"tau": self.tau, "threshold": self.threshold,
                    "tau_derivation": self.tau_derivation,
                    "threshold_derivation": self.threshold_derivation}
        cal = self.calibrations.get(precision)
        if not cal:
            raise ModelError(
                f"model {self.name!r} has no {precision} calibration (its τ and threshold hold "
                f"in {', '.join(['fp32', *self.calibrations])} only); run it in fp32, or "
                f"calibrate it with training.calibrate --precision {precision}")
        return {"tau_derivation": {}, "threshold_derivation": {}, **cal}

    def unet_config(self, in_channels: int) -> UNetConfig:
        try:
            return UNetConfig.from_dict({**self.unet, "in_channels": in_channels})
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model card has an invalid UNet description: {exc}") from None


def check_format(fmt, name=None) -> int:
    """The bundle format version of a card's ``format`` field; refuses what this code cannot read.

    A newer version is refused rather than half-read: its fields may mean something this code
    does not know, and a silently misread threshold is worse than no result.
    """
    named = isinstance(name, str) and name
    who = f" of {name!r}" if named else ""
    m = _FORMAT_RE.match(fmt) if isinstance(fmt, str) else None
    if m is None:
        raise ModelFormatError(
            f"model card{who} has format {fmt!r}, not a napari-itermask bundle "
            f"(expected {FORMAT_NAME}/<version>)")
    version = int(m.group(1))
    if version > FORMAT_VERSION:
        from .. import __version__

        subject = f"model {name!r}" if named else "the model"
        raise ModelFormatError(
            f"{subject} is bundle format version {version}; this napari-itermask "
            f"({__version__}) reads up to version {FORMAT_VERSION}: upgrade napari-itermask "
            "to use it")
    if version < 1:
        raise ModelFormatError(f"model card{who} has an invalid format version {version}")
    return version


def _check_types(d: dict) -> None:
    def bad(key, what):
        raise ModelError(f"model card: {key} must be {what}, not {json.dumps(d[key])[:40]}")

    for key in _NUMBERS:
        v = d.get(key)
        if key in d and (isinstance(v, bool) or not isinstance(v, (int, float))
                         or not math.isfinite(v)):
            bad(key, "a finite number")
    for keys, low in ((_COUNTS, 1), (_SIZES, 0)):
        for key in keys:
            v = d.get(key)
            if key in d and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                bad(key, f"a whole number >= {low}")
    for key, what in ((_TEXTS, "text"), (_FLAGS, "true or false"), (_DICTS, "a JSON object")):
        kind = {"text": str, "true or false": bool, "a JSON object": dict}[what]
        for k in key:
            if k in d and not isinstance(d[k], kind):
                bad(k, what)


def _check_calibrations(d: dict) -> None:
    """``precision`` must be known and calibrated; each entry of ``calibrations`` must hold a
    finite τ and threshold >= 0."""
    prec = d.get("precision", DEFAULT_PRECISION)
    if prec not in PRECISIONS:
        raise ModelError(f"model card: precision must be one of {', '.join(PRECISIONS)}")
    cals = d.get("calibrations", {})
    for key, cal in cals.items():
        if key not in PRECISIONS or key == "fp32":
            raise ModelError(f"model card: calibrations holds {key!r}, not one of "
                             f"{', '.join(p for p in PRECISIONS if p != 'fp32')}")
        if not isinstance(cal, dict):
            raise ModelError(f"model card: calibrations[{key!r}] must be a JSON object")
        for name in ("tau", "threshold"):
            v = cal.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ModelError(f"model card: calibrations[{key!r}] needs a finite {name} >= 0")
    if prec != "fp32" and prec not in cals:
        raise ModelError(f"model card: precision {prec} has no entry in calibrations")


def polarity_note(polarity: str) -> str:
    """What users should be told about a card's ``error_polarity``: nothing for the paper's
    two-sided error, else which deviations alone count."""
    return "" if polarity == "both" else f"error counts {polarity} deviations only"


def options_note(card) -> str:
    """The options beyond the paper that a card (a ``ModelCard`` or its dict) sets, in words,
    "; "-separated; empty for the paper's method."""
    def get(key, default):
        return card.get(key, default) if isinstance(card, dict) else getattr(card, key, default)

    notes = [polarity_note(get("error_polarity", "both"))]
    if get("error_smoothing", 0.0):
        notes.append(f"error smoothed (σ {get('error_smoothing', 0.0):g} px)")
    if get("error_rim", 0):
        notes.append(f"outer {get('error_rim', 0)} px of the brain ignored")
    if get("residual_scale", {}):
        notes.append("standardised residual")
    if get("context_gap", 0):
        notes.append(f"context gap {get('context_gap', 0)} px")
    if get("context_slices", 0):
        notes.append(f"2.5-D masked net ({get('context_slices', 0)} neighbour slices per side)")
    if get("radius_conditioning", {}):
        notes.append("radius-conditioned masked net")
    if get("first_step", "f1") != "f1":
        notes.append(f"first step: {get('first_step', 'f1')}")
    if not get("masked_guidance", True):
        notes.append("masked net without x_f")
    if get("calibrations", {}):
        notes.append(f"also calibrated in {', '.join(sorted(get('calibrations', {})))} "
                     "(--precision)")
    return "; ".join(n for n in notes if n)


def untrained_warning(card) -> str | None:
    """The one warning every shell shows for an untrained (placeholder) model, or ``None``.

    ``card`` is a :class:`ModelCard` or a ``list_models`` entry (a dict with ``name`` and
    ``trained``). One sentence, no prefix: the CLI prints it after ``WARNING:``, the widget in
    its note and notifications.
    """
    if isinstance(card, dict):
        name, trained = card.get("name", "?"), bool(card.get("trained"))
    else:
        name, trained = card.name, bool(card.trained)
    if trained:
        return None
    return (f"model {name!r} is UNTRAINED (a placeholder): its segmentations mean nothing; "
            "train one (training/README.md) or choose a trained model")


def new_card(name: str, modality: str, preset: str = "small", **kw) -> ModelCard:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}")
    unet = PRESETS[preset].to_dict()
    unet.pop("in_channels", None)
    return ModelCard(name=name, modality=modality, preset=preset, unet=unet, **kw)


def read_card(folder: Path) -> ModelCard:
    """The card of a bundle folder, parsed as JSON data only and checked."""
    card_path = Path(folder) / CARD_NAME
    if not card_path.is_file():
        raise ModelError(f"{folder} has no {CARD_NAME}")
    try:
        if card_path.stat().st_size > CARD_MAX_BYTES:
            raise ModelError(f"model card {card_path} is too large to be a model card")
        raw = card_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model card {card_path}: {exc.strerror or exc}") from None
    kind = pickle_kind(raw[:16])
    if kind:
        raise UnsafeModelError(
            f"model card {card_path} is {kind}, not JSON; pickles are never loaded, as "
            "unpickling can run code")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model card {card_path} is not valid JSON ({reason})") from None
    return ModelCard.from_dict(data)

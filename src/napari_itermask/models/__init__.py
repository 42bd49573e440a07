"""Model bundles: weights in safetensors plus a JSON card. Never pickle.

A bundle is a folder holding ``card.json`` and ``weights.safetensors``. The weights file holds
both networks (``first.*`` for f1, ``masked.*`` for f); the card says how to build them, how the
scan must be prepared for them (normalisation, model grid, pixel size), the calibrated τ and
segmentation threshold with how they were derived, and the sha256 of the weights, checked on
every load. Bundled models live in ``napari_itermask/models/bundled/<name>``; user models in
``$ITERMASK_MODEL_DIR`` (default ``~/.local/share/napari-itermask/models``) or any folder path.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._hash import sha256_file
from ..core.segmentation import POLARITIES
from ..core.unet import PRESETS, UNet, UNetConfig
from ..errors import ModelError
from ..export import temp_file_in, usual_mode

__all__ = [
    "ModelCard",
    "ModelBundle",
    "save_bundle",
    "load_bundle",
    "resolve_model",
    "list_models",
    "polarity_note",
    "bundled_dir",
    "user_dir",
    "sha256_file",
    "CARD_NAME",
    "WEIGHTS_NAME",
]

CARD_NAME = "card.json"
WEIGHTS_NAME = "weights.safetensors"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".joblib"}
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
    def from_dict(cls, d: dict) -> "ModelCard":
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


@dataclass
class ModelBundle:
    card: ModelCard
    first: UNet
    masked: UNet
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sha256(self) -> str:
        return self.card.weights_sha256

    def to(self, device) -> "ModelBundle":
        """Move both networks (channels-last weights, eval mode) to ``device``."""
        for net in (self.first, self.masked):
            net.to(device).to(memory_format=torch.channels_last).eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.masked.parameters()).device

    @classmethod
    def fresh(cls, card: ModelCard) -> "ModelBundle":
        """Untrained networks built from a card (zero-initialised output: they output zeros)."""
        return cls(card, UNet(card.unet_config(1)), UNet(card.unet_config(2))).to("cpu")


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


def bundled_dir() -> Path:
    return Path(__file__).parent / "bundled"


def user_dir() -> Path:
    env = os.environ.get("ITERMASK_MODEL_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "napari-itermask" / "models"


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


def _bundle_folder(path: Path) -> Path:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(
            f"refusing to load {path.name}: pickle-based model files are never loaded; "
            "a model is a folder with card.json and weights.safetensors"
        )
    if path.is_dir():
        return path
    if path.name in (CARD_NAME, WEIGHTS_NAME):
        return path.parent
    if path.exists():
        raise ModelError(f"{path} is not a model folder (expected card.json + weights.safetensors)")
    raise ModelError(f"model {str(path)!r} not found")


def resolve_model(name_or_path) -> Path:
    """Folder of a model given by bundled/user name or by path."""
    s = str(name_or_path)
    if os.sep not in s and "/" not in s and not s.startswith("."):
        for root in (user_dir(), bundled_dir()):
            if (root / s / CARD_NAME).is_file():
                return root / s
        if not Path(s).exists():
            names = ", ".join(sorted(m["name"] for m in list_models())) or "none"
            raise ModelError(f"no model named {s!r} (available: {names})")
    return _bundle_folder(Path(s).expanduser())


def read_card(folder: Path) -> ModelCard:
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelError(f"{folder} has no {CARD_NAME}")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model card {card_path} is not valid JSON ({exc})") from None
    return ModelCard.from_dict(data)


def load_bundle(name_or_path, device="cpu") -> ModelBundle:
    """Load and verify a bundle; raises ModelError with a one-line reason on any problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_model(name_or_path)
    card = read_card(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{folder} has no {WEIGHTS_NAME}")
    digest = sha256_file(weights)
    if card.weights_sha256 and digest != card.weights_sha256:
        raise ModelError(
            f"weights of model {card.name!r} do not match the sha256 in its card "
            "(corrupt or modified file)"
        )
    if not card.weights_sha256:
        raise ModelError(f"model card of {card.name!r} has no weights_sha256; refusing to load")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read weights of model {card.name!r}: {exc}") from None
    bundle = ModelBundle(card, UNet(card.unet_config(1)), UNet(card.unet_config(2)), folder)
    for prefix, net in (("first.", bundle.first), ("masked.", bundle.masked)):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"weights of model {card.name!r} do not fit its card: {first}") from None
    return bundle.to(device)


def list_models() -> list[dict]:
    """Cards of user and bundled models (user models shadow bundled ones of the same name)."""
    seen, out = set(), []
    for source, root in (("user", user_dir()), ("bundled", bundled_dir())):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CARD_NAME).is_file()):
            if folder.name in seen:
                continue
            seen.add(folder.name)
            try:
                card = read_card(folder).to_dict()
            except ModelError as exc:
                card = {"name": folder.name, "problem": str(exc)}
            card["name"] = folder.name
            out.append({**card, "source": source, "path": str(folder)})
    return out

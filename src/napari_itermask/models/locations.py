"""Where models are found: bundled and user folders, names or paths resolved to a bundle folder.

Bundled models live in ``napari_itermask/models/bundled/<name>``; user models in
``$ITERMASK_MODEL_DIR`` (default ``$XDG_DATA_HOME/napari-itermask/models``, i.e.
``~/.local/share/napari-itermask/models``) or any folder given by path. User models shadow
bundled ones of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from .card import CARD_NAME, read_card

__all__ = [
    "PICKLE_SUFFIXES",
    "WEIGHTS_NAME",
    "bundled_dir",
    "list_models",
    "resolve_model",
    "user_dir",
]

WEIGHTS_NAME = "weights.safetensors"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".joblib"}


def bundled_dir() -> Path:
    return Path(__file__).parent / "bundled"


def user_dir() -> Path:
    env = os.environ.get("ITERMASK_MODEL_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "napari-itermask" / "models"


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

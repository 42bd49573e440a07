"""Where models are found: bundled and user folders, names or paths resolved to a bundle folder.

Bundled models live in ``napari_itermask/models/bundled/<name>``; user models in
``$ITERMASK_MODEL_DIR`` (default ``$XDG_DATA_HOME/napari-itermask/models``, i.e.
``~/.local/share/napari-itermask/models``) or any folder given by path. User models shadow
bundled ones of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError, UnsafeModelError
from .card import CARD_NAME, read_card
from .untrusted import PICKLE_SUFFIXES, pickle_kind, read_head

__all__ = [
    "PICKLE_SUFFIXES",
    "WEIGHTS_NAME",
    "bundled_dir",
    "list_models",
    "resolve_model",
    "user_dir",
]

WEIGHTS_NAME = "weights.safetensors"
_LAYOUT = "a model is a folder with card.json and weights.safetensors"


def bundled_dir() -> Path:
    return Path(__file__).parent / "bundled"


def user_dir() -> Path:
    env = os.environ.get("ITERMASK_MODEL_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "napari-itermask" / "models"


def _refuse_pickle(path: Path, kind: str | None = None) -> None:
    what = f"it is {kind}, and pickles" if kind else f"pickle-based model files ({path.suffix})"
    raise UnsafeModelError(
        f"refusing to load {path.name}: {what} are never loaded, as unpickling can run code; "
        f"{_LAYOUT}"
    )


def _pickles_in(folder: Path) -> list[Path]:
    """Pickle-like files directly in ``folder``, by suffix or by their first bytes (not read
    further)."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return []
    return [p for p in files
            if p.suffix.lower() in PICKLE_SUFFIXES or pickle_kind(read_head(p))][:3]


def _bundle_folder(path: Path) -> Path:
    if path.suffix.lower() in PICKLE_SUFFIXES and not path.is_dir():
        _refuse_pickle(path)
    if path.is_dir():
        if not (path / CARD_NAME).is_file() and (found := _pickles_in(path)):
            names = ", ".join(p.name for p in found)
            raise UnsafeModelError(
                f"{path} holds no {CARD_NAME} but {names}: pickle-based model files are never "
                f"loaded, as unpickling can run code; {_LAYOUT}"
            )
        return path
    if path.name in (CARD_NAME, WEIGHTS_NAME):
        return path.parent
    if path.exists():
        kind = pickle_kind(read_head(path))
        if kind:
            _refuse_pickle(path, kind)
        raise ModelError(f"{path} is not a model folder (expected card.json + weights.safetensors)")
    raise ModelError(f"model {str(path)!r} not found")


def resolve_model(name_or_path) -> Path:
    """Folder of a model given by bundled/user name or by path."""
    s = str(name_or_path)
    if os.sep not in s and "/" not in s and not s.startswith("."):
        for root in (user_dir(), bundled_dir()):
            if (root / s / CARD_NAME).is_file():
                return root / s
            if (root / s).is_dir():
                _bundle_folder(root / s)  # refuses a folder of pickles with its own message
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

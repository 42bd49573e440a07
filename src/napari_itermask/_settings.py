"""The plugin's settings, kept between sessions in one small JSON file.

Location: ``$ITERMASK_CONFIG_DIR/settings.json`` if that variable is set (tests relocate it),
else ``$XDG_CONFIG_HOME/napari-itermask/settings.json`` (default ``~/.config/...``). A missing,
unreadable or corrupt file silently gives the defaults: settings are a convenience, never a
reason for the plugin to fail. Writes are atomic.

τ and the segmentation threshold are deliberately *not* stored: they belong to a model (its
card holds the calibrated values) and to one review, not to the next session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import atomic_write_bytes

__all__ = ["DEFAULTS", "config_dir", "settings_path", "load_settings", "save_settings"]

#: ``None`` for ``max_iter`` / ``first_unmask`` means "the model card's value".
DEFAULTS: dict = {
    "model": "flair",
    "device": "auto",
    "max_iter": None,
    "first_unmask": None,
    "seed": 0,
    "min_size": 0,
    "export_dir": "",
    # set once the plugin has offered itself as the *.nii reader (see _preferences.py)
    "reader_preference_offered": False,
}


def config_dir() -> Path:
    env = os.environ.get("ITERMASK_CONFIG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "napari-itermask"


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> dict:
    """Stored settings over the defaults; unknown keys and wrong types are dropped."""
    out = dict(DEFAULTS)
    try:
        stored = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return out
    if not isinstance(stored, dict):
        return out
    for key, default in DEFAULTS.items():
        if key not in stored:
            continue
        value = stored[key]
        if default is None or value is None or isinstance(value, type(default)):
            out[key] = value
    return out


def save_settings(values: dict) -> bool:
    """Merge ``values`` into the stored settings; False (and nothing raised) if it cannot."""
    current = load_settings()
    current.update({k: v for k, v in values.items() if k in DEFAULTS})
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(current, indent=2) + "\n").encode())
    except OSError:
        return False
    return True

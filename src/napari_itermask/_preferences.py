"""Making napari-itermask the default reader for NIfTI files, without overriding the user.

What napari 0.9 does: several plugins may claim a file pattern (napari's built-in reader claims
``*.nii`` and ``*.nii.gz`` too, and cannot place a scan by its affine). npe2 has no reader
priority. Unless a preference exists in ``settings.plugins.extension2reader`` (Preferences ▸
Plugins ▸ File extension readers; fnmatch patterns, the most specific wins), napari's GUI asks
in a "Choose reader" dialog and ``viewer.open(path)`` raises ``MultipleReaderError``.

What we do: when the plugin activates (npe2 ``on_activate``: the first time any of its
contributions is used — the widget, a sample, the reader, the writer), we add
``*.nii`` and ``*.nii.gz`` → ``napari-itermask`` to that preference table, but only

- for a pattern no existing preference already covers (any user choice, for napari's reader or
  another plugin, wins), and
- once: our settings file records that the offer was made, so a preference the user later
  removes or changes in Preferences is never put back.

Before the first activation napari asks once in its dialog; choosing napari-itermask there
(with "remember") gives the same result.
"""

from __future__ import annotations

import logging

__all__ = ["on_activate", "offer_nifti_reader_preference", "NIFTI_PATTERNS", "PLUGIN_NAME"]

PLUGIN_NAME = "napari-itermask"
NIFTI_PATTERNS = ("*.nii", "*.nii.gz")
_EXAMPLES = {"*.nii": "/any/folder/scan.nii", "*.nii.gz": "/any/folder/scan.nii.gz"}

log = logging.getLogger(__name__)


def offer_nifti_reader_preference() -> list[str]:
    """Register our reader for NIfTI patterns nobody chose a reader for; returns those added."""
    from napari.plugins.utils import get_preferred_reader
    from napari.settings import get_settings

    from ._settings import load_settings, save_settings

    if load_settings().get("reader_preference_offered"):
        return []
    settings = get_settings()
    current = dict(settings.plugins.extension2reader)
    added = []
    for pattern in NIFTI_PATTERNS:
        if pattern in current or get_preferred_reader(_EXAMPLES[pattern]) is not None:
            continue  # the user (or another plugin) already decided for these files
        current[pattern] = PLUGIN_NAME
        added.append(pattern)
    if added:
        settings.plugins.extension2reader = current
        log.info("napari-itermask is now the reader for %s (change it in Preferences ▸ "
                 "Plugins)", ", ".join(added))
    save_settings({"reader_preference_offered": True})
    return added


def on_activate(ctx=None) -> None:  # npe2 passes a PluginContext
    try:
        offer_nifti_reader_preference()
    except Exception as exc:  # never let a preference problem break the plugin
        log.warning("could not register the NIfTI reader preference: %s", exc)

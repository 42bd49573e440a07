"""Accept and Export: the review's result as an editable layer, and as NIfTI + sidecar + CSV.

Both act on the host widget's current session (``IterMaskWidget``: its ``presenter``,
``run_controls``, ``confirm``, ``ask_export_path`` and settings) and on what ``review`` computes
without Qt (``review.accept``, ``review.provenance``, ``review.export``). Labels the user owns
and files that exist are never replaced without ``host.confirm(title, text)`` returning True.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from .. import review
from .._layers import from_layer_shape, layer_stem
from ..names import is_nifti
from .._settings import save_settings
from .common import notify

__all__ = ["accept_result", "ask_export_path", "export_result"]


def accept_result(host):
    """Copy the current result into an editable '<name> lesions (accepted)' layer."""
    from ..errors import ItermaskError

    sess = host._current_session()
    if sess is None or sess.error_scan is None or sess.review is None:
        notify("warning", "nothing to accept yet: Run first")
        return None
    existing = host.presenter.layer(sess, "accepted")
    if existing is not None and not host.confirm(
            "Replace accepted labels?",
            f"'{existing.name}' may hold your edits. Replace it with the current result?"):
        return None
    try:
        acc = review.accept(sess)
    except ItermaskError as exc:
        notify("error", str(exc))
        return None
    prov = review.provenance(sess, acc.params, acc.labels)
    layer = host.presenter.show_accepted(sess, acc.labels, prov)
    host.run_controls.status.setText(f"Accepted as '{layer.name}' ({prov['result']}): edit "
                                     "it with the brush, then Export.")
    return layer


def ask_export_path(parent, default: str) -> str | None:
    """The save dialog; existing files are asked about by ``export_result`` (sidecar too)."""
    path, _ = QFileDialog.getSaveFileName(
        parent, "Export lesions", default, "NIfTI (*.nii.gz *.nii)",
        options=QFileDialog.Option.DontConfirmOverwrite)
    return path or None


def export_result(host, path: str | None = None):
    """Write the accepted layer (else the current result) as NIfTI, a JSON sidecar that
    records what produced it (``itermask segment --params`` replays it) and the lesion
    table as CSV."""
    from ..errors import ItermaskError
    from ..export import sidecar_path
    from ..lesion_table import table_path

    sess = host._current_session()
    if sess is None or sess.error_scan is None or sess.review is None:
        notify("warning", "nothing to export yet: Run first")
        return None
    accepted = host.presenter.layer(sess, "accepted")
    labels = None
    if accepted is None:
        sess.accepted = None  # its layer is gone: export what the review shows now
    else:
        labels = from_layer_shape(accepted.data, sess.source).reshape(
            sess.job.scan.data.shape)
    if path is None:
        folder = host._settings.get("export_dir") or str(Path.home())
        meta_path = (sess.source.metadata or {}).get("path")
        stem = layer_stem(meta_path) if meta_path else sess.source.name.replace(" ", "_")
        path = host.ask_export_path(str(Path(folder) / f"{stem}_lesions.nii.gz"))
        if not path:
            return None
    target = Path(path)
    if not is_nifti(target):
        target = target.with_name(target.name + ".nii.gz")
    existing = [p for p in (target, sidecar_path(target), table_path(target)) if p.exists()]
    if existing and not host.confirm(
            "Replace existing files?",
            "These exist and would be replaced:\n" + "\n".join(map(str, existing))):
        return None
    try:
        written = review.export(sess, target, labels, overwrite=bool(existing))
    except ItermaskError as exc:
        notify("error", str(exc))
        return None
    host._settings["export_dir"] = str(target.parent)
    save_settings({"export_dir": str(target.parent)})
    notify("info", f"saved {Path(written[0]).name}, its sidecar and lesion table in "
                   f"{target.parent}")
    host.run_controls.status.setText(f"Exported {target.name} (+ .json, .csv).")
    return written

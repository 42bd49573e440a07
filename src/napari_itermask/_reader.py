"""napari reader for NIfTI scans (``*.nii``, ``*.nii.gz``) and DICOM series (a folder, or a
``*.zip``, holding DICOM files; see ``dicom.py``).

The file is read and checked by ``volume.load_scan`` (the same checks as the command line), and
shown as one Image layer placed by its affine in the axial, radiological view (see
``_layers.py``). A label map — integer data next to a napari-itermask JSON sidecar, or integer
data whose name says label/lesion/mask/seg — opens as a Labels layer, placed the same way.
Unusable files (4-D series, complex data, corrupt files, …) give one line in an error
notification and no layer, never a traceback. Oddities that do not stop reading (NaNs, shear,
an oblique acquisition napari cannot draw exactly in 2-D) give a warning notification and are
kept in ``metadata["warnings"]``.

DICOM: a folder or zip of one series opens as one Image layer named after the folder (or the
zip's stem), placed by the series' RAS affine like a NIfTI scan. For a folder of several
series, ``choose_series`` decides: in a napari window a dialog asks which one (or all), listing
each series' description, number, images and modality (``_plugin/series_dialog.py``); without a
window every series opens, one layer each. Layers are then named by their SeriesDescription (a
series that cannot be read is skipped with a warning). ``dicom_series(path)`` lists the series,
and ``read_dicom(path, series=…)`` opens only that one. Layers from DICOM carry
``metadata["dicom"]`` (series UID, description, index, images, modality).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ._layers import image_layer_data, labels_layer_data, layer_stem
from .names import is_nifti

__all__ = ["napari_get_reader", "read_nifti", "read_dicom", "dicom_series", "ask_series",
           "choose_series"]

_NULL = [(None,)]  # napari's "read fine, nothing to show" sentinel
_LABEL_NAME = re.compile(r"(label|lesion|mask|seg|_gt\b|truth)", re.IGNORECASE)


def _is_nifti(path) -> bool:
    return isinstance(path, str) and is_nifti(path)


def napari_get_reader(path):
    """Return ``read_nifti`` for one NIfTI path, ``read_dicom`` for a folder or zip holding
    DICOM files, else None (napari then asks other readers)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None  # a stack of files is not a scan
        path = path[0]
    path = str(path)
    if _is_nifti(path):
        return read_nifti
    from .dicom import is_dicom_source, looks_like_dicom

    if is_dicom_source(path) and looks_like_dicom(path):
        return read_dicom
    return None


def dicom_series(path):
    """The series of a DICOM folder or zip (``dicom.SeriesInfo``: index, UID, description,
    number of images), for the widget to ask which one; raises ``InputError`` with one line."""
    from .dicom import list_series

    return list_series(path)


def _dicom_name(path: Path) -> str:
    return path.name[:-4] if path.name.lower().endswith(".zip") else path.name


def ask_series(path: Path, infos) -> list[int] | None:
    """Default ``choose_series``: in a napari window, a dialog listing the series (description,
    series number, images, modality; ``_plugin.series_dialog``); returns the chosen indexes, or
    None when the user cancels. Without a window (scripts, ``napari.run`` not started) every
    series is opened, one layer each."""
    try:
        import napari
        from qtpy.QtWidgets import QApplication
    except Exception:
        return [i.index for i in infos]
    if QApplication.instance() is None or napari.current_viewer() is None:
        return [i.index for i in infos]
    from ._plugin.series_dialog import SeriesDialog

    return SeriesDialog(_dicom_name(path), infos).choice()


#: Called with (path, series infos) when a folder or zip holds several series; returns the
#: indexes (from 1) to open, or None to open nothing. Tests and embedding code may replace it.
choose_series = ask_series


def read_dicom(path, series=None) -> list[tuple]:
    """Layers for a DICOM folder or zip: its one series, the one chosen by ``series`` (index
    from 1 or SeriesInstanceUID), or, for several and no choice, those ``choose_series``
    picks (in a napari window it asks; else all, one layer per series)."""
    from napari.utils.notifications import show_error, show_warning

    from .dicom import list_series, load_dicom_scans, load_series
    from .errors import InputError, ItermaskError
    from .volume import ScanWarning

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    try:
        with warnings.catch_warnings():  # ScanWarnings are in scan.notes: shown below
            warnings.simplefilter("ignore", ScanWarning)
            if series is not None:
                found, by_folder = [load_series(path, series)], False
            else:
                infos = list_series(path)
                by_folder = len(infos) == 1
                chosen = [infos[0].index] if by_folder else choose_series(path, infos)
                if not chosen:
                    return _NULL  # the user cancelled: nothing opened, nothing to report
                if sorted(int(i) for i in chosen) == [i.index for i in infos]:
                    found = load_dicom_scans(path)  # every series, the headers read once
                else:
                    found = []
                    for index in chosen:
                        info = infos[int(index) - 1]
                        try:
                            found.append(load_series(path, info.uid))
                        except InputError as exc:
                            found.append((info, exc))
    except ItermaskError as exc:
        show_error(f"napari-itermask: {exc}")
        return _NULL
    if len(found) == 1 and isinstance(found[0][1], Exception):
        show_error(f"napari-itermask: {found[0][1]}")
        return _NULL
    layers, names = [], set()
    for info, scan in found:
        if isinstance(scan, Exception):
            show_warning(f"napari-itermask: series {info.index} ({info.description}) "
                         f"skipped: {scan}")
            continue
        name = _dicom_name(path) if by_folder else info.description
        if name in names:
            name = f"{name} [{info.index}]"
        names.add(name)
        layer = image_layer_data(scan, name)
        layer[1]["metadata"]["dicom"] = {"series_uid": info.uid, "description": info.description,
                                         "index": info.index, "n_images": info.n_images,
                                         "modality": info.modality}
        for msg in layer[1]["metadata"]["warnings"]:
            show_warning(f"napari-itermask: {name}: {msg}")
        layers.append(layer)
    if not layers:
        show_error(f"napari-itermask: no series of {path.name} could be read")
        return _NULL
    return layers


def _label_candidate(path: Path, header) -> bool:
    from .export import sidecar_path

    if np.dtype(header.get_data_dtype()).kind not in "iub":
        return False
    slope, inter = header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        return False  # scaled integers are intensities, not labels
    return sidecar_path(path).exists() or bool(_LABEL_NAME.search(layer_stem(path)))


def _load_labels(path: Path):
    """Label maps may be empty, so they skip the scan's "has a brain" check."""
    from .errors import InputError
    from .volume import Scan, _check_affine, _read_nifti

    img, raw = _read_nifti(path, what="label map")
    data = np.asarray(raw)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(f"label map {path.name} has {data.ndim} dimensions; 2-D or 3-D needed")
    if data.min(initial=0) < 0:
        raise InputError(f"label map {path.name} has negative labels")
    notes: list[str] = []
    affine = _check_affine(img.affine, path.name, notes)
    return Scan(data, affine, img.header.copy(), path, None, notes)


def read_nifti(path) -> list[tuple]:
    import nibabel as nib
    from napari.utils.notifications import show_error, show_warning

    from .errors import ItermaskError
    from .volume import ScanWarning, load_scan

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    try:
        with warnings.catch_warnings():  # ScanWarnings are in scan.notes: shown below
            warnings.simplefilter("ignore", ScanWarning)
            try:
                header = nib.load(str(path)).header
            except Exception:
                header = None  # load_scan below gives the one-line reason
            if header is not None and _label_candidate(path, header):
                layer = labels_layer_data(_load_labels(path), layer_stem(path))
            else:
                layer = image_layer_data(load_scan(path), layer_stem(path))
    except ItermaskError as exc:
        show_error(f"napari-itermask: {exc}")
        return _NULL
    for msg in layer[1]["metadata"]["warnings"]:
        show_warning(f"napari-itermask: {msg}")
    return [layer]

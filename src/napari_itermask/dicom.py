"""DICOM in: one series of a folder (or a .zip) → a Scan with an exact RAS affine.

Read with ``pydicom`` (pure Python, headers and uncompressed or natively decodable pixel data);
the geometry is computed here from the standard tags, in float64, so that nothing is rounded
through a file format on the way (docs/dicom.md says why this was chosen over dcm2niix and
dicom2nifti, with the measurements).

Geometry (DICOM PS3.3 C.7.6.2, patient coordinates LPS, millimetres):

- ``ImageOrientationPatient`` gives the row direction r (the way the column index grows) and
  the column direction c (the way the row index grows); ``PixelSpacing`` is (distance between
  rows, distance between columns).
- Slices are sorted by the position of ``ImagePositionPatient`` along n = r × c. With positions
  p_0 … p_{N−1}, the slice step is s = (p_{N−1} − p_0)/(N − 1), and every p_k must lie within
  max(1e-4 mm, 1 % of |s|) of p_0 + k·s, or the series is refused as non-uniformly spaced.
  A step that is not along n (gantry tilt) is kept as it is: the affine is then sheared, and
  ``volume`` warns as for any sheared NIfTI.
- The Scan's array is indexed (column i, row j, slice k), like a NIfTI converted from DICOM,
  and voxel (i, j, k) sits at  p_0 + i·Δcol·r + j·Δrow·c + k·s  in LPS. The affine is that
  matrix with its first two rows negated (LPS → RAS), NIfTI's convention.

Intensities are the stored values through ``RescaleSlope``/``RescaleIntercept`` (per image).
Compressed pixel data is decoded by pydicom's plugins as installed: RLE Lossless always (pydicom
itself), JPEG baseline/extended and JPEG 2000 with Pillow (declared: 8-bit only for JPEG); JPEG
Lossless, JPEG-LS and HTJ2K need optional packages, and a series in such a syntax is refused in
one line that names the syntax and what would decode it (``undecodable_reason``).
Refused, each with one line (``DicomError``): an empty folder, no DICOM images, several series
without a choice (``SeriesChoiceError``: the message lists them), missing geometry tags,
images of different size, spacing or orientation in one series, two images at one position,
non-uniform slice spacing, multi-frame images, a series of one image (2-D), colour images, and
pixel data pydicom cannot decode here.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = [
    "DicomError",
    "SeriesChoiceError",
    "SeriesInfo",
    "is_dicom_source",
    "list_series",
    "load_dicom_scan",
    "load_dicom_scans",
    "load_series",
    "looks_like_dicom",
    "series_affine",
    "undecodable_reason",
]

#: How far (mm) a slice may sit from the uniform grid: max(POSITION_ATOL, POSITION_RTOL·|step|).
POSITION_ATOL = 1e-4
POSITION_RTOL = 0.01
#: Tolerance on direction cosines between images of one series.
ORIENTATION_TOL = 1e-4
#: A zip whose members unpack to more than this is refused (a zip bomb is not a scan).
ZIP_MAX_BYTES = 8 << 30

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


class DicomError(InputError):
    """A DICOM folder or zip that cannot be read as one scan."""


class SeriesChoiceError(DicomError):
    """Several series and no choice: ``series`` holds them, the message lists them."""

    def __init__(self, message: str, series: list["SeriesInfo"]):
        super().__init__(message)
        self.series = series


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder or zip (``index`` counts from 1, in listing order)."""

    index: int
    uid: str
    description: str
    n_images: int
    series_number: int | None = None
    modality: str = ""

    def line(self) -> str:
        return f"{self.index}: {self.description!r} ({self.n_images} images, UID {self.uid})"


@dataclass
class _Image:
    source: str  # file path, or "archive.zip:member"
    read: object  # () -> bytes-like or path, for pydicom.dcmread
    ds: object  # header (no pixels)


@dataclass
class _Series:
    uid: str
    images: list[_Image] = field(default_factory=list)

    def info(self, index: int) -> SeriesInfo:
        ds = self.images[0].ds
        desc = _one_line(str(getattr(ds, "SeriesDescription", "") or "")
                         or str(getattr(ds, "ProtocolName", "") or ""))
        number = getattr(ds, "SeriesNumber", None)
        try:
            number = int(number) if number not in (None, "") else None
        except (TypeError, ValueError):
            number = None
        if not desc:
            desc = f"series {number}" if number is not None else "unnamed series"
        return SeriesInfo(index, self.uid, desc, len(self.images), number,
                          str(getattr(ds, "Modality", "") or ""))


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - a declared dependency
        raise DicomError("reading DICOM needs pydicom: pip install pydicom") from None
    return pydicom


# -- finding the images --------------------------------------------------------------------------
def is_dicom_source(path) -> bool:
    """Whether ``path`` is to be read as DICOM: a folder, or a file named ``*.zip``."""
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith(".zip")


def _has_magic(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_dicom(path, max_files: int = 64) -> bool:
    """A cheap check (file magic only) that a folder or zip holds DICOM files, for the reader:
    looks at no more than ``max_files`` files."""
    path = Path(path)
    try:
        if path.is_dir():
            seen = 0
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not _skip_name(d))
                for name in sorted(files):
                    if _skip_name(name):
                        continue
                    seen += 1
                    if seen > max_files:
                        return False
                    with open(os.path.join(root, name), "rb") as fh:
                        if _has_magic(fh.read(132)):
                            return True
            return False
        if path.is_file() and path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.infolist()
                           if not m.is_dir() and not _skip_name(m.filename)][:max_files]
                for m in members:
                    with zf.open(m) as fh:
                        if _has_magic(fh.read(132)):
                            return True
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return False
    return False


def _skip_name(rel: str) -> bool:
    parts = rel.replace("\\", "/").split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _sources(path: Path) -> list[tuple[str, object]]:
    """(name, reader) for every candidate file of a folder (recursively) or a zip."""
    if not path.exists():
        raise DicomError(f"{path} does not exist")
    if path.is_dir():
        files = [f for f in sorted(path.rglob("*"))
                 if f.is_file() and not _skip_name(str(f.relative_to(path)))]
        if not files:
            raise DicomError(f"folder {path} is empty: no DICOM images")
        return [(str(f), (lambda f=f: str(f))) for f in files]
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DicomError(f"{path.name} is not a readable zip file: {exc}") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not _skip_name(m.filename)]
        if not members:
            raise DicomError(f"zip {path.name} is empty: no DICOM images")
        if sum(m.file_size for m in members) > ZIP_MAX_BYTES:
            raise DicomError(f"zip {path.name} unpacks to more than {ZIP_MAX_BYTES >> 30} GiB")
        out = []
        for m in members:
            try:
                data = zf.read(m)
            except (RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
                why = "encrypted" if m.flag_bits & 0x1 else str(exc).splitlines()[0]
                raise DicomError(f"zip {path.name}: cannot read {m.filename} ({why})") from None
            out.append((f"{path.name}:{m.filename}", (lambda d=data: io.BytesIO(d))))
        return out


def _collect(path) -> tuple[Path, list[_Series]]:
    """The DICOM image series of a folder or zip, in listing order (series number, then UID)."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    sources = _sources(path)
    groups: dict[str, _Series] = {}
    for name, read in sources:
        try:
            ds = pydicom.dcmread(read(), stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError,
                AttributeError, IndexError):
            continue  # not DICOM (a README, a thumbnail, a truncated file): not part of a scan
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == _DICOMDIR_CLASS or "Rows" not in ds or "Columns" not in ds:
            continue  # DICOMDIR, reports, presentation states: no image
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        groups.setdefault(uid, _Series(uid)).images.append(_Image(name, read, ds))
    if not groups:
        what = "folder" if path.is_dir() else "zip"
        raise DicomError(f"{what} {path.name} holds no DICOM images "
                         f"({len(sources)} file(s) looked at)")

    def order(s: _Series):
        number = s.info(0).series_number
        return (number is None, number if number is not None else 0, s.uid)

    return path, sorted(groups.values(), key=order)


def list_series(path) -> list[SeriesInfo]:
    """The image series of a DICOM folder or zip (what a widget offers to choose from)."""
    _, series = _collect(path)
    return [s.info(i + 1) for i, s in enumerate(series)]


def _choose(path: Path, series: list[_Series], choice) -> _Series:
    infos = [s.info(i + 1) for i, s in enumerate(series)]
    if choice is None or str(choice).strip() == "":
        if len(series) == 1:
            return series[0]
        listing = "; ".join(i.line() for i in infos)
        raise SeriesChoiceError(
            f"{path.name} holds {len(series)} DICOM series; choose one with --series "
            f"INDEX_or_UID: {listing}", infos)
    text = str(choice).strip()
    for s in series:
        if text == s.uid:
            return s
    if text.isdigit() and 1 <= int(text) <= len(series):
        return series[int(text) - 1]
    listing = "; ".join(i.line() for i in infos)
    raise SeriesChoiceError(f"{path.name} has no DICOM series {text!r}; choose by index or UID: "
                            f"{listing}", infos)


# -- geometry ------------------------------------------------------------------------------------
def _floats(ds, tag: str, n: int, where: str) -> np.ndarray:
    value = getattr(ds, tag, None)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DicomError(f"{where} has no usable {tag} (needed for the scan's geometry)")
    return arr


def series_affine(iop, ipp_first, pixel_spacing, step) -> np.ndarray:
    """The RAS voxel → world affine of a series indexed (column, row, slice) (see module doc)."""
    iop = np.asarray(iop, dtype=np.float64)
    r, c = iop[:3], iop[3:]
    r = r / np.linalg.norm(r)
    c = c / np.linalg.norm(c)
    lps = np.eye(4)
    lps[:3, 0] = r * float(pixel_spacing[1])
    lps[:3, 1] = c * float(pixel_spacing[0])
    lps[:3, 2] = np.asarray(step, dtype=np.float64)
    lps[:3, 3] = np.asarray(ipp_first, dtype=np.float64)
    return _LPS_TO_RAS @ lps


def _geometry(series: _Series, label: str):
    """(images in slice order, RAS affine) after checking the series is one regular volume."""
    imgs = series.images
    first = imgs[0]
    frames = getattr(first.ds, "NumberOfFrames", None)
    try:
        frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DicomError(f"{label} is multi-frame ({frames} frames in one file); this reader "
                         "takes single-frame series (convert with dcm2niix first)")
    if len(imgs) < 2:
        raise DicomError(f"{label} is a single 2-D image; a 3-D scan needs a series of slices")
    spp = int(getattr(first.ds, "SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise DicomError(f"{label} is a colour image ({spp} samples per pixel), not an MRI scan")
    iop0 = _floats(first.ds, "ImageOrientationPatient", 6, first.source)
    ps0 = _floats(first.ds, "PixelSpacing", 2, first.source)
    if (ps0 <= 0).any():
        raise DicomError(f"{first.source} has a non-positive PixelSpacing")
    r, c = iop0[:3], iop0[3:]
    if min(np.linalg.norm(r), np.linalg.norm(c)) < 0.5:
        raise DicomError(f"{first.source} has an invalid ImageOrientationPatient")
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    if abs(float(r @ c)) > 1e-3:
        raise DicomError(f"{first.source}: ImageOrientationPatient rows and columns are not "
                         "perpendicular")
    normal = np.cross(r, c)
    shape0 = (int(first.ds.Rows), int(first.ds.Columns))
    ipps = []
    for im in imgs:
        ds = im.ds
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            raise DicomError(f"{label} mixes image sizes ({shape0[0]}×{shape0[1]} and "
                             f"{int(ds.Rows)}×{int(ds.Columns)}); it is not one volume")
        fr = getattr(ds, "NumberOfFrames", None)
        if fr not in (None, "") and int(fr) > 1:
            raise DicomError(f"{label} holds multi-frame images; this reader takes single-frame "
                             "series")
        iop = _floats(ds, "ImageOrientationPatient", 6, im.source)
        if np.abs(iop - iop0).max() > ORIENTATION_TOL:
            raise DicomError(f"{label} mixes image orientations (a localizer?); it is not one "
                             "volume")
        ps = _floats(ds, "PixelSpacing", 2, im.source)
        if np.abs(ps - ps0).max() > 1e-6 * max(1.0, float(ps0.max())):
            raise DicomError(f"{label} mixes pixel spacings; it is not one volume")
        ipps.append(_floats(ds, "ImagePositionPatient", 3, im.source))
    ipps = np.array(ipps)
    along = ipps @ normal
    order = np.argsort(along, kind="stable")
    ipps, along = ipps[order], along[order]
    gaps = np.diff(along)
    if (np.abs(gaps) < 1e-6).any():
        k = int(np.argmin(np.abs(gaps)))
        raise DicomError(f"{label} has two images at one position ({along[k]:.3f} mm): several "
                         "echoes, time points or repeats in one series are not one volume")
    n = len(imgs)
    step = (ipps[-1] - ipps[0]) / (n - 1)
    dev = np.linalg.norm(ipps - (ipps[0] + np.arange(n)[:, None] * step), axis=1)
    tol = max(POSITION_ATOL, POSITION_RTOL * float(np.linalg.norm(step)))
    if dev.max() > tol:
        raise DicomError(f"{label} has non-uniform slice spacing (gaps from {gaps.min():.4g} to "
                         f"{gaps.max():.4g} mm; a slice missing?); it cannot be one regular grid")
    return [imgs[i] for i in order], series_affine(iop0, ipps[0], ps0, step)


def _pixels(images: list[_Image], label: str) -> np.ndarray:
    """(Columns, Rows, N) float32: stored values through the rescale slope and intercept."""
    pydicom = _pydicom()
    planes = []
    for im in images:
        ds = None
        try:
            ds = pydicom.dcmread(im.read())
            arr = ds.pixel_array
        except Exception as exc:  # pydicom's decoders raise many kinds; one line for all
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            how = f" (transfer syntax {ts.name})" if ts is not None else ""
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DicomError(f"{im.source}: cannot decode the pixel data{how}: {why}") from None
        if arr.ndim != 2:
            raise DicomError(f"{label}: {im.source} is not a single grey-level image "
                             f"(pixel array of shape {arr.shape})")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        plane = arr.astype(np.float64) * slope + inter
        planes.append(plane.astype(np.float32))
    return np.ascontiguousarray(np.stack(planes, axis=0).transpose(2, 1, 0))


def _requirements(missing: str) -> list[str]:
    """``'pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1'`` (pydicom's words
    for a plugin it lacks) → the packages to install, ``['pylibjpeg', 'pylibjpeg-libjpeg']``."""
    wants = missing.split("requires", 1)[-1]
    names = [re.split(r"[<>=!~ ]", part.strip(), maxsplit=1)[0]
             for part in wants.replace(",", " and ").split(" and ")]
    names = [n for n in names if n and n != "numpy"]
    return ["python-gdcm" if n == "gdcm" else n for n in names]


def undecodable_reason(transfer_syntax) -> str | None:
    """Why pixel data of ``transfer_syntax`` cannot be decoded here, naming the syntax and what
    would decode it; None when it can (uncompressed, deflated, or a compressed syntax one of
    pydicom's installed plugins decodes: RLE natively, JPEG and JPEG 2000 with Pillow)."""
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    if not uid.is_transfer_syntax:
        return (f"its transfer syntax {uid} is not one pydicom knows; convert the series to "
                "NIfTI with dcm2niix first")
    if not uid.is_compressed:
        return None
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pragma: no cover - pydicom < 3: decoding itself will tell
        return None
    what = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError):
        return (f"its pixel data is compressed as {what}, which pydicom cannot decode; "
                "convert the series to NIfTI with dcm2niix first")
    if decoder.is_available:
        return None
    options = [" ".join(_requirements(m)) for m in decoder.missing_dependencies]
    options = [o for o in options if o]
    how = (" or ".join(f"pip install {o}" for o in options) + ", or " if options else "")
    return (f"its pixel data is compressed as {what}, which nothing installed here decodes; "
            f"{how}convert the series to NIfTI with dcm2niix first")


def _series_sha256(images: list[_Image]) -> str:
    """sha256 over the series' files, concatenated in slice order."""
    h = hashlib.sha256()
    for im in images:
        src = im.read()
        if isinstance(src, str):
            with open(src, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(src.getvalue())
    return h.hexdigest()


def _scan(path: Path, series: _Series, info: SeriesInfo):
    from .volume import Scan, _check_affine, _check_array, _check_stripped

    label = f"DICOM series {info.description!r} of {path.name}"
    images, affine = _geometry(series, label)
    meta = getattr(images[0].ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    problem = undecodable_reason(syntax) if syntax else None
    if problem:  # before reading every image: one line naming the syntax and the remedy
        raise DicomError(f"{label}: {problem}")
    notes: list[str] = []
    data = _check_array(_pixels(images, label), path.name, notes)
    affine = _check_affine(affine, path.name, notes)
    _check_stripped(data, affine, path.name, notes)
    return Scan(data, affine, None, path, _series_sha256(images), notes)


def load_series(path, series=None) -> tuple[SeriesInfo, object]:
    """(info, Scan) of one series of a DICOM folder or zip (``series``: index from 1, or UID;
    needed when there are several)."""
    path, found = _collect(path)
    chosen = _choose(path, found, series)
    info = chosen.info(found.index(chosen) + 1)
    return info, _scan(path, chosen, info)


def load_dicom_scan(path, series=None):
    """One series of a DICOM folder or zip as a Scan (``series``: index from 1, or UID)."""
    return load_series(path, series)[1]


def load_dicom_scans(path) -> list[tuple[SeriesInfo, object]]:
    """Every series of a folder or zip: (info, Scan) or (info, DicomError) for one unusable."""
    path, found = _collect(path)
    out = []
    for i, s in enumerate(found):
        info = s.info(i + 1)
        try:
            out.append((info, _scan(path, s, info)))
        except InputError as exc:
            out.append((info, exc))
    return out

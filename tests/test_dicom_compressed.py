"""Compressed DICOM through the reader: JPEG baseline (lossy, 8 bits) and JPEG 2000 (lossless,
16 bits) series, each frame encoded with Pillow and encapsulated with pydicom, load with exactly
the source's geometry and their intensities (exact for lossless, within JPEG's error for lossy);
when no installed plugin decodes a syntax, the series is refused in one line naming it.

Decoding goes through pydicom's Pillow plugin (Pillow is a declared dependency for this).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
Image = pytest.importorskip("PIL.Image")

from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit  # noqa: E402
from test_dicom import ORIENTATIONS, volume, write_series  # noqa: E402

from napari_itermask.dicom import DicomError, undecodable_reason  # noqa: E402
from napari_itermask.volume import load_scan  # noqa: E402


def _plane(ds) -> np.ndarray:
    """The uncompressed (rows, columns) plane write_series put in ``ds``."""
    return np.frombuffer(ds.PixelData, "<u2").reshape(int(ds.Rows), int(ds.Columns))


def _encapsulated(ds, syntax, frame: bytes, bits: int) -> None:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8, 8, 7) if bits == 8 else (16, 16, 15)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _jpeg_baseline(k, ds, quality=90):
    plane = _plane(ds)
    assert plane.max() <= 255
    buf = io.BytesIO()
    Image.fromarray(plane.astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    _encapsulated(ds, JPEGBaseline8Bit, buf.getvalue(), bits=8)
    ds.LossyImageCompression = "01"


def _jpeg2000_lossless(k, ds):
    buf = io.BytesIO()
    Image.fromarray(_plane(ds).astype(np.uint16)).save(
        buf, format="JPEG2000", irreversible=False, no_jp2=True)
    _encapsulated(ds, JPEG2000Lossless, buf.getvalue(), bits=16)


def _needs(uid):
    if not get_decoder(uid).is_available:
        pytest.skip(f"no decoder for {uid.name} installed here (the refusal is tested below)")


def _eight_bit(shape=(32, 28, 8)) -> np.ndarray:
    """A phantom scaled into 0…240 (8-bit JPEG), with smooth structure JPEG keeps well."""
    data = volume(shape=shape, seed=4)
    return np.rint(data * (240.0 / data.max())).astype(np.float32)


def test_a_jpeg_baseline_series_keeps_its_geometry_exactly_and_intensities_within_lossy_error(
        tmp_path):
    _needs(JPEGBaseline8Bit)
    data, aff = _eight_bit(), ORIENTATIONS["oblique"]
    write_series(tmp_path / "jpeg", data, aff, tweak=_jpeg_baseline)
    first = pydicom.dcmread(next((tmp_path / "jpeg").iterdir()))
    assert first.file_meta.TransferSyntaxUID == JPEGBaseline8Bit and first.BitsStored == 8
    scan = load_scan(tmp_path / "jpeg")
    assert scan.data.shape == data.shape
    np.testing.assert_allclose(scan.affine, aff, atol=1e-5, rtol=0)
    err = np.abs(scan.data.astype(np.float64) - data)
    # quality 90 on smooth 8-bit planes: a few grey levels on average, edges a little more;
    # a transposed, flipped or mis-scaled plane would be off by tens of levels everywhere
    assert err.mean() < 2.0 and np.percentile(err, 99) < 12, (err.mean(), err.max())
    assert err.max() > 0  # it really was lossy: the test would notice a lossless stand-in
    far = np.abs(np.roll(data, 1, axis=0) - data).mean()
    assert err.mean() < 0.25 * far  # much nearer the source than to a one-voxel shift of it


def test_a_jpeg2000_lossless_series_loads_with_exactly_the_source_voxels(tmp_path):
    _needs(JPEG2000Lossless)
    data, aff = volume(shape=(24, 20, 7), seed=5) * 37.0, ORIENTATIONS["sagittal"]
    assert data.max() > 255  # really 16-bit content
    write_series(tmp_path / "j2k", data, aff, tweak=_jpeg2000_lossless)
    assert pydicom.dcmread(next((tmp_path / "j2k").iterdir())).file_meta.TransferSyntaxUID \
        == JPEG2000Lossless
    scan = load_scan(tmp_path / "j2k")
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_allclose(scan.affine, aff, atol=1e-5, rtol=0)


def test_without_a_jpeg_decoder_the_series_is_refused_in_one_line_naming_the_codec(
        tmp_path, monkeypatch):
    """As on an installation without Pillow's JPEG codec: the reader names the syntax and the
    packages that would decode it, before reading any pixel data."""
    data, aff = _eight_bit(shape=(16, 12, 4)), ORIENTATIONS["axial"]
    write_series(tmp_path / "jpeg", data, aff, tweak=_jpeg_baseline)
    decoder = get_decoder(JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})  # no plugin can decode it now
    assert not decoder.is_available
    reason = undecodable_reason(JPEGBaseline8Bit)
    assert reason is not None and JPEGBaseline8Bit.name in reason and "pip install" in reason
    with pytest.raises(DicomError) as exc:
        load_scan(tmp_path / "jpeg")
    text = str(exc.value)
    assert "\n" not in text and JPEGBaseline8Bit.name in text and str(JPEGBaseline8Bit) in text
    assert "pylibjpeg" in text and "dcm2niix" in text


def test_a_corrupt_jpeg_frame_is_one_line_naming_the_file_and_syntax(tmp_path):
    _needs(JPEGBaseline8Bit)

    def broken(k, ds):
        _jpeg_baseline(k, ds)
        if k == 2:
            _encapsulated(ds, JPEGBaseline8Bit, b"\xff\xd8\xff\xe0" + bytes(40) + b"\xff\xd9",
                          bits=8)

    write_series(tmp_path / "jpeg", _eight_bit(shape=(16, 12, 4)), ORIENTATIONS["axial"],
                 tweak=broken)
    with pytest.raises(DicomError) as exc:
        load_scan(tmp_path / "jpeg")
    text = str(exc.value)
    assert "\n" not in text and "cannot decode the pixel data" in text
    assert JPEGBaseline8Bit.name in text

"""DICOM in: series written with pydicom from synthetic volumes (axial, sagittal and oblique,
in folders and zips) load as Scans with exactly the source's voxels and RAS affine; bad series
are refused with one line; ``itermask segment`` on a DICOM folder writes labels on its grid."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import phantom

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402

from napari_itermask import cli  # noqa: E402
from napari_itermask.dicom import (  # noqa: E402
    DicomError,
    SeriesChoiceError,
    list_series,
    load_dicom_scans,
)
from napari_itermask.errors import InputError  # noqa: E402
from napari_itermask.volume import load_scan  # noqa: E402
from _geometry import rotation  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds(value: float) -> str:
    """A decimal string within DICOM's 16 characters, as precise as they allow."""
    for digits in range(15, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)  # pragma: no cover


def write_series(folder, data, affine, *, description="T2 FLAIR", series_uid=None, number=1,
                 slope=1.0, intercept=0.0, shuffle_seed=0, tweak=None):
    """Write ``data`` (array indexed column, row, slice; values ≥ 0 integers after rescale) with
    RAS ``affine`` as one single-frame MR series, one file per slice, in shuffled file order.

    ``tweak(k, ds)`` may change slice k's dataset before it is saved (bad-input tests).
    Returns the series UID.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    lps = LPS_TO_RAS @ np.asarray(affine, float)
    col_sp, row_sp = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    r, c = lps[:3, 0] / col_sp, lps[:3, 1] / row_sp
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    stored = np.rint((data.astype(np.float64) - intercept) / slope)
    assert stored.min() >= 0 and stored.max() < 2**16
    order = np.random.default_rng(shuffle_seed).permutation(data.shape[2])
    for k in range(data.shape[2]):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Phantom^Synthetic", "0"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, number, k + 1
        ds.ImageOrientationPatient = [_ds(v) for v in (*r, *c)]
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [_ds(row_sp), _ds(col_sp)]
        ds.SliceThickness = _ds(float(np.linalg.norm(lps[:3, 2])))
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<u2").tobytes()
        if tweak is not None:
            tweak(k, ds)
        ds.save_as(folder / f"IM{order[k]:04d}", enforce_file_format=True)
    return series_uid


def lps_affine(lin_lps, origin_lps) -> np.ndarray:
    """RAS affine of a volume whose voxel axes are ``lin_lps``'s columns in LPS."""
    a = np.eye(4)
    a[:3, :3] = lin_lps
    a[:3, 3] = origin_lps
    return LPS_TO_RAS @ a


#: Source volumes: voxel axes in LPS (columns: column direction, row direction, slice step).
ORIENTATIONS = {
    # axial: columns → L, rows → P, slices → S (the scanner's usual transverse stack)
    "axial": lps_affine(np.diag([0.9, 0.95, 3.0]), [-20.0, -30.5, -12.25]),
    # sagittal: columns → P, rows → I (downwards), slices → R (along r × c, as stored)
    "sagittal": lps_affine(np.array([[0, 0, -2.5], [1.1, 0, 0], [0, -1.2, 0]]),
                           [-15.0, -25.0, 40.0]),
    # oblique: an axial stack tilted by three angles, anisotropic voxels, far from the origin
    "oblique": lps_affine(rotation((0.2, -0.35, 0.5)) @ np.diag([1.05, 0.85, 2.2]),
                          [-118.731, 96.1234, -204.5]),
}


def volume(shape=(24, 20, 9), seed=0) -> np.ndarray:
    img, _ = phantom(shape=shape, seed=seed)
    return np.rint(img).astype(np.float32)


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_series_loads_with_exact_voxels_and_affine(tmp_path, name):
    data, aff = volume(), ORIENTATIONS[name]
    write_series(tmp_path / "series", data, aff, slope=0.5, intercept=-3.0)
    scan = load_scan(tmp_path / "series")
    assert scan.data.shape == data.shape and scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_allclose(scan.affine, aff, atol=1e-5, rtol=0)
    assert scan.path == tmp_path / "series" and len(scan.sha256) == 64
    assert "".join(nib.aff2axcodes(scan.affine)) == "".join(nib.aff2axcodes(aff))


def test_zip_of_a_series_loads_like_the_folder(tmp_path):
    data, aff = volume(), ORIENTATIONS["oblique"]
    write_series(tmp_path / "s", data, aff)
    archive = tmp_path / "patient.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "s").iterdir()):
            zf.write(f, f"DICOM/{f.name}")
        zf.writestr("README.txt", "not an image")
        zf.writestr("__MACOSX/DICOM/._IM0000", b"resource fork")
    folder, zipped = load_scan(tmp_path / "s"), load_scan(archive)
    np.testing.assert_array_equal(zipped.data, data)
    np.testing.assert_allclose(zipped.affine, aff, atol=1e-5, rtol=0)
    assert zipped.sha256 == folder.sha256  # the same files, in the same slice order


def test_slices_stored_against_the_normal_keep_the_world_geometry(tmp_path):
    # a stack written from superior to inferior: loaded inferior→superior, same world places
    data, aff = volume(), ORIENTATIONS["axial"].copy()
    flipped = aff.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] = aff[:3, 3] + (data.shape[2] - 1) * aff[:3, 2]
    write_series(tmp_path / "s", data[:, :, ::-1], flipped)
    scan = load_scan(tmp_path / "s")
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_allclose(scan.affine, aff, atol=1e-5, rtol=0)


def test_gantry_tilt_is_kept_as_a_sheared_affine(tmp_path):
    data = volume()
    aff = ORIENTATIONS["axial"].copy()
    aff[1, 2] = 0.7  # each slice shifted along A as well: DICOM positions say so
    write_series(tmp_path / "s", data, aff)
    with pytest.warns(UserWarning, match="shear"):
        scan = load_scan(tmp_path / "s")
    np.testing.assert_allclose(scan.affine, aff, atol=1e-5, rtol=0)


# -- several series -----------------------------------------------------------------------------
def _two_series(tmp_path):
    folder = tmp_path / "study"
    a = write_series(folder / "a", volume(seed=1), ORIENTATIONS["axial"],
                     description="t1_mprage", number=2)
    b = write_series(folder / "b", volume(shape=(16, 18, 7), seed=2), ORIENTATIONS["sagittal"],
                     description="t2_flair_sag", number=5)
    return folder, a, b


def test_several_series_are_listed_and_chosen(tmp_path):
    folder, a, b = _two_series(tmp_path)
    infos = list_series(folder)
    assert [(i.index, i.uid, i.description, i.n_images) for i in infos] == [
        (1, a, "t1_mprage", 9), (2, b, "t2_flair_sag", 7)]
    with pytest.raises(SeriesChoiceError) as exc:
        load_scan(folder)
    msg = str(exc.value)
    assert "\n" not in msg and "--series" in msg
    for info in infos:
        assert info.uid in msg and info.description in msg and f"{info.n_images} images" in msg
    assert load_scan(folder, series="2").data.shape == (16, 18, 7)
    np.testing.assert_allclose(load_scan(folder, series=a).affine, ORIENTATIONS["axial"],
                               atol=1e-5)
    with pytest.raises(SeriesChoiceError, match="no DICOM series '3'"):
        load_scan(folder, series=3)
    both = load_dicom_scans(folder)
    assert [i.description for i, _ in both] == ["t1_mprage", "t2_flair_sag"]
    assert [s.data.shape for _, s in both] == [(24, 20, 9), (16, 18, 7)]


# -- bad input: one line, an InputError ----------------------------------------------------------
def _bad(tmp_path, which) -> Path:
    folder = tmp_path / which.replace(" ", "_")
    data, aff = volume(), ORIENTATIONS["axial"]
    if which == "empty folder":
        folder.mkdir()
    elif which == "no DICOM":
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        (folder / "scan.nii.gz").write_bytes(b"\x1f\x8b not really")
    elif which == "missing geometry":
        write_series(folder, data, aff,
                     tweak=lambda k, ds: k == 3 and delattr(ds, "ImagePositionPatient"))
    elif which == "missing spacing":
        write_series(folder, data, aff, tweak=lambda k, ds: delattr(ds, "PixelSpacing"))
    elif which == "non-uniform spacing":
        write_series(folder, data, aff)
        # the files are shuffled: remove the fifth slice by its instance number
        for f in sorted(folder.iterdir()):
            if int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) == 5:
                f.unlink()
    elif which == "duplicate positions":
        write_series(folder, data, aff, tweak=lambda k, ds: k == 2 and setattr(
            ds, "ImagePositionPatient", [_ds(v) for v in (LPS_TO_RAS @ aff)[:3, 3]]))
    elif which == "mixed orientation":
        write_series(folder, data, aff, tweak=lambda k, ds: k == 0 and setattr(
            ds, "ImageOrientationPatient", ["0", "1", "0", "0", "0", "-1"]))
    elif which == "multi-frame":
        write_series(folder, data, aff, tweak=lambda k, ds: setattr(ds, "NumberOfFrames", 2))
    elif which == "single image":
        write_series(folder, data[:, :, :1], aff)
    elif which == "two series":
        folder, _, _ = _two_series(tmp_path)
    elif which == "bad zip":
        folder = tmp_path / "broken.zip"
        folder.write_bytes(b"PK\x03\x04 not a zip")
    return folder


BAD = ["empty folder", "no DICOM", "missing geometry", "missing spacing", "non-uniform spacing",
       "duplicate positions", "mixed orientation", "multi-frame", "single image", "two series",
       "bad zip"]
EXPECT = {"empty folder": "empty", "no DICOM": "no DICOM images",
          "missing geometry": "ImagePositionPatient", "missing spacing": "PixelSpacing",
          "non-uniform spacing": "non-uniform slice spacing",
          "duplicate positions": "two images at one position",
          "mixed orientation": "orientations", "multi-frame": "multi-frame",
          "single image": "single 2-D image", "two series": "2 DICOM series",
          "bad zip": "not a readable zip"}


@pytest.mark.parametrize("which", BAD)
def test_bad_dicom_input_is_one_line(tmp_path, which):
    path = _bad(tmp_path, which)
    with pytest.raises(DicomError) as exc:
        load_scan(path)
    assert isinstance(exc.value, InputError)
    assert EXPECT[which] in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("which", ["no DICOM", "non-uniform spacing", "two series"])
def test_segment_refuses_bad_dicom_and_writes_nothing(tmp_path, capsys, tiny_model_dir, which):
    path = _bad(tmp_path, which)
    out = tmp_path / "out" / "labels.nii.gz"
    code = cli.main(["segment", str(path), "-o", str(out), "--model", str(tiny_model_dir), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("itermask: error:")
    assert EXPECT[which] in err[0]
    assert not (tmp_path / "out").exists()


# -- the command line ------------------------------------------------------------------------------
def test_segment_a_dicom_folder_writes_labels_on_the_series_grid(tmp_path, capsys,
                                                                  tiny_model_dir):
    data, aff = volume(shape=(40, 44, 6)), ORIENTATIONS["oblique"]
    write_series(tmp_path / "flair_series", data, aff)
    out = tmp_path / "out.nii.gz"
    code = cli.main(["segment", str(tmp_path / "flair_series"), "-o", str(out),
                     "--model", str(tiny_model_dir), "-q"])
    assert code == 0, capsys.readouterr().err
    img = nib.load(str(out))
    assert img.shape == data.shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, aff, atol=1e-5, rtol=0)
    np.testing.assert_allclose(img.get_sform(), aff, atol=1e-5, rtol=0)


def test_segment_chooses_a_series_and_names_outputs_after_the_folder_or_zip(
        tmp_path, capsys, tiny_model_dir):
    folder, a, b = _two_series(tmp_path)
    archive = tmp_path / "exam.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((folder / "b").iterdir()):
            zf.write(f, f.name)
    out = tmp_path / "results"
    code = cli.main(["segment", str(folder / "b"), str(archive), "-o", str(out),
                     "--model", str(tiny_model_dir), "-q"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["b_lesions.nii.gz",
                                                           "exam_lesions.nii.gz"]
    one = tmp_path / "chosen.nii.gz"
    code = cli.main(["segment", str(folder), "--series", b, "-o", str(one),
                     "--model", str(tiny_model_dir), "-q"])
    assert code == 0, capsys.readouterr().err
    img = nib.load(str(one))
    assert img.shape == (16, 18, 7)
    np.testing.assert_allclose(img.affine, ORIENTATIONS["sagittal"], atol=1e-5, rtol=0)


# -- the napari reader --------------------------------------------------------------------------
def test_reader_claims_dicom_folders_and_zips_only(tmp_path):
    from napari_itermask._reader import napari_get_reader, read_dicom, read_nifti

    write_series(tmp_path / "series", volume(), ORIENTATIONS["axial"])
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "series").iterdir()):
            zf.write(f, f.name)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.txt").write_text("x")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("a.txt", "x")
    assert napari_get_reader(str(tmp_path / "series")) is read_dicom
    assert napari_get_reader([str(archive)]) is read_dicom
    assert napari_get_reader(str(other)) is None and napari_get_reader(str(plain)) is None
    assert napari_get_reader(str(tmp_path / "scan.nii.gz")) is read_nifti


def test_reader_places_a_series_by_its_affine_and_labels_save_onto_it(tmp_path, notes):
    from napari_itermask import _writer
    from napari_itermask._layers import RAS_TO_WORLD
    from napari_itermask._reader import read_dicom

    data, aff = volume(), ORIENTATIONS["oblique"]
    write_series(tmp_path / "flair", data, aff)
    ((arr, kwargs, kind),) = read_dicom(str(tmp_path / "flair"))
    assert kind == "image" and kwargs["name"] == "flair" and not notes["error"]
    md = kwargs["metadata"]
    np.testing.assert_allclose(md["affine"], aff, atol=1e-5, rtol=0)
    assert md["dicom"]["description"] == "T2 FLAIR" and md["dicom"]["n_images"] == 9
    axes = md["scan_axes"]
    for v in [(0, 0, 0), (23, 19, 8), (5, 11, 3)]:
        lv = np.array([v[a] for a in axes] + [1.0])
        world = kwargs["affine"] @ lv
        np.testing.assert_allclose(world[:3], RAS_TO_WORLD[:3, :3] @ (aff @ [*v, 1.0])[:3],
                                   atol=1e-5)
        assert arr[tuple(int(x) for x in lv[:3])] == data[v]
    # labels drawn on the layer save as NIfTI on the series' own grid and affine
    lab = np.zeros(data.shape, np.uint8)
    lab[3:7, 4:9, 2:5] = 1
    out = tmp_path / "flair_lesions.nii.gz"
    _writer.write_labels(str(out), lab.transpose(axes),
                         {"metadata": md, "name": "x", "affine": kwargs["affine"]})
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, aff, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(img.dataobj), lab)


def test_reader_gives_one_layer_per_series_named_by_description(tmp_path, notes, monkeypatch):
    from napari_itermask import _reader
    from napari_itermask._reader import dicom_series, read_dicom

    asked = []
    monkeypatch.setattr(_reader, "choose_series",
                        lambda path, infos: asked.append(infos) or [i.index for i in infos])

    folder, a, b = _two_series(tmp_path)
    write_series(folder / "c", volume(), ORIENTATIONS["axial"], description="localizer",
                 number=9, tweak=lambda k, ds: k == 0 and setattr(
                     ds, "ImageOrientationPatient", ["0", "1", "0", "0", "0", "-1"]))
    layers = read_dicom(str(folder))
    assert [k["name"] for _, k, _ in layers] == ["t1_mprage", "t2_flair_sag"]
    assert [k["metadata"]["dicom"]["series_uid"] for _, k, _ in layers] == [a, b]
    np.testing.assert_allclose(layers[1][1]["metadata"]["affine"], ORIENTATIONS["sagittal"],
                               atol=1e-5)
    assert len(notes["warning"]) == 1 and "localizer" in notes["warning"][0]
    assert [i.description for i in dicom_series(str(folder))] == ["t1_mprage", "t2_flair_sag",
                                                                  "localizer"]
    assert [[i.description for i in infos] for infos in asked] == [
        ["t1_mprage", "t2_flair_sag", "localizer"]]
    (only,) = read_dicom(str(folder), series=b)
    assert only[1]["name"] == "t2_flair_sag" and only[1]["metadata"]["dicom"]["index"] == 2
    assert only[1]["metadata"]["scan_shape"] == (16, 18, 7)


def test_reader_shows_one_error_for_a_bad_series(tmp_path, notes):
    from napari_itermask._reader import read_dicom

    folder = _bad(tmp_path, "non-uniform spacing")
    assert read_dicom(str(folder)) == [(None,)]
    assert len(notes["error"]) == 1 and "non-uniform slice spacing" in notes["error"][0]


@pytest.mark.gui
def test_napari_opens_a_dicom_folder_with_the_plugin(make_napari_viewer, tmp_path, notes):
    pytest.importorskip("pytestqt")
    data, aff = volume(), ORIENTATIONS["sagittal"]
    write_series(tmp_path / "sag", data, aff)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "sag"), plugin="napari-itermask")
    assert layer.name == "sag" and layer.axis_labels == ("S", "P", "L")
    np.testing.assert_allclose(layer.metadata["affine"], aff, atol=1e-5)


# -- compressed transfer syntaxes ---------------------------------------------------------------
def test_an_rle_lossless_series_loads_with_exactly_the_source_voxels(tmp_path):
    """RLE Lossless: pydicom encodes and decodes it itself (no optional package)."""
    from pydicom.uid import RLELossless

    data, aff = volume(), ORIENTATIONS["oblique"]
    write_series(tmp_path / "rle", data, aff, tweak=lambda k, ds: ds.compress(RLELossless))
    first = pydicom.dcmread(next((tmp_path / "rle").iterdir()))
    assert first.file_meta.TransferSyntaxUID == RLELossless
    scan = load_scan(tmp_path / "rle")
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_allclose(scan.affine, aff, atol=1e-5, rtol=0)


def _undecodable_syntax():
    """A compressed transfer syntax no installed plugin decodes (JPEG Lossless first: the
    usual lossless compression of MR archives), or None."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless, JPEGLosslessSV1, JPEGLSLossless

    for uid in (JPEGLosslessSV1, JPEGLSLossless, HTJ2KLossless):
        if not get_decoder(uid).is_available:
            return uid
    return None


def test_a_series_in_a_syntax_nothing_here_decodes_is_one_line_naming_it_and_the_remedy(
        tmp_path, capsys, tiny_model_dir):
    from pydicom.encaps import encapsulate

    uid = _undecodable_syntax()
    if uid is None:
        pytest.skip("every compressed syntax tried has a decoder installed here")

    def compressed(k, ds):
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    write_series(tmp_path / "jpegll", volume(), ORIENTATIONS["axial"], tweak=compressed)
    with pytest.raises(DicomError) as exc:
        load_scan(tmp_path / "jpegll")
    text = str(exc.value)
    assert "\n" not in text and uid.name in text and str(uid) in text
    assert "pip install" in text and "dcm2niix" in text
    out = tmp_path / "out.nii.gz"
    code = cli.main(["segment", str(tmp_path / "jpegll"), "-o", str(out), "--model",
                     str(tiny_model_dir), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and uid.name in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_transfer_syntax_pydicom_does_not_know_is_refused_in_one_line():
    from napari_itermask.dicom import undecodable_reason

    assert undecodable_reason("1.2.840.10008.1.2.1") is None  # explicit VR little endian
    assert undecodable_reason("1.2.840.10008.1.2.5") is None  # RLE: pydicom itself
    assert "1.2.3.4.5" in undecodable_reason("1.2.3.4.5")


# -- several series: the napari window asks which --------------------------------------------------
@pytest.mark.gui
@pytest.mark.parametrize("answer", ["second", "all", "cancel"])
def test_opening_a_folder_of_several_series_in_napari_asks_which(make_napari_viewer, qtbot,
                                                                tmp_path, notes, monkeypatch,
                                                                answer):
    pytest.importorskip("pytestqt")
    from qtpy.QtWidgets import QDialog

    from napari_itermask._plugin.series_dialog import ALL_SERIES, SeriesDialog

    folder, a, b = _two_series(tmp_path)
    viewer = make_napari_viewer()
    asked = []

    def exec_(dialog):
        asked.append([dialog.combo.itemText(i) for i in range(dialog.combo.count())])
        if answer == "cancel":
            return QDialog.DialogCode.Rejected
        dialog.combo.setCurrentIndex(1 if answer == "second" else dialog.combo.count() - 1)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(SeriesDialog, "exec", exec_)
    layers = viewer.open(str(folder), plugin="napari-itermask")
    assert asked == [["t1_mprage · series 2 · 9 images · MR",
                      "t2_flair_sag · series 5 · 7 images · MR", ALL_SERIES]]
    names = [layer.name for layer in viewer.layers]
    if answer == "second":
        assert names == ["t2_flair_sag"]
        assert viewer.layers[0].metadata["dicom"]["series_uid"] == b
        np.testing.assert_allclose(viewer.layers[0].metadata["affine"],
                                   ORIENTATIONS["sagittal"], atol=1e-5)
    elif answer == "all":
        assert names == ["t1_mprage", "t2_flair_sag"]
    else:
        assert names == [] and not notes["error"]
    assert not notes["error"]

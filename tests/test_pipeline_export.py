import json

import nibabel as nib
import numpy as np
import pytest

from napari_itermask.errors import OutputError
from napari_itermask.export import sidecar_path, write_labels
from napari_itermask.pipeline import Job, segment_scan
from napari_itermask.volume import load_scan, scan_from_array
from conftest import perturbed_bundle, phantom


def test_sidecar_names():
    assert sidecar_path("a/b.nii.gz").name == "b.json"
    assert sidecar_path("b.nii").name == "b.json"


def test_write_labels_keeps_affine_codes_and_refuses_overwrite(tmp_path, phantom_nifti):
    scan = load_scan(phantom_nifti[0])
    scan.header.set_qform(scan.affine, code=1)
    scan.header.set_sform(scan.affine, code=4)
    lab = (scan.data > 150).astype(np.uint8)
    out = tmp_path / "lab.nii.gz"
    written = write_labels(out, lab, scan.affine, scan.header, {"k": np.float32(1.5)})
    assert written == [out, tmp_path / "lab.json"]
    img = nib.load(str(out))
    assert np.allclose(img.affine, scan.affine)
    assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 1
    assert np.array_equal(np.asarray(img.dataobj), lab)
    import hashlib

    assert json.loads((tmp_path / "lab.json").read_text()) == {
        "k": 1.5, "labels_file": "lab.nii.gz",
        "labels_sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    # the mode a plain open() would give (not mkstemp's private 0600): colleagues can read it
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    for f in written:
        assert f.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    before = out.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        write_labels(out, lab * 0, scan.affine, scan.header, {})
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".itermask-*"))


def test_job_history_resume_and_scan_grid_outputs(phantom_nifti):
    scan = load_scan(phantom_nifti[0])
    job = Job.create(scan, perturbed_bundle(), tau=0.3, max_iter=4)
    states = list(job.iterate())
    assert len(job.history) == len(states) + 1
    assert job.history.volumes == sorted(job.history.volumes, reverse=True)
    m0 = job.mask_on_scan(0)
    assert m0.shape == scan.data.shape and (m0 <= (scan.data > 0)).all()
    err = job.error_on_scan()
    assert err.shape == scan.data.shape and (err[scan.data <= 0] == 0).all()
    lo, hi = job.labels(0.1, error_scan=err), job.labels(5.0, error_scan=err)
    assert lo.sum() >= hi.sum()
    n = len(job.history)
    more = list(job.iterate(resume=job.history.last, tau=2.0))
    assert len(job.history) == n + len(more)
    if more:
        assert more[0].tau.max() == 2.0
        assert job.history.volumes[-1] <= job.history.volumes[n - 1]


def test_segment_scan_is_seed_deterministic_and_skips_empty_slices():
    img, _ = phantom(shape=(40, 48, 12))
    img[:, :, :2] = 0  # two slices without brain
    scan = scan_from_array(img, np.diag([1.5, 1.5, 3.0, 1.0]))
    b = perturbed_bundle()
    r1 = segment_scan(scan, b, seed=4)
    r2 = segment_scan(scan, b, seed=4, batch_size=3)
    assert np.array_equal(r1.labels, r2.labels)
    assert r1.labels.shape == img.shape and r1.labels.dtype == np.uint8
    assert {0, 1} <= set(r1.provenance["slices_skipped"])
    assert r1.provenance["lesion_count"] >= 0


def test_segment_scan_replays_a_recorded_review_to_identical_labels(phantom_nifti):
    """A result taken from an interactive job (stepped, continued with a higher τ, an earlier
    iteration chosen) is recorded as RunParams; segment_scan with them gives the same labels."""
    from napari_itermask.params import ParamsError, RunParams

    scan = load_scan(phantom_nifti[0])
    b = perturbed_bundle()
    job = Job.create(scan, b, RunParams(tau=0.3, max_iter=3, seed=1))
    gen = job.iterate()
    next(gen), next(gen)  # two steps, then the user continues with a higher τ
    gen.close()
    list(job.iterate(resume=job.history.last, tau=0.8))
    assert job.continued == [(2, 0.8)] and job.iterations > 2
    for source in ("error", "mask"):
        p = job.result_params(iteration=2, source=source, threshold=1.5, min_size=3)
        assert (p.run_until, p.continued, p.tau_in_force) == (job.iterations, ((2, 0.8),), 0.8)
        want = job.result(p)
        res = segment_scan(scan, b, RunParams.from_dict(p.to_dict()))
        assert np.array_equal(res.labels, want) and res.params == p
        assert res.provenance["params"] == p.to_dict()
    # the iteration chosen matters: the last one's lesions differ from iteration 2's
    assert not np.array_equal(job.result(job.result_params(threshold=1.5)),
                              job.result(job.result_params(iteration=2, threshold=1.5)))
    with pytest.raises(ParamsError, match="iteration 99 does not exist"):
        job.result_params(iteration=99)
    with pytest.raises(ParamsError, match="must rise above"):
        job.iterate(resume=job.history.last, tau=0.5)

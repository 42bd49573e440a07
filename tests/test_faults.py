"""Faults lose nothing: a full disk or an unwritable folder during export, out of memory on the
device, a cancel at any iteration, the viewer closed mid-run, two widgets running at once.

Each test provokes the fault for real where the machine allows it (a tiny tmpfs when the tests
run as root, skipped otherwise) and else simulates it where the bytes reach the disk
(``atomic.write_all``) or where a network runs (``UNet.forward``). Tiny random models on small
phantoms: seconds each.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import perturbed_bundle, phantom

from napari_itermask import atomic
from napari_itermask.errors import OutputError
from napari_itermask.export import sidecar_matches, sidecar_path, write_labels

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((20, 22, 10)) > 0.7).astype(np.uint8)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line(exc) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- the sidecar always matches the labels written -------------------------------------------------
def test_the_sidecar_records_the_hash_of_the_labels_beside_it(tmp_path):
    out = tmp_path / "lab.nii.gz"
    write_labels(out, _labels(0), AFFINE, None, {"note": "first"})
    side = json.loads(sidecar_path(out).read_text())
    assert side["labels_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert side["labels_file"] == "lab.nii.gz" and sidecar_matches(out)
    # the same labels give the same bytes (no time stamp in the gzip header): replays compare
    again = tmp_path / "again.nii.gz"
    write_labels(again, _labels(0), AFFINE, None, {"note": "first"})
    assert again.read_bytes() == out.read_bytes()
    # new labels: a new hash; a sidecar left from other labels no longer matches
    write_labels(out, _labels(1), AFFINE, None, {"note": "second"}, overwrite=True)
    assert sidecar_matches(out)
    other = tmp_path / "other.nii.gz"
    write_labels(other, _labels(2), AFFINE, None, {})
    os.replace(sidecar_path(other), sidecar_path(out))  # a sidecar of other labels
    assert not sidecar_matches(out)
    assert np.array_equal(np.asarray(nib.load(str(other)).dataobj), _labels(2))


# -- a full disk or an unwritable folder during export ---------------------------------------------
def _existing_export(folder):
    """Labels, sidecar and lesion table of an earlier export, as a user would have them."""
    out = folder / "case_lesions.nii.gz"
    write_labels(out, _labels(0), AFFINE, None, {"run": "earlier"},
                 extra={folder / "case_lesions.csv": b"lesion,volume_ml\n1,0.5\n"})
    return out


@pytest.mark.parametrize("fails_at", [1, 2, 3])  # labels, sidecar, lesion table
def test_a_full_disk_leaves_the_existing_export_byte_identical(tmp_path, monkeypatch, fails_at):
    out = _existing_export(tmp_path)
    before = _files(tmp_path)
    real, calls = atomic.write_all, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == fails_at:  # part of the file gets written, then the disk is full
            real(path, data[: len(data) // 3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(atomic, "write_all", full_disk)
    with pytest.raises(OutputError) as exc:
        write_labels(out, _labels(1), AFFINE, None, {"run": "new"}, overwrite=True,
                     extra={tmp_path / "case_lesions.csv": b"lesion,volume_ml\n"})
    line = _one_line(exc.value)
    assert "No space left on device" in line and "left as it was" in line
    assert "case_lesions.nii.gz" in line
    assert _files(tmp_path) == before  # byte-identical, and no temporary file left
    assert sidecar_matches(out)


def test_a_failed_rename_puts_back_the_files_already_replaced(tmp_path, monkeypatch):
    """The labels are in place, the sidecar's rename fails: the old labels come back."""
    out = _existing_export(tmp_path)
    before = _files(tmp_path)
    real, renames = os.replace, []

    def flaky(src, dst):
        renames.append((src, dst))
        if str(dst).endswith(".json") and ".itermask-keep" not in str(src):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputError, match="Input/output error.*left as it was"):
        write_labels(out, _labels(1), AFFINE, None, {"run": "new"}, overwrite=True)
    monkeypatch.setattr(os, "replace", real)
    assert any(str(d).endswith(".nii.gz") for _, d in renames)  # the labels had been replaced
    assert _files(tmp_path) == before and sidecar_matches(out)


def _mount_tmpfs(folder, size="256k", readonly=False):
    folder.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the simulated full disk covers it")
    return folder


def _umount(folder):
    subprocess.run(["umount", str(folder)], capture_output=True, timeout=10)


@pytest.fixture
def tiny_disk(tmp_path):
    folder = _mount_tmpfs(tmp_path / "disk")
    yield folder
    _umount(folder)


def test_a_really_full_disk_leaves_the_existing_export_byte_identical(tiny_disk):
    out = _existing_export(tiny_disk)
    before = _files(tiny_disk)
    with open(tiny_disk / "filler", "wb", buffering=0) as fh:  # fill the disk to the last block
        with pytest.raises(OSError) as full:
            while True:
                fh.write(b"\xff" * 4096)
    assert full.value.errno == errno.ENOSPC
    before["filler"] = (tiny_disk / "filler").read_bytes()
    big = np.random.default_rng(3).integers(0, 2, (40, 44, 20), dtype=np.uint8)
    with pytest.raises(OutputError) as exc:
        write_labels(out, big, AFFINE, None, {"run": "new"}, overwrite=True)
    line = _one_line(exc.value)
    assert "No space left on device" in line and "left as it was" in line
    assert _files(tiny_disk) == before and sidecar_matches(out)


def test_an_unwritable_folder_is_one_line_and_changes_nothing(tmp_path):
    disk = _mount_tmpfs(tmp_path / "disk")
    try:
        out = _existing_export(disk)
        before = _files(disk)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=10)
        with pytest.raises(OutputError) as exc:
            write_labels(out, _labels(1), AFFINE, None, {}, overwrite=True)
        line = _one_line(exc.value)
        assert "is not writable" in line and "left as they were" in line
        assert _files(disk) == before
    finally:
        _umount(disk)


def test_the_napari_writer_refuses_in_one_line_when_the_disk_is_full(tmp_path, monkeypatch):
    pytest.importorskip("napari")
    from napari_itermask import _writer

    out = _existing_export(tmp_path)
    before = _files(tmp_path)

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "write_all", full_disk)
    monkeypatch.setattr(_writer, "confirm_overwrite", lambda paths: True)
    meta = {"name": "case lesions", "scale": (2.0, 2.0, 3.0), "metadata": {}}
    with pytest.raises(OutputError, match="No space left on device.*left as it was"):
        _writer.write_labels(str(out), _labels(1), meta)
    assert _files(tmp_path) == before


# -- out of memory on the device: retried with a smaller batch, the same result -------------------
def _oom_once(monkeypatch, above: int = 1):
    """The networks' forward (the trained UNet's, and the fused inference copy's where there
    is one) raises the device's out-of-memory error once, for a batch of more than ``above``
    slices; returns the batch sizes the networks were given, and the one that failed."""
    seen: list[int] = []
    failed = []
    for cls in _net_classes():
        real = cls.forward

        def forward(self, x, *a, _real=real, **k):
            seen.append(int(x.shape[0]))
            if not failed and x.shape[0] > above:
                failed.append(int(x.shape[0]))
                error = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
                raise error("CUDA out of memory. Tried to allocate 2.00 GiB")
            return _real(self, x, *a, **k)

        monkeypatch.setattr(cls, "forward", forward)
    return seen, failed


def _net_classes():
    from napari_itermask.core.unet import UNet

    classes = [UNet]
    try:
        from napari_itermask.core.fuse import FusedUNet
    except ImportError:  # no fused inference copies in this version
        return classes
    return [*classes, FusedUNet]


def _scan(tmp_path, seed=0):
    from napari_itermask.volume import load_scan

    img, _ = phantom(shape=(30, 34, 16), seed=seed)
    path = tmp_path / f"scan{seed}.nii.gz"
    nib.save(nib.Nifti1Image(img, AFFINE), str(path))
    return load_scan(path)


def test_out_of_memory_is_retried_with_half_the_batch_and_gives_the_same_labels(
        tmp_path, monkeypatch):
    from napari_itermask.cohort import segment_and_write

    bundle = perturbed_bundle()
    scan = _scan(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean = segment_and_write(scan, bundle, tmp_path / "a" / "x.nii.gz", batch_size=8,
                              report=lambda line: pytest.fail(line))
    seen, failed = _oom_once(monkeypatch)
    reports = []
    prov = segment_and_write(scan, bundle, tmp_path / "b" / "x.nii.gz", batch_size=8,
                             report=reports.append)
    assert failed == [8] and len(reports) == 1
    assert "out of memory on cpu with 8 slice(s) per pass: retrying with 4" in reports[0]
    assert max(seen[1:]) == 4  # the smaller batch is kept for the rest of the run
    a = np.asarray(nib.load(str(tmp_path / "a" / "x.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b" / "x.nii.gz")).dataobj)
    assert a.any() and np.array_equal(a, b)
    assert prov["lesion_count"] == clean["lesion_count"]
    assert prov["forward_passes"] == clean["forward_passes"]
    assert prov["out_of_memory"]["batch_size_used"] == 4 and "out_of_memory" not in clean
    assert type(bundle.first).__name__ == "UNet"  # the (cached) bundle itself is not changed


def test_out_of_memory_in_a_cohort_is_reported_with_the_case(tmp_path, monkeypatch,
                                                            tiny_model_dir):
    from napari_itermask import cohort

    img, _ = phantom(shape=(24, 28, 12))
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "s.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    _oom_once(monkeypatch)
    res = cohort.segment_case(cohort.Case("s", str(tmp_path / "s.nii.gz")),
                              cohort.CaseOptions(str(out), str(tiny_model_dir), batch_size=4))
    assert res.status == "ok", res.message
    assert any("out of memory on cpu with 4 slice(s) per pass: retrying with 2" in n
               for n in res.notes)


def _oom_always(monkeypatch):
    """Every forward of every network raises the device's out-of-memory error."""
    def forward(self, x, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    for cls in _net_classes():
        monkeypatch.setattr(cls, "forward", forward)


def _small_scan(path):
    img, _ = phantom(shape=(24, 28, 12))
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(path))
    return path


def test_out_of_memory_with_one_slice_per_pass_is_one_line(tmp_path, monkeypatch,
                                                          tiny_model_dir):
    from napari_itermask import cohort

    _oom_always(monkeypatch)
    _small_scan(tmp_path / "s.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    res = cohort.segment_case(cohort.Case("s", str(tmp_path / "s.nii.gz")),
                              cohort.CaseOptions(str(out), str(tiny_model_dir), batch_size=2))
    assert res.status == "failed"
    assert res.message.startswith("out of memory on cpu even with one slice per pass")
    assert list(out.iterdir()) == []


def test_other_errors_are_not_taken_for_out_of_memory():
    from napari_itermask.oom import BatchLimit, SplitOnOOM, is_out_of_memory

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    limit = BatchLimit(8)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        SplitOnOOM(Broken(), limit)(torch.zeros(8, 1, 4, 4))
    assert limit.size == 8 and not limit.reduced


# -- a cancel at any iteration: the run stops there, and goes on to the same result ---------------
def _volume():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (6, 32, 32)).astype(np.float32)
    yy, xx = np.mgrid[:32, :32]
    brain = np.broadcast_to(((yy - 16) ** 2 + (xx - 16) ** 2) < 13**2, x.shape).copy()
    return x * brain, brain


def _uncancelled():
    from napari_itermask.core.engine import EngineConfig, run

    x, brain = _volume()
    b = perturbed_bundle()
    return [s for s in run(x, brain, b.first, b.masked, EngineConfig(tau=0.3, max_iter=8))]


@pytest.mark.parametrize("k", range(1, 8))
def test_the_engine_cancelled_after_any_iteration_stops_there_with_that_iterations_state(k):
    from napari_itermask.core.engine import EngineConfig, run

    full = _uncancelled()
    if k > len(full):
        pytest.skip(f"the run converges after {len(full)} iterations")
    x, brain = _volume()
    b = perturbed_bundle()
    ev = threading.Event()
    seen = []
    for st in run(x, brain, b.first, b.masked, EngineConfig(tau=0.3, max_iter=8), cancel=ev):
        seen.append(st)
        if st.iteration == k:
            ev.set()
    assert [s.iteration for s in seen] == list(range(1, k + 1))
    assert np.array_equal(seen[-1].masks, full[k - 1].masks)
    assert np.allclose(seen[-1].error, full[k - 1].error, atol=1e-5)


# -- a cohort's head without a brain mask: the message names what a cohort can give ---------------
def test_a_cohort_head_without_a_mask_names_the_manifest_column_and_skull_strip(tmp_path):
    from napari_itermask import cohort

    head = np.full((30, 34, 16), 50.0, np.float32)  # non-zero everywhere: a whole head
    head[5:25, 5:29, 3:13] = 100.0
    nib.save(nib.Nifti1Image(head, AFFINE), str(tmp_path / "head.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    res = cohort.segment_case(cohort.Case("head", str(tmp_path / "head.nii.gz")),
                              cohort.CaseOptions(str(out), "flair"))
    assert res.status == "failed"
    assert "brain_mask column" in res.message and "--skull-strip" in res.message
    assert "--brain-mask" not in res.message
    assert list(out.iterdir()) == []


# -- the widget: cancel at any iteration, the viewer closed mid-run, two at once, OOM, export -----
def _qt():
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")


@pytest.fixture
def gui():
    """The plugin tests' helpers (the tiny model, a small case, the widget), under Qt; the
    settings are isolated by conftest's ``isolated_home``."""
    _qt()
    import _plugin_support as ps

    return ps


@pytest.fixture
def plugin_model(gui, tmp_path_factory):
    return gui.make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def case(gui):
    from napari_itermask import synth

    return synth.make_case("flair", 12345, voxel_size=gui.VOXEL_MM)


def _replayed(sess, model):
    """The labels the command line's pipeline gives for the session's image and choices."""
    from napari_itermask import review
    from napari_itermask.models import load_bundle
    from napari_itermask.pipeline import segment_scan
    from napari_itermask.volume import scan_from_array

    _, params = review.lesions(sess)
    req = sess.request
    scan = scan_from_array(req.data, req.affine, req.header, name=req.name)
    return segment_scan(scan, load_bundle(model, device="cpu"), params).labels


def _lesions(viewer, name):
    from napari_itermask._layers import layer_scan_array

    return layer_scan_array(viewer.layers[f"{name} lesions"])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_the_widget_stopped_at_any_iteration_goes_on_to_the_uninterrupted_result(
        gui, make_napari_viewer, qtbot, plugin_model, case, notes, k):
    viewer = make_napari_viewer()
    gui.add_case(viewer, case, name="cut")
    w = gui.make_widget(viewer, plugin_model, qtbot)
    if k > 0:  # Stop pressed the moment iteration k is on screen
        shown = w.runner._apply_frame

        def apply_then_stop(sess, frame):
            shown(sess, frame)
            if frame.step == k:
                w.cancel()

        w.runner._apply_frame = apply_then_stop
    assert w.run()
    sess = w._current_session()
    if k == 0:
        w.cancel()  # at once: before the worker has even loaded the model
    gui.wait_idle(qtbot, w)
    assert not sess.finished and "Cancelled" in w.run_controls.status.text()
    # every iteration the engine computed is on the slider, each in its place
    assert len(sess.steps) == len(sess.job.history) >= 1
    assert [s.iteration for s in sess.steps] == list(range(len(sess.steps)))
    assert len(sess.steps) <= k + 2  # it stopped after at most the iteration in progress
    if k > 0:
        w.runner._apply_frame = shown
    assert w.run()
    gui.wait_idle(qtbot, w)
    assert sess.finished and not notes["error"], notes["error"]
    assert [s.iteration for s in sess.steps] == list(range(len(sess.steps)))
    assert np.array_equal(_lesions(viewer, "cut"), _replayed(sess, plugin_model))


def _run_then(gui, qtbot, w, act, notes) -> None:
    """Start a run, let two iterations land, call ``act`` (close the viewer, delete the
    widget), then wait for the worker: it must have been stopped (not run to the end), with
    no error reported."""
    assert w.run()
    sess, worker = w._current_session(), w._worker
    ended = []
    worker.finished.connect(lambda: ended.append(True))
    qtbot.waitUntil(lambda: len(sess.steps) >= 2, timeout=gui.RUN_TIMEOUT_MS)
    act()
    qtbot.waitUntil(lambda: bool(ended), timeout=gui.RUN_TIMEOUT_MS)
    assert sess.stop.is_set() and not sess.finished  # it stopped, not ran to the end
    assert not notes["error"], notes["error"]


def test_closing_the_viewer_mid_run_stops_the_worker_and_writes_nothing(
        gui, make_napari_viewer, qtbot, plugin_model, case, notes, tmp_path, isolated_home):
    viewer = make_napari_viewer()
    gui.add_case(viewer, case)
    w = gui.make_widget(viewer, plugin_model, qtbot)
    config = isolated_home.itermask_config
    before = {p: p.read_bytes() for p in config.rglob("*") if p.is_file()}
    _run_then(gui, qtbot, w, viewer.close, notes)
    after = {p: p.read_bytes() for p in config.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing half-written
    assert not [p for p in config.rglob(".itermask-*")]


def test_two_widgets_on_two_images_at_once_each_result_lands_on_its_own_image(
        gui, make_napari_viewer, qtbot, plugin_model, case, notes):
    v1, v2 = make_napari_viewer(), make_napari_viewer()
    (a, _), (b, _) = gui.add_case(v1, case, name="A"), gui.add_case(v2, case, name="B")
    b.data = np.ascontiguousarray(np.flip(np.asarray(b.data), axis=-1))  # another image
    w1 = gui.make_widget(v1, plugin_model, qtbot)
    w2 = gui.make_widget(v2, plugin_model, qtbot)
    assert w1.run() and w2.run()
    assert w1._worker is not None and w2._worker is not None  # both running at once
    gui.wait_idle(qtbot, w1)
    gui.wait_idle(qtbot, w2)
    assert not notes["error"], notes["error"]
    s1, s2 = w1._current_session(), w2._current_session()
    assert s1.finished and s2.finished and s1.source is a and s2.source is b
    assert [n.name for n in v1.layers if n.name.startswith("B")] == []
    assert [n.name for n in v2.layers if n.name.startswith("A")] == []
    la, lb = _lesions(v1, "A"), _lesions(v2, "B")
    assert np.array_equal(la, _replayed(s1, plugin_model))
    assert np.array_equal(lb, _replayed(s2, plugin_model))
    assert not np.array_equal(la, lb)


def test_the_widget_retries_out_of_memory_with_a_smaller_batch_and_says_so(
        gui, make_napari_viewer, qtbot, plugin_model, case, notes, monkeypatch):
    viewer = make_napari_viewer()
    gui.add_case(viewer, case, name="oom")
    w = gui.make_widget(viewer, plugin_model, qtbot)
    seen, failed = _oom_once(monkeypatch)
    assert w.run()
    gui.wait_idle(qtbot, w)
    assert failed and not notes["error"], notes["error"]
    told = [m for m in notes["warning"] if "out of memory" in m]
    assert len(told) == 1 and f"with {failed[0]} slice(s) per pass: retrying with " \
        f"{failed[0] // 2}" in told[0]
    sess = w._current_session()
    assert sess.finished
    monkeypatch.undo()  # the replay below runs without the fault
    assert np.array_equal(_lesions(viewer, "oom"), _replayed(sess, plugin_model))


@pytest.mark.parametrize("fails_at", [1, 2, 3])
def test_a_full_disk_during_the_widgets_export_keeps_the_earlier_export(
        gui, make_napari_viewer, qtbot, plugin_model, case, notes, tmp_path, monkeypatch,
        fails_at):
    viewer = make_napari_viewer()
    gui.add_case(viewer, case, name="exp")
    w = gui.make_widget(viewer, plugin_model, qtbot)
    assert w.run()
    gui.wait_idle(qtbot, w)
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    target = out_dir / "exp_lesions.nii.gz"
    assert w.export_result(str(target))
    before = _files(out_dir)
    w.review_panel.threshold_chosen.emit(float(w._current_session().review.threshold) * 0.8)
    real, calls = atomic.write_all, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == fails_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(atomic, "write_all", full_disk)
    w.confirm = lambda title, text: True
    assert w.export_result(str(target)) is None
    assert len(notes["error"]) == 1 and "\n" not in notes["error"][0]
    assert "No space left on device" in notes["error"][0]
    assert _files(out_dir) == before


def test_the_widget_deleted_mid_run_stops_its_worker_without_an_error(
        gui, make_napari_viewer, qtbot, plugin_model, case, notes):
    """Its dock closed while a run goes on: the worker stops, nothing raises in Qt's loop."""
    viewer = make_napari_viewer()
    gui.add_case(viewer, case)
    w = gui.make_widget(viewer, plugin_model)  # not handed to qtbot: it is deleted here
    _run_then(gui, qtbot, w, w.deleteLater, notes)


def test_out_of_memory_with_one_slice_per_pass_from_the_command_line(tmp_path, monkeypatch,
                                                                     capsys, tiny_model_dir):
    from _cli_support import run_cli

    _oom_always(monkeypatch)
    _small_scan(tmp_path / "s.nii.gz")
    out = tmp_path / "s_lesions.nii.gz"
    code, _, err = run_cli(capsys, "segment", tmp_path / "s.nii.gz", "-o", out, "--model",
                           tiny_model_dir, "--batch-size", "2")
    assert code == 1 and not out.exists()
    assert "out of memory on cpu even with one slice per pass" in err
    assert "try --batch-size 4" not in err

"""The clinician's review without Qt: run, choose an iteration, threshold, accept, export, replay.

A tiny random model: results mean nothing; what is tested is that the result shown, accepted
and exported is the chosen one, that the sidecar records it, and that ``itermask segment
--params`` replays it to identical labels.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from napari_itermask import review
from napari_itermask._session import Failure, Frame, RunRequest, Session, advance
from napari_itermask.cli import main
from napari_itermask.models import load_bundle
from napari_itermask.params import ParamsError, RunParams
from napari_itermask.volume import load_scan


def _drive(sess, **kw):
    """Consume one worker run like the widget does (on this thread)."""
    out = []
    for item in advance(sess, loader=lambda model, device: load_bundle(model), **kw):
        assert not isinstance(item, Failure), item.message
        if isinstance(item, Frame):
            sess.apply(item)
            sess.consumed.set()
        out.append(item)
    return out


def _session(scan_path, model_dir, params=None):
    scan = load_scan(scan_path)
    req = RunRequest(model=str(model_dir), device="cpu", data=scan.data, affine=scan.affine,
                     header=scan.header, name="scan", params=params or RunParams())
    return Session(SimpleNamespace(name="scan"), req)


def test_whole_review_without_qt_replays_to_identical_labels(phantom_nifti, tiny_model_dir,
                                                              tmp_path, capsys):
    scan_path = phantom_nifti[0]
    sess = _session(scan_path, tiny_model_dir, RunParams(tau=0.3, max_iter=4, min_size=2))
    _drive(sess, steps=1)
    _drive(sess, steps=1)
    _drive(sess)  # Step, Step, Run: to convergence
    assert sess.finished and sess.job.iterations >= 3
    card = sess.job.bundle.card
    # seeded from the card (and the request's minimum size), following the last iteration
    assert sess.review.threshold == card.threshold and sess.review.min_size == 2
    assert sess.review.iteration is None and sess.review.source == "error"
    default, p = review.lesions(sess)
    assert p.iteration == sess.job.iterations and p.threshold == card.threshold
    np.testing.assert_array_equal(default, sess.job.labels(card.threshold, 2))

    # continue with a higher τ: the history grows, the record says so
    sess.review.update(next_tau=0.6)
    after = sess.job.iterations
    _drive(sess, tau=sess.review.next_tau)
    n = sess.job.iterations
    assert n > after and sess.job.continued and sess.job.continued[0][1] == 0.6

    # choose an earlier iteration: its own error map, not the last one's
    k = 2
    sess.review.update(iteration=k, threshold=0.5 * card.threshold, min_size=0)
    labels, p = review.lesions(sess)
    assert p.iteration == k and p.threshold == 0.5 * card.threshold
    err_k = sess.job.error_on_scan(k=k)
    assert not np.array_equal(err_k, sess.job.error_on_scan())
    np.testing.assert_array_equal(labels > 0, (err_k > 0.5 * card.threshold)
                                  & sess.job.volume.scan_brain)
    assert not np.array_equal(labels, sess.job.labels(0.5 * card.threshold))
    # its mask instead
    sess.review.update(source="mask")
    mask_labels, _ = review.lesions(sess)
    np.testing.assert_array_equal(mask_labels > 0, sess.job.mask_on_scan(k))
    sess.review.update(source="error")

    # accept freezes the choice; moving the threshold afterwards does not change the export
    acc = review.accept(sess)
    np.testing.assert_array_equal(acc.labels, labels)
    sess.review.update(threshold=10 * card.threshold, iteration=None)
    out = tmp_path / "out" / "reviewed.nii.gz"
    out.parent.mkdir()
    written = review.export(sess, out)
    assert written == [out, out.with_name("reviewed.json"), out.with_name("reviewed.csv")]
    saved = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(saved, labels)
    side = json.loads(out.with_name("reviewed.json").read_text())
    assert side["iteration"] == k and side["result_source"] == "error"
    assert side["threshold"] == 0.5 * card.threshold and side["min_lesion_size_voxels"] == 0
    assert side["iterations_run"] == n and side["continued"] == [[after, 0.6]]
    assert side["tau"] == 0.3 and side["tau_in_force"] == 0.6 and side["seed"] == 0
    assert side["model_sha256"] == card.weights_sha256 and side["edited_by_user"] is False
    assert RunParams.from_dict(side["params"]) == acc.params
    # the lesion table beside the labels, summarised in the sidecar
    rows = out.with_name("reviewed.csv").read_text().splitlines()
    assert side["lesion_table"]["file"] == "reviewed.csv"
    assert side["lesion_table"]["lesions"] == side["lesion_count"] == len(rows) - 1
    assert side["lesion_table"]["total_volume_ml"] == pytest.approx(side["lesion_volume_ml"],
                                                                    abs=1e-3)

    # the replay: same labels, voxel for voxel
    again = tmp_path / "again.nii.gz"
    assert main(["segment", str(scan_path), "-o", str(again), "--params",
                 str(out.with_name("reviewed.json")), "-q"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(str(again)).dataobj), saved)
    side2 = json.loads((tmp_path / "again.json").read_text())
    assert side2["params"] == side["params"]
    capsys.readouterr()

    # an edited export is marked as such (the replay gives the unedited result)
    edited = labels.copy()
    edited.flat[np.flatnonzero(sess.job.volume.scan_brain)[0]] = 1
    review.export(sess, out, labels=edited, overwrite=True)
    assert json.loads(out.with_name("reviewed.json").read_text())["edited_by_user"] is True


def test_each_session_keeps_its_own_review(phantom_nifti, tiny_model_dir):
    a = _session(phantom_nifti[0], tiny_model_dir)
    b = _session(phantom_nifti[0], tiny_model_dir)
    _drive(a, steps=2)
    _drive(b, steps=2)
    a.review.update(threshold=0.1, iteration=1, min_size=3)
    assert b.review.threshold == b.job.bundle.card.threshold and b.review.iteration is None
    la, _ = review.lesions(a)
    lb, _ = review.lesions(b)
    assert not np.array_equal(la, lb)
    b.review.restore_defaults(b.job.bundle.card)
    assert a.review.threshold == 0.1


@pytest.mark.parametrize("changes, message", [
    ({"threshold": -1.0}, "threshold must be >= 0"),
    ({"threshold": float("nan")}, "finite"),
    ({"min_size": -3}, "minimum lesion size must be >= 0"),
    ({"min_size": 2.5}, "whole number"),
    ({"source": "probability"}, "result source must be one of error, mask"),
    ({"next_tau": -0.1}, "τ (tau) must be >= 0"),
])
def test_review_values_are_validated_in_one_place(changes, message):
    state = review.ReviewState(threshold=1.0)
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        state.update(**changes)
    assert state.threshold == 1.0 and state.source == "error"  # nothing half-applied


@pytest.mark.parametrize("kwargs, message", [
    ({"tau": -1}, "τ (tau) must be >= 0"),
    ({"first_unmask": 1.0}, "first_unmask must be below 1"),
    ({"max_iter": 0}, "max_iter must be >= 1"),
    ({"seed": -2}, "seed must be >= 0"),
    ({"iteration": 0}, "iteration 0 is the brain"),
    ({"iteration": 5, "run_until": 3}, "beyond the 3 iterations run"),
    ({"iteration": 5, "max_iter": 3}, "beyond the iteration cap of 3"),
    ({"tau": 0.5, "continued": ((3, 0.4),)}, "must raise τ"),
    ({"continued": ((4, 1.0), (2, 2.0))}, "iteration order"),
    ({"continued": ((4, 1.0),), "run_until": 3}, "ends before the last continue"),
])
def test_run_params_reject_bad_values_with_one_line(kwargs, message):
    with pytest.raises(ParamsError) as info:
        RunParams(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_run_params_round_trip_and_resolve_from_the_card(tiny_bundle):
    p = RunParams(tau=0.4, continued=((3, 0.9),), run_until=5, iteration=4, source="mask",
                  min_size=7)
    assert RunParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    r = RunParams().resolve(tiny_bundle.card)
    assert (r.tau, r.threshold, r.max_iter) == (tiny_bundle.card.tau, tiny_bundle.card.threshold,
                                                tiny_bundle.card.max_iter)
    with pytest.raises(ParamsError, match="unknown run parameter"):
        RunParams.from_dict({"tau": 1.0, "colour": "red"})

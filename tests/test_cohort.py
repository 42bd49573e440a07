"""``itermask segment`` over cohorts: gathering cases, a bad scan skipped, the summary CSV,
shards, Dask (a two-worker LocalCluster) giving the serial run's files, and memory released.

Every run uses conftest's tiny random model on small phantoms (seconds each)."""

import csv
import gc
import io
import json

import nibabel as nib
import numpy as np
import pytest
from conftest import perturbed_bundle, phantom

from napari_itermask import cohort
from napari_itermask.cohort import Case, CaseOptions, CaseProgress, CaseResult
from _cli_support import lines, run_cli


def small_scan(path, seed=0, affine=None):
    img, _ = phantom(shape=(24, 28, 12), seed=seed)
    nib.save(nib.Nifti1Image(img, np.eye(4) if affine is None else affine), str(path))
    return path


def read_summary(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == cohort.SUMMARY_COLUMNS
    return [dict(zip(rows[0], r)) for r in rows[1:]]


@pytest.fixture
def scans(tmp_path):
    """A folder of three scans, a label file beside them and a note (ignored)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, name in enumerate(("c_case", "a_case", "b_case")):
        small_scan(folder / f"{name}.nii.gz", seed=i)
    nib.save(nib.Nifti1Image(np.zeros((24, 28, 12), np.uint8), np.eye(4)),
             str(folder / "a_case_label.nii.gz"))
    (folder / "notes.txt").write_text("not a scan")
    return folder


# -- gathering cases ------------------------------------------------------------------------------
def test_paths_globs_folders_and_manifests_give_sorted_named_cases(tmp_path, scans):
    by_folder = cohort.collect_cases(folders=[scans])
    assert [(c.name, c.skip is not None) for c in by_folder] == [
        ("a_case", False), ("a_case_label", True), ("b_case", False), ("c_case", False)]
    assert "_label" in by_folder[1].skip
    by_glob = cohort.collect_cases([str(scans / "*_case.nii.gz")])
    assert [c.name for c in by_glob] == ["a_case", "b_case", "c_case"]
    by_path = cohort.collect_cases([scans / "c_case.nii.gz", scans / "a_case.nii.gz"])
    assert [c.name for c in by_path] == ["a_case", "c_case"]  # sorted, whatever the order given
    manifest = tmp_path / "cases.csv"
    manifest.write_text("path,case,age\nscans/b_case.nii.gz,subject-2,40\n\n"
                        f"{scans / 'a_case.nii.gz'},,51\n")
    got = cohort.collect_cases(manifests=[manifest])
    assert [(c.name, c.path) for c in got] == [
        ("a_case", str(scans / "a_case.nii.gz")),
        ("subject-2", str(tmp_path / "scans" / "b_case.nii.gz"))]  # relative to the manifest


@pytest.mark.parametrize("text, message", [
    ("file,case\nx.nii.gz,a\n", "no 'path' column"),
    ("path,case\n,a\n", "line 2: no path"),
    ("path,case\nx.nii.gz,a/b\n", "must be a plain file name"),
    ("path,case\nx.nii.gz,same\ny.nii.gz,same\n", "share the case name 'same'"),
    ("path\n", "lists no scans"),
])
def test_a_bad_manifest_is_one_line_and_nothing_is_written(tmp_path, capsys, tiny_model_dir,
                                                           text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    code, _, err = run_cli(capsys, "segment", "--manifest", manifest, "-o", tmp_path / "out",
                           "--model", tiny_model_dir, "-q")
    assert code == 1 and len(lines(err)) == 1 and err.startswith("itermask: error:"), err
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nothing-*.nii.gz"], "no NIfTI file, DICOM zip or DICOM series folder matches"),
    (["--folder", "{tmp}/absent"], "does not exist"),
    (["{tmp}/a.nii.gz", "{tmp}/sub/a.nii.gz"], "share the case name 'a'"),
    (["{tmp}/a.nii.gz", "{tmp}/b.nii.gz", "--shard", "2/2"], "--shard must be I/N"),
    (["{tmp}/a.nii.gz", "{tmp}/b.nii.gz", "--shard", "x"], "--shard must be I/N"),
    ([], "nothing to segment"),
])
def test_bad_cohort_requests_are_one_line(tmp_path, capsys, tiny_model_dir, args, message):
    small_scan(tmp_path / "a.nii.gz")
    small_scan(tmp_path / "b.nii.gz")
    (tmp_path / "sub").mkdir()
    small_scan(tmp_path / "sub" / "a.nii.gz")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(capsys, "segment", *argv, "-o", tmp_path / "out", "--model",
                           tiny_model_dir, "-q")
    assert code == 1 and len(lines(err)) == 1 and err.startswith("itermask: error:"), err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_shards_partition_the_sorted_cohort():
    cases = [Case(f"case{k:02d}", f"/x/{k}.nii.gz") for k in (5, 3, 0, 6, 1, 4, 2)]
    shards = [cohort.select_shard(cases, (i, 3)) for i in range(3)]
    assert [[c.name for c in s] for s in shards] == [
        ["case00", "case03", "case06"], ["case01", "case04"], ["case02", "case05"]]
    assert cohort.select_shard(cases, None) == cases
    assert cohort.parse_shard("2/3") == (2, 3)
    assert cohort.shard_summary_path(cohort.Path("o/summary.csv"), (2, 3)).name == \
        "summary.shard-2-of-3.csv"


# -- a cohort run -----------------------------------------------------------------------------------
def test_folder_cohort_writes_each_case_and_a_summary(tmp_path, capsys, scans, tiny_model_dir):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "segment", "--folder", scans, "-o", out, "--model",
                                tiny_model_dir)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c}_lesions.{ext}" for c in ("a_case", "b_case", "c_case")
         for ext in ("nii.gz", "json", "csv")] + ["summary.csv"])
    rows = read_summary(out / "summary.csv")
    assert [(r["case"], r["status"]) for r in rows] == [
        ("a_case", "ok"), ("a_case_label", "skipped"), ("b_case", "ok"), ("c_case", "ok")]
    for r in rows:
        if r["status"] != "ok":
            assert r["lesion_count"] == r["labels"] == "" and "_label" in r["message"]
            continue
        side = json.loads((out / f"{r['case']}_lesions.json").read_text())
        assert int(r["lesion_count"]) == side["lesion_count"]
        assert float(r["volume_ml"]) == pytest.approx(side["lesion_volume_ml"], abs=1e-4)
        assert int(r["iterations"]) == side["iterations_run"] >= 1
        assert float(r["seconds"]) > 0 and r["input"] == str(scans / f"{r['case']}.nii.gz")
        assert r["labels"] == str(out / f"{r['case']}_lesions.nii.gz")
    # progress on a non-terminal: one line per case, in order, the clock going on
    progress = [ln for ln in lines(err) if ln.startswith("[")]
    assert [ln.split("]")[0] for ln in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert progress[0].startswith("[1/4] a_case: ok · ") and " iterations · " in progress[0]
    assert len([ln for ln in lines(err) if ln.startswith("model: tiny")]) == 1
    assert "3 ok, 0 failed, 1 skipped" in stdout


def test_a_bad_scan_is_reported_and_skipped_and_the_exit_is_non_zero(tmp_path, capsys,
                                                                     tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    small_scan(folder / "good.nii.gz")
    (folder / "broken.nii.gz").write_text("plain text, not an image")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)),
             str(folder / "empty.nii.gz"))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "segment", "--folder", folder, "-o", out, "--model",
                           tiny_model_dir, "-q")
    assert code == 1
    assert err.strip().splitlines()[-1] == (f"itermask: error: 2 of 3 case(s) failed (see "
                                            f"{out / 'summary.csv'})")
    failed = [ln for ln in lines(err) if ": failed: " in ln]
    assert len(failed) == 2 and "Traceback" not in err
    rows = {r["case"]: r for r in read_summary(out / "summary.csv")}
    assert rows["good"]["status"] == "ok"
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["message"]
    assert rows["empty"]["status"] == "failed" and "no brain" in rows["empty"]["message"]
    assert sorted(p.name for p in out.iterdir()) == [
        "good_lesions.csv", "good_lesions.json", "good_lesions.nii.gz", "summary.csv"]
    assert not list(out.glob(".itermask-*"))


def test_a_case_failing_mid_write_leaves_none_of_its_files(tmp_path, monkeypatch,
                                                           tiny_model_dir):
    from napari_itermask import atomic

    scan = small_scan(tmp_path / "s.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    real, calls = atomic.write_all, []

    def full_disk(path, data):  # labels and sidecar are written, the table meets a full disk
        calls.append(path)
        if len(calls) == 3:
            real(path, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(atomic, "write_all", full_disk)
    res = cohort.segment_case(Case("s", str(scan)), CaseOptions(str(out), str(tiny_model_dir)))
    assert len(calls) == 3
    assert res.status == "failed" and "No space left on device" in res.message
    assert list(out.iterdir()) == []
    monkeypatch.setattr(atomic, "write_all", real)

    def bug(*a, **k):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr("napari_itermask.pipeline.segment_scan", bug)
    res = cohort.segment_case(Case("s", str(scan)), CaseOptions(str(out), str(tiny_model_dir)))
    assert (res.status, res.message) == ("failed", "unexpected RuntimeError: a bug over two lines")


def test_the_summary_and_the_outputs_are_never_replaced_without_asking(tmp_path, capsys, scans,
                                                                       tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("precious")
    args = ["segment", scans / "a_case.nii.gz", scans / "b_case.nii.gz", "-o", out, "--model",
            tiny_model_dir, "-q"]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and len(lines(err)) == 1 and "--overwrite" in err
    assert (out / "summary.csv").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]  # no case was run
    assert run_cli(capsys, *args, "--summary", tmp_path / "first.csv")[0] == 0
    first = read_summary(tmp_path / "first.csv")
    # the cases' outputs exist now: refused, then resumed with --skip-existing
    code, _, err = run_cli(capsys, *args, "--summary", tmp_path / "second.csv")
    assert code == 1 and len(lines(err)) == 1
    assert "--overwrite" in err and "--skip-existing" in err
    assert not (tmp_path / "second.csv").exists()
    assert run_cli(capsys, *args, "--summary", tmp_path / "second.csv", "--skip-existing")[0] == 0
    second = read_summary(tmp_path / "second.csv")
    assert [r["status"] for r in second] == ["skipped", "skipped"]
    for a, b in zip(first, second):  # the figures come from the existing sidecars
        assert (a["lesion_count"], a["volume_ml"], a["iterations"]) == (
            b["lesion_count"], b["volume_ml"], b["iterations"])
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert [r["status"] for r in read_summary(out / "summary.csv")] == ["ok", "ok"]


def test_manifest_names_cases_and_gives_each_its_mask_and_model(tmp_path, capsys,
                                                                 tiny_model_dir):
    from napari_itermask.models import load_bundle, save_bundle

    a = small_scan(tmp_path / "a.nii.gz", seed=1)
    small_scan(tmp_path / "b.nii.gz", seed=2)
    data = np.asarray(nib.load(str(a)).dataobj)
    half = (data > 0).astype(np.uint8)
    half[:, :14] = 0
    nib.save(nib.Nifti1Image(half, np.eye(4)), str(tmp_path / "a_brain.nii.gz"))
    other = save_bundle(perturbed_bundle(seed=9), tmp_path / "other-model")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,path,brain_mask,model\n"
                        "subject-1,a.nii.gz,a_brain.nii.gz,\n"
                        f"subject-2,b.nii.gz,,{other}\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "segment", "--manifest", manifest, "-o", out, "--model",
                           tiny_model_dir, "-q", "--threshold", 0.0)
    assert code == 0, err
    lab = np.asarray(nib.load(str(out / "subject-1_lesions.nii.gz")).dataobj) > 0
    assert lab.any() and not (lab & (half == 0)).any()
    s1 = json.loads((out / "subject-1_lesions.json").read_text())
    s2 = json.loads((out / "subject-2_lesions.json").read_text())
    assert s1["brain_mask"] == str(tmp_path / "a_brain.nii.gz")
    assert s1["model_sha256"] == load_bundle(tiny_model_dir).sha256
    assert s2["model_sha256"] == load_bundle(other).sha256 != s1["model_sha256"]
    assert len([ln for ln in lines(err) if ln.startswith("model: ")]) == 2


def test_shards_of_a_job_array_write_their_own_summaries(tmp_path, capsys, scans,
                                                        tiny_model_dir):
    out = tmp_path / "out"
    got = {}
    for i in range(2):
        code, _, err = run_cli(capsys, "segment", str(scans / "*_case.nii.gz"), "-o", out,
                               "--model", tiny_model_dir, "-q", "--shard", f"{i}/2")
        assert code == 0, err
        got[i] = [r["case"] for r in read_summary(out / f"summary.shard-{i}-of-2.csv")]
    assert got == {0: ["a_case", "c_case"], 1: ["b_case"]}
    assert not (out / "summary.csv").exists()
    assert len(list(out.glob("*_lesions.nii.gz"))) == 3


# -- progress ---------------------------------------------------------------------------------------
def test_progress_is_a_bar_on_a_terminal_and_one_line_per_case_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    ok = CaseResult("a", "ok", lesion_count=2, volume_ml=1.5, iterations=7, seconds=3.25)
    bad = CaseResult("b", "failed", message="broken", seconds=0.5)
    log = io.StringIO()
    ticks = iter([0.0, 4.0, 65.0])
    p = CaseProgress(2, stream=log, clock=lambda: next(ticks))
    p.update(ok)
    p.update(bad)
    assert log.getvalue().splitlines() == [
        "[1/2] a: ok · 2 lesion(s), 1.50 mL · 7 iterations · 3.2 s · 0:04",
        "[2/2] b: failed · 0.5 s · 1:05"]
    tty = Terminal()
    p = CaseProgress(2, stream=tty)
    p.update(ok)
    p.write("a message")
    p.update(bad)
    p.close()
    shown = tty.getvalue()
    assert "\r" in shown and "2/2" in shown and "a message" in shown and "[1/2]" not in shown
    quiet = io.StringIO()
    p = CaseProgress(2, stream=quiet, enabled=False)
    p.update(ok)
    p.write("still said")
    assert quiet.getvalue() == "still said\n"


# -- memory -------------------------------------------------------------------------------------------
def test_segment_case_keeps_no_array_of_the_scan(tmp_path, tiny_model_dir):
    """Nothing of a case outlives it: no Scan, no Job, no large array (the benchmark
    benchmarks/cohort_memory.py measures the process's RSS over 20 scans)."""
    from napari_itermask.pipeline import Job
    from napari_itermask.volume import Scan

    def alive():
        gc.collect()
        objs = gc.get_objects()
        big = sum(1 for o in objs if type(o) is np.ndarray and o.nbytes >= 24 * 28 * 12)
        return sum(type(o) is Scan for o in objs), sum(type(o) is Job for o in objs), big

    out = tmp_path / "out"
    out.mkdir()
    options = CaseOptions(str(out), str(tiny_model_dir), save_error_map=True)
    cases = [Case(f"s{i}", str(small_scan(tmp_path / f"s{i}.nii.gz", seed=i))) for i in range(3)]
    assert cohort.segment_case(cases[0], options).status == "ok"  # the model is cached now
    before = alive()
    for case in cases[1:]:
        res = cohort.segment_case(case, options)
        assert res.status == "ok" and (out / f"{case.name}_lesions_error.nii.gz").exists()
    assert alive() == before
    assert before[:2] == (0, 0)


# -- Dask ----------------------------------------------------------------------------------------------
def test_dask_cluster_gives_the_serial_runs_files(tmp_path, capsys, tiny_model_dir):
    distributed = pytest.importorskip("distributed")
    folder = tmp_path / "in"
    folder.mkdir()
    c, s = np.cos(0.2), np.sin(0.2)
    oblique = np.array([[-1.2 * c, -1.1 * s, 0, 20], [-1.2 * s, 1.1 * c, 0, -10],
                        [0, 0, 2.0, 5], [0, 0, 0, 1]])
    for i in range(4):
        small_scan(folder / f"scan{i}.nii.gz", seed=i, affine=oblique)
    (folder / "bad.nii.gz").write_text("not an image")
    common = ["--folder", folder, "--model", tiny_model_dir, "-q", "--save-error-map"]
    code_serial, _, err = run_cli(capsys, "segment", *common, "-o", tmp_path / "serial")
    assert code_serial == 1, err  # the bad scan
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        code, _, err = run_cli(capsys, "segment", *common, "-o", tmp_path / "dask",
                               "--dask-scheduler", cluster.scheduler_address)
    assert code == code_serial, err
    serial = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert serial == sorted(p.name for p in (tmp_path / "dask").iterdir())
    assert len([n for n in serial if n.endswith("_lesions.nii.gz")]) == 4
    for name in serial:
        a, b = (tmp_path / "serial" / name), (tmp_path / "dask" / name)
        if name.endswith(".json"):
            sa, sb = json.loads(a.read_text()), json.loads(b.read_text())
            sa.pop("created"), sb.pop("created")
            assert sa == sb, name
        elif name == "summary.csv":
            ra, rb = read_summary(a), read_summary(b)
            for r in ra + rb:
                r.pop("seconds")
                r["labels"] = r["labels"].replace(str(tmp_path / "serial"), "OUT")
                r["labels"] = r["labels"].replace(str(tmp_path / "dask"), "OUT")
            assert ra == rb
        else:
            assert a.read_bytes() == b.read_bytes(), name  # labels, error maps, tables


# -- merging the shards' summaries ----------------------------------------------------------------
def test_merged_shard_summaries_are_the_serial_runs_summary(tmp_path, capsys, scans,
                                                           tiny_model_dir):
    serial, out = tmp_path / "serial", tmp_path / "out"
    code, _, err = run_cli(capsys, "segment", "--folder", scans, "-o", serial, "--model",
                           tiny_model_dir, "-q")
    assert code == 0, err
    for i in range(2):
        code, _, err = run_cli(capsys, "segment", "--folder", scans, "-o", out, "--model",
                               tiny_model_dir, "-q", "--shard", f"{i}/2")
        assert code == 0, err
    shards = cohort.find_shard_summaries(out / "summary.csv")
    assert [p.name for p in shards] == ["summary.shard-0-of-2.csv", "summary.shard-1-of-2.csv"]
    counts = cohort.merge_shard_summaries(shards, out / "summary.csv")
    assert counts == {"cases": 4, "shards": 2, "ok": 3, "failed": 0, "skipped": 1}

    def comparable(rows, folder):
        return [{**r, "seconds": "", "labels": r["labels"].replace(str(folder), "OUT")}
                for r in rows]

    assert comparable(read_summary(out / "summary.csv"), out) == comparable(
        read_summary(serial / "summary.csv"), serial)
    with pytest.raises(cohort.OutputError, match="exists; pass --overwrite"):
        cohort.merge_shard_summaries(shards, out / "summary.csv")
    # the command: refuses to replace, then merges with --overwrite to the same summary
    merged = (out / "summary.csv").read_bytes()
    code, _, err = run_cli(capsys, "merge-summaries", out / "summary.csv")
    assert code == 1 and "exists; pass --overwrite" in err
    code, got, err = run_cli(capsys, "merge-summaries", out / "summary.csv", "--overwrite")
    assert code == 0, err
    assert "4 case(s) from 2 shard(s): 3 ok, 0 failed, 1 skipped" in got
    assert (out / "summary.csv").read_bytes() == merged
    (out / "summary.shard-1-of-2.csv").unlink()
    code, _, err = run_cli(capsys, "merge-summaries", out / "summary.csv", "--overwrite")
    assert code == 1 and "1/2 missing" in err and err.count("\n") == 1


def _shard_file(folder, i, n, cases, name="summary"):
    path = folder / f"{name}.shard-{i}-of-{n}.csv"
    path.write_text(cohort.summary_csv([CaseResult(c, "ok") for c in cases]))
    return path


@pytest.mark.parametrize("layout, message", [
    ({(0, 3): ["a", "d"], (2, 3): ["c"]}, "shard(s) 1/3 missing"),
    ({(0, 2): ["a", "c"], (1, 3): ["b"]}, "is a shard of 3, the others of 2"),
    ({(0, 2): ["a", "c"], (1, 2): ["b", "c"]}, "case 'c' is in shard 0/2 and shard 1/2"),
    ({(0, 2): ["a", "b"], (1, 2): ["c"]}, "case 'b' (number 1 in case order) is in shard 0/2"),
    ({}, "no shard summaries to merge"),
])
def test_missing_or_overlapping_shards_are_refused_in_one_line(tmp_path, layout, message):
    shards = [_shard_file(tmp_path, i, n, cases) for (i, n), cases in layout.items()]
    with pytest.raises(cohort.InputError) as exc:
        cohort.merge_shard_summaries(shards, tmp_path / "summary.csv")
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "summary.csv").exists()


def test_a_shard_given_twice_or_a_file_that_is_no_summary_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    a = _shard_file(tmp_path, 0, 2, ["a"])
    b = _shard_file(tmp_path / "x", 0, 2, ["a"])
    with pytest.raises(cohort.InputError, match="shard 0/2 is given twice"):
        cohort.merge_shard_summaries([a, b], tmp_path / "summary.csv")
    other = tmp_path / "summary.shard-1-of-2.csv"
    other.write_text("case,volume\nb,1\n")
    with pytest.raises(cohort.InputError, match="is not a summary of itermask segment"):
        cohort.merge_shard_summaries([a, other], tmp_path / "summary.csv")
    with pytest.raises(cohort.InputError, match="not named as a shard summary"):
        cohort.merge_shard_summaries([tmp_path / "summary.csv"], tmp_path / "merged.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "summary.shard-0-of-2.csv", "summary.shard-1-of-2.csv", "x"]

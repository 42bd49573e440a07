"""``itermask segment`` over a cohort: many scans, one summary, on one machine or many.

A cohort is a list of ``Case``\\ s, gathered from paths, globs (expanded here, so they may be
quoted), folders (``--folder``) and CSV manifests (``--manifest``), sorted by case name. Every
case goes through ONE function, ``segment_case(case, options) -> CaseResult``, whichever way the
cohort runs: in this process one case after another (``run_serial``), as one shard of a
scheduler job array (``select_shard``: case k of the sorted list goes to shard k mod N), or on
the workers of an existing Dask cluster (``run_dask``). ``segment_case`` never raises for a bad
scan: it returns a failed result with a one-line message, and keeps nothing of the scan once it
returns (only the small ``CaseResult``), so memory does not grow from case to case
(``benchmarks/cohort_memory.py`` measures it). The summary CSV (``SUMMARY_COLUMNS``) is written
atomically at the end; the shards' summaries merge into one (``merge_shard_summaries``,
refusing missing or overlapping shards). No Qt, no napari.
"""

from __future__ import annotations

import csv
import gc
import glob
import io
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from . import allocator
from .errors import InputError, ItermaskError, OutputError
from .names import is_nifti, nifti_stem, scan_stem

__all__ = [
    "SUMMARY_COLUMNS",
    "Case",
    "CaseOptions",
    "CaseProgress",
    "CaseResult",
    "case_targets",
    "check_summary_target",
    "cohort_unstripped_message",
    "collect_cases",
    "find_shard_summaries",
    "merge_shard_summaries",
    "parse_shard",
    "read_manifest",
    "run_dask",
    "run_serial",
    "segment_and_write",
    "segment_case",
    "select_shard",
    "shard_of",
    "shard_summary_path",
    "summary_csv",
    "write_summary",
]

#: The summary CSV's columns, in order (one row per case of the run, in case order).
SUMMARY_COLUMNS = ("case", "status", "message", "lesion_count", "volume_ml", "iterations",
                   "seconds", "input", "labels")
STATUSES = ("ok", "failed", "skipped")
MANIFEST_COLUMNS = ("path", "case", "brain_mask", "model")
#: Name endings (before .nii/.nii.gz) of files a folder or glob holds beside the scans:
#: labels, masks, error maps. They are listed as skipped, not segmented.
NOT_A_SCAN = ("_label", "_labels", "_lesions", "_seg", "_mask", "_error")


@dataclass(frozen=True)
class Case:
    """One scan of a cohort: its name (which names its outputs), where it is, and the brain
    mask and model a manifest gives it (None: automatic, and the file-name rule)."""

    name: str
    path: str
    brain_mask: str | None = None
    model: str | None = None
    skip: str | None = None  # why the case is listed but not run (e.g. a label file)


@dataclass(frozen=True)
class CaseOptions:
    """What every case of a run shares (picklable: it travels to Dask workers)."""

    output: str  # the output folder
    model: str | None = None  # --model (a manifest's model column wins for its row)
    device: str = "auto"
    params: object = None  # a RunParams (None: the card's)
    batch_size: int = 32
    save_error_map: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    series: str | None = None
    skull_strip: bool = False  # --skull-strip: strip cases without a brain_mask of their own


@dataclass
class CaseResult:
    case: str
    status: str  # ok | failed | skipped
    message: str = ""
    lesion_count: int | None = None
    volume_ml: float | None = None
    iterations: int | None = None
    seconds: float | None = None
    input: str = ""
    labels: str = ""
    model: str | None = None  # "name (modality, sha256 …)" of the model used
    model_why: str | None = None
    model_warning: str | None = None  # the model's own warning (an untrained placeholder)
    notes: list[str] = field(default_factory=list)  # warnings for stderr
    line: str = ""  # the one-line report for stdout (ok cases)

    def row(self) -> list[str]:
        def num(v, fmt):
            return "" if v is None else format(v, fmt)

        return [self.case, self.status, self.message, num(self.lesion_count, "d"),
                num(self.volume_ml, ".4f"), num(self.iterations, "d"),
                num(self.seconds, ".2f"), self.input, self.labels]


# -- gathering the cases -------------------------------------------------------------------------
def _looks_like_scan(path: Path) -> tuple[bool, str | None]:
    """(whether a folder/glob entry is taken at all, why it is skipped if taken but not run)."""
    if path.name.startswith("."):
        return False, None
    if path.is_file() and is_nifti(path.name):
        stem = (nifti_stem(path.name) or "").lower()
        for end in NOT_A_SCAN:
            if stem.endswith(end) and len(stem) > len(end):
                return True, (f"not run: the name ends in {end} (a label, mask or error map); "
                              "list it in a manifest or by path to segment it")
        return True, None
    from .dicom import looks_like_dicom

    if path.is_file() and path.name.lower().endswith(".zip"):
        return (True, None) if looks_like_dicom(path) else (False, None)
    if path.is_dir():
        return (True, None) if looks_like_dicom(path) else (False, None)
    return False, None


def _entries(paths, where: str) -> list[Case]:
    out = []
    for p in sorted(paths):
        taken, skip = _looks_like_scan(p)
        if taken:
            out.append(Case(scan_stem(p.name), str(p), skip=skip))
    return out


def _from_folder(folder: Path) -> list[Case]:
    if not folder.is_dir():
        raise InputError(f"--folder {folder} is not a folder" if folder.exists()
                         else f"--folder {folder} does not exist")
    try:
        children = list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"cannot list {folder}: {exc.strerror or exc}") from None
    cases = _entries(children, str(folder))
    if not cases:
        raise InputError(f"--folder {folder} holds no NIfTI file, DICOM zip or DICOM series "
                         "folder")
    return cases


def _from_glob(pattern: str) -> list[Case]:
    matches = [Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True)]
    cases = _entries(matches, pattern)
    if not cases:
        raise InputError(f"no NIfTI file, DICOM zip or DICOM series folder matches {pattern!r}"
                         + (f" ({len(matches)} other path(s) do)" if matches else ""))
    return cases


def _case_name_problem(name: str) -> str | None:
    if not name.strip():
        return "is empty"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        return "must be a plain file name (no folders, not starting with '.')"
    return None


def read_manifest(path) -> list[Case]:
    """The cases of a CSV manifest: a ``path`` column (relative paths from the manifest's own
    folder) and optional ``case``, ``brain_mask`` and ``model`` columns; other columns are
    ignored, and so are rows with every cell empty. One-line InputError for a bad manifest."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(f"manifest {path.name} is not valid CSV: {exc}") from None
    if not rows:
        raise InputError(f"manifest {path.name} is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header:
        raise InputError(f"manifest {path.name} has no 'path' column (columns: "
                         f"{', '.join(h for h in header if h) or 'none'})")
    for name in MANIFEST_COLUMNS:
        if header.count(name) > 1:
            raise InputError(f"manifest {path.name} has two {name!r} columns")
    col = {name: header.index(name) for name in MANIFEST_COLUMNS if name in header}
    base = path.parent

    def cell(row, name):
        i = col.get(name)
        value = row[i].strip() if i is not None and i < len(row) else ""
        return value or None

    def here(value):
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else base / p)

    cases = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        scan = cell(row, "path")
        if scan is None:
            raise InputError(f"manifest {path.name}, line {n}: no path")
        name = cell(row, "case") or scan_stem(Path(scan).name)
        problem = _case_name_problem(name)
        if problem:
            raise InputError(f"manifest {path.name}, line {n}: case name {name!r} {problem}")
        mask = cell(row, "brain_mask")
        cases.append(Case(name, here(scan), here(mask) if mask else None, cell(row, "model")))
    if not cases:
        raise InputError(f"manifest {path.name} lists no scans")
    return cases


def collect_cases(inputs=(), folders=(), manifests=()) -> list[Case]:
    """Every case named by paths and globs (``inputs``), folders and manifests, sorted by case
    name; InputError before any work for a missing path, an empty glob or folder, a bad
    manifest, or two cases of one name (their outputs would collide)."""
    cases: list[Case] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists() and glob.has_magic(str(raw)):
            cases += _from_glob(str(raw))
        elif p.is_file() or p.is_dir():
            cases.append(Case(scan_stem(p.name), str(p)))
        else:
            raise InputError(f"input {p} does not exist" if not p.exists()
                             else f"{p} is not a file")
    for folder in folders:
        cases += _from_folder(Path(folder))
    for manifest in manifests:
        cases += read_manifest(manifest)
    seen: dict[str, Case] = {}
    for c in cases:
        if c.name in seen:
            raise InputError(f"two inputs share the case name {c.name!r} ({seen[c.name].path} "
                             f"and {c.path}); their outputs would collide")
        seen[c.name] = c
    return sorted(cases, key=lambda c: c.name)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 <= I < N; InputError otherwise."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        i = n = -1
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 … 3/4), not {text!r}")
    return i, n


def select_shard(cases: list[Case], shard: tuple[int, int] | None) -> list[Case]:
    """The cases of shard (I, N): case k of the name-sorted list goes to shard k mod N."""
    if shard is None:
        return list(cases)
    i, n = shard
    return [c for k, c in enumerate(sorted(cases, key=lambda c: c.name)) if k % n == i]


def shard_summary_path(path: Path, shard: tuple[int, int] | None) -> Path:
    """``summary.csv`` → ``summary.shard-I-of-N.csv`` for a shard (else unchanged)."""
    if shard is None:
        return path
    i, n = shard
    stem, suffix = (path.stem, path.suffix) if path.suffix else (path.name, "")
    return path.with_name(f"{stem}.shard-{i}-of-{n}{suffix}")


def case_targets(case: Case, output) -> dict[str, Path]:
    """The files a case writes in the output folder (labels, sidecar, lesion table, error map)."""
    labels = Path(output) / f"{case.name}_lesions.nii.gz"
    return {"labels": labels, "sidecar": labels.with_name(f"{case.name}_lesions.json"),
            "table": labels.with_name(f"{case.name}_lesions.csv"),
            "error": labels.with_name(f"{case.name}_lesions_error.nii.gz")}


# -- one case --------------------------------------------------------------------------------------
_MODELS: OrderedDict = OrderedDict()  # (folder, stamp, device) → bundle; a few, per process
_MODELS_LOCK = threading.Lock()
_MODELS_KEPT = 4


def _bundle(spec: str, device):
    """The model ``spec`` on ``device``, loaded once per process (Dask workers included) and
    loaded again if its files change; at most a few are kept."""
    from .models import load_bundle
    from .models.locations import resolve_model

    folder = resolve_model(spec)
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size)
                  for f in sorted(folder.iterdir()) if f.is_file())
    key = (str(folder.resolve()), stamp, str(device))
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        bundle = load_bundle(folder, device=device)
        _MODELS[key] = bundle
        while len(_MODELS) > _MODELS_KEPT:
            _MODELS.popitem(last=False)
        return bundle


def segment_and_write(scan, bundle, target, params=None, *, brain_mask=None,
                      brain_mask_source=None, batch_size=32, save_error_map=False,
                      overwrite=False, progress=None, written=None, report=None) -> dict:
    """Segment ``scan`` and write its labels, sidecar and lesion table (and error map) beside
    ``target``, all together (``export.write_labels``: all of them or none, and existing files
    left byte-identical when a write fails); returns the sidecar. Paths are appended to
    ``written`` once they are in place. Shared by the single-scan command and ``segment_case``.

    Out of memory on the device: the batch that failed runs again in halves (``oom``), and
    ``report(line)`` is told (default: a warning line on stderr); the result is the same.
    """
    from .export import error_map_image, nifti_bytes, write_labels
    from .lesion_table import check_table_target, lesion_table, to_csv
    from .lesion_table import summary as table_summary
    from .names import tagged_nifti
    from .oom import BatchLimit, split_on_oom
    from .pipeline import segment_scan

    written = [] if written is None else written
    if report is None:
        def report(line):
            print(f"warning: {line}", file=sys.stderr, flush=True)
    limit = BatchLimit(batch_size, report)
    res = segment_scan(scan, split_on_oom(bundle, limit), params, brain_mask=brain_mask,
                       brain_mask_source=brain_mask_source, batch_size=batch_size,
                       progress=progress)
    if progress is not None and hasattr(progress, "finish"):
        progress.finish()
    prov = res.provenance
    if limit.reduced:
        prov["out_of_memory"] = limit.record()
    table = lesion_table(res.labels, scan.affine, scan.data)  # CSV beside the labels
    table_file = check_table_target(target, overwrite)
    prov["lesion_table"] = table_summary(table, table_file.name)
    extra = {table_file: to_csv(table).encode()}
    if save_error_map:
        err_file = tagged_nifti(target, "_error")
        extra[err_file] = nifti_bytes(error_map_image(res.error, scan.affine),
                                      err_file.name.lower().endswith(".gz"))
    written += write_labels(target, res.labels, scan.affine, scan.header, prov, overwrite,
                            extra=extra)
    return prov


def _from_sidecar(result: CaseResult, sidecar: Path) -> None:
    import json

    try:
        side = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return
    if isinstance(side, dict):
        result.lesion_count = side.get("lesion_count")
        result.volume_ml = side.get("lesion_volume_ml")
        result.iterations = side.get("iterations_run")


def segment_case(case: Case, options: CaseOptions) -> CaseResult:
    """Segment one case into the output folder and report it; never raises for a bad scan,
    model or output (a failed result with one line instead), and writes all of a case's files
    or none of them. The one function every mode runs (serial, shards, Dask workers)."""
    from .cli import BUNDLED_FOR, choose_model
    from .models import untrained_warning
    from .oom import OutOfMemory
    from .pipeline import pick_device
    from .skullstrip import brain_for
    from .volume import load_brain_mask, load_scan

    start = time.perf_counter()
    targets = case_targets(case, options.output)
    result = CaseResult(case.name, "ok", input=case.path)
    if case.skip:
        result.status, result.message = "skipped", case.skip
        return result
    if options.skip_existing and targets["labels"].exists():
        result.status, result.message = "skipped", "not run: its labels exist (--skip-existing)"
        result.labels = str(targets["labels"])
        _from_sidecar(result, targets["sidecar"])
        return result
    written: list[Path] = []
    try:
        scan = load_scan(case.path, series=options.series)
        mask = load_brain_mask(case.brain_mask, scan) if case.brain_mask else None
        if mask is None and not options.skull_strip:
            _refuse_unstripped(scan, Path(case.path).name)
        mask, mask_source = brain_for(scan, mask, case.brain_mask, name=Path(case.path).name,
                                      skull_strip=options.skull_strip and mask is None)
        result.notes += [f"warning: {n}" for n in scan.notes]
        spec, hint, why = choose_model(case.path, case.model or options.model)
        if case.model:
            why = "the manifest"
        bundle = _bundle(spec, pick_device(options.device))
        card = bundle.card
        result.model = f"{bundle.name} ({card.modality}, sha256 {bundle.sha256[:12]}…)"
        result.model_why = why
        result.model_warning = untrained_warning(card)
        if hint and hint != card.modality:
            extra = "" if hint in BUNDLED_FOR else f"; no bundled model is for {hint} scans"
            result.notes.append(f"warning: {Path(case.path).name} looks like a {hint} scan "
                                f"(file name) but model {bundle.name!r} is for "
                                f"{card.modality} scans{extra}")
        prov = segment_and_write(scan, bundle, targets["labels"], options.params,
                                 brain_mask=mask, brain_mask_source=mask_source,
                                 batch_size=options.batch_size,
                                 save_error_map=options.save_error_map,
                                 overwrite=options.overwrite, written=written,
                                 report=lambda line: result.notes.append(f"warning: {line}"))
        del scan, mask
        result.lesion_count = int(prov["lesion_count"])
        result.volume_ml = float(prov["lesion_volume_ml"])
        result.iterations = int(prov["iterations_run"] or 0)
        result.labels = str(targets["labels"])
        result.line = (f"{case.name}: {prov['lesion_count']} lesion(s), "
                       f"{prov['lesion_volume_ml']:.2f} mL ({prov['result']}) -> "
                       f"{targets['labels']}")
        if prov["slices_capped"]:
            result.line += (f" ({len(prov['slices_capped'])} slice(s) hit the iteration cap "
                            f"of {prov['max_iter']})")
        del prov
    except BaseException as exc:
        for p in written:  # all of a case's files or none
            Path(p).unlink(missing_ok=True)
        if not isinstance(exc, Exception):  # Ctrl-C, SystemExit: the run stops
            raise
        result.status = "failed"
        if isinstance(exc, ItermaskError):
            result.message = _one_line(str(exc))
        elif isinstance(exc, OutOfMemory):
            result.message = _one_line(str(exc))
        elif isinstance(exc, MemoryError):
            result.message = "out of memory (try --batch-size 4)"
        else:  # a bug, but still one case's: say what it was
            result.message = _one_line(f"unexpected {type(exc).__name__}: {exc}")
    finally:
        gc.collect()  # the scan's arrays and the run's history go now, not at some later case
        allocator.trim()
    result.seconds = time.perf_counter() - start
    return result


def cohort_unstripped_message(name: str, data, affine=None) -> str:
    """The one line refusing a cohort's head that has no brain mask: in a cohort a mask comes
    from the manifest's ``brain_mask`` column (``--brain-mask`` is for one scan)."""
    from .skullstrip import UNSTRIPPED_NOTE, unstripped_reason

    why = unstripped_reason(data, affine) or "it looks like a whole head"
    return (f"{name} {UNSTRIPPED_NOTE} ({why}); give its brain mask in the manifest's "
            "brain_mask column, or pass --skull-strip to strip it here")


def _refuse_unstripped(scan, name: str) -> None:
    from .skullstrip import looks_unstripped

    if looks_unstripped(scan.data, scan.affine):
        raise InputError(cohort_unstripped_message(name, scan.data, scan.affine))


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "failed"


# -- running a cohort ------------------------------------------------------------------------------
def run_serial(cases, options: CaseOptions):
    """``segment_case`` on each case in turn, in this process; yields each result."""
    for case in cases:
        yield segment_case(case, options)


def run_dask(cases, options: CaseOptions, address: str, timeout: float = 30.0):
    """``segment_case`` on the workers of the Dask cluster at ``address`` (they must see the
    same files: inputs, models, output folder); yields results as they finish."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise InputError("--dask-scheduler needs dask.distributed: pip install "
                         "'napari-itermask[distributed]'") from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address}: "
                         f"{_one_line(str(exc)) or type(exc).__name__}") from None
    try:
        futures = {client.submit(segment_case, case, options, pure=False,
                                 key=f"itermask-case-{k}-{case.name}"): case
                   for k, case in enumerate(cases)}
        for future in as_completed(futures, loop=client.loop):
            case = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - a worker lost, not a bad scan
                yield CaseResult(case.name, "failed", input=case.path,
                                 message=_one_line(f"Dask: {type(exc).__name__}: {exc}"))
            future.release()
    finally:
        client.close()


def summary_csv(results) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for r in results:
        writer.writerow(r.row())
    return buf.getvalue()


def check_summary_target(path: Path, overwrite: bool) -> Path:
    if path.is_dir():
        raise OutputError(f"summary {path} is a folder")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite (or --summary another name) to "
                          "replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"summary folder {parent} does not exist")
    from .atomic import temp_file_in

    temp_file_in(parent, ".probe").unlink()
    return path


def write_summary(path: Path, results) -> Path:
    """The summary CSV, all at once or not at all."""
    from .atomic import atomic_write_bytes

    atomic_write_bytes(path, summary_csv(results).encode())
    return path


_SHARD_FILE = re.compile(r"^(?P<stem>.+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)(?P<suffix>\.[^.]+)?$")


def shard_of(path) -> tuple[int, int] | None:
    """(I, N) of a shard summary named like ``summary.shard-I-of-N.csv``, else None."""
    m = _SHARD_FILE.match(Path(path).name)
    return (int(m["i"]), int(m["n"])) if m else None


def find_shard_summaries(summary) -> list[Path]:
    """The shard summaries a job array wrote for ``summary`` (``OUT/summary.csv`` →
    ``OUT/summary.shard-*-of-*.csv``), in shard order."""
    summary = Path(summary)
    stem, suffix = (summary.stem, summary.suffix) if summary.suffix else (summary.name, "")
    found = []
    for p in summary.parent.glob(f"{glob.escape(stem)}.shard-*-of-*{glob.escape(suffix)}"):
        m = _SHARD_FILE.match(p.name)
        if m and m["stem"] == stem and (m["suffix"] or "") == suffix:
            found.append(p)
    return sorted(found, key=lambda p: shard_of(p))


def _read_summary_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(f"{path.name} is not valid CSV: {exc}") from None
    if not rows or tuple(rows[0]) != SUMMARY_COLUMNS:
        raise InputError(f"{path.name} is not a summary of itermask segment (its columns "
                         f"must be {', '.join(SUMMARY_COLUMNS)})")
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    for n, r in enumerate(body, start=2):
        if len(r) != len(SUMMARY_COLUMNS) or r[1] not in STATUSES:
            raise InputError(f"{path.name}, row {n}: not a summary row (case, status, ...)")
    return body


def merge_shard_summaries(shards, target, overwrite: bool = False) -> dict:
    """Merge the summaries of the shards of one cohort run (``--shard I/N`` for I = 0 … N−1,
    each ``summary.shard-I-of-N.csv``) into one summary ``target`` with one row per case in
    case order, as a serial run would have written it; returns the counts by status.

    Refused with one line (InputError), before anything is written: no shards, a file not
    named as a shard summary or not a summary, shards of different N, a shard given twice
    or missing, a case in two shards (overlapping runs), or cases in a shard that does not
    run them (summaries of different cohorts). ``target`` is never replaced without
    ``overwrite`` (OutputError), and is written all at once (``write_summary``)."""
    from .atomic import atomic_write_bytes

    shards = [Path(p) for p in shards]
    if not shards:
        raise InputError("no shard summaries to merge (they are named "
                         "summary.shard-I-of-N.csv)")
    of: dict[int, Path] = {}
    total = None
    for p in shards:
        sn = shard_of(p)
        if sn is None:
            raise InputError(f"{p.name} is not named as a shard summary "
                             "(summary.shard-I-of-N.csv)")
        i, n = sn
        if not (n >= 1 and 0 <= i < n):
            raise InputError(f"{p.name}: shard {i} of {n} does not exist (0 <= I < N)")
        if total is None:
            total = n
        elif n != total:
            raise InputError(f"{p.name} is a shard of {n}, the others of {total}: they come "
                             "from different runs")
        if i in of:
            raise InputError(f"shard {i}/{n} is given twice ({of[i].name} and {p.name})")
        of[i] = p
    missing = [i for i in range(total) if i not in of]
    if missing:
        names = ", ".join(f"{i}/{total}" for i in missing)
        raise InputError(f"shard(s) {names} missing: {len(of)} of {total} summaries found; "
                         "run (or wait for) the missing shards first")
    where: dict[str, int] = {}
    rows: dict[str, list[str]] = {}
    for i in range(total):
        for r in _read_summary_rows(of[i]):
            case = r[0]
            if case in where:
                raise InputError(f"case {case!r} is in shard {where[case]}/{total} and shard "
                                 f"{i}/{total}: the shards overlap (from two runs?)")
            where[case], rows[case] = i, r
    order = sorted(rows)
    for k, case in enumerate(order):
        if where[case] != k % total:
            raise InputError(f"case {case!r} (number {k} in case order) is in shard "
                             f"{where[case]}/{total}, but shard {k % total}/{total} runs it: "
                             "the summaries are of different cohorts, or a case is missing")
    target = check_summary_target(Path(target), overwrite)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(rows[c] for c in order)
    atomic_write_bytes(target, buf.getvalue().encode())
    counts = {s: sum(rows[c][1] == s for c in order) for s in STATUSES}
    return {"cases": len(order), "shards": total, **counts}


class CaseProgress:
    """Progress over a cohort's cases on ``stream`` (stderr): a ``tqdm`` bar on a terminal, one
    line per finished case otherwise (logs, job arrays). ``write`` prints a message without
    breaking the bar; ``enabled=False`` (``-q``) shows no progress but still writes."""

    def __init__(self, total: int, stream=None, enabled: bool = True, clock=time.monotonic):
        self.total, self.done = int(total), 0
        self.stream = sys.stderr if stream is None else stream
        self.enabled, self.clock = enabled, clock
        self.start = clock()
        self.bar = None
        if enabled and bool(getattr(self.stream, "isatty", lambda: False)()):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="case", file=self.stream, dynamic_ncols=True,
                            desc="cases", leave=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, result: CaseResult) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"{result.case}: {result.status}", refresh=False)
            self.bar.update(1)
            return
        from .progress import format_elapsed

        what = result.status
        if result.status == "ok":
            what += (f" · {result.lesion_count} lesion(s), {result.volume_ml:.2f} mL · "
                     f"{result.iterations} iterations")
        if result.seconds is not None:
            what += f" · {result.seconds:.1f} s"
        print(f"[{self.done}/{self.total}] {result.case}: {what} · "
              f"{format_elapsed(self.clock() - self.start)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

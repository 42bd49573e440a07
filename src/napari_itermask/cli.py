"""The ``itermask`` command line (contract: docs/architecture.md §2).

Every failure a user can cause ends with one readable line on stderr and a non-zero exit code,
never a traceback, and never a partial output file.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import InputError, ItermaskError, OutputError
from .names import nifti_stem as _nifti_stem
from .names import scan_stem, tagged_nifti
from .progress import Printer

EXIT_ERROR = 1
DEFAULT_MODEL = "flair"

#: File-name tokens that say which contrast a scan is, and the contrast each means. A token is
#: a run of letters and digits between ``_``, ``-``, ``.`` or spaces, compared case-insensitively.
CONTRAST_TOKENS = {"flair": "flair", "t1": "t1", "t1w": "t1", "t2": "t2", "t2w": "t2",
                   "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce"}
#: The bundled model for each contrast (a contrast missing here gets the default with a warning).
BUNDLED_FOR = {"flair": "flair", "t1": "t1", "t2": "t2", "t1ce": "t1ce"}
#: Trailing parts ``evaluate`` removes from a file's stem before pairing predictions with truth.
LABEL_SUFFIXES = ("_label", "_labels", "_lesions", "_seg", "_mask")

MODEL_HELP = (
    "bundled/user model name or folder. Default: chosen from each input's file name, by a "
    "token (between _ - . or spaces, any case) naming the contrast: flair -> flair; t1 or t1w "
    "-> t1; t2 or t2w -> t2; t1ce, t1c or t1gd -> t1ce; no or several contrast tokens -> "
    "flair. A warning is printed whenever the file name and the "
    "model's contrast differ")
EVALUATE_RULE = (
    "Folders are paired by stem: from each file name, .nii.gz or .nii is removed and then one "
    "trailing " + ", ".join(LABEL_SUFFIXES) + " (any case), so sample's scan_label.nii.gz pairs "
    "with segment's scan_lesions.nii.gz. Where a folder holds both scan.nii.gz and a labelled "
    "name such as scan_label.nii.gz, the labelled file is used. Error maps (*_error.nii*) are "
    "skipped. Unpaired files are listed on stderr; nothing paired is an error.")


def _out_name(inp: Path) -> str:
    return f"{scan_stem(inp.name)}_lesions.nii.gz"


def contrast_hints(path) -> set[str]:
    """The contrasts a scan's file name names (see CONTRAST_TOKENS); usually none or one."""
    name = Path(path).name
    stem = _nifti_stem(name) or name
    return {CONTRAST_TOKENS[t] for t in re.split(r"[^0-9a-z]+", stem.lower())
            if t in CONTRAST_TOKENS}


def choose_model(inp, explicit: str | None) -> tuple[str, str | None, str]:
    """(model spec, the file name's contrast or None, why this model) for one input.

    Users run ``segment`` on T1 or T2 scans without thinking of ``--model``; silently using the
    FLAIR model there gives confident nonsense, so the file name decides when nothing else does.
    """
    hints = contrast_hints(inp)
    hint = next(iter(hints)) if len(hints) == 1 else None
    if explicit:
        return explicit, hint, "--model"
    if hint in BUNDLED_FOR:
        return BUNDLED_FOR[hint], hint, f"the file name says {hint}"
    if len(hints) > 1:
        return DEFAULT_MODEL, None, ("the default; the file name names several contrasts ("
                                     + ", ".join(sorted(hints)) + ")")
    return DEFAULT_MODEL, hint, "the default"


def _load_model(spec: str, device: str, quiet: bool = False, why: str = "--model"):
    """Load a model and say on stderr which one it is: name, contrast, weights' sha256 prefix."""
    from .models import load_bundle, untrained_warning
    from .pipeline import pick_device

    dev = pick_device(device)
    bundle = load_bundle(spec, device=dev)
    print(f"model: {bundle.name} ({bundle.card.modality}, sha256 {bundle.sha256[:12]}…), {why}",
          file=sys.stderr)
    warning = untrained_warning(bundle.card)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    if dev.type == "cpu" and not quiet:
        print("note: running on CPU; a GPU is much faster (--device cuda|mps)", file=sys.stderr)
    return bundle


def _error_map_path(target: Path) -> Path:
    return tagged_nifti(target, "_error")


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, outermost first."""
    missing = []
    f = folder
    while not f.exists() and f != f.parent:
        missing.append(f)
        f = f.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    return missing[::-1]


def _remove_if_empty(created: list[Path]) -> None:
    """Undo ``_make_folder`` after a failure, folder by folder, only while they are empty."""
    for f in reversed(created):
        try:
            f.rmdir()
        except OSError:
            return


def run_params(args):
    """(RunParams, the sidecar or None) from ``--params`` and the flags given (which override
    the sidecar's values); validated before any work."""
    from .params import RunParams

    side = None
    params = RunParams()
    if args.params:
        params, side = RunParams.from_sidecar(args.params)
    given = {name: getattr(args, attr) for name, attr in (
        ("tau", "tau"), ("first_unmask", "first_unmask"), ("max_iter", "max_iter"),
        ("seed", "seed"), ("threshold", "threshold"), ("min_size", "min_size"),
        ("iteration", "iteration"), ("source", "result"), ("precision", "precision"))
        if getattr(args, attr) is not None}
    return (params.replace(**given) if given else params), side


def _replay_checks(side: dict, bundle, scan, args) -> None:
    """A replay must use the model weights (and brain mask) the sidecar's labels came from."""
    from .params import ParamsError

    want = side.get("model_sha256")
    if want and want != bundle.card.weights_sha256:
        raise ParamsError(f"{args.params} was made with model weights sha256 {want[:12]}…, "
                          f"not {bundle.card.weights_sha256[:12]}… ({bundle.name}); pass "
                          "--model with those weights")
    mask = side.get("brain_mask")
    if str(mask).startswith("automatic skull strip") and not args.skull_strip:
        raise ParamsError(f"{args.params} used the automatic skull strip; pass --skull-strip")
    if mask and not str(mask).startswith("automatic") and not args.brain_mask:
        raise ParamsError(f"{args.params} used a brain mask ({mask}); pass it with --brain-mask")
    if side.get("input_sha256") and scan.sha256 and side["input_sha256"] != scan.sha256:
        print(f"warning: {scan.path.name if scan.path else 'the input'} is not the file "
              f"{args.params} was made from (sha256 differs)", file=sys.stderr)
    if side.get("edited_by_user"):
        print(f"warning: the labels of {args.params} were edited by hand; the replay gives "
              "the result before the edits", file=sys.stderr)


def _precision_for(params, bundle, quiet: bool = False):
    """``params`` with the precision that will run: refused (one line) when the model has no
    calibration for the one asked for; bf16 without native bf16 runs fp32, said once here."""
    from .pipeline import runnable_precision

    used, notice = runnable_precision(params, bundle)
    if notice and not quiet:
        print(f"note: {notice}", file=sys.stderr)
    return params.replace(precision=used)


def _sidecar_model(side: dict) -> str:
    path = side.get("model_path")
    if path and Path(path).is_dir():
        return str(path)
    if not side.get("model"):
        from .params import ParamsError

        raise ParamsError("the sidecar names no model; pass --model")
    return str(side["model"])


def _is_cohort(args) -> bool:
    """Whether ``segment`` runs as a cohort (-o a folder, a summary CSV, bad scans skipped):
    any cohort flag, several inputs, or a glob. One plain input keeps the single-scan form."""
    if (args.folder or args.manifest or args.shard or args.summary or args.dask_scheduler
            or args.skip_existing or len(args.inputs) != 1):
        return True
    first = args.inputs[0]
    return not Path(first).exists() and glob.has_magic(first)


def cmd_segment(args) -> int:
    args.run_params, args.sidecar = run_params(args)  # bad values stop here, before any work
    if not (args.inputs or args.folder or args.manifest):
        raise InputError("nothing to segment: give INPUT scan(s), --folder DIR or "
                         "--manifest CSV")
    if _is_cohort(args):
        return _segment_cohort(args)
    inp, out = Path(args.inputs[0]), Path(args.output)
    if out.is_dir():
        raise OutputError(f"{out} is a folder; with one input -o names the label file")
    # validate everything before any work: input readable, target writable
    if not (inp.is_file() or inp.is_dir()):  # a folder: a DICOM series
        raise InputError(f"input {inp} does not exist" if not inp.exists()
                         else f"{inp} is not a file")
    # missing output folders are created (and removed again, if still empty, on a failure)
    created = _make_folder(out.parent if str(out.parent) else Path("."))
    try:
        return _segment_one(args, inp, out)
    except BaseException:
        _remove_if_empty(created)
        raise


def _segment_one(args, inp: Path, target: Path) -> int:
    from .cohort import segment_and_write
    from .export import check_target, sidecar_path
    from .pipeline import pick_device
    from .skullstrip import brain_for
    from .volume import UnstrippedWarning, load_brain_mask, load_scan

    check_target(target, args.overwrite)
    err_path = _error_map_path(target)
    if args.save_error_map and err_path.exists() and not args.overwrite:
        raise OutputError(f"{err_path} exists; pass --overwrite to replace it")
    pick_device(args.device)  # fail early on a device that is not there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = load_scan(inp, series=args.series)
    for w in caught:
        if not issubclass(w.category, UnstrippedWarning):  # refused or stripped just below
            print(f"warning: {w.message}", file=sys.stderr)
    mask = load_brain_mask(args.brain_mask, scan) if args.brain_mask else None
    if args.skull_strip and not args.quiet:
        print(f"{inp.name}: skull stripping (template registration) …", file=sys.stderr)
    mask, mask_source = brain_for(scan, mask, str(args.brain_mask) if args.brain_mask else None,
                                  skull_strip=args.skull_strip, name=inp.name)
    if args.sidecar is not None and not args.model:
        spec, why = _sidecar_model(args.sidecar), f"from {args.params}"
        hints = contrast_hints(inp)
        hint = next(iter(hints)) if len(hints) == 1 else None
    else:
        spec, hint, why = choose_model(inp, args.model)
    bundle = _load_model(spec, args.device, args.quiet, why)  # after the scan is known usable
    if hint and hint != bundle.card.modality:
        extra = "" if hint in BUNDLED_FOR else f"; no bundled model is for {hint} scans"
        print(f"warning: {inp.name} looks like a {hint} scan (file name) but model "
              f"{bundle.name!r} is for {bundle.card.modality} scans{extra}", file=sys.stderr)
    progress = None if args.quiet else Printer(
        inp.name, args.run_params.max_iter or bundle.card.max_iter)
    if args.sidecar is not None:
        _replay_checks(args.sidecar, bundle, scan, args)
    args.run_params = _precision_for(args.run_params, bundle, args.quiet)
    prov = segment_and_write(scan, bundle, target, args.run_params, brain_mask=mask,
                             brain_mask_source=mask_source,
                             batch_size=args.batch_size, save_error_map=args.save_error_map,
                             overwrite=args.overwrite, progress=progress)
    capped = prov["slices_capped"]
    msg = (f"{inp.name}: {prov['lesion_count']} lesion(s), {prov['lesion_volume_ml']:.2f} mL "
           f"({prov['result']}) -> {target}")
    if capped:
        msg += f" ({len(capped)} slice(s) hit the iteration cap of {prov['max_iter']})"
    print(msg)
    if args.verbose:
        print(f"  sidecar: {sidecar_path(target)}")
    return 0


# -- cohorts (the work itself: cohort.py) ------------------------------------------------------
def _segment_cohort(args) -> int:
    from . import cohort

    if args.sidecar is not None:
        raise InputError("--params replays one scan's result: give one input")
    if args.brain_mask:
        raise InputError("--brain-mask applies to a single input only (a manifest's "
                         "brain_mask column gives each case its own)")
    if args.batch_size < 1:
        raise InputError(f"batch size must be a whole number >= 1, not {args.batch_size}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is not a folder; with several inputs -o must name a folder")
    shard = cohort.parse_shard(args.shard) if args.shard else None
    cases = cohort.collect_cases(args.inputs, args.folder or (), args.manifest or ())
    mine = cohort.select_shard(cases, shard)
    summary = cohort.shard_summary_path(
        Path(args.summary) if args.summary else out / "summary.csv", shard)
    created = _make_folder(out)
    created += _make_folder(summary.parent if str(summary.parent) else Path("."))
    try:
        return _run_cohort(args, cases, mine, shard, out, summary)
    except BaseException:
        _remove_if_empty(created)
        raise


def _existing_outputs(cases, out: Path, args) -> list[Path]:
    from .cohort import case_targets

    found = []
    for case in cases:
        if case.skip:
            continue
        t = case_targets(case, out)
        if args.skip_existing and t["labels"].exists():
            continue
        names = ("labels", "sidecar", "table") + (("error",) if args.save_error_map else ())
        found += [t[n] for n in names if t[n].exists()]
    return found


def _run_cohort(args, cases, mine, shard, out: Path, summary: Path) -> int:
    from . import cohort
    from .atomic import temp_file_in
    from .volume import ScanWarning

    cohort.check_summary_target(summary, args.overwrite)
    temp_file_in(out, ".probe").unlink()  # the output folder takes files
    if not args.overwrite:
        clash = _existing_outputs(mine, out, args)
        if clash:
            raise OutputError(f"{clash[0]} exists ({len(clash)} output file(s) of these cases "
                              "do); pass --overwrite to replace them"
                              + ("" if args.skip_existing else
                                 ", or --skip-existing to leave the cases done alone"))
    if args.dask_scheduler:
        if args.model:
            from .models.locations import resolve_model

            resolve_model(args.model)  # a missing model fails here, not in every case
    else:
        from .pipeline import pick_device

        dev = pick_device(args.device)  # fail early on a device that is not there
        if args.model:
            cohort._bundle(args.model, dev)
        if dev.type == "cpu" and not args.quiet:
            print("note: running on CPU; a GPU is much faster (--device cuda|mps)",
                  file=sys.stderr)
    if shard is not None and not args.quiet:
        print(f"shard {shard[0]}/{shard[1]}: {len(mine)} of {len(cases)} case(s)",
              file=sys.stderr)
    options = cohort.CaseOptions(
        output=str(out), model=args.model, device=args.device, params=args.run_params,
        batch_size=args.batch_size, save_error_map=args.save_error_map,
        overwrite=args.overwrite, skip_existing=args.skip_existing, series=args.series,
        skull_strip=args.skull_strip)
    results: dict[str, cohort.CaseResult] = {}
    bar = cohort.CaseProgress(len(mine), enabled=not args.quiet)
    seen_models: set[str] = set()
    try:
        with warnings.catch_warnings():  # a scan's warnings come back in its result
            warnings.simplefilter("ignore", ScanWarning)
            runner = (cohort.run_dask(mine, options, args.dask_scheduler)
                      if args.dask_scheduler else cohort.run_serial(mine, options))
            for r in runner:
                results[r.case] = r
                if r.model and r.model not in seen_models:
                    seen_models.add(r.model)
                    bar.write(f"model: {r.model}, {r.model_why}")
                    if r.model_warning:
                        bar.write(f"WARNING: {r.model_warning}")
                for note in r.notes:
                    bar.write(f"{r.case}: {note}")
                if r.status == "failed":
                    bar.write(f"itermask: {r.case}: failed: {r.message}")
                elif r.status == "skipped" and not args.quiet:
                    bar.write(f"itermask: {r.case}: skipped: {r.message}")
                elif r.line:
                    print(r.line, flush=True)
                bar.update(r)
    except KeyboardInterrupt:
        bar.close()
        for c in mine:
            results.setdefault(c.name, cohort.CaseResult(c.name, "skipped", "not run: "
                                                         "interrupted", input=c.path))
        cohort.write_summary(summary, [results[c.name] for c in mine])
        raise
    finally:
        bar.close()
    ordered = [results[c.name] for c in mine]
    cohort.write_summary(summary, ordered)
    counts = {s: sum(r.status == s for r in ordered) for s in cohort.STATUSES}
    print(f"{len(ordered)} case(s): {counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['skipped']} skipped; summary -> {summary}")
    if counts["failed"]:
        raise ItermaskError(f"{counts['failed']} of {len(ordered)} case(s) failed (see "
                            f"{summary})")
    return 0


def cmd_merge_summaries(args) -> int:
    """One summary from the shard summaries of a job array (``segment --shard I/N``)."""
    from .cohort import find_shard_summaries, merge_shard_summaries

    target = Path(args.summary)
    counts = merge_shard_summaries(find_shard_summaries(target), target, args.overwrite)
    print(f"{counts['cases']} case(s) from {counts['shards']} shard(s): {counts['ok']} ok, "
          f"{counts['failed']} failed, {counts['skipped']} skipped -> {target}")
    return EXIT_ERROR if counts["failed"] else 0


def cmd_models(args) -> int:
    from .models import list_models, options_note

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no models found")
        return 0
    for m in models:
        if "problem" in m:
            print(f"{m['name']:<10} [{m['source']}] unusable: {m['problem']}")
            continue
        state = "trained" if m.get("trained") else "UNTRAINED placeholder"
        sided = options_note(m)
        sided = f", {sided}" if sided else ""
        print(f"{m['name']:<10} [{m['source']}] {m['modality']}, preset {m['preset']}, {state}; "
              f"tau={m['tau']:.4g}, threshold={m['threshold']:.4g} "
              f"({m['threshold_derivation'].get('method')}{sided})")
        print(f"{'':<10} {m['path']}")
        print(f"{'':<10} sha256 {m['weights_sha256'][:16]}…  {m['intended_use']}")
    return 0


def cmd_sample(args) -> int:
    from . import synth

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if args.one and args.stratum != "subtle":
        raise OutputError("--one applies to the subtle stratum only (the others have one lesion)")
    case = synth.make_case(args.modality, args.seed, stratum=args.stratum,
                           n_lesions=1 if args.one else None, voxel_size=args.voxel_size)
    stem = f"sample{args.seed}"
    targets = [out / f"{stem}_{args.modality}.nii.gz", out / f"{stem}_{args.modality}_label.nii.gz"]
    for t in targets:
        if t.exists() and not args.overwrite:
            raise OutputError(f"{t} exists; pass --overwrite to replace it")
    img, lab = synth.write_case(case, out, stem)
    print(f"image: {img}\nlabel: {lab}")
    return 0


def pairing_stem(name: str) -> tuple[str, bool] | None:
    """(stem, whether a label suffix was removed) by EVALUATE_RULE; None for a non-NIfTI name."""
    stem = _nifti_stem(name)
    if stem is None:
        return None
    for suffix in LABEL_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], True
    return stem, False


def _by_stem(folder: Path, role: str) -> dict[str, Path]:
    """The folder's NIfTI files keyed by pairing stem; a labelled name wins over a bare one."""
    found: dict[str, list[tuple[bool, Path]]] = {}
    for f in sorted(folder.iterdir()):
        key = pairing_stem(f.name) if f.is_file() else None
        if key is None or (_nifti_stem(f.name) or "").lower().endswith("_error"):
            continue
        found.setdefault(key[0], []).append((key[1], f))
    out = {}
    for stem, files in found.items():
        labelled = [f for is_label, f in files if is_label] or [f for _, f in files]
        if len(labelled) > 1:
            names = ", ".join(f.name for f in labelled)
            raise InputError(f"{role} folder {folder} has several files for {stem!r} ({names})")
        out[stem] = labelled[0]
    return out


def pair_by_stem(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path]]:
    """Prediction/ground-truth pairs of two folders by EVALUATE_RULE; unpaired ones on stderr.

    ``sample`` names truth ``*_label`` and ``segment`` names results ``*_lesions``, so pairing
    by the full name (as before) found nothing for the two commands' own outputs.
    """
    preds, gts = _by_stem(pred_dir, "prediction"), _by_stem(gt_dir, "ground-truth")
    common = sorted(set(preds) & set(gts))
    if not common:
        raise InputError(f"no prediction in {pred_dir} ({len(preds)} found) pairs with a ground "
                         f"truth in {gt_dir} ({len(gts)} found) by file stem (rule: itermask "
                         "evaluate --help)")
    for stem in sorted(set(preds) - set(gts)):
        print(f"itermask: note: no ground truth for {preds[stem].name}", file=sys.stderr)
    for stem in sorted(set(gts) - set(preds)):
        print(f"itermask: note: no prediction for {gts[stem].name}", file=sys.stderr)
    return [(preds[s], gts[s]) for s in common]


def cmd_evaluate(args) -> int:
    from .core.metrics import dice, precision, sensitivity
    from .volume import _read_nifti

    def pairs():
        p, g = Path(args.pred), Path(args.gt)
        if p.is_dir() and g.is_dir():
            return pair_by_stem(p, g)
        if p.is_dir() or g.is_dir():
            raise InputError("--pred and --gt must both be files or both be folders")
        return [(p, g)]

    rows = []
    for pf, gf in pairs():
        _, pr = _read_nifti(pf, "prediction")
        _, gr = _read_nifti(gf, "ground truth")
        if pr.shape != gr.shape:
            raise InputError(f"{pf.name}: shape {pr.shape} differs from ground truth {gr.shape}")
        pm, gm = (pr > 0), (gr > 0)
        rows.append((pf.name, dice(pm, gm), sensitivity(pm, gm), precision(pm, gm)))
    if not rows:
        raise InputError("no prediction files found")
    import numpy as np

    print(f"{'case':<40} {'dice':>6} {'sens':>6} {'prec':>6}")
    for name, d, s, p in rows:
        print(f"{name:<40} {d:6.3f} {s:6.3f} {p:6.3f}")
    arr = np.array([r[1:] for r in rows], float)
    means = np.nanmean(arr, axis=0)
    label = f"mean ({len(rows)} cases)"
    print(f"{label:<40} {means[0]:6.3f} {means[1]:6.3f} {means[2]:6.3f}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(headless=args.headless, modality=args.modality, seed=args.seed,
                    stratum=args.stratum, model=args.model, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="itermask",
        description="IterMask² unsupervised brain-lesion segmentation (Liang et al., MICCAI 2024).",
    )
    p.add_argument("--version", action="version", version=f"napari-itermask {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("segment", help="segment lesions in one or more NIfTI scans")
    s.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="skull-stripped NIfTI scan(s) (or heads, with --skull-strip), or DICOM "
                        "series (folder or .zip), or a "
                        "quoted glob such as 'scans/*.nii.gz' (expanded here)")
    s.add_argument("-o", "--output", required=True,
                   help="label file for one input; a folder for a cohort (several inputs, a "
                        "glob, --folder or --manifest). Missing folders are created")
    s.add_argument("--model", default=None, help=MODEL_HELP)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--brain-mask", metavar="FILE", help="brain mask NIfTI on the scan's grid")
    s.add_argument("--skull-strip", action="store_true",
                   help="strip the skull here (the bundled MNI152 head template registered to "
                        "the scan, offline, any contrast); needed for a scan with skull unless "
                        "--brain-mask is given")
    s.add_argument("--series", metavar="INDEX_or_UID",
                   help="for a DICOM folder or zip holding several series: which one")
    s.add_argument("--threshold", type=float,
                   help="segmentation threshold on the error map (default: the card's)")
    s.add_argument("--tau", type=float,
                   help="unmasking threshold τ: mask pixels whose squared reconstruction error "
                        "is below it are declared normal (default: the card's)")
    s.add_argument("--first-unmask", type=float, metavar="SHARE",
                   help="share of the brain (0 to <1) the first step declares normal "
                        "(default: the card's)")
    s.add_argument("--max-iter", type=int, help="iteration cap (default: the card's)")
    s.add_argument("--iteration", type=int, metavar="K",
                   help="take the result of iteration K (default: the last, as in the paper)")
    s.add_argument("--result", choices=["error", "mask"], default=None,
                   help="lesions from the iteration's reconstruction error above the threshold "
                        "(error, the default) or its remaining mask (mask)")
    s.add_argument("--min-size", type=int, default=None,
                   help="drop lesions under N voxels (default 0)")
    s.add_argument("--seed", type=int, default=None,
                   help="noise seed (default 0; results are deterministic)")
    s.add_argument("--params", metavar="SIDECAR.json",
                   help="replay the result a sidecar records (its model, run, iteration, "
                        "source, threshold, minimum size); flags given override its values")
    s.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    s.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="arithmetic of the networks (default fp32); bf16 needs a model "
                        "calibrated in bf16 (its card's calibrations) and runs fp32 on CPUs "
                        "without native bf16")
    s.add_argument("--save-error-map", action="store_true", help="also write the error map")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    s.add_argument("-v", "--verbose", action="store_true")
    c = s.add_argument_group(
        "cohorts", "Many scans: each case writes <OUT>/<case>_lesions.nii.gz (+ .json, .csv); a "
        "bad scan is reported and skipped, the others go on; a summary CSV lists every case "
        "(case, status ok/failed/skipped, message, lesion_count, volume_ml, iterations, "
        "seconds, input, labels); the exit code is 1 if any case failed. Cases run in the "
        "order of their names")
    c.add_argument("--folder", action="append", metavar="DIR",
                   help="every NIfTI file, DICOM zip and DICOM series folder directly in DIR "
                        "is a case (names ending in _label, _lesions, _seg, _mask or _error "
                        "are listed as skipped); a folder given as INPUT is one DICOM series")
    c.add_argument("--manifest", action="append", metavar="CSV",
                   help="a CSV with a path column (relative to the CSV's folder) and optional "
                        "case (names the outputs), brain_mask and model columns (a row's model "
                        "wins over --model)")
    c.add_argument("--summary", metavar="CSV",
                   help="the summary CSV (default: OUT/summary.csv); never replaced without "
                        "--overwrite")
    c.add_argument("--skip-existing", action="store_true",
                   help="cases whose labels exist are not run again (status skipped, figures "
                        "from their sidecar): resume an interrupted cohort")
    c.add_argument("--shard", metavar="I/N",
                   help="run only shard I of N (0 <= I < N), for scheduler job arrays: case k "
                        "of the name-sorted cohort goes to shard k mod N; the summary becomes "
                        "summary.shard-I-of-N.csv")
    c.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="run the cases on an existing dask.distributed cluster (e.g. "
                        "tcp://host:8786; pip install 'napari-itermask[distributed]'); its "
                        "workers must see the same paths")
    s.set_defaults(func=cmd_segment)

    ms = sub.add_parser("merge-summaries",
                        help="merge the shard summaries of a job array (segment --shard I/N)")
    ms.add_argument("summary", help="the merged summary to write, e.g. OUT/summary.csv; its "
                                    "shards OUT/summary.shard-I-of-N.csv are read from beside it")
    ms.add_argument("--overwrite", action="store_true", help="replace an existing summary")
    ms.set_defaults(func=cmd_merge_summaries)

    m = sub.add_parser("models", help="list bundled and user models with their cards")
    m.add_argument("--json", action="store_true", help="print the cards as JSON")
    m.set_defaults(func=cmd_models)

    sa = sub.add_parser("sample", help="write a synthetic scan with a lesion and its ground truth")
    sa.add_argument("--modality", default="flair", choices=["flair", "t1", "t2", "t1ce"])
    sa.add_argument("--stratum", default="glioma", choices=["glioma", "stroke", "subtle"],
                    help="lesion distribution (docs/benchmark.md): glioma = the paper's "
                         "BraTS-like case (default), stroke = ATLAS-like infarcts, subtle = "
                         "small faint lesions")
    sa.add_argument("-o", "--output", required=True, help="folder to write into")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--voxel-size", type=float, default=1.5, help="isotropic voxel size (mm)")
    sa.add_argument("--one", action="store_true", help="exactly one lesion (subtle stratum)")
    sa.add_argument("--overwrite", action="store_true")
    sa.set_defaults(func=cmd_sample)

    e = sub.add_parser("evaluate", help="Dice, sensitivity, precision of predictions vs truth",
                       epilog=EVALUATE_RULE)
    e.add_argument("--pred", required=True, help="prediction file or folder")
    e.add_argument("--gt", required=True,
                   help="ground-truth file or folder (paired by stem, see below)")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="open napari with a sample and the widget")
    d.add_argument("--headless", action="store_true",
                   help="no window: segment a sample and print Dice against its ground truth")
    d.add_argument("--modality", default="flair", choices=["flair", "t1", "t2", "t1ce"])
    d.add_argument("--stratum", default="glioma", choices=["glioma", "stroke", "subtle"],
                   help="lesion distribution of the sample (default: glioma, the paper's case)")
    d.add_argument("--seed", type=int, default=None,
                   help="sample seed (default: the stratum's napari sample, the same case as "
                        "File > Open Sample)")
    d.add_argument("--model", default=None, help="model (default: the modality's bundled one)")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import allocator

    allocator.tune()  # before the first tensor: large activations stay on the heap
    try:
        return int(args.func(args) or 0)
    except ItermaskError as exc:
        print(f"itermask: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("itermask: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        from .oom import OutOfMemory  # (imports torch: only on this path)

        if isinstance(exc, OutOfMemory):  # already retried down to one slice per pass
            print(f"itermask: error: {exc}", file=sys.stderr)
        else:
            print("itermask: error: out of memory (try --batch-size 4)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

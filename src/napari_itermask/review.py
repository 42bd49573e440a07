"""The clinician's review of one image's run, without Qt: its state, its result, Accept, Export.

``ReviewState`` holds what the user chose for one image: the iteration (None: follow the last),
where the lesions come from (``"error"``: that iteration's reconstruction error above the
threshold, the paper's segmentation at the last iteration; ``"mask"``: the mask left after
that iteration), the threshold, the minimum lesion size and the τ for the next "continue". Each
``_session.Session`` owns one, seeded from the model card, so switching images never carries one
image's choices over to another; the widget's controls only display and edit it.

The functions below take such a session (anything with ``job``, ``review``, ``errors``,
``lock`` and ``accepted``) and give what the review shows, accepts and exports, always through
``pipeline.Job.result_params`` and ``Job.result``, the code ``itermask segment --params`` runs,
so an exported sidecar replays to the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .params import ParamsError, RunParams

__all__ = ["ReviewState", "Accepted", "chosen_iteration", "result_params", "error_map",
           "lesions", "maps_at", "accept", "provenance", "export", "cache_key", "remember_error",
           "ERROR_CACHE"]

#: Error maps (scan grid) a session keeps at most: the last iteration's plus the reviewed ones.
ERROR_CACHE = 3


@dataclass
class ReviewState:
    threshold: float  # on the chosen iteration's squared-error map (normalised intensity²)
    min_size: int = 0  # voxels of the scan's grid
    iteration: int | None = None  # history entry (0: the brain); None: follow the last
    source: str = "error"  # "error" or "mask"
    next_tau: float | None = None  # τ for "continue with higher τ"

    def __post_init__(self):
        # one validation for every value a user can give (messages from RunParams)
        RunParams(threshold=self.threshold, min_size=self.min_size, source=self.source,
                  tau=self.next_tau)
        self.threshold = float(self.threshold)
        self.min_size = int(self.min_size)

    @classmethod
    def from_card(cls, card, params: RunParams | None = None) -> "ReviewState":
        """The card's calibrated threshold and τ (``params`` may give others, and the minimum
        size), following the last iteration, lesions from the error map."""
        p = (params or RunParams()).resolve(card)
        return cls(threshold=p.threshold, min_size=p.min_size, next_tau=p.tau)

    def update(self, **changes) -> None:
        """Change some values, all validated before any is taken."""
        unknown = set(changes) - {"threshold", "min_size", "iteration", "source", "next_tau"}
        if unknown:
            raise TypeError(f"not review values: {', '.join(sorted(unknown))}")
        new = ReviewState(**{**self.__dict__, **changes})
        self.__dict__.update(new.__dict__)

    def restore_defaults(self, card) -> None:
        """The card's threshold and τ, no minimum size, the last iteration's error map."""
        self.update(threshold=float(card.threshold), min_size=0, iteration=None,
                    source="error", next_tau=float(card.tau))


@dataclass
class Accepted:
    """What Accept froze: the labels (scan grid) and exactly what produced them."""

    labels: np.ndarray
    params: RunParams


def chosen_iteration(session) -> int:
    """The history entry the result comes from (the last one unless the user chose)."""
    last = session.job.iterations
    k = session.review.iteration
    return last if k is None else min(int(k), last)


def result_params(session) -> RunParams:
    """The full record of the result the review now shows (raises ParamsError if the choice
    makes no result, e.g. the error map of iteration 0)."""
    rv = session.review
    return session.job.result_params(iteration=chosen_iteration(session), source=rv.source,
                                     threshold=rv.threshold, min_size=rv.min_size)


def error_map(session, k: int) -> np.ndarray:
    """Iteration k's error map on the scan's grid, cached per session (an earlier iteration's
    costs one network pass per slice; see ``Job.reconstruction_at``)."""
    job = session.job
    key = cache_key(job, k)
    with session.lock:
        err = session.errors.get(key)
    if err is None:
        err = job.error_on_scan(k=int(k))
        remember_error(session, key, err)
    return err


def maps_at(session, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(error map, reconstruction) of iteration k on the scan's grid, for display; the error
    map is kept for the review, so a result at k needs no second network pass."""
    error, recon = session.job.maps_on_scan(int(k))
    remember_error(session, cache_key(session.job, k), error)
    return error, recon


def remember_error(session, key: tuple[int, bool], error: np.ndarray) -> None:
    """Cache one error map in the session, dropping the oldest beyond ERROR_CACHE."""
    with session.lock:
        cache = session.errors
        cache.pop(key, None)
        while len(cache) >= ERROR_CACHE:
            cache.pop(next(iter(cache)))
        cache[key] = error


def cache_key(job, k: int) -> tuple[int, bool]:
    """Iteration k, and whether it is the last: the last one's map is the loop's own, an
    earlier one's is recomputed, so a map cached as the last is stale once the history grows."""
    return int(k), int(k) == job.iterations


def lesions(session) -> tuple[np.ndarray, RunParams]:
    """(uint8 labels on the scan's grid, their RunParams) for the review's current choice."""
    params = result_params(session)
    err = error_map(session, params.iteration) if params.source == "error" else None
    return session.job.result(params, error_scan=err), params


def accept(session) -> Accepted:
    """Freeze the current result; Export writes it (or the user's edit of it) from now on."""
    labels, params = lesions(session)
    session.accepted = Accepted(labels.copy(), params)
    return session.accepted


def provenance(session, params: RunParams, labels: np.ndarray, edited: bool = False) -> dict:
    from .pipeline import provenance as job_provenance

    prov = job_provenance(session.job, params, labels)
    name = getattr(session.source, "name", None)
    if name is not None:
        prov["source_layer"] = str(name)
    prov["edited_by_user"] = bool(edited)
    return prov


def export(session, path, labels: np.ndarray | None = None, overwrite: bool = False
           ) -> list[Path]:
    """Write labels (scan grid; default: the accepted ones, else the current result) as NIfTI
    with the scan's affine, a sidecar recording what produced them (with a summary of the
    lesion table) and the per-lesion table as CSV beside them. Labels that differ from
    what the recorded parameters give are marked ``edited_by_user`` (a replay gives the
    unedited result)."""
    from .export import write_labels
    from .lesion_table import check_table_target, lesion_table, summary, to_csv

    if session.accepted is not None:
        produced, params = session.accepted.labels, session.accepted.params
    else:
        produced, params = lesions(session)
    labels = produced if labels is None else np.asarray(labels)
    if labels.shape != produced.shape:
        raise ParamsError(f"labels of shape {labels.shape} do not fit the scan "
                          f"{produced.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ParamsError("labels must lie in 0..255 to export as uint8")
    edited = not np.array_equal(labels > 0, produced > 0) or bool((labels > 1).any())
    prov = provenance(session, params, labels, edited)
    scan = session.job.scan
    table = lesion_table(labels, scan.affine, scan.data)
    table_file = check_table_target(path, overwrite)
    prov["lesion_table"] = summary(table, table_file.name)
    # labels, sidecar and table together: a full disk leaves all three as they were
    return write_labels(path, labels.astype(np.uint8), scan.affine, scan.header, prov,
                        overwrite=overwrite, extra={table_file: to_csv(table).encode()})


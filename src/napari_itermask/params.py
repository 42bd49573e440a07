"""What produces a segmentation, as one validated object: ``RunParams`` from card to sidecar.

One ``RunParams`` travels from the user (CLI flags, the widget's review state, a sidecar) to the
engine (``EngineConfig.from_card(card, params)``), into the sidecar (``to_dict``) and back
(``from_sidecar``) for a replay. Values left ``None`` are the model card's (``resolve`` fills
them in). Every value is checked here, once; a bad one raises ``ParamsError`` with one line
meant for people.

The run: τ, the first step's unmasked share, the iteration cap, the noise seed, the "continue
with higher τ" steps (``continued``: after which iteration, with which τ) and how many
iterations ran (``run_until``; None: until every slice stopped). The result taken from it:
the chosen ``iteration`` (None: the last), the ``source`` (``"error"``: that iteration's
reconstruction error above ``threshold``, the paper's segmentation when taken at the last
iteration; ``"mask"``: the mask left after that iteration) and the minimum lesion size in
voxels of the scan's grid.

The arithmetic: ``precision`` (``core.precision``; None: fp32, whatever the card prefers) — τ
and the threshold the card gives are the ones calibrated in that precision
(``ModelCard.calibration``), and a sidecar records the precision that ran.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .core.precision import PRECISIONS
from .errors import ItermaskError

__all__ = ["ParamsError", "RunParams", "SOURCES"]

#: Where the lesions of a result come from: the chosen iteration's error map (thresholded) or
#: its mask.
SOURCES = ("error", "mask")


class ParamsError(ItermaskError, ValueError):
    """A run or review parameter is out of range, or a sidecar cannot be replayed."""


def _float(name, value, *, low=None, below=None, optional=True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{name} must be a number, not {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ParamsError(f"{name} must be a finite number, not {value!r}")
    if low is not None and v < low:
        raise ParamsError(f"{name} must be >= {low:g}, not {v:g}")
    if below is not None and v >= below:
        raise ParamsError(f"{name} must be below {below:g}, not {v:g}")
    return v


def _int(name, value, *, low=0, optional=True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ParamsError(f"{name} must be a whole number, not {value!r}")
    v = int(value)
    if v < low:
        raise ParamsError(f"{name} must be >= {low}, not {v}")
    return v


@dataclass(frozen=True)
class RunParams:
    tau: float | None = None  # unmasking threshold τ on the squared error (normalised units²)
    first_unmask: float | None = None  # share of the brain the first step declares normal
    max_iter: int | None = None  # iteration cap per slice (per run segment)
    seed: int = 0  # noise seed: the same seed gives the same result
    continued: tuple[tuple[int, float], ...] = ()  # (after iteration, τ) per "continue"
    run_until: int | None = None  # iterations run in all; None = until convergence
    iteration: int | None = None  # the result's iteration; None = the last
    source: str = "error"  # "error" (thresholded error map) or "mask"
    threshold: float | None = None  # segmentation threshold on the error map (source error)
    min_size: int = 0  # lesions under this many voxels (scan grid) are dropped
    precision: str | None = None  # "fp32" or "bf16"; None = fp32

    def __post_init__(self):
        put = object.__setattr__
        put(self, "tau", _float("τ (tau)", self.tau, low=0.0))
        put(self, "first_unmask", _float("first_unmask", self.first_unmask, low=0.0, below=1.0))
        put(self, "max_iter", _int("max_iter", self.max_iter, low=1))
        put(self, "seed", _int("seed", self.seed, low=0, optional=False))
        put(self, "run_until", _int("run_until", self.run_until, low=1))
        put(self, "iteration", _int("iteration", self.iteration, low=0))
        put(self, "threshold", _float("threshold", self.threshold, low=0.0))
        put(self, "min_size", _int("minimum lesion size", self.min_size, low=0, optional=False))
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ParamsError(f"precision must be one of {', '.join(PRECISIONS)}, not "
                              f"{self.precision!r}")
        if self.source not in SOURCES:
            raise ParamsError(f"result source must be one of {', '.join(SOURCES)}, "
                              f"not {self.source!r}")
        steps = []
        try:
            pairs = [tuple(p) for p in self.continued]
        except TypeError:
            raise ParamsError(f"continued must be (iteration, τ) pairs, not "
                              f"{self.continued!r}") from None
        for pair in pairs:
            if len(pair) != 2:
                raise ParamsError(f"continued must be (iteration, τ) pairs, not {pair!r}")
            steps.append((_int("continued iteration", pair[0], low=1, optional=False),
                          _float("continued τ", pair[1], low=0.0, optional=False)))
        put(self, "continued", tuple(steps))
        after = [a for a, _ in steps]
        if after != sorted(after):
            raise ParamsError("continued steps must follow one another in iteration order")
        taus = ([self.tau] if self.tau is not None else []) + [t for _, t in steps]
        if any(b <= a for a, b in zip(taus, taus[1:])):
            raise ParamsError("each 'continue' must raise τ above the one in force before")
        if self.run_until is not None and steps and self.run_until < steps[-1][0]:
            raise ParamsError(f"run_until {self.run_until} ends before the last continue "
                              f"(after iteration {steps[-1][0]})")
        if (self.iteration is not None and self.run_until is not None
                and self.iteration > self.run_until):
            raise ParamsError(f"iteration {self.iteration} is beyond the {self.run_until} "
                              "iterations run")
        if (self.iteration is not None and self.max_iter is not None and not steps
                and self.iteration > self.max_iter):
            raise ParamsError(f"iteration {self.iteration} is beyond the iteration cap of "
                              f"{self.max_iter}")
        if self.source == "error" and self.iteration == 0:
            raise ParamsError("iteration 0 is the brain before any reconstruction: it has no "
                              "error map (choose iteration 1 or later, or the mask)")

    # -- building ------------------------------------------------------------------------
    def replace(self, **changes) -> "RunParams":
        """A copy with ``changes`` (validated like any RunParams)."""
        return dataclasses.replace(self, **changes)

    def resolve(self, card) -> "RunParams":
        """These parameters with every None the card decides filled in from ``card``; τ and
        the threshold from the card's calibration in the run's precision (a precision the card
        has no calibration for is refused: ``ParamsError``)."""
        precision = self.precision or "fp32"
        cal = {"tau": card.tau, "threshold": card.threshold}
        if precision != "fp32":
            from .errors import ModelError

            try:
                cal = card.calibration(precision)
            except ModelError as exc:
                raise ParamsError(str(exc)) from None

        def pick(name):
            value = getattr(self, name)
            return cal[name] if name in cal and value is None else (
                getattr(card, name) if value is None else value)

        return self.replace(tau=pick("tau"), first_unmask=pick("first_unmask"),
                            max_iter=pick("max_iter"), threshold=pick("threshold"),
                            precision=precision)

    @property
    def tau_in_force(self) -> float | None:
        """τ of the latest iterations (the last continue's, else the starting one)."""
        return self.continued[-1][1] if self.continued else self.tau

    # -- to and from sidecars ------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["continued"] = [[int(a), float(t)] for a, t in self.continued]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunParams":
        if not isinstance(d, dict):
            raise ParamsError(f"run parameters must be a JSON object, not {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ParamsError(f"unknown run parameter(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_sidecar(cls, path) -> tuple["RunParams", dict]:
        """(parameters, the whole sidecar) of a JSON sidecar written by segment or Export."""
        path = Path(path)
        try:
            side = json.loads(path.read_text())
        except FileNotFoundError:
            raise ParamsError(f"sidecar {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ParamsError(f"cannot read sidecar {path}: {exc}") from None
        if not isinstance(side, dict) or "params" not in side:
            raise ParamsError(f"{path} is not a napari-itermask sidecar with run parameters "
                              "(no \"params\")")
        return cls.from_dict(side["params"]), side

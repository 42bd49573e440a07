"""Synthetic skull-stripped brain MRIs with exact lesion ground truth (a package of four parts).

- ``templates``: healthy template anatomies (tissue fractions on their own grids);
- ``anatomy``: a template deformed at random into one case's anatomy;
- ``contrast``: per-case tissue means and the normal-tissue signal of each contrast;
- lesion strata (``lesions`` = ``subtle``, the original generator), painted into that signal;
- ``acquisition``: skull-strip leftovers, blur, bias field, Rician noise;
- ``case``: ``make_case`` composes them; the label definition lives there.

The strata are fixed, documented distributions (``docs/benchmark.md``); a golden test
(``tests/test_synth_golden.py``) keeps fixed calls bit-identical across refactors.
"""

from __future__ import annotations

from .acquisition import leftover_rim
from .case import (
    KINDS,
    MODALITIES,
    STRATA,
    SynthCase,
    make_case,
    make_healthy,
    to_nifti,
    write_case,
)
from .templates import ANATOMIES, template_dir

__all__ = [
    "ANATOMIES",
    "KINDS",
    "MODALITIES",
    "STRATA",
    "SynthCase",
    "template_dir",
    "make_case",
    "make_healthy",
    "leftover_rim",
    "to_nifti",
    "write_case",
]

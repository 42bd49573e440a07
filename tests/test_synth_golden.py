"""Golden hashes of fixed synthetic cases: no refactor of ``synth`` may silently change a data set.

The hashes were computed from the single-module generator before it became a package; every data
set, model and figure in this repository was built from these arrays.  A change that alters them
on purpose must say so in its commit and update the hash here (and re-derive what depends on it).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from napari_itermask import synth

GOLDEN = [
    (("flair", 900000), dict(voxel_size=3.0),
     "984fcf8e1a91d92ac254f77a9b9d89235f40e3a06ef0f073fd3baa5728b38085"),
    (("t1", 5), dict(voxel_size=4.0, kind="stroke", n_lesions=2),
     "b7c3993df19985991e0f3ccfa0123d466556528f06a56e4d3e4a0ffffae749b8"),
    (("t2", 7), dict(voxel_size=3.0, leftover=True, kind="tumour"),
     "963e1cd7904194b23fdf6f103be12f1cebb66c2951d1bb16546b96dffc751ba8"),
    (("flair", 1), dict(voxel_size=4.0, n_lesions=0),
     "d735e53f119f28454ee50ef3420c99a1ec82fa4e01b15885170d3aebcf342e70"),
    (("flair", 200100), dict(voxel_size=1.5),
     "d72f927f420ae1479e99f82879fde767b681ea7c75963a826563fda9bcb906b4"),
]


def array_hash(case) -> str:
    h = hashlib.sha256()
    for a in (case.image, case.label, case.brain, case.affine):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("args,kw,expected", GOLDEN, ids=[f"{a[0]}-{a[1]}" for a, _, _ in GOLDEN])
def test_subtle_stratum_is_bit_identical(args, kw, expected):
    case = synth.make_case(*args, **kw)
    assert array_hash(case) == expected
    # the default stratum is today's generator, and naming it changes nothing
    named = synth.make_case(*args, stratum="subtle", anatomy="icbm152", **kw)
    assert array_hash(named) == expected
    assert json.dumps(named.lesions, sort_keys=True) == json.dumps(case.lesions, sort_keys=True)


def test_hash_sees_a_one_voxel_change():
    case = synth.make_case("flair", 1, voxel_size=4.0, n_lesions=0)
    before = array_hash(case)
    i = tuple(np.argwhere(case.brain)[0])
    case.image[i] += 1e-3
    assert array_hash(case) != before

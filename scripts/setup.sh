#!/usr/bin/env bash
# Set up napari-itermask on a fresh Debian/Ubuntu machine with Python 3.11:
# system libraries for Qt/napari under Xvfb, then a virtual environment in .venv with the
# package (editable) and its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_PKGS="xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libopengl0 libglib2.0-0
 libfontconfig1 libfreetype6 fonts-dejavu-core libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0
 libx11-6 libx11-xcb1 libxcb1 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0
 libxcb-keysyms1 libxcb-randr0 libxcb-render0 libxcb-render-util0 libxcb-shape0 libxcb-shm0
 libxcb-sync1 libxcb-util1 libxcb-xfixes0 libxcb-xkb1"
missing=$(dpkg-query -W -f='${Status} ${Package}\n' $APT_PKGS 2>/dev/null | grep -v "^install ok installed" | wc -l || true)
if [ "$missing" != "0" ] || ! command -v xvfb-run >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $APT_PKGS >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned here (a CPU wheel of this release may be on disk; unpinned, pip picks a
# multi-GB CUDA build). The package itself only asks for torch>=2.1.
.venv/bin/python -m pip install -q torch==2.13.0 "napari[pyqt6]==0.9.2" PyQt6==6.11.0 \
  PyQt6-Qt6==6.11.2 setuptools wheel -e ".[testing]"
echo "napari-itermask is installed in $(pwd)/.venv"

#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up (idempotent), check the wheel's napari manifest,
# then every test under Xvfb (napari and the widget need a display; none is shown).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/check_wheel.sh
# The benchmark's real healthy anatomies (pinned, checksummed; training/data.py). Tests that need
# them skip, saying so, when they cannot be fetched; nothing else depends on them.
PYTHONPATH=src:. .venv/bin/python -m training.data fetch \
  || echo "warning: the real anatomies could not be fetched; their tests will be skipped" >&2
export QT_QPA_PLATFORM=xcb QT_API=pyqt6 MPLBACKEND=Agg
xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python -m pytest "$@"

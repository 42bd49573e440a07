"""Write UNTRAINED placeholder bundles for modalities that have no trained model yet.

An untrained network outputs zeros, so its "reconstruction error" is just the squared
normalised intensity: the segmentations mean nothing. The cards say so (trained: false) and the
CLI and widget warn loudly. Run from the repository root:
    python scripts/make_placeholder_models.py t1 t2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_itermask.models import ModelBundle, bundled_dir, new_card, save_bundle  # noqa: E402

for modality in sys.argv[1:] or ["flair", "t1", "t2"]:
    card = new_card(modality, modality, "tiny")
    card.intended_use = ("UNTRAINED PLACEHOLDER: outputs nothing meaningful. " + card.intended_use)
    folder = bundled_dir() / modality
    save_bundle(ModelBundle.fresh(card), folder, overwrite=True)
    print(f"wrote placeholder {folder}")

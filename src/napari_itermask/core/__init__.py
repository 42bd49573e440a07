"""The IterMask² core: torch and numpy only. Nothing here imports Qt or napari."""

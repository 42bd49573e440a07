"""Training recipes for napari-itermask: prepare → train → calibrate → evaluate.

Run each step as ``python -m training.<step> --help`` from the repository root.
"""

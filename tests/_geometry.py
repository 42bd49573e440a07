"""Geometry helpers shared by the volume and DICOM tests."""

import numpy as np


def rotation(angles) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, y, z in turn."""
    out = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out

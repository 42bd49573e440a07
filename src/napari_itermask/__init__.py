"""napari-itermask: IterMask² unsupervised brain-lesion segmentation for napari and the command line.

Method: Liang, Guo, Noble, Kamnitsas, "IterMask²: Iterative Unsupervised Anomaly Segmentation via
Spatial and Frequency Masking for Brain Lesions in MRI", MICCAI 2024.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Which deviations from the reconstruction count as error: the card's ``error_polarity``.

``both``: the paper's squared error, either sign; ``bright``: only where the scan is brighter
than its reconstruction (hyper-intense lesions, FLAIR/T2); ``dark``: only where it is darker
(hypo-intense lesions, T1). The arithmetic is ``core.segmentation.squared_error``; this module
holds only the names, so that reading a model card needs neither NumPy nor torch.
"""

POLARITIES = ("both", "bright", "dark")

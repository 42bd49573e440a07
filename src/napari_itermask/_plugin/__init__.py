"""napari glue for IterMask²: the dock widget as a controller over panels and a layer presenter.

``controller.IterMaskWidget`` is the widget napari builds (napari.yaml); ``runner`` runs its
workers, ``actions`` does Accept and Export; ``inputs``, ``run_controls`` and ``review_panel``
are its panels, ``presenter`` draws its layers, ``common`` holds the small Qt pieces they share.
The state they show lives in the Qt-free ``_session`` and ``review`` modules.
"""

from .controller import TITLE, IterMaskWidget

__all__ = ["IterMaskWidget", "TITLE"]

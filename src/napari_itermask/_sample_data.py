"""File ▸ Open Sample: synthetic skull-stripped FLAIR, T1, T2 and T1CE brains with lesions.

The samples are of the ``glioma`` stratum, the paper's BraTS-like case (docs/benchmark.md);
``sample_flair_subtle`` is the small, faint lesions of the ``subtle`` stratum.  Each sample is
an Image layer (placed and described exactly like a scan opened by the reader) and its
ground-truth Labels layer, both from ``synth.make_case``; the ground truth opens as a green
outline with the image selected, so neither hides nor invites painting over the lesion. The seed is fixed per stratum, so the
same sample comes back every time (the command line's ``itermask demo`` uses the same one).
"""

from __future__ import annotations

from ._layers import derived_kwargs, image_layer_data, to_layer_shape

__all__ = ["case_layers", "sample_flair", "sample_flair_subtle", "sample_t1", "sample_t1ce",
           "sample_t2", "SAMPLE_SEED", "SAMPLE_SEEDS", "SAMPLE_STRATUM", "sample_seed"]

SAMPLE_SEED = 12345
SAMPLE_STRATUM = "glioma"
# Each stratum's sample seed. The glioma sample is a typical case, chosen on the data alone: the
# first seed from 12345 whose tumour volume lies within 20 % of the stratum's median (82 mL on
# the tuning seeds, docs/benchmark.md): seed 12346, 94 mL (seed 12345's is 363 mL, an extreme).
SAMPLE_SEEDS = {"glioma": 12346, "stroke": SAMPLE_SEED, "subtle": SAMPLE_SEED}


def sample_seed(stratum: str = SAMPLE_STRATUM) -> int:
    return SAMPLE_SEEDS[stratum]


class _Named:
    """Just enough of a layer (name, data, metadata, axis labels) for ``derived_kwargs``."""

    def __init__(self, data, kwargs):
        self.data = data
        self.name = kwargs["name"]
        self.metadata = kwargs["metadata"]
        self.axis_labels = kwargs["axis_labels"]
        self.ndim = data.ndim


def case_layers(case) -> list[tuple]:
    """[(image, kwargs, "image"), (label, kwargs, "labels")] for a ``synth.SynthCase``."""
    from .volume import scan_from_array

    name = f"sample {case.modality.upper()}"
    scan = scan_from_array(case.image, case.affine, name=name)
    image = image_layer_data(scan, name)
    lesions = [{k: v for k, v in les.items() if isinstance(v, (int, float, str, tuple))}
               for les in case.lesions]
    image[1]["metadata"].update(
        {"synthetic": True, "modality": case.modality, "seed": case.seed, "lesions": lesions,
         "stratum": case.stratum})
    from napari.utils.colormaps import DirectLabelColormap

    green = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                            1: (0.2, 1.0, 0.2, 1.0)})
    gt = derived_kwargs(_Named(image[0], image[1]), "ground truth", opacity=0.6,
                        colormap=green)
    # shown as an outline, left unselected (napari cannot take either in a layer tuple: see
    # _outline_when_added; the widget's presenter does the same for layers added otherwise)
    gt["metadata"].update({"synthetic": True, "ground_truth": True, "contour": 2})
    return [image, (to_layer_shape(case.label, _Named(image[0], image[1])), gt, "labels")]


def _outline_when_added() -> None:
    """Outline the ground truth and give the selection back to the image once napari has
    added the sample's layers (a no-op without a current viewer)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no Qt, no viewer: the layers open filled, nothing else changes
        return
    if viewer is None:
        return
    from ._plugin.presenter import LayerPresenter

    layers = viewer.layers

    def on_inserted(event):
        if (event.value.metadata or {}).get("ground_truth"):
            layers.events.inserted.disconnect(on_inserted)
            LayerPresenter(viewer).style_new([event.value])

    layers.events.inserted.connect(on_inserted)


def _sample(modality: str, stratum: str = SAMPLE_STRATUM) -> list[tuple]:
    from . import synth

    out = case_layers(synth.make_case(modality, sample_seed(stratum), stratum=stratum))
    _outline_when_added()
    return out


def sample_flair() -> list[tuple]:
    return _sample("flair")


def sample_t1() -> list[tuple]:
    return _sample("t1")


def sample_t2() -> list[tuple]:
    return _sample("t2")


def sample_t1ce() -> list[tuple]:
    return _sample("t1ce")


def sample_flair_subtle() -> list[tuple]:
    return _sample("flair", "subtle")

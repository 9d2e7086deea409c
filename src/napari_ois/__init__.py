"""napari-ois: order-aware interactive segmentation for napari.

The engine (network, predictor, weights) needs no napari. ``load_predictor``,
``OISPredictor``, ``Prediction`` and ``finetune`` are imported on first use, so that importing
the package (e.g. by napari's plugin discovery) does not import torch and timm.
"""

__version__ = "0.1.0"

__all__ = ["OISPredictor", "Prediction", "finetune", "load_predictor", "segment_all", "__version__"]


def __getattr__(name):
    if name == "Prediction":  # no torch needed
        from .data.prompts import Prediction

        return Prediction
    if name in ("OISPredictor", "load_predictor"):
        from . import predictor

        return getattr(predictor, name)
    if name == "segment_all":  # torch only when called
        from .segment_all import segment_all

        return segment_all
    if name == "finetune":
        from .finetuning import finetune

        return finetune
    raise AttributeError(f"module 'napari_ois' has no attribute {name!r}")

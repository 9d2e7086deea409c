"""napari-ois: order-aware interactive segmentation for napari.

The engine (network, predictor, weights) needs no napari; the plugin parts import napari
lazily through the npe2 manifest.
"""

__version__ = "0.1.0"

from .predictor import OISPredictor, Prediction, load_predictor  # noqa: E402

__all__ = ["OISPredictor", "Prediction", "load_predictor", "__version__"]

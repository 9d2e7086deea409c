"""Training: augmentation, samples and proposal targets, the loss, the loop and the ``train``
command, the training pack and its tensor pipeline. The images, masks, readers and synthetic
scenes it trains on are the data layer's (:mod:`napari_ois.data`).

Submodules are imported on demand (``from napari_ois.training.data import SampleBuilder``)
so that importing the package stays cheap.
"""

"""Training: data readers, synthetic order-aware scenes, augmentation, samples (and, later,
the loss, the loop and the ``train`` command).

Submodules are imported on demand (``from napari_ois.training.data import SampleBuilder``)
so that importing the package stays cheap.
"""

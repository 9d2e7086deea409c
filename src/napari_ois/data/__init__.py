"""The data layer, below both the training and the evaluation code (neither imports the other).

- :mod:`~napari_ois.data.images`: the one image reader (pixels as stored) and the conversion
  to the model's input contract (float32 RGB in [0, 1]); depth normalisation; resampling.
- :mod:`~napari_ois.data.masks`: binary masks (255 / 128 ignore) and instance maps.
- :mod:`~napari_ois.data.datasets`: objects to segment (:class:`Sample`) from the evaluation
  and training layouts, dataset names and roots, held-out synthetic scenes.
- :mod:`~napari_ois.data.sources`: the training image sources (``TrainIndex`` over
  ``<data root>/train``, never ``eval``; ``InMemorySource``; ``synthetic_source``).
- :mod:`~napari_ois.data.scenes`: synthetic order-aware scenes with depth.
- :mod:`~napari_ois.data.clicks`: the one ``Click`` type and the protocol's click simulator.
- :mod:`~napari_ois.data.folders`: the user's annotation folders (images + masks, as
  instance maps) that ``napari-ois finetune`` reads.

numpy / scipy / Pillow / tifffile; torch only where arrays are resampled. Nothing here
imports the model, the predictor, napari or Qt. Submodules are imported on demand.
"""

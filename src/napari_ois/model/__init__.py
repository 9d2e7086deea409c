"""The OIS network (torch only; nothing here knows about napari)."""

from .config import PRESETS, OISConfig, get_config
from .ois import ImageEmbedding, OISModel, click_disks, object_aware_mask, order_maps

__all__ = [
    "PRESETS", "OISConfig", "get_config", "OISModel", "ImageEmbedding", "click_disks",
    "order_maps", "object_aware_mask",
]

"""Depth providers for napari-ois: none, a user-supplied map, or Depth Anything V2.

A provider maps the image as float32 RGB ``(H, W, 3)`` in [0, 1] to a float32 ``(H, W)``
depth map normalised to [0, 1] per image (larger = nearer), or ``None`` for "no depth".
"""

from .depth_anything import (
    DEPTH_ANYTHING_PRESETS,
    DepthAnythingConfig,
    DepthAnythingV2,
    describe_state_dict,
    load_depth_anything_checkpoint,
    read_state_dict,
    resolve_depth_anything_config,
)
from .providers import (
    DEPTH_ANYTHING_WEIGHTS,
    ArrayDepth,
    DepthAnythingProvider,
    DepthAnythingWeights,
    DepthProvider,
    NoDepth,
    depth_cache_dir,
    fetch_depth_anything_weights,
    make_depth_provider,
)

__all__ = [
    "DEPTH_ANYTHING_PRESETS",
    "DEPTH_ANYTHING_WEIGHTS",
    "ArrayDepth",
    "DepthAnythingConfig",
    "DepthAnythingProvider",
    "DepthAnythingV2",
    "DepthAnythingWeights",
    "DepthProvider",
    "NoDepth",
    "depth_cache_dir",
    "describe_state_dict",
    "fetch_depth_anything_weights",
    "load_depth_anything_checkpoint",
    "make_depth_provider",
    "read_state_dict",
    "resolve_depth_anything_config",
]

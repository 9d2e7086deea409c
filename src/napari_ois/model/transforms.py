"""The model's input geometry: an image of any shape <-> the square model input.

``ResizeTransform(H, W, cfg.img_size)`` resizes the longest side to the model's ``img_size``
and zero-pads bottom/right; ``apply_points`` maps ``(row, col)`` image pixels to model-input
coordinates (pixel centres), ``undo_image`` brings model-space maps (logits at stride 1 or
4) back to the image's own shape. The predictor, the training augmentation (its "fit"
layout) and the zoom-in crops all use this one transform. Plain torch; nothing of files,
dtypes or napari.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ResizeTransform:
    """Resize the longest side to ``size`` and pad bottom/right to ``size x size``.

    ``scale = size / max(H, W)``; the image occupies rows ``[0, new_h)`` and columns
    ``[0, new_w)`` of the padded square. Point coordinates map as
    ``model = (pixel + 0.5) * scale`` (pixel centres).
    """

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def new_shape(self) -> tuple[int, int]:
        s = self.scale
        return max(1, int(round(self.height * s))), max(1, int(round(self.width * s)))

    def apply_image(self, array: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, size, size)``: resize then zero-pad."""
        nh, nw = self.new_shape
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        out = F.interpolate(array, size=(nh, nw), mode=mode, **kwargs)
        return F.pad(out, (0, self.size - nw, 0, self.size - nh))

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) (row, col) image pixels -> model-input coordinates (row, col)."""
        return (np.asarray(points, dtype=np.float64) + 0.5) * self.scale

    def undo_image(self, array: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Model-space ``(B, C, h, w)`` (``size`` or a fraction of it) back to ``(B, C, H, W)``.

        Lower-resolution maps are first brought to ``size x size``, then the padding is
        cropped and the valid part resized to the image's shape.
        """
        nh, nw = self.new_shape
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        if array.shape[-1] != self.size or array.shape[-2] != self.size:
            array = F.interpolate(array, size=(self.size, self.size), mode=mode, **kwargs)
        return F.interpolate(array[..., :nh, :nw], size=(self.height, self.width), mode=mode, **kwargs)

"""Image handling shared by the predictor, the evaluation and the training code.

Everything here is plain numpy/torch: intensity normalisation (any dtype, optional contrast
limits, NaN/inf), channel handling, and the resize-longest-side + pad transform with its
exact inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_2d_image(image: np.ndarray) -> np.ndarray:
    """Validate that ``image`` is one 2D image: ``(H, W)`` or ``(H, W, C)`` with ``C <= 16``.

    Raises ``ValueError`` naming the problem otherwise (a 3D stack, a 1D array, ...).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim == 3:
        if image.shape[-1] <= 16:
            return image
        raise ValueError(
            f"image has shape {image.shape}: expected (H, W) or (H, W, C) with at most 16 "
            "channels. This looks like a 3D stack: pass one 2D slice (e.g. image[z])."
        )
    raise ValueError(
        f"image has {image.ndim} dimensions (shape {image.shape}); expected a 2D image of "
        "shape (H, W) or (H, W, C)."
    )


def check_contrast_limits(contrast_limits) -> Optional[tuple[float, float]]:
    """``(low, high)`` as floats, or None; ``ValueError`` naming the problem otherwise
    (not two numbers, not finite, or low > high)."""
    if contrast_limits is None:
        return None
    if isinstance(contrast_limits, (str, bytes)):
        raise ValueError(f"contrast_limits must be two numbers (low, high); got {contrast_limits!r}")
    try:
        vals = [float(v) for v in np.asarray(contrast_limits, dtype=object).reshape(-1)]
    except (TypeError, ValueError):
        raise ValueError(f"contrast_limits must be two numbers (low, high); got {contrast_limits!r}") from None
    if len(vals) != 2:
        raise ValueError(f"contrast_limits must be two numbers (low, high); got {len(vals)}: {contrast_limits!r}")
    lo, hi = vals
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"contrast_limits ({lo}, {hi}) must be finite")
    if lo > hi:
        raise ValueError(f"contrast_limits ({lo:g}, {hi:g}) are reversed: give (low, high) with low <= high")
    return lo, hi


def check_image_dtype(image: np.ndarray) -> None:
    """Images are numbers: bool, integer or real floating point."""
    dt = np.asarray(image).dtype
    if dt == np.bool_ or np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating):
        return
    if np.issubdtype(dt, np.complexfloating):
        raise ValueError(f"image has dtype {dt}: complex images are not supported; pass a real "
                         "image (e.g. np.abs(image))")
    raise ValueError(f"image has dtype {dt}: expected numbers (bool, integer or float pixels)")


def to_unit_rgb(
    image: np.ndarray, contrast_limits: Optional[Sequence[float]] = None
) -> np.ndarray:
    """Turn any 2D image into float32 RGB in [0, 1], shape ``(H, W, 3)``.

    - uint8 is divided by 255 unless ``contrast_limits`` are given.
    - bool becomes 0/1.
    - Other dtypes (uint16, int, float) are windowed by ``contrast_limits`` (what the user
      sees in napari) or, without them, by the 0.5 and 99.5 percentiles of the finite values.
    - NaN and inf become 0 after windowing.
    - (H, W) and (H, W, 1) are repeated to RGB; RGBA drops alpha; 2 or more than 4 channels
      are averaged into one grey channel (a documented choice: no channel is favoured).
    """
    img = as_2d_image(image)
    check_image_dtype(img)
    contrast_limits = check_contrast_limits(contrast_limits)
    if img.ndim == 3:
        c = img.shape[-1]
        if c == 4:
            img = img[..., :3]
        elif c == 1:
            img = img[..., 0]
        elif c != 3:
            img = img.astype(np.float64).mean(axis=-1)
    if img.size == 0:
        raise ValueError(f"image is empty (shape {img.shape})")
    if img.dtype == np.bool_:
        out = img.astype(np.float32)
    elif img.dtype == np.uint8 and contrast_limits is None:
        out = img.astype(np.float32) / 255.0
    else:
        data = img.astype(np.float64)
        if contrast_limits is not None:
            lo, hi = float(contrast_limits[0]), float(contrast_limits[1])
        else:
            finite = data[np.isfinite(data)]
            if finite.size == 0:
                lo, hi = 0.0, 1.0
            else:
                lo, hi = np.percentile(finite, [0.5, 99.5])
                if hi <= lo:
                    lo, hi = float(finite.min()), float(finite.max())
        scale = hi - lo if hi > lo else 1.0
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.clip((data - lo) / scale, 0.0, 1.0)
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def normalize_depth(depth: np.ndarray) -> np.ndarray:
    """Normalise a depth (or inverse-depth) map to float32 [0, 1] per image (robust min/max)."""
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be a 2D array (H, W); got shape {d.shape}")
    finite = d[np.isfinite(d)]
    if finite.size == 0:
        return np.zeros(d.shape, np.float32)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(d.shape, np.float32)
    out = np.clip((d - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


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


def imagenet_normalize(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> ImageNet-normalised."""
    mean = rgb.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = rgb.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std

"""Images: the one file reader and the conversion to the model's input contract.

Reading (:func:`read_image`) keeps the pixels **as stored**: dtype and channels untouched
(uint8, uint16, float32 TIFF, ...). TIFF goes through tifffile, a NumPy ``.npy`` array
through ``np.load`` (no pickled objects), everything else through
Pillow (a palette image becomes its RGB(A) colours; CMYK / YCbCr / LAB / HSV become RGB; a
16-bit PNG that an old Pillow reads as int32 becomes uint16), and leading singleton axes
of a ``(1, H, W[, C])`` file are dropped. ``data`` may hold the file's bytes. The reader
has no policy: which folders may be read (``eval`` is never trained on) is for the dataset
layer (:mod:`napari_ois.data.sources`) to enforce.

Converting (:func:`to_unit_rgb`) turns any 2D image into what the model takes: float32 RGB
in [0, 1] (intensity windowing by dtype, contrast limits or robust percentiles, NaN/inf,
channel handling). The ImageNet normalisation after it belongs to the network
(``OISModel.preprocess``), the resize + pad to the model input to
:class:`napari_ois.model.transforms.ResizeTransform`.

numpy only (and Pillow / tifffile to read); :func:`resize_chw` imports torch when called.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

#: file types the dataset readers list (any type Pillow or tifffile opens can be read)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

PathLike = Union[str, os.PathLike]


def read_image(path: PathLike, data: Optional[bytes] = None) -> np.ndarray:
    """Read one image file as stored: ``(H, W)`` or ``(H, W, C)``, or a stack for a
    multi-page TIFF; dtype untouched (see the module docstring for the exact rules).

    ``data`` may hold the file's bytes (``path`` then only gives the format).
    """
    path = Path(path)
    source = io.BytesIO(data) if data is not None else str(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(source))
    elif path.suffix.lower() == ".npy":
        arr = np.load(source, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(source) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
        if arr.dtype == np.int32 and arr.size and arr.max() < 65536 and arr.min() >= 0:
            arr = arr.astype(np.uint16)  # old Pillow reads 16-bit PNG as mode "I"
    # squeeze a leading singleton (some TIFF writers store (1, H, W))
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[-1] > 4:
        arr = arr[0]
    return arr


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
    check_dtype(np.asarray(image).dtype)


def check_dtype(dtype: np.dtype) -> None:
    """:func:`check_image_dtype` from a dtype alone (a lazy array's, without reading it)."""
    dt = np.dtype(dtype)
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


def resize_chw(array: np.ndarray, shape: Tuple[int, int], antialias: bool = False) -> np.ndarray:
    """Bilinear resize of a ``(C, H, W)`` float array (align_corners=False, like
    ``ResizeTransform.apply_image``); ``antialias`` only matters when downscaling."""
    import torch
    import torch.nn.functional as F

    arr = np.ascontiguousarray(array, dtype=np.float32)
    if arr.shape[1:] == tuple(shape):
        return arr.copy()
    t = torch.from_numpy(arr)[None]
    down = shape[0] < arr.shape[1] or shape[1] < arr.shape[2]
    out = F.interpolate(
        t, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=False,
        antialias=bool(antialias and down),
    )
    return out[0].numpy()

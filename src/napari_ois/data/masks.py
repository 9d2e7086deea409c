"""Masks: the two stored forms of an object and how they are decoded.

- **Binary masks** (evaluation layout, ``masks/<stem>.png`` or ``masks/<stem>/<k>.png``):
  8-bit, ``> 128`` foreground, exactly ``128`` "ignore", anything else background. A
  boolean mask, or one whose values are all in {0, 1}, is read as 0 background /
  1 foreground (the 8-bit rule would make it empty); a colour mask uses its first channel.
- **Instance maps** (training layout, ``labels/<stem>.png``): 8- or 16-bit, 0 background,
  ``1..N`` one object each; an RGB(A) map uses its first channel.

Decoded, an object is a pair of booleans ``(gt, ignore)`` (:func:`decode_mask`), and an
image's objects one int32 instance map with ``IGNORE_LABEL`` (-1) for "ignore"
(:func:`read_instance_map`, :func:`read_binary_masks`). Files are read with the one reader,
:func:`napari_ois.data.images.read_image`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .images import PathLike, read_image

#: the "ignore" value of an 8-bit binary mask
IGNORE_VALUE = 128
#: the "ignore" label of a decoded instance map
IGNORE_LABEL = -1
#: file types of mask and label files
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")


def decode_mask(arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """8-bit mask array -> ``(gt, ignore)`` booleans: ``>128`` fg, ``==128`` ignore.

    A colour mask uses its first channel. A boolean mask, or one whose values are all in
    {0, 1}, is read as 0/1 (no ignore).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2D; got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.copy(), np.zeros(arr.shape, dtype=bool)
    if arr.size and arr.max() <= 1 and arr.min() >= 0:
        return arr > 0, np.zeros(arr.shape, dtype=bool)
    return arr > IGNORE_VALUE, arr == IGNORE_VALUE


def read_mask(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read one binary mask file -> ``(gt, ignore)``."""
    return decode_mask(read_image(path))


def read_instance_map(path: PathLike) -> np.ndarray:
    """Read a training-layout instance map (8- or 16-bit PNG) as int32 ``(H, W)``."""
    arr = read_image(path)
    if arr.ndim == 3:  # an RGB(A) label file: take the first channel (documented choice)
        arr = arr[..., 0]
    return arr.astype(np.int32)


def read_binary_masks(paths: Sequence[PathLike]) -> np.ndarray:
    """Binary mask files of one image (255 fg, 128 ignore) -> one int32 instance map.

    Object ``k`` (1-based, in the order given) gets label ``k``; 128 becomes
    ``IGNORE_LABEL`` where no object claims the pixel. (Unlike :func:`decode_mask`, a 0/1
    mask is not special-cased here.)
    """
    out: Optional[np.ndarray] = None
    for k, path in enumerate(paths, start=1):
        m = read_image(path)
        if m.ndim == 3:
            m = m[..., 0]
        if out is None:
            out = np.zeros(m.shape, np.int32)
        ignore = (m == IGNORE_VALUE) & (out == 0)
        out[ignore] = IGNORE_LABEL
        out[m > IGNORE_VALUE] = k
    if out is None:
        raise ValueError("no mask files given")
    return out

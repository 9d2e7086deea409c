"""The image ``segment_all`` reads, in memory or window by window.

``segment_all`` never needs a whole image at once: it seeds each tile from the grey values
of the tile and its halo, and runs each prompt on a window around it. This module gives it
those regions, from one of two kinds of source (``image_source`` chooses):

- :class:`ArrayImage`: an in-memory numpy array, normalised once, whole, by
  :func:`.data.images.to_unit_rgb` (what ``segment_all`` has always done with a numpy
  image: its result is unchanged).
- :class:`WindowedImage`: a lazy array (dask, zarr, a memory map, any array that slices
  to numpy) or a multiscale pyramid (a list of arrays, largest first: the largest level is
  segmented), read only where a tile or a window needs it, through
  :class:`.data.windows.WindowReader`. The intensity window and the channel rule are the
  reader's, so the same as the interactive session's for the same input: ``uint8`` / 255,
  ``contrast_limits`` when given, else the 0.5 / 99.5 percentiles of a sample of the plane
  (the whole plane when it is small, else a small pyramid level or a grid of tiles). The
  image is never converted whole: the largest region in memory at once is one tile with
  its halo, or the windows of one tile's prompts (``hold``).

Both return float32 RGB in [0, 1] (``rgb``), its grey (``grey``: the channel mean) and
stacks of square windows padded with zeros past the image (``windows``). No torch, no
napari; imports only ``data``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .data.images import to_unit_rgb
from .data.windows import WindowReader, is_lazy, is_pyramid

Box = Tuple[int, int, int, int]  # (r0, r1, c0, c1), end exclusive


def unit_grey(rgb: np.ndarray) -> np.ndarray:
    """The grey image ``segment_all`` seeds on: the mean of the RGB channels, float32."""
    return rgb.mean(axis=-1, dtype=np.float32)


def image_source(image: Any, contrast_limits: Optional[Sequence[float]] = None):
    """:class:`WindowedImage` for a lazy array or a pyramid (``data.windows.is_lazy``: not
    an in-memory numpy array), :class:`ArrayImage` for anything else (numpy, nested lists)."""
    if is_pyramid(image) or (hasattr(image, "shape") and is_lazy(image)):
        return WindowedImage(image, contrast_limits)
    return ArrayImage(to_unit_rgb(np.asarray(image), contrast_limits))


def _clip(box: Box, shape: Tuple[int, int]) -> Box:
    r0, r1, c0, c1 = (int(v) for v in box)
    h, w = shape
    return max(0, r0), min(h, r1), max(0, c0), min(w, c1)


class ImageSource:
    """What both sources share: ``shape`` ``(H, W)``, regions (``rgb``, ``grey``) and
    windows cut from them."""

    shape: Tuple[int, int]

    def rgb(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def grey(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return unit_grey(self.rgb(r0, r1, c0, c1))

    def hold(self, box: Box) -> None:
        """A hint: the next reads fall inside ``box`` (a lazy source reads it once)."""

    def probe_box(self, side: int) -> Box:
        """Where ``AutoSegmenter.probe`` places its prompts: the whole image."""
        h, w = self.shape
        return 0, h, 0, w

    def windows(self, origins: np.ndarray, window: int) -> np.ndarray:
        """``(B, window, window, 3)`` float32: the square windows at ``origins`` ``(B, 2)``
        (top-left corners, inside the image), zeros past the image's bottom and right."""
        win = int(window)
        out = np.zeros((len(origins), win, win, 3), np.float32)
        for i, (r, c) in enumerate(np.asarray(origins, np.int64).reshape(-1, 2)):
            r0, r1, c0, c1 = _clip((r, r + win, c, c + win), self.shape)
            out[i, : r1 - r0, : c1 - c0] = self.rgb(r0, r1, c0, c1)
        return out


class ArrayImage(ImageSource):
    """An image in memory, normalised whole (``to_unit_rgb``): regions are views of it."""

    def __init__(self, rgb: np.ndarray):
        self.array = rgb
        self.shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        self._grey: Optional[np.ndarray] = None

    def rgb(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self.array[r0:r1, c0:c1]

    def grey(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self._grey is None:
            self._grey = unit_grey(self.array)
        return self._grey[r0:r1, c0:c1]


class WindowedImage(ImageSource):
    """A lazy array or a pyramid, read by regions through ``data.windows.WindowReader``.

    ``hold(box)`` reads ``box`` once and serves every later region inside it from memory
    (until the next ``hold``); a region outside it is read on its own. ``largest_read`` is
    the largest region (plane pixels) read at once, ``pixels_read`` all of them (the reader's
    sample for the intensity window is apart: ``reader.sample_pixels_read``)."""

    def __init__(self, image: Any, contrast_limits: Optional[Sequence[float]] = None):
        self.reader = WindowReader(image, contrast_limits=contrast_limits)
        self.shape = self.reader.shape
        self._held: Optional[Tuple[Box, np.ndarray]] = None
        self.largest_read = 0

    @property
    def pixels_read(self) -> int:
        return self.reader.pixels_read

    def _read(self, box: Box) -> np.ndarray:
        r0, r1, c0, c1 = box
        self.largest_read = max(self.largest_read, (r1 - r0) * (c1 - c0))
        return self.reader.read(r0, r1, c0, c1)

    def hold(self, box: Box) -> None:
        box = _clip(box, self.shape)
        if box[1] <= box[0] or box[3] <= box[2]:
            return
        if self._held is not None and self._inside(box, self._held[0]):
            return
        self._held = None  # the old region goes before the new one is read
        self._held = (box, self._read(box))

    def release(self) -> None:
        self._held = None

    @staticmethod
    def _inside(box: Box, outer: Box) -> bool:
        return outer[0] <= box[0] and box[1] <= outer[1] and outer[2] <= box[2] and box[3] <= outer[3]

    def rgb(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        box = _clip((r0, r1, c0, c1), self.shape)
        if self._held is not None and self._inside(box, self._held[0]):
            (hr0, _, hc0, _), data = self._held
            return data[box[0] - hr0:box[1] - hr0, box[2] - hc0:box[3] - hc0]
        return self._read(box)

    def probe_box(self, side: int) -> Box:
        """The whole image when it fits in ``side`` x ``side`` pixels, else the square of that
        side at its centre (one tile: the probe needs a few objects, not the whole image; its
        windows still reach past it)."""
        h, w = self.shape
        sh, sw = min(h, int(side)), min(w, int(side))
        r0, c0 = (h - sh) // 2, (w - sw) // 2
        return r0, r0 + sh, c0, c0 + sw

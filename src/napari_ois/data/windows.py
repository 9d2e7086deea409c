"""Windows of a 2D image, read on demand: what a prompt needs from any array.

:class:`WindowReader` is the one reader of image *windows* (``image[r0:r1, c0:c1]``) for the
predictor's window mode (big, lazy and multiscale images) and for channel choice. It takes

- a numpy array, or any array that slices to numpy (dask, zarr, a memory map, ...):
  ``(H, W)``, ``(H, W, C)`` (channels last, ``C <= 16``, as :func:`.images.as_2d_image`) or,
  with ``channel_axis=0``, ``(C, H, W)``;
- a multiscale pyramid: a list (or any sequence, e.g. napari's ``MultiScaleData``) of such
  arrays, largest first, each level a downsampled copy of the one before.

``read(r0, r1, c0, c1, out_side=None)`` reads only that window of the plane (rows
``r0:r1``, columns ``c0:c1`` of the largest level, end exclusive) and returns float32 RGB in
[0, 1], ``(h, w, 3)``. Without ``out_side`` the window comes at full resolution
(``h, w = r1 - r0, c1 - c0``). With ``out_side`` (the number of pixels the caller needs
across the window, e.g. the model's input size) it comes from the smallest pyramid level
that still has at least ``out_side`` pixels across the window, and is subsampled with a
stride when even that level has more than twice as many: the array returned then *covers*
the window at a lower resolution (at least ``out_side`` pixels across, aspect kept within
one pixel). Only the pixels returned are read from the source (a dask array computes only
the chunks they touch); ``pixels_read`` counts them (plane pixels, channels not counted).

Intensities follow :func:`.images.to_unit_rgb`'s rule (the same for every window, so windows
of one image match): ``bool`` is 0/1; ``uint8`` is divided by 255 unless ``contrast_limits``
are given; other dtypes are windowed by ``contrast_limits`` or, without them, by the 0.5 and
99.5 percentiles of the finite values of the plane (of a sample of it, see below); NaN/inf
become 0. Channels: one channel is repeated as grey, three are RGB, RGBA drops alpha, and 2 or
more than 4 channels are averaged to grey; ``channels=`` chooses instead: one index (grey) or
three (RGB, each channel windowed on its own: its own pair of ``contrast_limits`` if a pair
per channel is given, else its own percentiles, as napari's ``channel_axis`` layers give each
channel its own contrast limits).

The percentiles are taken once, at construction: over the whole plane for an in-memory
array of at most ``EXACT_PIXELS`` pixels (so a small numpy image reads exactly as
``to_unit_rgb``), over a strided sample of about ``EXACT_PIXELS`` pixels for a larger
in-memory array, and for a lazy array (never the whole plane) over the largest pyramid
level that has at most ``EXACT_PIXELS`` pixels, or else over a grid of small tiles spread
over the plane (``SAMPLE_TILES`` x ``SAMPLE_TILES`` tiles of ``SAMPLE_TILE`` pixels).
Those reads are counted apart, in ``sample_pixels_read``.

numpy only; imports nothing of the package outside ``data/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as _Sequence
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from .images import check_contrast_limits, check_dtype

#: planes (of an in-memory array) up to this many pixels get their percentiles exactly
EXACT_PIXELS = 2048 * 2048
#: a lazy plane's percentiles come from SAMPLE_TILES x SAMPLE_TILES tiles of SAMPLE_TILE px
SAMPLE_TILES = 4
SAMPLE_TILE = 128

ChannelSpec = Union[None, int, Sequence[int]]


def is_pyramid(image: Any) -> bool:
    """Whether ``image`` is a multiscale pyramid: a sequence (list, tuple, napari's
    ``MultiScaleData``) of arrays (objects with ``shape`` and ``dtype``), largest first."""
    if isinstance(image, (np.ndarray, str, bytes)) or not isinstance(image, _Sequence):
        return False
    if len(image) == 0:
        return False
    return all(hasattr(level, "shape") and hasattr(level, "dtype") for level in image)


def is_lazy(image: Any) -> bool:
    """Whether reading ``image`` whole would be wasteful: a pyramid, or any array that is not
    an in-memory numpy array (dask, zarr, a memory map, ...)."""
    if is_pyramid(image):
        return True
    return not (isinstance(image, np.ndarray) and not isinstance(image, np.memmap))


class WindowReader:
    """Windows of one 2D image (or pyramid) as float32 RGB in [0, 1] (see the module doc).

    Args:
        image: an array ``(H, W)``, ``(H, W, C)`` or (``channel_axis=0``) ``(C, H, W)``, or a
            pyramid (a sequence of such arrays, largest first).
        channels: None (the default rule), one channel index (grey) or three (RGB).
        channel_axis: where the channels are in a 3D array: None or -1 / 2 (last, the
            default) or 0 (``(C, H, W)``).
        contrast_limits: ``(low, high)``, or (with three ``channels``) one pair per channel.
        auto_limits: how limits are found without ``contrast_limits``: ``"percentile"``
            (``to_unit_rgb``'s rule) or ``"minmax"`` (for depth maps: the finite min and max,
            and uint8 is windowed like any other dtype).

    Attributes:
        shape: ``(H, W)`` of the plane (the largest level).
        pixels_read: plane pixels read by ``read`` so far (reset it to 0 at will).
        reads: how many ``read`` calls there were.
        last_read: ``(level, step, (h, w))`` of the last ``read``.
        sample_pixels_read: plane pixels read at construction to estimate the limits.
    """

    def __init__(
        self,
        image: Any,
        *,
        channels: ChannelSpec = None,
        channel_axis: Optional[int] = None,
        contrast_limits: Optional[Sequence] = None,
        auto_limits: str = "percentile",
    ):
        if auto_limits not in ("percentile", "minmax"):
            raise ValueError(f"auto_limits must be 'percentile' or 'minmax', not {auto_limits!r}")
        self.pyramid = is_pyramid(image)
        levels = list(image) if self.pyramid else [image]
        if not self.pyramid and not hasattr(image, "shape"):
            levels = [np.asarray(image)]
        self.levels = levels
        self.lazy = is_lazy(image)
        first = levels[0]
        ndim = len(first.shape)
        check_dtype(first.dtype)
        self.dtype = np.dtype(first.dtype)
        for i, lv in enumerate(levels):
            if len(lv.shape) != ndim:
                raise ValueError(f"pyramid level {i} has shape {tuple(lv.shape)}; level 0 has "
                                 f"{tuple(first.shape)} (every level needs the same axes)")
        if ndim == 2:
            if channel_axis is not None:
                raise ValueError(f"channel_axis={channel_axis} given for a 2D image of shape "
                                 f"{tuple(first.shape)} (it has no channel axis)")
            self.channel_axis = None
        elif ndim == 3:
            ax = -1 if channel_axis is None else int(channel_axis)
            if ax not in (0, 2, -1, -3):
                raise ValueError(f"channel_axis must be 0 (C, H, W) or -1 (H, W, C); got {channel_axis}")
            self.channel_axis = 0 if ax in (0, -3) else 2
            if self.channel_axis == 2 and first.shape[-1] > 16:
                raise ValueError(
                    f"image has shape {tuple(first.shape)}: expected (H, W) or (H, W, C) with at most "
                    "16 channels. This looks like a 3D stack: pass one 2D slice (e.g. image[z]), or "
                    "give channel_axis=0 for a (C, H, W) array."
                )
        else:
            raise ValueError(f"image has {ndim} dimensions (shape {tuple(first.shape)}); expected a "
                             "2D image (H, W), (H, W, C) or, with channel_axis=0, (C, H, W)")
        shapes = []
        for lv in levels:
            s = tuple(int(v) for v in lv.shape)
            shapes.append(s[1:] if self.channel_axis == 0 else s[:2])
        self.level_shapes: list = shapes
        self.shape: Tuple[int, int] = shapes[0]
        if min(self.shape) < 1:
            raise ValueError(f"image is empty (shape {tuple(first.shape)})")
        n_ch = 1 if self.channel_axis is None else int(first.shape[self.channel_axis])
        self.n_channels = n_ch
        self.mode, self.chosen = self._channel_mode(channels, n_ch)
        self.auto_limits = auto_limits
        self.pixels_read = 0
        self.reads = 0
        self.last_read: Optional[tuple] = None
        self.sample_pixels_read = 0
        self.limits = self._limits(contrast_limits)

    # ----------------------------------------------------------------- channels
    @staticmethod
    def _channel_mode(channels: ChannelSpec, n_ch: int) -> tuple:
        """("grey" | "rgb" | "mean", chosen channel indices, explicit?)."""
        if channels is None:
            if n_ch == 1:
                return "grey", (0,)
            if n_ch in (3, 4):
                return "rgb", (0, 1, 2)
            return "mean", tuple(range(n_ch))
        if isinstance(channels, (bool, np.bool_)):
            raise ValueError(f"channels must be one channel index or three; got {channels!r}")
        if isinstance(channels, (int, np.integer)):
            channels = (int(channels),)
        try:
            chosen = tuple(int(c) for c in channels)
        except (TypeError, ValueError):
            raise ValueError(f"channels must be one channel index or three; got {channels!r}") from None
        if len(chosen) not in (1, 3):
            raise ValueError(f"channels must be one channel index (grey) or three (RGB); got {len(chosen)}: "
                             f"{list(chosen)}")
        out = []
        for c in chosen:
            if not -n_ch <= c < n_ch:
                raise ValueError(f"channel {c} does not exist: the image has {n_ch} channel(s) "
                                 f"(0..{n_ch - 1})")
            out.append(c % n_ch)
        return ("grey" if len(out) == 1 else "rgb_explicit"), tuple(out)

    @property
    def channels(self) -> tuple:
        """The channel indices the model sees (one: grey; three: RGB; all: averaged)."""
        return self.chosen

    # ----------------------------------------------------------------- intensities
    def _limits(self, contrast_limits) -> Optional[np.ndarray]:
        """(n, 2) float64 windows (n = 1: all channels, 3: one per explicit channel), or None
        for the fixed rules (bool; uint8 without limits)."""
        n_out = 3 if self.mode == "rgb_explicit" else 1
        if self.dtype == np.bool_ and self.mode != "mean" and self.auto_limits == "percentile":
            return None  # bool is 0/1 whatever the limits (to_unit_rgb)
        if contrast_limits is not None:
            arr = np.asarray(contrast_limits, dtype=object)
            if arr.ndim == 2 or (arr.ndim == 1 and len(arr) > 0 and isinstance(arr[0], (_Sequence, np.ndarray))):
                pairs = [check_contrast_limits(p) for p in contrast_limits]
                if len(pairs) == 1:
                    pairs = pairs * n_out
                if len(pairs) != n_out:
                    raise ValueError(f"got {len(pairs)} contrast limit pairs for {n_out} channel(s)")
                return np.asarray(pairs, dtype=np.float64)
            return np.asarray([check_contrast_limits(contrast_limits)] * n_out, dtype=np.float64)
        if self.auto_limits == "percentile" and self.dtype == np.uint8 and self.mode != "mean":
            return None
        sample = self._sample()
        if self.mode == "rgb_explicit":
            return np.asarray([self._estimate(sample[..., i]) for i in range(3)], dtype=np.float64)
        return np.asarray([self._estimate(sample)], dtype=np.float64)

    def _estimate(self, data: np.ndarray) -> tuple:
        data = np.asarray(data, dtype=np.float64)
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            return 0.0, 1.0
        if self.auto_limits == "minmax":
            return float(finite.min()), float(finite.max())
        lo, hi = np.percentile(finite, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(finite.min()), float(finite.max())
        return float(lo), float(hi)

    def _sample(self) -> np.ndarray:
        """Raw channel values (after channel choice / averaging) of the plane or a sample."""
        h, w = self.shape
        if not self.lazy:
            step = max(1, int(math.ceil(math.sqrt(h * w / EXACT_PIXELS))))
            raw = self._raw(0, 0, h, 0, w, step)
            self.sample_pixels_read += raw.shape[0] * raw.shape[1]
            return self._channels_of(raw)
        # a pyramid level small enough to read whole (the largest such)
        for lv in range(len(self.levels)):
            lh, lw = self.level_shapes[lv]
            if lh * lw <= EXACT_PIXELS:
                raw = self._raw(lv, 0, lh, 0, lw, 1)
                self.sample_pixels_read += lh * lw
                return self._channels_of(raw)
        # a grid of small tiles over the smallest level, each inside one chunk if it has chunks
        lv = len(self.levels) - 1
        lh, lw = self.level_shapes[lv]
        ch_r, ch_c = self._plane_chunks(lv)
        th, tw = min(SAMPLE_TILE, lh, ch_r), min(SAMPLE_TILE, lw, ch_c)
        g = SAMPLE_TILES
        tiles = []
        for i in range(g):
            r = int(round((lh - th) * (i + 0.5) / g))
            r = min(r - r % ch_r, lh - th)
            for j in range(g):
                c = int(round((lw - tw) * (j + 0.5) / g))
                c = min(c - c % ch_c, lw - tw)
                raw = self._raw(lv, r, r + th, c, c + tw, 1)
                self.sample_pixels_read += th * tw
                tiles.append(self._channels_of(raw).reshape(th * tw, -1))
        return np.concatenate(tiles, axis=0)

    def _plane_chunks(self, level: int) -> tuple:
        """The (rows, cols) chunk size of a chunked array's plane (dask, zarr), else huge."""
        chunks = getattr(self.levels[level], "chunks", None)
        big = 1 << 40
        try:
            axes = (1, 2) if self.channel_axis == 0 else (0, 1)
            out = []
            for ax in axes:
                c = chunks[ax]
                c = c[0] if isinstance(c, (tuple, list)) else c
                out.append(max(1, int(c)))
            return tuple(out)
        except (TypeError, IndexError, ValueError):
            return big, big

    def _channels_of(self, raw: np.ndarray) -> np.ndarray:
        """Raw ``(h, w[, C'])`` (the channels ``_raw`` read) -> ``(h, w)`` (grey / mean) or
        ``(h, w, 3)`` (rgb) in the source's values (mean: float64)."""
        if self.mode == "mean":
            return raw.astype(np.float64).mean(axis=-1) if raw.ndim == 3 else raw
        if self.mode == "grey":
            return raw[..., 0] if raw.ndim == 3 else raw
        return raw

    def _normalise(self, data: np.ndarray) -> np.ndarray:
        """``to_unit_rgb``'s windowing of channel values -> float32 (h, w[, 3]) in [0, 1]."""
        if self.limits is None:
            if data.dtype == np.bool_:
                return data.astype(np.float32)
            if self.auto_limits == "percentile" and data.dtype == np.uint8:
                return data.astype(np.float32) / 255.0
        values = data.astype(np.float64)
        lim = self.limits if self.limits is not None else np.array([[0.0, 1.0]])
        lo, hi = lim[:, 0], lim[:, 1]
        if values.ndim == 2 or lim.shape[0] == 1:
            lo, hi = float(lo[0]), float(hi[0])
            scale = hi - lo if hi > lo else 1.0
        else:
            scale = np.where(hi > lo, hi - lo, 1.0)
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.clip((values - lo) / scale, 0.0, 1.0)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    # ----------------------------------------------------------------- reading
    def _raw(self, level: int, r0: int, r1: int, c0: int, c1: int, step: int) -> np.ndarray:
        """``level[r0:r1:step, c0:c1:step]`` (channels last, only the channels needed) as numpy."""
        arr = self.levels[level]
        rs, cs = slice(r0, r1, step), slice(c0, c1, step)
        if self.channel_axis is None:
            return np.asarray(arr[rs, cs])
        if self.mode == "mean":
            if self.channel_axis == 0:
                return np.moveaxis(np.asarray(arr[:, rs, cs]), 0, -1)
            return np.asarray(arr[rs, cs])
        if self.channel_axis == 2:  # channels last: one read of all (a chunk holds them all)
            return np.asarray(arr[rs, cs])[..., list(self.chosen)]
        # (C, H, W): one read per chosen channel (each is usually stored apart)
        return np.stack([np.asarray(arr[ch, rs, cs]) for ch in self.chosen], axis=-1)

    def choose(self, r0: int, r1: int, c0: int, c1: int, out_side: Optional[int] = None) -> tuple:
        """``(level, (lr0, lr1, lc0, lc1), step)``: where ``read`` takes the window from."""
        if out_side is None:
            return 0, (r0, r1, c0, c1), 1
        h0, w0 = self.shape
        level = 0
        for lv in range(len(self.levels) - 1, -1, -1):  # smallest first
            lh, lw = self.level_shapes[lv]
            extent = max((r1 - r0) * lh / h0, (c1 - c0) * lw / w0)
            if extent >= out_side:
                level = lv
                break
        lh, lw = self.level_shapes[level]
        fr, fc = h0 / lh, w0 / lw
        if level == 0:
            lr0, lr1, lc0, lc1 = r0, r1, c0, c1
        else:
            lr0, lr1 = int(math.floor(r0 / fr)), min(lh, max(int(math.ceil(r1 / fr)), int(math.floor(r0 / fr)) + 1))
            lc0, lc1 = int(math.floor(c0 / fc)), min(lw, max(int(math.ceil(c1 / fc)), int(math.floor(c0 / fc)) + 1))
        extent = max(lr1 - lr0, lc1 - lc0)
        step = max(1, extent // max(1, int(out_side)))
        return level, (lr0, lr1, lc0, lc1), step

    def read(self, r0: int, r1: int, c0: int, c1: int, out_side: Optional[int] = None) -> np.ndarray:
        """The window ``image[r0:r1, c0:c1]`` as float32 RGB in [0, 1], ``(h, w, 3)``: at full
        resolution without ``out_side``; with it, from the smallest pyramid level (and
        stride) that still gives at least ``out_side`` pixels across the window."""
        h, w = self.shape
        r0, r1, c0, c1 = (int(v) for v in (r0, r1, c0, c1))
        r0, c0 = max(0, r0), max(0, c0)
        r1, c1 = min(h, r1), min(w, c1)
        if r1 <= r0 or c1 <= c0:
            raise ValueError(f"the window rows {r0}:{r1}, cols {c0}:{c1} is empty or outside the "
                             f"image of shape {(h, w)}")
        level, (lr0, lr1, lc0, lc1), step = self.choose(r0, r1, c0, c1, out_side)
        raw = self._raw(level, lr0, lr1, lc0, lc1, step)
        self.pixels_read += int(raw.shape[0]) * int(raw.shape[1])
        self.reads += 1
        self.last_read = (level, step, (int(raw.shape[0]), int(raw.shape[1])))
        out = self._normalise(self._channels_of(raw))
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=-1)
        return np.ascontiguousarray(out)

    def read_many(self, boxes, out_side: Optional[int] = None) -> list:
        """``[read(*box, out_side) for box in boxes]``, reading each source region once: the
        windows that come from the same level of a lazy source (dask, zarr) are cut from one
        read of their joint box (a chunk is fetched once, not once per window; nested windows
        around one click share theirs). In-memory arrays are read window by window (a numpy
        slice is a view: only the pixels used are touched)."""
        h, w = self.shape
        plans = []
        for box in boxes:
            r0, r1, c0, c1 = (int(v) for v in box)
            r0, c0, r1, c1 = max(0, r0), max(0, c0), min(h, r1), min(w, c1)
            if r1 <= r0 or c1 <= c0:
                raise ValueError(f"the window rows {r0}:{r1}, cols {c0}:{c1} is empty or outside the "
                                 f"image of shape {(h, w)}")
            plans.append(self.choose(r0, r1, c0, c1, out_side))
        if not self.lazy or len(plans) < 2:
            return [self.read(*box, out_side=out_side) for box in boxes]
        out: list = [None] * len(plans)
        for level in sorted({p[0] for p in plans}):
            idx = [i for i, p in enumerate(plans) if p[0] == level]
            u0 = min(plans[i][1][0] for i in idx)
            u1 = max(plans[i][1][1] for i in idx)
            v0 = min(plans[i][1][2] for i in idx)
            v1 = max(plans[i][1][3] for i in idx)
            joint = self._raw(level, u0, u1, v0, v1, 1)
            self.pixels_read += int(joint.shape[0]) * int(joint.shape[1])
            for i in idx:
                _, (lr0, lr1, lc0, lc1), step = plans[i]
                raw = joint[lr0 - u0:lr1 - u0:step, lc0 - v0:lc1 - v0:step]
                self.reads += 1
                self.last_read = (level, step, (int(raw.shape[0]), int(raw.shape[1])))
                img = self._normalise(self._channels_of(raw))
                if img.ndim == 2:
                    img = np.repeat(img[..., None], 3, axis=-1)
                out[i] = np.ascontiguousarray(img)
        return out

    def read_all(self, out_side: Optional[int] = None) -> np.ndarray:
        """The whole plane (``read(0, H, 0, W, out_side)``)."""
        h, w = self.shape
        return self.read(0, h, 0, w, out_side)

    def __repr__(self) -> str:
        kind = "pyramid of %d levels" % len(self.levels) if self.pyramid else type(self.levels[0]).__name__
        return (f"WindowReader({kind}, plane {self.shape}, {self.dtype}, channels {self.mode} "
                f"{list(self.chosen)}, {self.pixels_read} px read)")

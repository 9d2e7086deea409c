"""Prompt kinds other than clicks, the one rule of when the model proposes K masks, and what
a predictor (the network or a baseline) answers: ``Prediction``.

Coordinates are those of the predictor: ``(row, col)`` image pixels of the image as given,
pixel centres at integers (napari's data coordinates). A box covers the pixels whose centres
lie inside it; the tight box of pixels ``r_lo..r_hi`` is ``(r_lo - 0.5, ..., r_hi + 0.5)``.
Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box prompt ``(r0, c0)``-``(r1, c1)`` with ``r0 < r1``, ``c0 < c1``."""

    r0: float
    c0: float
    r1: float
    c1: float

    def __post_init__(self):
        vals = (self.r0, self.c0, self.r1, self.c1)
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) for v in vals):
            raise ValueError(f"a box needs four finite numbers (r0, c0, r1, c1); got {vals}")
        if not (self.r1 > self.r0 and self.c1 > self.c0):
            raise ValueError(
                f"a box needs r1 > r0 and c1 > c0 (a height and a width); got {tuple(vals)}"
            )

    @classmethod
    def from_corners(cls, corners: Sequence[Sequence[float]]) -> "Box":
        """Any corners (e.g. the 4 vertices of a napari rectangle, or 2 opposite ones)."""
        try:
            pts = np.asarray(corners, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"box corners must be (row, col) numbers; got {corners!r}") from None
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
            raise ValueError(f"box corners must have shape (N >= 2, 2) as (row, col); got {pts.shape}")
        lo, hi = pts.min(0), pts.max(0)
        return cls(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))

    @classmethod
    def coerce(cls, value) -> "Box":
        """A ``Box`` from what callers pass: a ``Box``, ``(r0, c0, r1, c1)``, or corners
        (``from_corners``: e.g. a napari rectangle's 4 vertices); ``ValueError`` otherwise."""
        if isinstance(value, cls):
            return value
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a box must be (r0, c0, r1, c1) numbers or (row, col) corners: {exc}") from None
        if arr.ndim == 1:
            if arr.shape != (4,):
                raise ValueError(f"a box must be four numbers (r0, c0, r1, c1); got {arr.size}")
            return cls(*arr.tolist())
        return cls.from_corners(arr)

    @classmethod
    def parse(cls, text: str) -> "Box":
        """``"r0,c0,r1,c1"`` (the command line's ``--box``)."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            vals = []
        if len(vals) != 4:
            raise ValueError(f"--box must be four numbers r0,c0,r1,c1; got {text!r}")
        return cls(*vals)

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> Optional["Box"]:
        """The tight box of a mask's pixels (the evaluation's box-first prompt); None if empty."""
        mask = np.asarray(mask, dtype=bool)
        rows = np.flatnonzero(mask.any(1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(mask.any(0))
        return cls(rows[0] - 0.5, cols[0] - 0.5, rows[-1] + 0.5, cols[-1] + 0.5)

    def clipped(self, shape: Sequence[int]) -> "Box":
        """This box cut to an image of ``shape`` (H, W); ``ValueError`` if it lies outside."""
        h, w = int(shape[0]), int(shape[1])
        r0, r1 = max(self.r0, -0.5), min(self.r1, h - 0.5)
        c0, c1 = max(self.c0, -0.5), min(self.c1, w - 0.5)
        if not (r1 > r0 and c1 > c0):
            raise ValueError(f"the box {self.as_tuple()} lies outside the image of shape {(h, w)}")
        return Box(r0, c0, r1, c1)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.r0, self.c0, self.r1, self.c1)

    def corners(self) -> np.ndarray:
        """(2, 2): top-left and bottom-right ``(row, col)``."""
        return np.array([[self.r0, self.c0], [self.r1, self.c1]], dtype=np.float64)


def wants_proposals(n_clicks: int, box: Optional[Box] = None, has_prev: bool = False) -> bool:
    """The protocol (DISNet's, used everywhere here): an object's first prompt, when it is a
    single click, gets the K proposals; a box, later clicks, or a previous mask get the
    single refined mask."""
    return n_clicks == 1 and box is None and not has_prev


#: the logit a windowed ``Prediction`` stands for outside its window ("not the object")
OUTSIDE_LOGIT = -20.0


@dataclass
class Prediction:
    """What ``OISPredictor.predict`` (and a baseline predictor) returns.

    Attributes:
        masks: (K, H, W) bool at the image's own resolution, best first; with ``window``,
            (K, r1 - r0, c1 - c0): the window's part of the image (all False outside it).
        scores: (K,) predicted IoU of each mask, best first.
        logits: (K, H, W) float32 logits (or the window's part); ``logits[i]`` is what the
            next ``predict`` accepts as ``prev_mask`` (with ``prev_window=window``).
        window: None (masks cover the whole image) or ``(r0, r1, c0, c1)`` (end exclusive):
            the part of the image the masks cover, for big images (the predictor's window
            mode: masks, logits and the memory they take follow the object, not the image).
        image_shape: ``(H, W)`` of the image (set with ``window``).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    window: Optional[Tuple[int, int, int, int]] = None
    image_shape: Optional[Tuple[int, int]] = None

    @property
    def best(self) -> int:
        """Index of the best-scored mask (always 0: masks are sorted best first)."""
        return 0

    def full_mask(self, index: int = 0) -> np.ndarray:
        """Mask ``index`` as an (H, W) bool array of the whole image (a copy when windowed:
        H x W bytes; prefer ``masks`` with ``window`` for big images)."""
        return paste(np.asarray(self.masks[index]), self.window, self.image_shape, False)

    def full_logits(self, index: int = 0) -> np.ndarray:
        """Logits ``index`` as (H, W) float32 of the whole image (``OUTSIDE_LOGIT`` outside the
        window)."""
        return paste(np.asarray(self.logits[index], np.float32), self.window, self.image_shape,
                     OUTSIDE_LOGIT)


def paste(crop: np.ndarray, window: Optional[Sequence[int]], shape: Optional[Sequence[int]],
          fill) -> np.ndarray:
    """``crop`` (the part ``window = (r0, r1, c0, c1)`` of an image of ``shape``) placed in an
    array of the whole image filled with ``fill``; ``crop`` itself when ``window`` is None."""
    if window is None:
        return crop
    if shape is None:
        raise ValueError("a windowed array needs the image's shape to be pasted")
    r0, r1, c0, c1 = (int(v) for v in window)
    out = np.full(tuple(int(s) for s in shape), fill, dtype=crop.dtype)
    out[r0:r1, c0:c1] = crop
    return out

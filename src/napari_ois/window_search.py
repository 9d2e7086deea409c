"""Window mode of the predictor (issue 34): the windows a first click is predicted on when an
image is too big (or too lazy) to embed whole, their mapping to the model input, and the
ranking of the proposals gathered across windows. ``OISPredictor`` drives them; nothing here
knows of Qt, napari or files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import _triton_guard  # noqa: F401 - before .model imports timm (see _triton_guard)
from .data.prompts import OUTSIDE_LOGIT
from .model.transforms import ResizeTransform


@dataclass(frozen=True)
class WindowSearch:
    """Window mode: how images too big to embed whole are predicted.

    An image whose longest side is over ``threshold`` pixels, and any lazy (dask, zarr) or
    multiscale input, is never embedded whole: each prompt reads only the windows it needs
    (``data.windows.WindowReader``). An object's first click is predicted on square windows
    centred on it, ``min_window`` (default: the model's input size) times ``growth`` ** i
    pixels across, up to ``max_window`` (the whole image is one of them only when it is at
    most ``max_window`` across: then it is the right window), all in one batch. The proposals
    of all windows are ranked by predicted IoU (the network's score is not comparable across
    scales on its own: a window much larger than the object scores background regions high,
    one smaller than it scores a part of it), less ``edge_penalty`` times the share of a
    mask's boundary that lies on a window edge inside the image (a mask cut by its window),
    less ``area_penalty`` times the share of its window it covers, less ``scale_penalty``
    per doubling of its window over the smallest (the click is on the object the user looks
    at: the smaller window sees it larger), plus ``support_bonus``
    times its best IoU with a mask of another window (an object is found again at the next
    scale; a part or a background region is not); the best ``K`` that differ (IoU below
    ``overlap_iou``) are kept: the small object and the larger things it belongs to. The
    weights were chosen on held-out objects other than the benchmark's
    (``benchmarks/big_images.py``). Later prompts are predicted on the zoom-in crop around
    the mask and the clicks (``ZoomIn``'s rule, whatever its size). Masks and logits come
    back for a window of the image (``Prediction.window``), never for the whole plane.
    """

    threshold: int = 2048
    min_window: Optional[int] = None
    max_window: int = 3072
    growth: float = 2.0
    edge_penalty: float = 0.5
    area_penalty: float = 0.5
    scale_penalty: float = 0.1
    support_bonus: float = 0.5
    overlap_iou: float = 0.7

    def sizes(self, shape: Sequence[int], img_size: int) -> list:
        """Window sides for an image of ``shape`` (the last one may be the whole image)."""
        longest = max(int(shape[0]), int(shape[1]))
        side = float(self.min_window or img_size)
        out = []
        while side < longest and side <= self.max_window:
            out.append(int(round(side)))
            side *= self.growth
        if longest <= self.max_window:
            out.append(longest)
        return out or [longest]


@dataclass(frozen=True)
class _Window:
    """A window ``rows r0:r1, cols c0:c1`` of the image and its place in the model input:
    resized to ``nh x nw`` (longest side = ``size``), padded to ``size x size``."""

    r0: int
    r1: int
    c0: int
    c1: int
    size: int

    @property
    def h(self) -> int:
        return self.r1 - self.r0

    @property
    def w(self) -> int:
        return self.c1 - self.c0

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.r0, self.r1, self.c0, self.c1

    @property
    def new_shape(self) -> tuple[int, int]:
        return ResizeTransform(self.h, self.w, self.size).new_shape

    def points(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) image pixels -> model-input coordinates (pixel centres)."""
        nh, nw = self.new_shape
        rel = np.asarray(pts, dtype=np.float64).reshape(-1, 2) - np.array([self.r0, self.c0], dtype=np.float64)
        return (rel + 0.5) * np.array([nh / self.h, nw / self.w])

    def to_input(self, array: np.ndarray) -> torch.Tensor:
        """(h', w'[, C]) covering the window (any resolution) -> (C, size, size) model input."""
        a = np.ascontiguousarray(array, dtype=np.float32)
        t = torch.from_numpy(a[..., None] if a.ndim == 2 else a).permute(2, 0, 1)[None]
        nh, nw = self.new_shape
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)
        return F.pad(t, (0, self.size - nw, 0, self.size - nh))[0]

    def logits_at(self, logits: torch.Tensor, box: Sequence[int]) -> np.ndarray:
        """Model-space logits ``(M, s, s)`` (s = size or size / 4) -> float32 ``(M, b_h, b_w)``
        at the image pixels of ``box = (a0, a1, b0, b1)``: bilinear as
        ``ResizeTransform.undo_image`` (the same two steps), computed only where asked;
        ``OUTSIDE_LOGIT`` outside the window."""
        a0, a1, b0, b1 = (int(v) for v in box)
        m = logits.shape[0]
        out = np.full((m, a1 - a0, b1 - b0), OUTSIDE_LOGIT, np.float32)
        ra0, ra1 = max(a0, self.r0), min(a1, self.r1)
        cb0, cb1 = max(b0, self.c0), min(b1, self.c1)
        if ra1 <= ra0 or cb1 <= cb0:
            return out
        lg = logits.float()
        if lg.shape[-1] != self.size or lg.shape[-2] != self.size:
            lg = F.interpolate(lg[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        nh, nw = self.new_shape
        lg = lg[:, :nh, :nw]
        rows = _lerp_index(torch.arange(ra0 - self.r0, ra1 - self.r0), nh, self.h)
        cols = _lerp_index(torch.arange(cb0 - self.c0, cb1 - self.c0), nw, self.w)
        part = _lerp(_lerp(lg, 1, rows), 2, cols)
        out[:, ra0 - a0:ra1 - a0, cb0 - b0:cb1 - b0] = part.cpu().numpy()
        return out


def _lerp_index(dst: torch.Tensor, n_src: int, n_dst: int) -> tuple:
    """``F.interpolate``'s bilinear source taps (align_corners=False) for ``dst`` indices."""
    pos = ((dst.double() + 0.5) * (n_src / n_dst) - 0.5).clamp(min=0)
    i0 = pos.floor().long().clamp(max=n_src - 1)
    i1 = (i0 + 1).clamp(max=n_src - 1)
    return i0, i1, (pos - i0.double()).float()


def _lerp(t: torch.Tensor, dim: int, taps: tuple) -> torch.Tensor:
    i0, i1, wgt = taps
    a, b = t.index_select(dim, i0), t.index_select(dim, i1)
    shape = [1] * t.dim()
    shape[dim] = -1
    return a + (b - a) * wgt.view(shape)


def _place(side: int, centre: float, length: int) -> tuple[int, int]:
    """``[lo, lo + side)`` centred on ``centre``, shifted to lie in ``[0, length)``."""
    if side >= length:
        return 0, length
    lo = int(round(centre + 0.5 - side / 2))
    lo = min(max(0, lo), length - side)
    return lo, lo + side


@dataclass
class _Candidate:
    """One proposal of one window (first-click search), at the model's stride-4 grid."""

    window: _Window
    batch: int
    token: int
    score: float
    coarse: np.ndarray  # (hv, wv) bool: the valid part of the stride-4 mask
    bounds: Optional[tuple]  # (r0, r1, c0, c1) image pixels of the mask, or None if empty

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The mask at image points (rows x cols grid), nearest; False outside the window."""
        hv, wv = self.coarse.shape
        win = self.window
        i = np.floor((rows - win.r0) * hv / win.h).astype(np.int64)
        j = np.floor((cols - win.c0) * wv / win.w).astype(np.int64)
        ok_i, ok_j = (i >= 0) & (i < hv), (j >= 0) & (j < wv)
        out = self.coarse[np.clip(i, 0, hv - 1)][:, np.clip(j, 0, wv - 1)]
        return out & ok_i[:, None] & ok_j[None, :]


def _candidate_iou(a: _Candidate, b: _Candidate, cells: int = 96) -> float:
    """IoU of two candidates' masks in image pixels, on a grid over their joint box."""
    if a.bounds is None or b.bounds is None:
        return 1.0 if a.bounds is None and b.bounds is None else 0.0
    r0, r1 = min(a.bounds[0], b.bounds[0]), max(a.bounds[1], b.bounds[1])
    c0, c1 = min(a.bounds[2], b.bounds[2]), max(a.bounds[3], b.bounds[3])
    n_r = int(min(cells, max(1, r1 - r0)))
    n_c = int(min(cells, max(1, c1 - c0)))
    rows = r0 + (np.arange(n_r) + 0.5) * (r1 - r0) / n_r
    cols = c0 + (np.arange(n_c) + 0.5) * (c1 - c0) / n_c
    ma, mb = a.sample(rows, cols), b.sample(rows, cols)
    union = np.count_nonzero(ma | mb)
    return float(np.count_nonzero(ma & mb)) / union if union else 1.0


def _edge_share(mask: np.ndarray, cut: Sequence[bool]) -> float:
    """The share of ``mask``'s boundary pixels that lie on the window's cut edges (``cut``:
    top, bottom, left, right lie inside the image): how much of it the window cuts off."""
    if not mask.any():
        return 0.0
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    boundary = mask & ~inner
    on_cut = np.zeros_like(mask)
    top, bottom, left, right = cut
    if top:
        on_cut[0, :] = True
    if bottom:
        on_cut[-1, :] = True
    if left:
        on_cut[:, 0] = True
    if right:
        on_cut[:, -1] = True
    return float(np.count_nonzero(boundary & on_cut)) / float(np.count_nonzero(boundary))


def _coarse_bounds(mask: np.ndarray, win: _Window) -> Optional[tuple]:
    """Image-pixel box ``(r0, r1, c0, c1)`` of a window's coarse mask, or None if empty."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    hv, wv = mask.shape
    return (win.r0 + rows[0] * win.h / hv, win.r0 + (rows[-1] + 1) * win.h / hv,
            win.c0 + cols[0] * win.w / wv, win.c0 + (cols[-1] + 1) * win.w / wv)

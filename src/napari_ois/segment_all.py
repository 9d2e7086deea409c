"""Segment everything: all the objects of an image as an instance label map, from prompts
the engine places itself.

    >>> from napari_ois import segment_all
    >>> labels = segment_all(image)            # (H, W) int32: 0 background, 1..N objects

The network is the interactive one (``OISModel``), driven with one positive click per
prompt. How the prompts are chosen, run and turned into labels:

1. **Scale and polarity (the model decides).** The model segments an object best when it
   is about ``TARGET_DIAMETER`` model pixels across (a third of a 128 px input).
   ``object_size`` (the typical object diameter in image pixels, like Cellpose's
   ``diameter``) sets the *window*: each prompt is predicted on a window of
   ``object_size * input_size / TARGET_DIAMETER`` image pixels centred on it, resized to the
   model input. Without it, ``probe`` prompts the 6 strongest bright and 6 strongest dark
   blobs at each of five scales (8-128 px); the scale whose kept masks of about that size
   add up to the most ``score * stability`` wins, the object size is their median diameter,
   and the polarity (bright objects as in fluorescence, dark as H&E nuclei) is the side
   whose masks add up to ``polarity_ratio`` (3) times the other's, or both.
2. **Prompts.** Blob centres at that scale and polarity: the extrema of a difference of
   Gaussians of the grey image above ``min_contrast`` robust standard deviations, at least
   half a radius apart (``blob_seeds``); optionally a regular grid (``points_per_side``).
   With ``passes`` > 1, each later pass prompts where the model's own masks found nothing
   yet: the centres of the regions that no kept mask covers, no earlier prompt's most
   confident mask claims (e.g. the background around a background click) and no tried
   prompt is near (``coverage_seeds``). (Measured: about one more object per set for 50-80 %
   more time, so one pass is the default.)
3. **Batched network.** The model is early-fusion (the clicks enter the encoder), so the
   whole network runs once per prompt whatever the image: the prompts' windows are stacked
   and run ``batch_size`` at a time (``OISModel.encode`` / ``decode`` on a batch). A
   convolutional encoder accepts any input size: ``input_size`` (default 128 for one, the
   model's ``img_size`` otherwise) costs about 20 ms a prompt on one CPU thread against
   35-50 ms at 192, at the same mask quality for objects of the target size.
4. **Masks kept** by predicted quality (the IoU head's ``score``) and ``stability`` (the IoU
   of the mask at logit thresholds ``-stability_offset`` and ``+stability_offset``): of the
   K proposals and the refined mask, the one with the best ``score * stability`` that holds
   the prompt and does not touch the window's edge inside the image. A mask cut by the
   window (an object larger than it) sends its prompt to a window twice as large (up to
   ``zoom_out`` times). A mask much larger than an object with two cores (touching objects)
   is asked again with negative clicks on its other cores; with ``refine`` every kept prompt
   gets that second forward (its mask as the previous mask). Kept when ``score >=
   min_score``, ``stability >= min_stability`` and, for a bright (dark) polarity, the mask is
   brighter (darker) than the ring around it.
5. **Duplicates removed** by non-maximum suppression on the masks (IoU > ``nms_iou``, best
   ``score * stability`` first). A smaller object inside a larger one survives (their IoU
   is small); the labels are painted largest first, so the smaller one stays visible, and a
   larger mask left with less than ``min_visible`` of its own pixels (a group of objects that
   were each found on their own) is dropped.
6. **Large images** are seeded in tiles of ``tile_size`` pixels (each tile prompts its own
   core; the windows reach into the neighbours) and all masks meet in one global
   suppression (the stitching); each prompt's window is at the object's scale, so objects
   are never shrunk to one 192 px view. A numpy image is normalised once, whole
   (``data.images.to_unit_rgb``: grey, 16-bit, float and colour as ``segment`` reads them).
   A lazy array (dask, zarr, a memory map) or a multiscale pyramid (a list of arrays,
   largest first: the largest level is segmented) is never read whole: each tile's seeds
   come from that tile and its halo, each tile's windows from one read of their joint box,
   and the probe places its prompts in one tile at the centre, all through
   ``data.windows.WindowReader`` (its intensity window: the session's for the same input).
   ``segment_all_input`` holds both kinds of source; the labels are one ``(H, W)`` array.

No napari and no files: ``napari-ois segment-all`` (``segment_all_cli``) is the command line
and folder runner around this function.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .segment_all_input import ArrayImage, image_source

#: the object diameter, in model-input pixels, the windows are sized for (a third of a
#: 128 px input; the measured sweet spot of the shipped model: docs/benchmarks.md)
TARGET_DIAMETER = 44.0
#: the scales (object diameters in image pixels) ``estimate_object_size`` tries
PROBE_SIZES = (8.0, 16.0, 32.0, 64.0, 128.0)
_DEBUG = False


class SegmentAllCancelled(RuntimeError):
    """``should_stop()`` returned True: the run stopped and returned no labels."""


@dataclass
class Candidate:
    """One kept mask: ``mask`` is the object inside its bounding box at ``(r0, c0)``."""

    r0: int
    c0: int
    mask: np.ndarray
    score: float
    stability: float
    prompt: Tuple[float, float]
    #: the seed's polarity: +1 a bright blob, -1 a dark one, 0 a grid or coverage prompt
    polarity: float = 0.0
    area: int = field(init=False)

    def __post_init__(self):
        self.area = int(self.mask.sum())

    @property
    def quality(self) -> float:
        return float(self.score) * float(self.stability)

    @property
    def bbox(self) -> Tuple[int, int, int, int]:
        """``(r0, c0, r1, c1)``, end exclusive."""
        return self.r0, self.c0, self.r0 + self.mask.shape[0], self.c0 + self.mask.shape[1]


@dataclass
class SegmentAllInfo:
    """What a run did (``segment_all(..., return_info=True)``)."""

    object_size: float
    window: int
    input_size: int
    polarity: str = "both"
    prompts: int = 0
    prompts_per_pass: List[int] = field(default_factory=list)
    #: prompts run again on a larger window because their object was cut by the first one
    retried: int = 0
    candidates: int = 0
    objects: int = 0
    seconds: float = 0.0
    tiles: int = 0


# --------------------------------------------------------------------------- the model
def _sized_model(model, input_size: int):
    """``model`` running on ``input_size`` px inputs: the model itself when that is its
    ``img_size``, otherwise a shallow copy with its own config (the weights are shared, the
    caller's model is not changed). Only convolutional encoders accept another size."""
    if input_size == model.cfg.img_size:
        return model
    if getattr(model.encoder, "is_vit", False):
        raise ValueError(f"input_size {input_size}: a ViT encoder runs only at its img_size "
                         f"({model.cfg.img_size})")
    if input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
    sized = copy.copy(model)  # shares the modules (and their weights)
    sized.cfg = dataclasses.replace(model.cfg, img_size=int(input_size))
    return sized


class _Runner:
    """Runs one-click prompts on windows centred on them, ``batch_size`` at a time."""

    def __init__(self, model, device, image, window: int, input_size: int,
                 batch_size: int, stability_offset: float):
        import torch

        self.torch = torch
        self.model = model
        self.device = device
        self.window = int(window)
        self.size = int(input_size)
        self.batch_size = max(1, int(batch_size))
        self.offset = float(stability_offset)
        #: the image (``segment_all_input``: in memory or read by windows)
        self.image = image
        self.shape = tuple(image.shape)
        #: the object diameter this window is sized for (``AutoSegmenter.window_for``)
        self.object_size = self.window * TARGET_DIAMETER / self.size

    def origins(self, points: np.ndarray) -> np.ndarray:
        """The top-left corner of each point's window (kept inside the image, padded with
        zeros at the bottom and right to one window when it is smaller)."""
        win = self.window
        hp, wp = max(self.shape[0], win), max(self.shape[1], win)
        r = np.clip(np.round(points[:, 0] - win / 2), 0, hp - win)
        c = np.clip(np.round(points[:, 1] - win / 2), 0, wp - win)
        return np.stack([r, c], 1).astype(np.int64)

    def hold(self, origins: np.ndarray) -> None:
        """Tell the image that the next windows are those at ``origins`` (a lazy image reads
        their joint box once)."""
        if len(origins):
            win = self.window
            self.image.hold((int(origins[:, 0].min()), int(origins[:, 0].max()) + win,
                             int(origins[:, 1].min()), int(origins[:, 1].max()) + win))

    def grey(self, origin, valid: Tuple[int, int]) -> np.ndarray:
        """The grey values of the window at ``origin`` inside the image (``valid`` rows, cols)."""
        r, c = int(origin[0]), int(origin[1])
        return self.image.grey(r, r + int(valid[0]), c, c + int(valid[1]))

    def _inputs(self, origins: np.ndarray):
        torch = self.torch
        win, s = self.window, self.size
        crops = torch.from_numpy(self.image.windows(origins, win)).permute(0, 3, 1, 2).contiguous()
        if win != s:
            crops = torch.nn.functional.interpolate(crops, size=(s, s), mode="bilinear",
                                                    align_corners=False, antialias=win > s)
        return crops.to(self.device)

    def _to_window(self, logits):
        win = self.window
        return self.torch.nn.functional.interpolate(
            logits.float(), size=(win, win), mode="bilinear", align_corners=False).cpu().numpy()

    def run(self, points: np.ndarray, origins: np.ndarray, prev: Optional[np.ndarray] = None,
            negatives: Optional[Sequence[np.ndarray]] = None):
        """Logits ``(B, M, win, win)`` and scores ``(B, M)``: all K + 1 masks, or with
        ``prev`` (window logits ``(B, win, win)``) the refined mask only (M = 1).
        ``negatives``: per prompt, ``(n, 2)`` negative clicks in image pixels (with ``prev``)."""
        torch = self.torch
        s, win = self.size, self.window
        with torch.inference_mode():
            emb = self.model.encode(self._inputs(origins))
            n_neg = max((len(n) for n in negatives), default=0) if negatives is not None else 0
            pts = np.zeros((len(points), 1 + n_neg, 2))
            lab = np.full((len(points), 1 + n_neg), -1, np.int64)
            pts[:, 0], lab[:, 0] = points, 1
            for b in range(len(points) if n_neg else 0):
                neg = np.asarray(negatives[b], np.float64).reshape(-1, 2)
                pts[b, 1:1 + len(neg)], lab[b, 1:1 + len(neg)] = neg, 0
            coords = torch.as_tensor((pts - origins[:, None] + 0.5) * (s / win), dtype=torch.float32,
                                     device=self.device)
            labels = torch.as_tensor(lab, device=self.device)
            prev_t = None
            if prev is not None:
                p = torch.from_numpy(np.ascontiguousarray(prev, dtype=np.float32))[:, None]
                prev_t = torch.sigmoid(torch.nn.functional.interpolate(
                    p, size=(s, s), mode="bilinear", align_corners=False)).to(self.device)
            logits, iou = self.model.decode(emb, coords, labels, prev_t)
            if prev is not None:
                logits, iou = logits[:, :1], iou[:, :1]
            return self._to_window(logits), iou.float().cpu().numpy()


# --------------------------------------------------------------------------- prompts
def blob_seeds(grey: np.ndarray, object_size: float, max_points: Optional[int] = None,
               min_contrast: float = 2.0, polarity: str = "both") -> np.ndarray:
    """Blob centres at the scale of objects ``object_size`` px across.

    The extrema of a difference of Gaussians (sigma ``r / sqrt 2`` and 1.6 times that,
    ``r = object_size / 2``), at least ``r / 2`` apart, whose response exceeds
    ``min_contrast`` robust standard deviations of the response: maxima for ``"bright"``
    objects, minima for ``"dark"`` ones, both for ``"both"``. Returns ``(N, 3)``: row, col
    and the polarity (+1 bright, -1 dark), the strongest first; ``max_points`` is per
    polarity.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    if polarity not in ("both", "bright", "dark"):
        raise ValueError(f"polarity must be 'both', 'bright' or 'dark', got {polarity!r}")
    r = max(1.0, object_size / 2)
    sigma = r / math.sqrt(2)
    dog = ndi.gaussian_filter(grey, sigma) - ndi.gaussian_filter(grey, 1.6 * sigma)
    med = float(np.median(dog))
    mad = float(np.median(np.abs(dog - med))) * 1.4826
    if not np.isfinite(mad) or mad <= 1e-8:
        mad = float(dog.std()) or 1e-8
    thr = max(min_contrast * mad, 1e-6)
    sep = max(1, int(round(r / 2)))
    out, strength = [], []
    signs = {"both": (1.0, -1.0), "bright": (1.0,), "dark": (-1.0,)}[polarity]
    for sign in signs:
        resp = sign * (dog - med)
        peaks = peak_local_max(resp, min_distance=sep, threshold_abs=thr, exclude_border=False)
        if len(peaks) == 0:
            continue
        val = resp[peaks[:, 0], peaks[:, 1]]
        order = np.argsort(-val, kind="stable")[:max_points]
        out.append(np.column_stack([peaks[order].astype(np.float64), np.full(len(order), sign)]))
        strength.append(val[order])
    if not out:
        return np.zeros((0, 3))
    pts = np.concatenate(out)
    return pts[np.argsort(-np.concatenate(strength), kind="stable")]


def grid_points(shape: Tuple[int, int], points_per_side: int) -> np.ndarray:
    """A regular ``points_per_side`` x ``points_per_side`` grid of cell centres, ``(N, 3)``
    (row, col, polarity 0)."""
    h, w = shape
    n = max(1, int(points_per_side))
    rr = (np.arange(n) + 0.5) * h / n - 0.5
    cc = (np.arange(n) + 0.5) * w / n - 0.5
    pts = np.stack(np.meshgrid(rr, cc, indexing="ij"), -1).reshape(-1, 2)
    return np.column_stack([pts, np.zeros(len(pts))])


def coverage_seeds(covered: np.ndarray, object_size: float) -> np.ndarray:
    """Prompts the model's own masks propose: the centres of the regions no mask covers.

    The maxima of the distance transform of the uncovered pixels, at least a radius apart,
    where the uncovered region is at least ``object_size / 4`` deep (room for an object).
    ``(N, 3)`` (row, col, polarity 0), the deepest first.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    free = ~covered
    if not free.any():
        return np.zeros((0, 3))
    depth = ndi.distance_transform_edt(free)
    r = max(1.0, object_size / 2)
    peaks = peak_local_max(depth, min_distance=max(1, int(round(r))), threshold_abs=r / 2,
                           exclude_border=False)
    if len(peaks) == 0:
        return np.zeros((0, 3))
    order = np.argsort(-depth[peaks[:, 0], peaks[:, 1]], kind="stable")
    return np.column_stack([peaks[order].astype(np.float64), np.zeros(len(order))])


# --------------------------------------------------------------------------- masks
def _stability(logits: np.ndarray, offset: float) -> np.ndarray:
    """``(..., H, W)`` -> IoU of ``logits > offset`` and ``logits > -offset`` (a subset)."""
    hi = (logits > offset).sum(axis=(-2, -1))
    lo = (logits > -offset).sum(axis=(-2, -1))
    return np.where(lo > 0, hi / np.maximum(lo, 1), 0.0)


def _cut_sides(origin, window: int, shape) -> Tuple[bool, bool, bool, bool]:
    """Which window sides (top, bottom, left, right) lie inside the image (an object
    touching one of them is cut)."""
    r, c = int(origin[0]), int(origin[1])
    h, w = shape
    return r > 0, r + window < h, c > 0, c + window < w


def _touches_cut(mask: np.ndarray, sides) -> bool:
    top, bottom, left, right = sides
    return bool((top and mask[0].any()) or (bottom and mask[-1].any())
                or (left and mask[:, 0].any()) or (right and mask[:, -1].any()))


def _object_mask(logits: np.ndarray, local_pt: Tuple[int, int], valid: Tuple[int, int]):
    """The connected part of ``logits > 0`` that holds the prompt, holes filled; None when
    the prompt is outside the mask."""
    from scipy import ndimage as ndi

    mask = logits[: valid[0], : valid[1]] > 0
    r, c = local_pt
    if not mask[r, c]:
        return None
    lab, _ = ndi.label(mask)
    mask = ndi.binary_fill_holes(lab == lab[r, c])
    return mask


def _contrast_ok(grey: np.ndarray, mask: np.ndarray, polarity: str) -> bool:
    """Whether ``mask`` is brighter (``"bright"``) or darker (``"dark"``) on average than a
    ring of about a sixth of its diameter around it (objects of the chosen polarity stand
    out that way; the gaps between them do not)."""
    from scipy import ndimage as ndi

    area = int(mask.sum())
    width = max(2, int(round(math.sqrt(area / math.pi) / 3)))
    ring = ndi.binary_dilation(mask, iterations=width) & ~mask
    if not ring.any() or not area:
        return True
    diff = float(grey[mask].mean()) - float(grey[ring].mean())
    return diff > 0 if polarity == "bright" else diff < 0


def _other_cores(mask: np.ndarray, local: Tuple[int, int], object_size: float,
                 max_points: int = 3, area_factor: float = 1.0) -> np.ndarray:
    """Where to put negative clicks when ``mask`` looks like several touching objects: the
    maxima of its distance transform at least an object radius from the prompt and from each
    other, at least a quarter diameter deep, when the mask's area exceeds ``area_factor``
    times an object's (``pi (object_size / 2)^2``). ``(n, 2)`` in window pixels; empty otherwise."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    r = max(1.0, object_size / 2)
    if mask.sum() <= area_factor * math.pi * r * r:
        return np.zeros((0, 2))
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    peaks = peak_local_max(depth, min_distance=max(1, int(round(r))), threshold_abs=r / 2,
                           exclude_border=False, num_peaks=max_points + 1)
    far = np.hypot(peaks[:, 0] - local[0], peaks[:, 1] - local[1]) >= r if len(peaks) else []
    return peaks[far][:max_points].astype(np.float64) if len(peaks) else np.zeros((0, 2))


def _trim(mask: np.ndarray) -> Tuple[int, int, np.ndarray]:
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return int(rows[0]), int(cols[0]), mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _bbox_iou_candidates(c: Candidate, kept: List[Candidate], boxes: np.ndarray) -> List[int]:
    if not kept:
        return []
    r0, c0, r1, c1 = c.bbox
    b = boxes[: len(kept)]
    hit = (b[:, 0] < r1) & (b[:, 2] > r0) & (b[:, 1] < c1) & (b[:, 3] > c0)
    return np.flatnonzero(hit).tolist()


def _intersection(a: Candidate, b: Candidate) -> int:
    r0, c0 = max(a.r0, b.r0), max(a.c0, b.c0)
    r1 = min(a.r0 + a.mask.shape[0], b.r0 + b.mask.shape[0])
    c1 = min(a.c0 + a.mask.shape[1], b.c0 + b.mask.shape[1])
    if r1 <= r0 or c1 <= c0:
        return 0
    ma = a.mask[r0 - a.r0:r1 - a.r0, c0 - a.c0:c1 - a.c0]
    mb = b.mask[r0 - b.r0:r1 - b.r0, c0 - b.c0:c1 - b.c0]
    return int(np.count_nonzero(ma & mb))


def mask_nms(candidates: Sequence[Candidate], iou_threshold: float = 0.5) -> List[Candidate]:
    """Greedy non-maximum suppression on masks, best ``quality`` first: a mask whose IoU with
    a kept one exceeds ``iou_threshold`` is a duplicate. (A small object inside a large one
    has a small IoU with it: both are kept.)"""
    order = sorted(candidates, key=lambda c: -c.quality)
    kept: List[Candidate] = []
    boxes = np.zeros((len(order), 4), np.int64)
    for c in order:
        dup = False
        for j in _bbox_iou_candidates(c, kept, boxes):
            inter = _intersection(c, kept[j])
            if inter and inter / (c.area + kept[j].area - inter) > iou_threshold:
                dup = True
                break
        if not dup:
            boxes[len(kept)] = c.bbox
            kept.append(c)
    return kept


def paint_labels(candidates: Sequence[Candidate], shape: Tuple[int, int],
                 min_visible: float = 0.5, min_area: int = 1) -> np.ndarray:
    """Instance labels ``(H, W)`` int32 (0 background, 1..N), largest masks painted first so
    that smaller objects inside them stay visible; a mask left with less than
    ``min_visible`` of its pixels (or fewer than ``min_area``) is dropped."""
    labels = np.zeros(shape, np.int32)
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i].area)
    for n, i in enumerate(order, start=1):
        c = candidates[i]
        r0, c0, r1, c1 = c.bbox
        view = labels[r0:r1, c0:c1]
        view[c.mask] = n
    if not order:
        return labels
    visible = np.bincount(labels.ravel(), minlength=len(order) + 1)
    own = np.array([0] + [candidates[i].area for i in order])
    drop = (visible < min_visible * own) | (visible < max(1, min_area))
    drop[0] = False
    lut = np.zeros(len(order) + 1, np.int32)
    keep = np.flatnonzero(~drop[1:]) + 1
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[labels]


# --------------------------------------------------------------------------- engine
POLARITIES = ("auto", "both", "bright", "dark")


class AutoSegmenter:
    """``segment_all`` with its model and settings bound (reuse it over many images).

    See :func:`segment_all` for the arguments.
    """

    def __init__(self, predictor=None, model="default", device="cpu", *,
                 object_size: Optional[float] = None, polarity: str = "auto",
                 points_per_side: Optional[int] = None, input_size: Optional[int] = None,
                 batch_size: int = 16, min_score: float = 0.55, min_stability: float = 0.15,
                 stability_offset: float = 1.0, nms_iou: float = 0.5, refine: bool = True,
                 passes: int = 1, min_visible: float = 0.5, tile_size: int = 1024,
                 max_prompts: Optional[int] = None, min_contrast: float = 1.0,
                 probe_points: int = 6, polarity_ratio: float = 3.0, zoom_out: int = 2):
        from .registry import build_model, resolve_device

        if predictor is not None:
            net, dev = predictor.model, predictor.device
        else:
            dev = resolve_device(device) if isinstance(device, str) else device
            if isinstance(model, str) or hasattr(model, "__fspath__"):
                model = build_model(model)
            net = model.to(dev).eval()
        self.base_model = net
        self.device = dev
        conv = not getattr(net.encoder, "is_vit", False)
        if input_size is None:
            input_size = 128 if conv else net.cfg.img_size
        self.input_size = int(input_size)
        self.model = _sized_model(net, self.input_size)
        if object_size is not None:
            try:
                ok = math.isfinite(float(object_size)) and float(object_size) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"object_size must be a positive number of pixels, got {object_size!r}")
        if polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
        if points_per_side is not None and int(points_per_side) < 1:
            raise ValueError(f"points_per_side must be at least 1, got {points_per_side!r}")
        self.object_size = None if object_size is None else float(object_size)
        self.polarity = polarity
        self.points_per_side = None if points_per_side is None else int(points_per_side)
        self.batch_size = max(1, int(batch_size))
        self.min_score = float(min_score)
        self.min_stability = float(min_stability)
        self.stability_offset = float(stability_offset)
        self.nms_iou = float(nms_iou)
        self.refine = bool(refine)
        self.passes = max(1, int(passes))
        self.min_visible = float(min_visible)
        self.tile_size = max(64, int(tile_size))
        self.max_prompts = None if max_prompts is None else max(0, int(max_prompts))
        self.min_contrast = float(min_contrast)
        self.probe_points = max(1, int(probe_points))
        self.polarity_ratio = float(polarity_ratio)
        self.zoom_out = max(0, int(zoom_out))

    # ------------------------------------------------------------------ helpers
    def window_for(self, object_size: float) -> int:
        """The window (image pixels) that shows an object ``object_size`` px across at
        ``TARGET_DIAMETER`` model pixels."""
        return max(16, int(round(object_size * self.input_size / TARGET_DIAMETER)))

    def _runner(self, image, object_size: float) -> _Runner:
        """A runner on ``image``: float RGB in [0, 1] ``(H, W, 3)`` or a source of
        ``segment_all_input`` (``ArrayImage``, ``WindowedImage``)."""
        if isinstance(image, np.ndarray):
            image = ArrayImage(image)
        return _Runner(self.model, self.device, image, self.window_for(object_size), self.input_size,
                       self.batch_size, self.stability_offset)

    def _candidates(self, runner: _Runner, seeds: np.ndarray, tick=None,
                    refine: Optional[bool] = None, cut: Optional[list] = None,
                    polarity: str = "both", explained: Optional[list] = None) -> List[Candidate]:
        """Run the prompts ``seeds`` ``(N, 3)`` (row, col, polarity) and return the masks that
        pass the filters.

        ``cut``: a list that receives the seeds whose only confident masks were cut by the
        window (objects larger than it: worth a larger window). ``polarity`` "bright" or
        "dark": a mask must be brighter (darker) on average than the ring around it.
        ``explained``: a list that receives ``(r0, c0, mask)`` per prompt, the region its
        most confident mask claims (kept or not: background included), for the coverage."""
        refine = self.refine if refine is None else refine
        out: List[Candidate] = []
        h, w = runner.shape
        win = runner.window
        bs = runner.batch_size
        runner.hold(runner.origins(seeds[:, :2]))  # a lazy image: these windows' box, read once
        for i in range(0, len(seeds), bs):
            pts = seeds[i:i + bs, :2]
            org = runner.origins(pts)
            logits, scores = runner.run(pts, org)
            stab = _stability(logits, self.stability_offset)
            chosen = []
            for j in range(len(pts)):
                local = (int(round(pts[j, 0])) - org[j, 0], int(round(pts[j, 1])) - org[j, 1])
                valid = (min(win, h - org[j, 0]), min(win, w - org[j, 1]))
                if explained is not None:
                    top = logits[j, int(np.argmax(scores[j]))][: valid[0], : valid[1]] > 0
                    explained.append((int(org[j, 0]), int(org[j, 1]), top))
                sides = _cut_sides(org[j], win, (h, w))
                best, best_mask, was_cut = -1, None, False
                for k in np.argsort(-(scores[j] * stab[j]), kind="stable"):
                    m = _object_mask(logits[j, k], local, valid)
                    if m is None:
                        continue
                    if not _touches_cut(m, sides):
                        best, best_mask = int(k), m
                        break
                    was_cut = was_cut or (scores[j, k] >= self.min_score and stab[j, k] >= self.min_stability)
                if best >= 0:
                    chosen.append((j, best, local, valid, sides, best_mask))
                elif was_cut and cut is not None:
                    cut.append(seeds[i + j])
            # a mask much larger than the objects with two cores is likely two touching
            # objects: the model is asked again with a negative click on the other core
            negs = {j: _other_cores(mask, local, runner.object_size) for j, k, local, valid, sides, mask in chosen}
            negs = {j: n + org[j] for j, n in negs.items() if len(n)}
            refined = {}
            again = [c for c in chosen if refine or c[0] in negs]
            if again:
                idx = [c[0] for c in again]
                prev = np.stack([logits[j, k] for j, k, *_ in again])
                neg_list = [negs.get(j, np.zeros((0, 2))) for j in idx] if negs else None
                r_logits, r_scores = runner.run(pts[idx], org[idx], prev=prev, negatives=neg_list)
                r_stab = _stability(r_logits, self.stability_offset)
                refined = {j: (r_logits[n, 0], r_scores[n, 0], r_stab[n, 0]) for n, j in enumerate(idx)}
            for j, k, local, valid, sides, mask in chosen:
                score, st = float(scores[j, k]), float(stab[j, k])
                if j in refined:
                    rl, rs, rst = refined[j]
                    rm = _object_mask(rl, local, valid)
                    # a split (negative clicks) stands only if the model is about as sure of it
                    ok = j not in negs or float(rs) >= score - 0.05
                    if rm is not None and ok and not _touches_cut(rm, sides):
                        mask, score, st = rm, float(rs), float(rst)
                if score < self.min_score or st < self.min_stability:
                    continue
                if polarity in ("bright", "dark") and not _contrast_ok(runner.grey(org[j], valid), mask,
                                                                       polarity):
                    continue
                r0, c0, trimmed = _trim(mask)
                out.append(Candidate(int(org[j, 0]) + r0, int(org[j, 1]) + c0, trimmed, score, st,
                                     (float(pts[j, 0]), float(pts[j, 1])), float(seeds[i + j, 2])))
            if tick is not None:
                tick(len(pts))
        return out

    def probe(self, rgb, grey: Optional[np.ndarray] = None,
              box: Optional[Tuple[int, int, int, int]] = None) -> Tuple[float, str]:
        """``(object_size, polarity)`` for ``rgb`` (float RGB in [0, 1], or a source of
        ``segment_all_input``), from a few prompts placed in ``box`` ``(r0, r1, c0, c1)``
        (default: the whole image; ``grey``: its grey values, when already at hand).

        At each scale of ``PROBE_SIZES`` (only ``object_size`` when it is given), the
        ``probe_points`` strongest bright and dark blob centres are prompted on that scale's
        window. The scale whose kept masks add up to the most ``score * stability`` wins; the
        object size is their median equivalent diameter. The polarity (with ``polarity=
        "auto"``) is the side whose masks at that scale add up to ``polarity_ratio`` times
        the other's, or both. With both ``object_size`` and a polarity given, nothing is run.
        The windows reach past ``box`` (a mask is cut only by the image's own edges).
        """
        fixed = None if self.polarity == "auto" else self.polarity
        if self.object_size is not None and fixed is not None:
            return self.object_size, fixed
        image = ArrayImage(rgb) if isinstance(rgb, np.ndarray) else rgb
        h, w = image.shape[:2]
        r0, r1, c0, c1 = (0, h, 0, w) if box is None else box
        grey = image.grey(r0, r1, c0, c1) if grey is None else grey
        sizes = [self.object_size] if self.object_size is not None else [
            s for s in PROBE_SIZES if s <= max(r1 - r0, c1 - c0)] or [PROBE_SIZES[0]]
        best = None
        for size in sizes:
            seeds = blob_seeds(grey, size, max_points=self.probe_points, min_contrast=0.0,
                               polarity=fixed if fixed in ("bright", "dark") else "both") + [r0, c0, 0]
            cands = self._candidates(self._runner(image, size), seeds, refine=False) if len(seeds) else []
            # masks of about the probed size count (a window shows objects up to ~2x larger
            # whole, and a scale too small finds parts of objects)
            cands = [c for c in cands if 0.5 * size <= 2 * math.sqrt(c.area / math.pi) <= 2 * size]
            total = {s: sum(c.quality for c in cands if c.polarity == s) for s in (1.0, -1.0)}
            if _DEBUG:
                print(f"probe size {size}: bright {total[1.0]:.2f} ({sum(c.polarity > 0 for c in cands)}) "
                      f"dark {total[-1.0]:.2f} ({sum(c.polarity < 0 for c in cands)})")
            if best is None or max(total.values()) > max(best[1].values()):
                best = (size, total, cands)
        size, total, cands = best
        if fixed is not None:
            polarity = fixed
        elif total[1.0] >= self.polarity_ratio * total[-1.0] and total[1.0] > 0:
            polarity = "bright"
        elif total[-1.0] >= self.polarity_ratio * total[1.0] and total[-1.0] > 0:
            polarity = "dark"
        else:
            polarity = "both"
        if self.object_size is not None:
            return self.object_size, polarity
        keep = [c for c in cands if polarity == "both" or c.polarity == (1.0 if polarity == "bright" else -1.0)]
        if not keep:
            return float(size), polarity
        diam = float(np.median([2 * math.sqrt(c.area / math.pi) for c in keep]))
        return float(np.clip(diam, min(PROBE_SIZES) / 2, max(PROBE_SIZES) * 2)), polarity

    def estimate_object_size(self, rgb: np.ndarray) -> float:
        """The typical object diameter in image pixels (``probe``)."""
        return self.probe(rgb)[0]

    def _tiles(self, shape, halo: int):
        """``(core, outer)`` boxes ``(r0, r1, c0, c1)`` covering the image."""
        h, w = shape
        t = self.tile_size
        for r0 in range(0, h, t):
            for c0 in range(0, w, t):
                core = (r0, min(h, r0 + t), c0, min(w, c0 + t))
                outer = (max(0, r0 - halo), min(h, r0 + t + halo), max(0, c0 - halo), min(w, c0 + t + halo))
                yield core, outer

    @staticmethod
    def _in_core(seeds: np.ndarray, core) -> np.ndarray:
        ok = ((seeds[:, 0] >= core[0]) & (seeds[:, 0] < core[1])
              & (seeds[:, 1] >= core[2]) & (seeds[:, 1] < core[3]))
        return seeds[ok]

    def _coverage_pass(self, tiles, cands: List[Candidate], tried: np.ndarray, size: float,
                       explained: Sequence = ()) -> List[np.ndarray]:
        """Per tile, the next pass's prompts: centres of the regions of the tile that no kept
        mask covers, no earlier prompt's most confident mask claims (``explained``: e.g. the
        background around a background click) and no prompt already tried is within a radius
        of."""
        from scipy import ndimage as ndi

        r = max(1.0, size / 2)
        claimed = [Candidate(r0, c0, m, 0.0, 0.0, (0.0, 0.0)) for r0, c0, m in explained if m.any()]
        cands = list(cands) + claimed
        boxes = np.array([c.bbox for c in cands], np.int64).reshape(-1, 4)
        out = []
        for core, outer in tiles:
            r0, r1, c0, c1 = outer
            covered = np.zeros((r1 - r0, c1 - c0), bool)
            hit = np.flatnonzero((boxes[:, 0] < r1) & (boxes[:, 2] > r0) & (boxes[:, 1] < c1) & (boxes[:, 3] > c0))
            for i in hit:
                c = cands[i]
                br0, bc0, br1, bc1 = c.bbox
                a0, a1, b0, b1 = max(br0, r0), min(br1, r1), max(bc0, c0), min(bc1, c1)
                covered[a0 - r0:a1 - r0, b0 - c0:b1 - c0] |= c.mask[a0 - br0:a1 - br0, b0 - bc0:b1 - bc0]
            near = np.zeros_like(covered)
            pts = tried[(tried[:, 0] >= r0 - r) & (tried[:, 0] < r1 + r) & (tried[:, 1] >= c0 - r) & (tried[:, 1] < c1 + r)]
            if len(pts):
                rr = np.clip(np.round(pts[:, 0]).astype(int) - r0, 0, r1 - r0 - 1)
                cc = np.clip(np.round(pts[:, 1]).astype(int) - c0, 0, c1 - c0 - 1)
                near[rr, cc] = True
                near = ndi.distance_transform_edt(~near) <= r
            seeds = coverage_seeds(covered | near, size) + [r0, c0, 0]
            out.append(self._in_core(seeds, core))
        return out

    def __call__(self, image, contrast_limits=None, progress: Optional[Callable] = None,
                 should_stop: Optional[Callable[[], bool]] = None, return_info: bool = False):
        t0 = time.perf_counter()
        source = image_source(image, contrast_limits)  # numpy whole; lazy and pyramids by windows
        h, w = source.shape

        def check():
            if should_stop is not None and should_stop():
                raise SegmentAllCancelled("segment-all was cancelled")

        check()
        size, polarity = self.probe(source, box=source.probe_box(self.tile_size))
        check()
        runner = self._runner(source, size)
        info = SegmentAllInfo(object_size=size, window=runner.window, input_size=self.input_size,
                              polarity=polarity)
        tiles = list(self._tiles((h, w), runner.window + int(math.ceil(2 * size))))
        info.tiles = len(tiles)
        state = {"done": 0, "total": 0}

        def tick(n):
            state["done"] += n
            if progress is not None:
                progress(state["done"], max(state["total"], state["done"]))
            check()

        # the first pass: blob centres (and the grid) in every tile's core
        passes = []
        for core, outer in tiles:
            r0, r1, c0, c1 = outer
            seeds = blob_seeds(source.grey(r0, r1, c0, c1), size, min_contrast=self.min_contrast,
                               polarity=polarity)
            if self.points_per_side:
                cr0, cr1, cc0, cc1 = core
                seeds = np.concatenate([seeds, grid_points((cr1 - cr0, cc1 - cc0), self.points_per_side)
                                        + [cr0 - r0, cc0 - c0, 0]])
            passes.append(self._in_core(seeds + [r0, c0, 0], core))
        cands: List[Candidate] = []
        explained: list = []
        tried = np.zeros((0, 3))
        for n_pass in range(self.passes):
            if n_pass:  # the later passes: where the model's own masks found nothing yet
                passes = self._coverage_pass(tiles, cands, tried, size, explained)
            if self.max_prompts is not None:
                left = self.max_prompts - state["total"]
                n_all = sum(map(len, passes))
                if n_all > left:
                    passes = [p[: left * len(p) // max(1, n_all)] for p in passes]
            n_new = sum(map(len, passes))
            if n_new == 0:
                break
            state["total"] += n_new
            info.prompts_per_pass.append(n_new)
            if progress is not None:
                progress(state["done"], state["total"])
            for seeds in passes:
                cut: list = []
                cands.extend(self._candidates(runner, seeds, tick, cut=cut, polarity=polarity,
                                              explained=explained))
                # objects larger than the window: the same prompts on larger windows
                for level in range(1, self.zoom_out + 1):
                    if not cut:
                        break
                    retry, cut = np.array(cut), []
                    state["total"] += len(retry)
                    info.retried += len(retry)
                    big = self._runner(source, size * 2 ** level)
                    cands.extend(self._candidates(big, retry, tick, cut=cut if level < self.zoom_out else None,
                                                  polarity=polarity))
            tried = np.concatenate([tried, *passes])
        info.prompts = state["total"]
        info.candidates = len(cands)
        kept = mask_nms(cands, self.nms_iou)
        min_area = max(4, int(math.pi * (size / 8) ** 2))
        labels = paint_labels(kept, (h, w), self.min_visible, min_area)
        info.objects = int(labels.max())
        info.seconds = time.perf_counter() - t0
        return (labels, info) if return_info else labels


def segment_all(image, predictor=None, model="default", device="cpu", *,
                contrast_limits: Optional[Sequence[float]] = None,
                progress: Optional[Callable[[int, int], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None, return_info: bool = False,
                **settings):
    """All the objects of ``image`` as instance labels ``(H, W)`` int32 (0 background, 1..N).

    Args:
        image: (H, W) or (H, W, C), any dtype ``data.images.to_unit_rgb`` reads (grey,
            16-bit, float, RGB(A)): a numpy array, a lazy array (dask, zarr, ...) or a
            multiscale pyramid (a list of such arrays, largest first; the largest level is
            segmented), the last two read tile by tile (``segment_all_input``).
        predictor: an ``OISPredictor`` whose model and device to use; otherwise ``model``
            (a registry name, weights path or an ``OISModel``) is loaded on ``device``.
        object_size: typical object diameter in image pixels; None estimates it (``probe``).
        polarity: ``"bright"`` objects (fluorescence), ``"dark"`` ones (H&E nuclei),
            ``"both"``, or ``"auto"`` (the probe's masks decide).
        points_per_side: also prompt a regular grid of this many points per side per tile.
        input_size: the model input side for the windows (default 128 for a convolutional
            encoder, the model's ``img_size`` for a ViT).
        batch_size: prompts per forward.
        min_score, min_stability: the filters on the predicted IoU and on the stability (IoU
            of the mask at logits ``+-stability_offset``).
        nms_iou: masks overlapping a better one by more than this IoU are duplicates.
        refine: a second forward per prompt with its chosen mask as the previous mask.
        passes: 1 (default) = blob-centre prompts only; each further pass prompts the
            centres of the regions that no mask covers or claims yet (measured: about one
            more object per set for 50-80 % more time, docs/benchmarks.md "Segment all").
        min_visible: a mask left with less than this fraction visible under smaller objects
            is dropped.
        tile_size: the image is seeded tile by tile (cores of this size; the windows reach
            across), so memory stays bounded on large images.
        max_prompts: an upper bound on the prompts after the probe (None: no bound).
        min_contrast: blob centres are prompted where the difference of Gaussians exceeds
            this many robust standard deviations (lower: more prompts, more recall, slower).
        contrast_limits: an intensity window for non-uint8 images (as napari's).
        progress: called as ``progress(done, total)`` after each batch (``total`` grows when
            a later pass adds prompts).
        should_stop: polled between batches; when it returns True the run raises
            ``SegmentAllCancelled`` (no partial labels).
        return_info: also return a ``SegmentAllInfo`` (object size, polarity, window,
            prompts per pass, time).
        settings: the keyword arguments of :class:`AutoSegmenter`, whose defaults are the
            ones used here (object_size ... min_contrast above; also probe_points,
            polarity_ratio, zoom_out).
    """
    seg = AutoSegmenter(predictor, model, device, **settings)
    return seg(image, contrast_limits=contrast_limits, progress=progress, should_stop=should_stop,
               return_info=return_info)


class _CallableModule(types.ModuleType):
    """``napari_ois.segment_all`` is both this module and the function: once the module is
    imported (``from napari_ois.segment_all import AutoSegmenter``), Python binds the package
    attribute to the module, so the module calls the function."""

    def __call__(self, *args, **kwargs):
        return segment_all(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

"""Image-level predictor: ``set_image`` once, ``predict`` per prompt.

Coordinates are napari's (row, col) pixel coordinates of the image as given. Nothing here
knows about Qt or napari; a widget, a script, the evaluation and the command line all drive
this class.
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from . import _triton_guard  # noqa: F401 - before .model imports timm (see _triton_guard)
from .data.images import normalize_depth, to_unit_rgb
from .model import ImageEmbedding, OISModel
from .model.transforms import ResizeTransform
from .data.prompts import OUTSIDE_LOGIT, Box, Prediction, paste, wants_proposals
from .data.windows import WindowReader, is_lazy, is_pyramid
from .registry import build_model, resolve_device
from .window_search import (  # noqa: F401 - WindowSearch is part of this module's API
    WindowSearch, _Window, _place, _Candidate, _candidate_iou, _edge_share, _coarse_bounds,
)


@dataclass
class ImageState:
    """The per-image cache: embedding, transform, shape. Reusable with ``set_state``.

    In window mode (``reader`` set) there is no whole-image embedding (``embedding`` and
    ``transform`` are None): every prompt reads the windows it needs through ``reader``."""

    embedding: Optional[ImageEmbedding]
    transform: Optional[ResizeTransform]
    shape: tuple[int, int]
    has_depth: bool
    embed_seconds: float
    #: for zoom-in: the image as uint8 RGB (H, W, 3) (``set_image`` always keeps it) and the
    #: normalised depth (or None), to crop from; the last crop's box and embedding.
    rgb8: Optional[np.ndarray] = None
    depth01: Optional[np.ndarray] = None
    crop_box: Optional[tuple[int, int, int, int]] = None
    crop_embedding: Optional[ImageEmbedding] = None
    #: for ``flip_tta``: the left-right mirrored image's own state, made on first use
    flipped: Optional["ImageState"] = None
    #: window mode: the image's window reader (``data.windows.WindowReader``) and the depth
    #: map's (or None); the image is never held whole
    reader: Optional[WindowReader] = None
    depth_reader: Optional[WindowReader] = None

    @property
    def windowed(self) -> bool:
        """True in window mode (big, lazy or multiscale images)."""
        return self.reader is not None and self.embedding is None


@dataclass(frozen=True)
class ZoomIn:
    """Zoom-in inference (RITM's): from an object's second click on, predict on a crop.

    The crop is the bounding box of the previous mask and the positive clicks, grown by
    ``expansion`` (at least ``min_crop`` image pixels on each side), clipped to the image. It
    is resized to the model input and embedded on its own (cached while the box stays the
    same); the prediction is pasted back into the previous logits, which stay outside the
    crop. Skipped (the whole image is used) when the crop would cover nearly the whole image
    (its longest side at least ``max_fraction`` of the image's) or the mask is empty.
    """

    expansion: float = 1.4
    min_crop: int = 64
    max_fraction: float = 0.85
    #: zoom in from the object's click number ``first_click`` on (the first is never zoomed:
    #: it has no mask yet)
    first_click: int = 2

    def box(self, mask: np.ndarray, points: np.ndarray, labels: np.ndarray) -> Optional[tuple[int, int, int, int]]:
        """``(r0, r1, c0, c1)`` (end exclusive) of the crop, or None for the whole image."""
        h, w = mask.shape
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            return None
        pos = points[labels == 1]
        rows, cols = np.concatenate([rows, pos[:, 0]]), np.concatenate([cols, pos[:, 1]])
        r0, r1, c0, c1 = self.grow((rows.min(), rows.max(), cols.min(), cols.max()), (h, w))
        if max(r1 - r0, c1 - c0) >= self.max_fraction * max(h, w):
            return None
        return r0, r1, c0, c1

    def grow(self, bounds: Sequence[float], shape: Sequence[int]) -> tuple[int, int, int, int]:
        """The crop around pixels ``r_lo..r_hi``, ``c_lo..c_hi`` (inclusive) of an image of
        ``shape``: grown by ``expansion``, at least ``min_crop``, clipped to the image."""
        r_lo, r_hi, c_lo, c_hi = bounds
        h, w = shape
        rc, cc = (r_lo + r_hi) / 2, (c_lo + c_hi) / 2
        hh = max((r_hi - r_lo + 1) * self.expansion, self.min_crop)
        ww = max((c_hi - c_lo + 1) * self.expansion, self.min_crop)
        r0, r1 = int(max(0, np.floor(rc - hh / 2))), int(min(h, np.ceil(rc + hh / 2)))
        c0, c1 = int(max(0, np.floor(cc - ww / 2))), int(min(w, np.ceil(cc + ww / 2)))
        return r0, r1, c0, c1


def _click_tensors(coords: np.ndarray, labels: np.ndarray, pad_empty: bool, device) -> tuple:
    """(1, N, 2) float and (1, N) long click tensors in model-input pixels; with no click and
    ``pad_empty`` (no box either: a mask-only prompt, as training's propagation samples) one
    padding click (label -1), the slot those samples were trained with."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    if len(coords) == 0 and pad_empty:
        coords, labels = np.zeros((1, 2)), np.array([-1])
    return (torch.as_tensor(coords, dtype=torch.float32, device=device)[None],
            torch.as_tensor(labels, dtype=torch.long, device=device)[None])


#: the predictor's arithmetic: float32, or bfloat16 autocast (CPUs with bf16 units, GPUs)
PRECISIONS = ("fp32", "bf16")


def _in_precision(method):
    """Run a predictor method under its ``precision`` (bf16: ``torch.autocast``)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if self.precision == "fp32":
            return method(self, *args, **kwargs)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            return method(self, *args, **kwargs)
    return run


class OISPredictor:
    """Interactive segmentation of one image at a time.

    >>> pred = OISPredictor(model)                       # or napari_ois.load_predictor("default")
    >>> pred.set_image(image)                            # (H, W) or (H, W, C); any dtype
    >>> out = pred.predict([[r, c]], [1])                # K proposals on the first click
    >>> out = pred.predict([[r, c], [r2, c2]], [1, 0], prev_mask=out.logits[0])  # refined
    >>> out = pred.predict(box=Box(r0, c0, r1, c1))      # a box (box-trained models)

    ``zoom_in``: from the object's second click on, refine on a crop around it (``ZoomIn``;
    on by default: it measured fewer clicks on 5 of the 7 dev sets, docs/benchmarks.md);
    False or None turns it off. The attribute ``zoom_in`` may be changed between predictions
    (the widget's "zoom in" box does).

    ``flip_tta``: also predict on the left-right mirrored image (its own embedding, made on
    first use) and average the two logits and scores, proposal by proposal: twice the time
    per click. Off by default; may be changed between predictions.

    ``windows``: window mode for big images (longest side over ``WindowSearch.threshold``,
    2048 px by default) and lazy or multiscale inputs (dask, zarr, a list of levels): the
    first click is predicted on windows around it at several sizes, later clicks on the
    zoom-in crop, and only those windows are read; ``Prediction.window`` says which part of
    the image the masks cover (``WindowSearch``). True (default) or a ``WindowSearch``;
    False or None: every image is embedded whole (lazy inputs are read whole). ``set_image``
    can force it either way per image (``windows=``). ``flip_tta`` is not used in window mode.

    ``precision``: "fp32" (default) or "bf16" (the network runs under bfloat16 autocast:
    ``torch.autocast``; masks and scores come back as float32), for CPUs with bf16 matrix
    units; docs/benchmarks.md "bf16 inference" has its latency and quality.

    Not thread-safe: drive it from one thread at a time (the napari widget uses one worker).
    """

    def __init__(self, model: OISModel, device: Union[str, torch.device] = "cpu", depth_provider: Any = None,
                 zoom_in: Union[bool, ZoomIn, None] = True, flip_tta: bool = False,
                 windows: Union[bool, WindowSearch, None] = True, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.depth_provider = depth_provider
        self.zoom_in: Optional[ZoomIn] = (ZoomIn() if zoom_in is True else zoom_in) or None
        self.flip_tta = bool(flip_tta)
        self.windows: Optional[WindowSearch] = (WindowSearch() if windows is True else windows) or None
        self._state: Optional[ImageState] = None
        #: the last windowed prediction's logits (a weak reference) and window, so that
        #: ``predict(prev_mask=out.logits[i])`` works without ``prev_window``
        self._last_window: Optional[tuple] = None

    # ----------------------------------------------------------------- properties
    @property
    def cfg(self):
        return self.model.cfg

    @property
    def num_proposals(self) -> int:
        return self.model.cfg.num_proposals

    @property
    def propagation_prompt(self) -> str:
        """How 3D propagation prompts this model on the next slice (``propagation.PROMPTS``):
        "mask" for models trained on neighbouring-slice samples (their JSON config's
        ``notes.propagation_prompt``), else "clicks"."""
        notes = getattr(self.model.cfg, "notes", None) or {}
        return "mask" if notes.get("propagation_prompt") == "mask" else "clicks"

    @property
    def accepts_boxes(self) -> bool:
        """Whether the model takes box prompts (``box_prompts`` in its config)."""
        return bool(getattr(self.model.cfg, "box_prompts", False))

    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def image_shape(self) -> Optional[tuple[int, int]]:
        return None if self._state is None else self._state.shape

    @property
    def state(self) -> Optional[ImageState]:
        """The current image's cache (pass it to ``set_state`` to switch back cheaply)."""
        return self._state

    def set_state(self, state: ImageState) -> None:
        self._state = state

    def reset_image(self) -> None:
        self._state = None

    # ----------------------------------------------------------------- per image
    @_in_precision
    @torch.inference_mode()
    def set_image(
        self,
        image: Any,
        depth: Optional[np.ndarray] = None,
        contrast_limits: Optional[Sequence] = None,
        *,
        channels: Union[None, int, Sequence[int]] = None,
        channel_axis: Optional[int] = None,
        windows: Optional[bool] = None,
    ) -> ImageState:
        """Compute and cache the image embedding (and depth) for ``image``.

        Args:
            image: (H, W) or (H, W, C), uint8/uint16/int/float/bool; numpy or any array that
                slices to numpy (dask, zarr); a multiscale pyramid (a list of levels, largest
                first, as napari's multiscale layers hold); ``(C, H, W)`` with
                ``channel_axis=0``. See ``napari_ois.data.images.to_unit_rgb`` for how
                intensities and channels are read (``data.windows.WindowReader`` applies the
                same rule to windows).
            depth: optional (H, W) depth or inverse-depth map; normalised to [0, 1] here.
                Without it the predictor's depth provider (if any) computes one; with
                neither, the model runs in "no depth" mode.
            contrast_limits: optional (low, high) intensity window, e.g. the napari layer's
                contrast limits, so that the model sees what the user sees (with three
                ``channels``: one pair, or one pair per channel).
            channels: which channel(s) the model sees: one index (as grey) or three (as
                RGB); None: the default rule (RGB(A) as colour, one channel as grey, others
                averaged).
            channel_axis: 0 for a ``(C, H, W)`` array; None or -1: channels last.
            windows: True or False forces window mode on or off for this image; None
                (default) decides: on for lazy or multiscale inputs and for images whose
                longest side is over ``WindowSearch.threshold`` (see ``windows`` of the
                constructor).
        """
        t0 = time.perf_counter()
        if not is_pyramid(image) and not hasattr(image, "shape"):
            image = np.asarray(image)  # nested lists and the like
        plain = (channels is None and channel_axis is None and not is_pyramid(image)
                 and isinstance(image, np.ndarray))
        if windows is None:
            windows = self.windows is not None and (
                is_lazy(image) or max(self._plane_shape(image, channel_axis)) > self.windows.threshold)
        if windows:
            return self._set_windowed(image, depth, contrast_limits, channels, channel_axis, t0)
        if plain:
            rgb = to_unit_rgb(image, contrast_limits)
        else:  # channels chosen, a (C, H, W) array, or a lazy / multiscale input read whole
            rgb = WindowReader(image, channels=channels, channel_axis=channel_axis,
                               contrast_limits=contrast_limits).read_all()
        h, w = rgb.shape[:2]
        if depth is not None:
            depth = np.asarray(depth)
            if depth.shape != (h, w):
                raise ValueError(f"depth has shape {depth.shape}; it must match the image's (H, W) = {(h, w)}")
            dnorm = normalize_depth(depth)
        elif self.depth_provider is not None:
            dnorm = self.depth_provider(rgb)
        else:
            dnorm = None
        emb, tf = self._embed(rgb, dnorm)
        # the image is kept to crop from, so that zoom-in can be turned on at any time
        self._state = ImageState(emb, tf, (h, w), dnorm is not None, time.perf_counter() - t0,
                                 rgb8=np.round(rgb * 255).astype(np.uint8),
                                 depth01=None if dnorm is None else dnorm.astype(np.float32))
        return self._state

    @staticmethod
    def _plane_shape(image: Any, channel_axis: Optional[int]) -> tuple:
        first = image[0] if is_pyramid(image) else image
        shape = tuple(int(v) for v in np.shape(first))
        if len(shape) == 3 and channel_axis in (0, -3):
            return shape[1:]
        return shape[:2] or (0,)

    def _set_windowed(self, image, depth, contrast_limits, channels, channel_axis, t0) -> ImageState:
        """Window mode: a reader of the image (and depth), no embedding (``WindowSearch``)."""
        reader = WindowReader(image, channels=channels, channel_axis=channel_axis,
                              contrast_limits=contrast_limits)
        h, w = reader.shape
        depth_reader = None
        if depth is not None:
            if tuple(np.shape(depth[0] if is_pyramid(depth) else depth)) != (h, w):
                raise ValueError(f"depth has shape {tuple(np.shape(depth))}; it must match the image's "
                                 f"(H, W) = {(h, w)}")
            depth_reader = WindowReader(depth, auto_limits="minmax")
        has_depth = depth_reader is not None or self.depth_provider is not None
        self._state = ImageState(None, None, (h, w), has_depth, time.perf_counter() - t0,
                                 reader=reader, depth_reader=depth_reader)
        return self._state

    def _embed(self, rgb: np.ndarray, depth01: Optional[np.ndarray]) -> tuple[ImageEmbedding, ResizeTransform]:
        """Resize + pad ``rgb`` (H, W, 3) in [0, 1] and its depth to the model input, and encode."""
        tf = ResizeTransform(rgb.shape[0], rgb.shape[1], self.cfg.img_size)
        x = tf.apply_image(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]).to(self.device)
        d = None
        if depth01 is not None:
            d = tf.apply_image(torch.from_numpy(np.ascontiguousarray(depth01))[None, None]).to(self.device)
        return self.model.encode(x, d), tf

    def _crop_embedding(self, st: ImageState, box: tuple[int, int, int, int]):
        """The zoom-in crop's embedding and transform, cached while ``box`` stays the same."""
        r0, r1, c0, c1 = box
        if st.crop_box != box or st.crop_embedding is None:
            depth = None if st.depth01 is None else st.depth01[r0:r1, c0:c1]
            st.crop_embedding, _ = self._embed(st.rgb8[r0:r1, c0:c1].astype(np.float32) / 255, depth)
            st.crop_box = box
        return st.crop_embedding, ResizeTransform(r1 - r0, c1 - c0, self.cfg.img_size)

    # ----------------------------------------------------------------- per click
    @_in_precision
    @torch.inference_mode()
    def predict(
        self,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        prev_mask: Optional[np.ndarray] = None,
        multimask: Optional[bool] = None,
        box: Union[Box, Sequence[float], None] = None,
        prev_window: Optional[Sequence[int]] = None,
    ) -> Prediction:
        """Predict masks for the clicks (and box) on the current image.

        Args:
            points: (N, 2) click positions as (row, col) in image pixels; N >= 1 unless a
                box is given.
            labels: (N,) 1 for a positive click, 0 for a negative one.
            prev_mask: the previous prediction as (H, W) logits (``Prediction.logits[i]``) or
                a boolean mask; None on an object's first prompt.
            multimask: True returns the K first-click proposals, False the single refined
                mask; None (default) follows the protocol (``prompt.wants_proposals``):
                proposals for a lone first click, the refined mask otherwise.
            box: a ``Box`` or ``(r0, c0, r1, c1)`` in image pixels (models with
                ``accepts_boxes``); clipped to the image.
            prev_window: ``(r0, r1, c0, c1)`` when ``prev_mask`` covers only that window of
                the image (``Prediction.window``); outside it the object is absent. Not
                needed when ``prev_mask`` is one of the last prediction's ``logits``.
        Returns:
            ``Prediction`` with masks (K or 1, H, W), scores and logits, best first; in
            window mode (big, lazy or multiscale images) masks and logits cover only
            ``Prediction.window`` of the image.
        """
        if self._state is None:
            raise RuntimeError("predict() was called before set_image(): set an image first")
        st = self._state
        h, w = st.shape
        if box is not None:
            if not self.accepts_boxes:
                raise ValueError(
                    f"the model {self.cfg.name!r} was not built for box prompts; use clicks, or a "
                    "model with box prompts (e.g. one trained from the ois-tiny-cef architecture)"
                )
            box = Box.coerce(box).clipped((h, w))
        try:
            pts = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"points must be numbers as (row, col) pairs: {exc}") from None
        if pts.size == 0 and box is None and prev_mask is None:
            raise ValueError("no points given: predict() needs at least one click, a box or a "
                             "prev_mask (a mask alone: the object's mask on a neighbouring slice)")
        if pts.size == 0:
            pts = pts.reshape(0, 2)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2) as (row, col); got {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("points contain NaN or inf")
        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != pts.shape[0]:
            raise ValueError(f"got {pts.shape[0]} points but {lab.shape[0]} labels: one label per point")
        if not np.isin(lab, (0, 1)).all():
            raise ValueError(f"labels must be 1 (positive) or 0 (negative); got {np.unique(lab).tolist()}")
        if multimask is None:
            multimask = wants_proposals(len(pts), box, prev_mask is not None)
        if multimask and (box is not None or len(pts) == 0):
            raise ValueError("proposals (multimask=True) come from a single first click, not a box")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > h - 1) | (pts[:, 1] < 0) | (pts[:, 1] > w - 1)
        if outside.any():
            bad = pts[outside][0].tolist()
            raise ValueError(f"point (row, col) = {bad} lies outside the image of shape {(h, w)}")

        prob = pm = None
        if prev_mask is not None:
            pm = np.asarray(prev_mask)
            if prev_window is None and pm.shape != (h, w):
                prev_window = self._window_of(pm)
            pwin = self._check_prev_window(prev_window, pm, (h, w))
            if st.windowed:
                return self._remember(self._predict_windowed(st, pts, lab, pm, pwin, box, multimask))
            if pwin != (0, h, 0, w):  # a windowed mask on a whole-image state: paste it
                pm = paste(pm, pwin, (h, w), False if pm.dtype == np.bool_ else OUTSIDE_LOGIT)
        elif st.windowed:
            return self._remember(self._predict_windowed(st, pts, lab, None, None, box, multimask))
        if pm is not None:
            if pm.dtype == np.bool_:
                prob = torch.from_numpy(pm.astype(np.float32))
            else:
                prob = torch.sigmoid(torch.from_numpy(np.nan_to_num(pm.astype(np.float32))))
        zoom = self.zoom_in  # read once: the GUI may switch it while a worker predicts
        logits, iou = self._predict_raw(st, zoom, pts, lab, prob, pm, box, multimask)
        if self.flip_tta:
            last = w - 1  # pixel c's mirror is pixel (w - 1) - c; a box spans [-0.5, w - 0.5]
            fpts = pts.copy()
            fpts[:, 1] = last - fpts[:, 1]
            fbox = None if box is None else Box(box.r0, last - box.c1, box.r1, last - box.c0)
            f_logits, f_iou = self._predict_raw(
                self._flipped_state(st), zoom, fpts, lab,
                None if prob is None else prob.flip(-1).contiguous(),
                None if pm is None else np.ascontiguousarray(pm[:, ::-1]), fbox, multimask)
            logits = 0.5 * (logits + f_logits[..., ::-1])
            iou = 0.5 * (iou + f_iou)
        if multimask:
            order = np.argsort(-iou, kind="stable")
            logits, iou = logits[order], iou[order]
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        return Prediction(logits > 0, iou.astype(np.float32), logits)

    def _flipped_state(self, st: ImageState) -> ImageState:
        """``st``'s left-right mirror image, embedded once and cached on ``st``."""
        if st.flipped is None:
            rgb8 = np.ascontiguousarray(st.rgb8[:, ::-1])
            depth = None if st.depth01 is None else np.ascontiguousarray(st.depth01[:, ::-1])
            emb, tf = self._embed(rgb8.astype(np.float32) / 255, depth)
            st.flipped = ImageState(emb, tf, st.shape, st.has_depth, 0.0, rgb8=rgb8, depth01=depth)
        return st.flipped

    def _predict_raw(self, st: ImageState, zoom: Optional[ZoomIn], pts, lab, prob, pm, box,
                     multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        """Image-size logits (M, H, W) and scores (M,) on ``st``: the K proposals in token
        order (``multimask``) or the refined mask (M = 1), zoomed in where ``zoom`` says."""
        crop = None
        mask_only = len(pts) == 0 and box is None  # a neighbouring slice's mask as the prompt
        if zoom is not None and prob is not None and not multimask and (
                len(pts) >= zoom.first_click or mask_only):
            crop = zoom.box(prob.numpy() > 0.5, pts, lab)
        if crop is not None:
            return self._predict_crop(st, crop, pts, lab, prob, pm, box)
        dev = self.device
        tf = st.transform
        coords, lab_t = _click_tensors(tf.apply_points(pts), lab, box is None, dev)
        prev = None if prob is None else tf.apply_image(prob[None, None]).to(dev)
        logits, iou = self.model.decode(st.embedding, coords, lab_t, prev,
                                        boxes=self._model_box(tf, box))
        logits, iou = logits[0], iou[0]
        logits, iou = (logits[1:], iou[1:]) if multimask else (logits[:1], iou[:1])
        full = tf.undo_image(logits[None].float())[0].cpu().numpy().astype(np.float32)
        return full, iou.float().cpu().numpy()

    def _model_box(self, tf: ResizeTransform, box: Optional[Box]) -> Optional[torch.Tensor]:
        """A box in image pixels -> (1, 4) in model-input coordinates (None stays None)."""
        if box is None:
            return None
        corners = np.clip(tf.apply_points(box.corners()), 0.0, self.cfg.img_size)
        return torch.as_tensor(corners.reshape(1, 4), dtype=torch.float32, device=self.device)

    def _predict_crop(self, st: ImageState, crop, pts, lab, prob, prev_mask,
                      box: Optional[Box] = None) -> tuple[np.ndarray, np.ndarray]:
        """The refined mask predicted on the zoom-in ``crop``, pasted into the previous logits."""
        r0, r1, c0, c1 = crop
        emb, tf = self._crop_embedding(st, crop)
        dev = self.device
        rel = pts - np.array([r0, c0], dtype=np.float64)
        # the crop holds every positive click; a negative click outside it says nothing about
        # the crop (moved onto its edge, it would cut the object there), so it is left out
        inside = (rel[:, 0] >= 0) & (rel[:, 0] < r1 - r0) & (rel[:, 1] >= 0) & (rel[:, 1] < c1 - c0)
        keep = inside | (lab == 1)
        rel, lab = rel[keep], lab[keep]
        coords = np.clip(tf.apply_points(rel), 0.0, self.cfg.img_size - 1e-3)
        coords_t, lab_t = _click_tensors(coords, lab, box is None, dev)
        prev = tf.apply_image(prob[None, None, r0:r1, c0:c1].contiguous()).to(dev)
        crop_box = None
        if box is not None:  # the box in crop pixels, cut to the crop (kept if it misses it)
            shifted = Box(box.r0 - r0, box.c0 - c0, box.r1 - r0, box.c1 - c0)
            try:
                crop_box = shifted.clipped((r1 - r0, c1 - c0))
            except ValueError:
                crop_box = None
        logits, iou = self.model.decode(emb, coords_t, lab_t, prev, boxes=self._model_box(tf, crop_box))
        crop = tf.undo_image(logits[:, :1].float())[0, 0].cpu().numpy().astype(np.float32)
        if prev_mask.dtype == np.bool_:
            full = np.where(prev_mask, 10.0, -10.0).astype(np.float32)
        else:
            full = np.nan_to_num(prev_mask.astype(np.float32), copy=True)
        full[r0:r1, c0:c1] = crop
        return full[None], iou[0, :1].float().cpu().numpy()


    # ----------------------------------------------------------------- window mode
    def _remember(self, out: Prediction) -> Prediction:
        """Keep a weak reference to a windowed prediction's logits (see ``_window_of``)."""
        try:
            self._last_window = (weakref.ref(out.logits), out.window)
        except TypeError:  # pragma: no cover - an array type without weak references
            self._last_window = None
        return out

    def _window_of(self, pm: np.ndarray) -> Optional[tuple]:
        """The window of ``pm`` when it is (part of) the last windowed prediction's logits."""
        if self._last_window is None:
            return None
        ref, window = self._last_window
        logits = ref()
        if logits is None or window is None:
            return None
        r0, r1, c0, c1 = window
        if pm.shape == (r1 - r0, c1 - c0) and np.may_share_memory(pm, logits):
            return window
        return None

    @staticmethod
    def _check_prev_window(prev_window, pm: np.ndarray, shape: tuple) -> tuple:
        """``prev_mask``'s window ``(r0, r1, c0, c1)`` (the whole image without one), checked."""
        h, w = shape
        if prev_window is None:
            if pm.shape != (h, w):
                raise ValueError(f"prev_mask has shape {pm.shape}; it must match the image's {(h, w)}")
            return 0, h, 0, w
        try:
            r0, r1, c0, c1 = (int(v) for v in prev_window)
        except (TypeError, ValueError):
            raise ValueError(f"prev_window must be four whole numbers (r0, r1, c0, c1); got {prev_window!r}") from None
        if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
            raise ValueError(f"prev_window {(r0, r1, c0, c1)} is not a window of the image of shape {(h, w)}")
        if pm.shape != (r1 - r0, c1 - c0):
            raise ValueError(f"prev_mask has shape {pm.shape}; it must match its window's "
                             f"{(r1 - r0, c1 - c0)} (prev_window {(r0, r1, c0, c1)})")
        return r0, r1, c0, c1

    def _window_inputs(self, st: ImageState, wins: Sequence[_Window]) -> tuple:
        """The model inputs ``(B, 3, S, S)`` (and depth ``(B, 1, S, S)`` or None) of ``wins``,
        each read at the resolution it needs."""
        xs, ds = [], []
        size = wins[0].size
        rgbs = st.reader.read_many([win.box for win in wins], out_side=size)
        depths = None
        if st.depth_reader is not None:
            depths = st.depth_reader.read_many([win.box for win in wins], out_side=size)
        for i, (win, rgb) in enumerate(zip(wins, rgbs)):
            xs.append(win.to_input(rgb))
            if depths is not None:
                ds.append(win.to_input(depths[i][..., 0]))
            elif self.depth_provider is not None:
                ds.append(win.to_input(self.depth_provider(rgb)))
        x = torch.stack(xs).to(self.device)
        return x, (torch.stack(ds).to(self.device) if ds else None)

    def _predict_windowed(self, st: ImageState, pts: np.ndarray, lab: np.ndarray,
                          pm: Optional[np.ndarray], pwin: Optional[tuple], box: Optional[Box],
                          multimask: bool) -> Prediction:
        """Window mode (``WindowSearch``): the windows around the prompt, never the image."""
        h, w = st.shape
        zoom = self.zoom_in or ZoomIn()
        bounds = []  # (r_lo, r_hi, c_lo, c_hi) inclusive, of what the crop must hold
        prob = None
        if pm is not None:
            if pm.dtype == np.bool_:
                prob = pm.astype(np.float32)
            else:
                prob = torch.sigmoid(torch.from_numpy(np.nan_to_num(pm.astype(np.float32)))).numpy()
            rows = np.flatnonzero((prob > 0.5).any(1))
            if rows.size:
                cols = np.flatnonzero((prob > 0.5).any(0))
                bounds.append((rows[0] + pwin[0], rows[-1] + pwin[0], cols[0] + pwin[2], cols[-1] + pwin[2]))
        pos = pts[lab == 1]
        if box is not None:
            bounds.append((math.floor(box.r0 + 0.5), math.ceil(box.r1 - 0.5),
                           math.floor(box.c0 + 0.5), math.ceil(box.c1 - 0.5)))
        if not bounds:  # no mask and no box: the windows search (a first click)
            if len(pts) == 0:  # a mask-only prompt whose mask is empty: nothing to follow
                r0, r1, c0, c1 = pwin
                empty = np.full((1, r1 - r0, c1 - c0), OUTSIDE_LOGIT, np.float32)
                return Prediction(empty > 0, np.zeros(1, np.float32), empty, window=pwin, image_shape=(h, w))
            return self._search(st, pts, lab, multimask)
        if len(pos):
            bounds.append((pos[:, 0].min(), pos[:, 0].max(), pos[:, 1].min(), pos[:, 1].max()))
        b = np.array(bounds, dtype=np.float64)
        crop = zoom.grow((b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()), (h, w))
        return self._predict_window_crop(st, crop, pts, lab, prob, pwin, box, multimask)

    def _predict_window_crop(self, st: ImageState, crop: tuple, pts, lab, prob, pwin, box,
                             multimask: bool) -> Prediction:
        """The prompt predicted on the crop (read at the model's input size); the masks come
        back for the crop."""
        h, w = st.shape
        size = self.cfg.img_size
        win = _Window(*crop, size)
        if st.crop_box != crop or st.crop_embedding is None:
            x, d = self._window_inputs(st, [win])
            st.crop_embedding = self.model.encode(x, d)
            st.crop_box = crop
        r0, r1, c0, c1 = crop
        inside = (pts[:, 0] >= r0) & (pts[:, 0] < r1) & (pts[:, 1] >= c0) & (pts[:, 1] < c1)
        keep = inside | (lab == 1)  # as _predict_crop: a negative click outside says nothing here
        coords = np.clip(win.points(pts[keep]), 0.0, size - 1e-3)
        coords_t, lab_t = _click_tensors(coords, lab[keep], box is None, self.device)
        prev = None
        if prob is not None:  # the previous mask on the crop, sampled at the input's resolution
            step = max(1, max(win.h, win.w) // size)
            rows, cols = np.arange(r0, r1, step), np.arange(c0, c1, step)
            ri, ci = rows - pwin[0], cols - pwin[2]
            ok_r = (ri >= 0) & (ri < prob.shape[0])
            ok_c = (ci >= 0) & (ci < prob.shape[1])
            sub = prob[np.clip(ri, 0, prob.shape[0] - 1)][:, np.clip(ci, 0, prob.shape[1] - 1)]
            sub = sub * ok_r[:, None] * ok_c[None, :]
            prev = win.to_input(sub)[None].to(self.device)
        model_box = None
        if box is not None:
            try:
                cbox = Box(box.r0, box.c0, box.r1, box.c1).clipped((h, w))
                corners = np.clip(win.points(cbox.corners()) , 0.0, size)
                model_box = torch.as_tensor(corners.reshape(1, 4), dtype=torch.float32, device=self.device)
            except ValueError:
                model_box = None
        logits, iou = self.model.decode(st.crop_embedding, coords_t, lab_t, prev, boxes=model_box)
        tokens = slice(1, None) if multimask else slice(0, 1)
        lg = win.logits_at(logits[0, tokens], crop)
        sc = iou[0, tokens].float().cpu().numpy()
        if multimask:
            order = np.argsort(-sc, kind="stable")
            lg, sc = lg[order], sc[order]
        return Prediction(lg > 0, sc.astype(np.float32), np.ascontiguousarray(lg), window=crop,
                          image_shape=(h, w))

    def _search(self, st: ImageState, pts: np.ndarray, lab: np.ndarray, multimask: bool) -> Prediction:
        """A first prompt of clicks alone: windows of several sizes around them, in one batch;
        their masks ranked (``WindowSearch``), the best K that differ (1 without
        ``multimask``) returned for the part of the image they cover."""
        h, w = st.shape
        size = self.cfg.img_size
        ws = self.windows or WindowSearch()
        zoom = self.zoom_in or ZoomIn()
        pos = pts[lab == 1] if (lab == 1).any() else pts
        cr, cc = (pos[:, 0].min() + pos[:, 0].max()) / 2, (pos[:, 1].min() + pos[:, 1].max()) / 2
        extent = max(np.ptp(pos[:, 0]), np.ptp(pos[:, 1])) + 1
        sizes = ws.sizes((h, w), size)
        sizes = [s for s in sizes if s >= extent * zoom.expansion] or sizes[-1:]
        wins = []
        for side in sizes:
            win = _Window(*_place(side, cr, h), *_place(side, cc, w), size)
            if win not in wins:
                wins.append(win)
        x, d = self._window_inputs(st, wins)
        emb = self.model.encode(x, d)
        coords = np.stack([np.clip(win.points(pts), 0.0, size - 1e-3) for win in wins])
        coords_t = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
        lab_t = torch.as_tensor(np.repeat(lab[None], len(wins), 0), dtype=torch.long, device=self.device)
        logits, iou = self.model.decode(emb, coords_t, lab_t)
        logits, iou = logits.float().cpu(), iou.float().cpu()
        tokens = list(range(1, logits.shape[1])) if multimask else [0]
        ratio = size / logits.shape[-1]
        cands = []
        for bi, win in enumerate(wins):
            nh, nw = win.new_shape
            hv, wv = int(math.ceil(nh / ratio)), int(math.ceil(nw / ratio))
            cut = (win.r0 > 0, win.r1 < h, win.c0 > 0, win.c1 < w)
            doublings = math.log2(max(win.h, win.w) / min(max(win.h, win.w) for win in wins))
            for t in tokens:
                m = (logits[bi, t, :hv, :wv] > 0).numpy()
                score = (float(iou[bi, t]) - ws.edge_penalty * _edge_share(m, cut)
                         - ws.area_penalty * float(m.mean()) - ws.scale_penalty * doublings)
                cands.append(_Candidate(win, bi, t, score, m, _coarse_bounds(m, win)))
        if ws.support_bonus and len(wins) > 1:
            support = [max((_candidate_iou(c, o) for o in cands if o.batch != c.batch), default=0.0)
                       for c in cands]
            for c, sup in zip(cands, support):
                c.score += ws.support_bonus * sup
        cands.sort(key=lambda c: -c.score)
        k = len(tokens)
        kept: list = []
        for c in cands:
            if len(kept) == k:
                break
            if all(_candidate_iou(c, o) < ws.overlap_iou for o in kept):
                kept.append(c)
        for c in cands:  # fewer distinct ones than K: the next best, alike or not
            if len(kept) == k:
                break
            if not any(c is o for o in kept):
                kept.append(c)
        boxes = [c.bounds for c in kept if c.bounds is not None]
        if boxes:
            b = np.array(boxes, dtype=np.float64)
            r_lo, r_hi, c_lo, c_hi = b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()
            margin = max(4.0, 0.05 * max(r_hi - r_lo, c_hi - c_lo))
            out = (int(max(0, math.floor(r_lo - margin))), int(min(h, math.ceil(r_hi + margin))),
                   int(max(0, math.floor(c_lo - margin))), int(min(w, math.ceil(c_hi + margin))))
        else:
            out = _place(32, cr, h) + _place(32, cc, w)
        lg = np.concatenate([c.window.logits_at(logits[c.batch, c.token:c.token + 1], out) for c in kept])
        scores = np.array([c.score for c in kept], dtype=np.float32)
        return Prediction(lg > 0, scores, np.ascontiguousarray(lg), window=out, image_shape=(h, w))


def load_predictor(
    name_or_path: str = "default", device: str = "auto", depth: Any = None,
    zoom_in: Union[bool, ZoomIn, None] = True, flip_tta: bool = False,
    windows: Union[bool, WindowSearch, None] = True, precision: str = "fp32",
) -> OISPredictor:
    """A ready predictor for a registered model name or a weights path.

    Args:
        name_or_path: a name from ``napari-ois models`` or a path to a .safetensors/.pt file.
        device: "auto" (CUDA, then MPS, then CPU), "cuda", "mps" or "cpu".
        depth: a depth provider spec for ``napari_ois.depth.make_depth_provider`` (None or
            "none" for no depth, "depth-anything-v2-small", a checkpoint path, ...).
        zoom_in: refine on a crop around the object (``ZoomIn``; on by default, False: off).
        flip_tta: average each prediction with the mirrored image's (``OISPredictor``).
        windows: window mode for big, lazy and multiscale images (``WindowSearch``; on by
            default, False: every image embedded whole).
        precision: "fp32" (default) or "bf16" (``OISPredictor``).
    """
    dev = resolve_device(device)
    provider = None
    if depth is not None and not (isinstance(depth, str) and depth.lower() == "none"):
        from .depth import make_depth_provider

        provider = make_depth_provider(depth, device=str(dev))
    return OISPredictor(build_model(name_or_path), device=dev, depth_provider=provider, zoom_in=zoom_in,
                        flip_tta=flip_tta, windows=windows, precision=precision)

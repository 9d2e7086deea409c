"""Image-level predictor: ``set_image`` once, ``predict`` per prompt.

Coordinates are napari's (row, col) pixel coordinates of the image as given. Nothing here
knows about Qt or napari; a widget, a script, the evaluation and the command line all drive
this class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from . import _triton_guard  # noqa: F401 - before .model imports timm (see _triton_guard)
from .data.images import normalize_depth, to_unit_rgb
from .model import ImageEmbedding, OISModel
from .model.transforms import ResizeTransform
from .data.prompts import Box, Prediction, wants_proposals
from .registry import build_model, resolve_device


@dataclass
class ImageState:
    """The per-image cache: embedding, transform, shape. Reusable with ``set_state``."""

    embedding: ImageEmbedding
    transform: ResizeTransform
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
        r_lo, r_hi, c_lo, c_hi = rows.min(), rows.max(), cols.min(), cols.max()
        rc, cc = (r_lo + r_hi) / 2, (c_lo + c_hi) / 2
        hh = max((r_hi - r_lo + 1) * self.expansion, self.min_crop)
        ww = max((c_hi - c_lo + 1) * self.expansion, self.min_crop)
        r0, r1 = int(max(0, np.floor(rc - hh / 2))), int(min(h, np.ceil(rc + hh / 2)))
        c0, c1 = int(max(0, np.floor(cc - ww / 2))), int(min(w, np.ceil(cc + ww / 2)))
        if max(r1 - r0, c1 - c0) >= self.max_fraction * max(h, w):
            return None
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

    Not thread-safe: drive it from one thread at a time (the napari widget uses one worker).
    """

    def __init__(self, model: OISModel, device: Union[str, torch.device] = "cpu", depth_provider: Any = None,
                 zoom_in: Union[bool, ZoomIn, None] = True, flip_tta: bool = False):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.depth_provider = depth_provider
        self.zoom_in: Optional[ZoomIn] = (ZoomIn() if zoom_in is True else zoom_in) or None
        self.flip_tta = bool(flip_tta)
        self._state: Optional[ImageState] = None

    # ----------------------------------------------------------------- properties
    @property
    def cfg(self):
        return self.model.cfg

    @property
    def num_proposals(self) -> int:
        return self.model.cfg.num_proposals

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
    @torch.inference_mode()
    def set_image(
        self,
        image: np.ndarray,
        depth: Optional[np.ndarray] = None,
        contrast_limits: Optional[Sequence[float]] = None,
    ) -> ImageState:
        """Compute and cache the image embedding (and depth) for ``image``.

        Args:
            image: (H, W) or (H, W, C), uint8/uint16/int/float/bool. See
                ``napari_ois.data.images.to_unit_rgb`` for how intensities and channels are read.
            depth: optional (H, W) depth or inverse-depth map; normalised to [0, 1] here.
                Without it the predictor's depth provider (if any) computes one; with
                neither, the model runs in "no depth" mode.
            contrast_limits: optional (low, high) intensity window, e.g. the napari layer's
                contrast limits, so that the model sees what the user sees.
        """
        t0 = time.perf_counter()
        rgb = to_unit_rgb(image, contrast_limits)
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
    @torch.inference_mode()
    def predict(
        self,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        prev_mask: Optional[np.ndarray] = None,
        multimask: Optional[bool] = None,
        box: Union[Box, Sequence[float], None] = None,
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
        Returns:
            ``Prediction`` with masks (K or 1, H, W), scores and logits, best first.
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
            if pm.shape != (h, w):
                raise ValueError(f"prev_mask has shape {pm.shape}; it must match the image's {(h, w)}")
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


def load_predictor(
    name_or_path: str = "default", device: str = "auto", depth: Any = None,
    zoom_in: Union[bool, ZoomIn, None] = True, flip_tta: bool = False,
) -> OISPredictor:
    """A ready predictor for a registered model name or a weights path.

    Args:
        name_or_path: a name from ``napari-ois models`` or a path to a .safetensors/.pt file.
        device: "auto" (CUDA, then MPS, then CPU), "cuda", "mps" or "cpu".
        depth: a depth provider spec for ``napari_ois.depth.make_depth_provider`` (None or
            "none" for no depth, "depth-anything-v2-small", a checkpoint path, ...).
        zoom_in: refine on a crop around the object (``ZoomIn``; on by default, False: off).
        flip_tta: average each prediction with the mirrored image's (``OISPredictor``).
    """
    dev = resolve_device(device)
    provider = None
    if depth is not None and not (isinstance(depth, str) and depth.lower() == "none"):
        from .depth import make_depth_provider

        provider = make_depth_provider(depth, device=str(dev))
    return OISPredictor(build_model(name_or_path), device=dev, depth_provider=provider, zoom_in=zoom_in,
                        flip_tta=flip_tta)

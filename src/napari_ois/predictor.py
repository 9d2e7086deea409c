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

from .imaging import ResizeTransform, normalize_depth, to_unit_rgb
from .model import ImageEmbedding, OISModel
from .registry import build_model, resolve_device


@dataclass
class Prediction:
    """What ``OISPredictor.predict`` returns.

    Attributes:
        masks: (K, H, W) bool at the image's own resolution, best first.
        scores: (K,) predicted IoU of each mask, best first.
        logits: (K, H, W) float32 logits; ``logits[i]`` is what the next ``predict`` accepts
            as ``prev_mask``.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray

    @property
    def best(self) -> int:
        """Index of the best-scored mask (always 0: masks are sorted best first)."""
        return 0


@dataclass
class ImageState:
    """The per-image cache: embedding, transform, shape. Reusable with ``set_state``."""

    embedding: ImageEmbedding
    transform: ResizeTransform
    shape: tuple[int, int]
    has_depth: bool
    embed_seconds: float


class OISPredictor:
    """Interactive segmentation of one image at a time.

    >>> pred = OISPredictor(model)                       # or napari_ois.load_predictor("default")
    >>> pred.set_image(image)                            # (H, W) or (H, W, C); any dtype
    >>> out = pred.predict([[r, c]], [1])                # K proposals on the first click
    >>> out = pred.predict([[r, c], [r2, c2]], [1, 0], prev_mask=out.logits[0], multimask=False)

    Not thread-safe: drive it from one thread at a time (the napari widget uses one worker).
    """

    def __init__(self, model: OISModel, device: Union[str, torch.device] = "cpu", depth_provider: Any = None):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.depth_provider = depth_provider
        self._state: Optional[ImageState] = None

    # ----------------------------------------------------------------- properties
    @property
    def cfg(self):
        return self.model.cfg

    @property
    def num_proposals(self) -> int:
        return self.model.cfg.num_proposals

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
                ``napari_ois.imaging.to_unit_rgb`` for how intensities and channels are read.
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
        tf = ResizeTransform(h, w, self.cfg.img_size)
        x = tf.apply_image(torch.from_numpy(rgb).permute(2, 0, 1)[None]).to(self.device)
        d = None
        if dnorm is not None:
            d = tf.apply_image(torch.from_numpy(dnorm)[None, None]).to(self.device)
        emb = self.model.encode(x, d)
        self._state = ImageState(emb, tf, (h, w), d is not None, time.perf_counter() - t0)
        return self._state

    # ----------------------------------------------------------------- per click
    @torch.inference_mode()
    def predict(
        self,
        points: Sequence[Sequence[float]],
        labels: Sequence[int],
        prev_mask: Optional[np.ndarray] = None,
        multimask: bool = True,
    ) -> Prediction:
        """Predict masks for the clicks on the current image.

        Args:
            points: (N, 2) click positions as (row, col) in image pixels, N >= 1.
            labels: (N,) 1 for a positive click, 0 for a negative one.
            prev_mask: the previous prediction as (H, W) logits (``Prediction.logits[i]``) or
                a boolean mask; None on an object's first click.
            multimask: True returns the K first-click proposals, False the single refined
                mask (use False once an object has more than one click).
        Returns:
            ``Prediction`` with masks (K or 1, H, W), scores and logits, best first.
        """
        if self._state is None:
            raise RuntimeError("predict() was called before set_image(): set an image first")
        st = self._state
        h, w = st.shape
        pts = np.asarray(points, dtype=np.float64)
        if pts.size == 0:
            raise ValueError("no points given: predict() needs at least one click")
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2) as (row, col); got {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("points contain NaN or inf")
        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != pts.shape[0]:
            raise ValueError(f"got {pts.shape[0]} points but {lab.shape[0]} labels: one label per point")
        if not np.isin(lab, (0, 1)).all():
            raise ValueError(f"labels must be 1 (positive) or 0 (negative); got {np.unique(lab).tolist()}")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > h - 1) | (pts[:, 1] < 0) | (pts[:, 1] > w - 1)
        if outside.any():
            bad = pts[outside][0].tolist()
            raise ValueError(f"point (row, col) = {bad} lies outside the image of shape {(h, w)}")

        tf = st.transform
        dev = self.device
        coords = torch.as_tensor(tf.apply_points(pts), dtype=torch.float32, device=dev)[None]
        lab_t = torch.as_tensor(lab, dtype=torch.long, device=dev)[None]
        prev = None
        if prev_mask is not None:
            pm = np.asarray(prev_mask)
            if pm.shape != (h, w):
                raise ValueError(f"prev_mask has shape {pm.shape}; it must match the image's {(h, w)}")
            if pm.dtype == np.bool_:
                prob = torch.from_numpy(pm.astype(np.float32))
            else:
                prob = torch.sigmoid(torch.from_numpy(np.nan_to_num(pm.astype(np.float32))))
            prev = tf.apply_image(prob[None, None]).to(dev)
        logits, iou = self.model.decode(st.embedding, coords, lab_t, prev)
        logits, iou = logits[0], iou[0]
        if multimask:
            logits, iou = logits[1:], iou[1:]
            order = torch.argsort(iou, descending=True)
            logits, iou = logits[order], iou[order]
        else:
            logits, iou = logits[:1], iou[:1]
        full = tf.undo_image(logits[None].float())[0].cpu().numpy().astype(np.float32)
        return Prediction(full > 0, iou.float().cpu().numpy(), full)


def load_predictor(
    name_or_path: str = "default", device: str = "auto", depth: Any = None
) -> OISPredictor:
    """A ready predictor for a registered model name or a weights path.

    Args:
        name_or_path: a name from ``napari-ois models`` or a path to a .safetensors/.pt file.
        device: "auto" (CUDA, then MPS, then CPU), "cuda", "mps" or "cpu".
        depth: a depth provider spec for ``napari_ois.depth.make_depth_provider`` (None or
            "none" for no depth, "depth-anything-v2-small", a checkpoint path, ...).
    """
    dev = resolve_device(device)
    provider = None
    if depth is not None and not (isinstance(depth, str) and depth.lower() == "none"):
        from .depth import make_depth_provider

        provider = make_depth_provider(depth, device=str(dev))
    return OISPredictor(build_model(name_or_path), device=dev, depth_provider=provider)

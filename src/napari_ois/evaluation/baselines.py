"""Classical click-driven segmentation baselines that need no weights.

They implement the predictor interface of :class:`napari_ois.predictor.OISPredictor`
(``set_image`` once, ``predict`` per prompt, returning ``masks``/``scores``/``logits``), so
the evaluation runner, the CLI and the plugin can use them interchangeably with the network:

``random-walker``
    :func:`skimage.segmentation.random_walker` (Grady 2006; direct sparse solve,
    ``mode="bf"``) on the image downscaled so its longest side is at most ``max_side``
    (256) px, seeded by small disks around the clicks (positive -> label 1, negative ->
    label 2). Without negative clicks, a one-pixel frame of background seeds is added on the
    image border (outside the positive disks); ``border="always"`` keeps that frame after the
    first negative click too, ``"never"`` never adds it. The probability of label 1 is
    upsampled (bilinear) to the image size and returned as logits.

``geodesic``
    Geodesic-distance segmentation (Bai & Sapiro style): the minimal path cost from the
    positive seeds and from the negative seeds (same seeds as above) over a cost map
    ``gradient magnitude + eps`` (:class:`skimage.graph.MCP_Geometric`); a pixel is
    foreground when it is geodesically nearer to a positive seed. Logits are
    ``(d_neg - d_pos) / temperature``.

Both ignore ``prev_mask`` (they are memoryless: the clicks are the whole state) and
``depth``; ``multimask=True`` returns a single proposal (``K = 1``). ``scores`` are the mean
confidence ``mean(|2p - 1|)``, not a learned IoU.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

from ..data.images import to_unit_rgb
from ..data.prompts import Prediction

LOGIT_CLIP = 12.0


def _disk_offsets(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = yy * yy + xx * xx <= r * r
    return np.stack([yy[keep], xx[keep]], axis=1)


class _ClassicalPredictor:
    """Shared plumbing: normalise, downscale, map clicks to seeds, upsample the result."""

    name = "classical"

    def __init__(self, max_side: int = 256, seed_radius: int = 3, border: str = "auto"):
        if border not in ("auto", "always", "never"):
            raise ValueError(f"border must be 'auto', 'always' or 'never'; got {border!r}")
        self.max_side = int(max_side)
        self.seed_radius = int(seed_radius)
        self.border = border
        self.device = "cpu"
        self._small: Optional[np.ndarray] = None
        self._shape = None

    # -- predictor API ------------------------------------------------------------------
    def set_image(self, image: np.ndarray, depth=None, contrast_limits=None) -> None:
        from skimage.transform import resize

        rgb = to_unit_rgb(image, contrast_limits)
        h, w = rgb.shape[:2]
        self._shape = (h, w)
        scale = min(1.0, self.max_side / float(max(h, w)))
        self._scale = scale
        if scale < 1.0:
            sh, sw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
            small = resize(rgb, (sh, sw), order=1, anti_aliasing=True, preserve_range=True)
        else:
            small = rgb
        small = np.asarray(small, dtype=np.float64)
        # grey images (all channels equal) -> one channel: cheaper and identical weights
        if np.allclose(small[..., 0], small[..., 1]) and np.allclose(small[..., 0],
                                                                      small[..., 2]):
            small = small[..., :1]
        self._small = small
        self._prepare(small)

    def reset_image(self) -> None:
        self._small = None
        self._shape = None

    @property
    def is_image_set(self) -> bool:
        return self._small is not None

    def predict(self, points: Sequence[Sequence[float]] = (), labels: Sequence[int] = (),
                prev_mask=None, multimask: bool = True, **kwargs) -> Prediction:
        if self._small is None:
            raise RuntimeError("call set_image() before predict()")
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lbl = np.asarray(labels, dtype=np.int64).reshape(-1)
        if pts.shape[0] != lbl.shape[0]:
            raise ValueError(f"{pts.shape[0]} points but {lbl.shape[0]} labels")
        h, w = self._shape
        sh, sw = self._small.shape[:2]
        if not np.any(lbl == 1):
            prob_small = np.zeros((sh, sw), dtype=np.float64)
        else:
            seeds = self._seeds(pts, lbl)
            prob_small = self._probability(seeds)
        prob = self._upsample(prob_small)
        p = np.clip(prob, 1e-6, 1 - 1e-6)
        logits = np.clip(np.log(p) - np.log1p(-p), -LOGIT_CLIP, LOGIT_CLIP).astype(np.float32)
        score = float(np.mean(np.abs(2.0 * prob - 1.0)))
        return Prediction(masks=(logits > 0)[None], scores=np.array([score], np.float32),
                          logits=logits[None])

    # -- helpers --------------------------------------------------------------------------
    def _seeds(self, pts: np.ndarray, lbl: np.ndarray) -> np.ndarray:
        """Seed image at the small scale: 0 unlabelled, 1 object, 2 background."""
        sh, sw = self._small.shape[:2]
        seeds = np.zeros((sh, sw), dtype=np.int32)
        has_neg = bool(np.any(lbl != 1))
        if self.border == "always" or (self.border == "auto" and not has_neg):
            seeds[0, :] = seeds[-1, :] = 2
            seeds[:, 0] = seeds[:, -1] = 2
        offs = _disk_offsets(self.seed_radius)
        centres = []
        for (r, c), l in zip(pts, lbl):  # click order: a later click wins where disks overlap
            rs = int(np.clip(np.floor((r + 0.5) * self._scale), 0, sh - 1))
            cs = int(np.clip(np.floor((c + 0.5) * self._scale), 0, sw - 1))
            val = 1 if l == 1 else 2
            rr = np.clip(rs + offs[:, 0], 0, sh - 1)
            cc = np.clip(cs + offs[:, 1], 0, sw - 1)
            seeds[rr, cc] = val
            centres.append((rs, cs, val))
        for rs, cs, val in centres:  # every click's own pixel keeps its label
            seeds[rs, cs] = val
        return seeds

    def _upsample(self, prob_small: np.ndarray) -> np.ndarray:
        h, w = self._shape
        if prob_small.shape == (h, w):
            return prob_small
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(prob_small, dtype=np.float32))[None, None]
        up = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        return up[0, 0].numpy().astype(np.float64)

    def _prepare(self, small: np.ndarray) -> None:  # per-image precomputation
        pass

    def _probability(self, seeds: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_side={self.max_side})"


class RandomWalkerPredictor(_ClassicalPredictor):
    """Random-walker segmentation from clicks (see module docstring)."""

    name = "random-walker"

    def __init__(self, max_side: int = 256, seed_radius: int = 3, beta: float = 130.0,
                 mode: str = "bf", tol: float = 1e-3, border: str = "auto"):
        super().__init__(max_side=max_side, seed_radius=seed_radius, border=border)
        self.beta = float(beta)
        # "bf" = direct sparse solve (SuperLU): exact and, on 2 CPU cores, ~15x faster here
        # than "cg_j" (which needs thousands of iterations when seeds are far apart).
        self.mode = str(mode)
        self.tol = float(tol)

    def _probability(self, seeds: np.ndarray) -> np.ndarray:
        from skimage.segmentation import random_walker

        if not np.any(seeds == 2):
            return (seeds == 1).astype(np.float64) if np.any(seeds == 0) else np.ones(
                seeds.shape)
        prob = random_walker(self._small, seeds, beta=self.beta, mode=self.mode, tol=self.tol,
                             return_full_prob=True, channel_axis=-1)
        # labels present are {1, 2}; prob[0] is label 1 (the object)
        return np.clip(np.asarray(prob[0], dtype=np.float64), 0.0, 1.0)


class GeodesicPredictor(_ClassicalPredictor):
    """Geodesic-distance segmentation from clicks (see module docstring)."""

    name = "geodesic"

    def __init__(self, max_side: int = 256, seed_radius: int = 2, eps: float = 0.02,
                 temperature: float = 0.1, border: str = "auto"):
        super().__init__(max_side=max_side, seed_radius=seed_radius, border=border)
        self.eps = float(eps)
        self.temperature = float(temperature)

    def _prepare(self, small: np.ndarray) -> None:
        from scipy import ndimage as ndi

        grad = np.zeros(small.shape[:2], dtype=np.float64)
        for ch in range(small.shape[-1]):
            smooth = ndi.gaussian_filter(small[..., ch], 1.0)
            gy = ndi.sobel(smooth, axis=0)
            gx = ndi.sobel(smooth, axis=1)
            grad += gx * gx + gy * gy
        grad = np.sqrt(grad)
        ref = np.percentile(grad, 99) if grad.size else 1.0
        self._cost = grad / max(ref, 1e-8) + self.eps

    def _distance(self, mask: np.ndarray) -> np.ndarray:
        from skimage.graph import MCP_Geometric

        starts = np.argwhere(mask)
        mcp = MCP_Geometric(self._cost, fully_connected=True)
        dist, _ = mcp.find_costs([tuple(s) for s in starts])
        return dist

    def _probability(self, seeds: np.ndarray) -> np.ndarray:
        if not np.any(seeds == 2):
            return np.ones(seeds.shape, dtype=np.float64)
        d_pos = self._distance(seeds == 1)
        d_neg = self._distance(seeds == 2)
        z = np.clip((d_neg - d_pos) / self.temperature, -50, 50)
        return 1.0 / (1.0 + np.exp(-z))


BASELINES: Dict[str, Callable[..., _ClassicalPredictor]] = {
    "random-walker": RandomWalkerPredictor,
    "geodesic": GeodesicPredictor,
}


def get_model(name: str, device: str = "cpu", zoom_in: bool = True, flip_tta: bool = False,
              precision: str = "fp32"):
    """A predictor by name: a classical baseline from :data:`BASELINES`, or anything
    :func:`napari_ois.load_predictor` accepts (registry name or checkpoint path).
    ``zoom_in``, ``flip_tta`` and ``precision`` apply to network models only."""
    key = str(name).strip().lower()
    if key in BASELINES:
        return BASELINES[key]()
    import napari_ois  # lazy: the network stack is heavy and may not be built yet

    load = getattr(napari_ois, "load_predictor", None)
    if load is None:
        from napari_ois.predictor import load_predictor as load  # type: ignore
    return load(name, device=device, zoom_in=zoom_in, flip_tta=flip_tta, precision=precision)

"""Training augmentation: geometry (flip, scale, crop, resize-longest-side + pad) applied
consistently to image, depth and masks, plus colour / grey / intensity-window variants.

Geometry follows :class:`napari_ois.model.transforms.ResizeTransform`: the (cropped) image is
resized so it fits in ``size x size`` and sits at the TOP-LEFT of the square, zero-padded
bottom/right; ``valid`` marks the image pixels. With ``scale == 1`` and no crop the layout
is exactly ``ResizeTransform(H, W, size)`` (same ``new_shape``). Masks are resampled as
floats with the image's own interpolation and thresholded at 0.5, so they stay aligned
with the image and nested masks stay nested (the interpolation weights are non-negative).

Arrays: images are ``(H, W, 3)`` float32 [0, 1] on input and ``(3, S, S)`` on output;
masks ``(K, H, W)`` bool -> ``(K, S, S)`` bool; depth ``(H, W)`` -> ``(S, S)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..data.images import resize_chw
from ..model.transforms import ResizeTransform

__all__ = [
    "AugmentConfig",
    "Geometry",
    "random_geometry",
    "augment_sample",
    "color_augment",
    "depth_augment",
]


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the augmentations (all per sample)."""

    # geometry
    p_fit: float = 0.3  # plain ResizeTransform layout: whole image, no crop, no rescale
    scale_range: Tuple[float, float] = (0.7, 1.8)  # relative to the fit scale (log-uniform)
    p_zoom_small: float = 0.5  # zoom onto a target whose bbox would be < small_side * S
    small_side: float = 0.12
    zoom_side: Tuple[float, float] = (0.15, 0.5)
    # the layout of zoom-in inference (predictor.ZoomIn, on by default from an object's
    # second click): the crop spans the target's longest side times ``zoom_crop_expansion``
    # (the predictor: 1.4), so the object fills most of the input, as every refinement
    # click sees it; at least ``zoom_crop_min`` input pixels (the predictor's ``min_crop``)
    p_zoom_crop: float = 0.0
    zoom_crop_expansion: Tuple[float, float] = (1.2, 1.8)
    zoom_crop_min: int = 48
    p_hflip: float = 0.5
    p_vflip: float = 0.1
    p_antialias: float = 0.5  # antialias when downscaling (inference does not; mix both)
    # colour (image only)
    p_color: float = 0.8
    brightness: float = 0.12
    contrast: Tuple[float, float] = (0.6, 1.4)
    saturation: Tuple[float, float] = (0.4, 1.5)
    hue: float = 0.06  # radians / (2 pi) of the hue rotation
    p_gray: float = 0.15
    p_medical: float = 0.15  # grey + random intensity window + low contrast + gamma + noise
    p_gamma: float = 0.2
    gamma: Tuple[float, float] = (0.6, 1.6)
    p_noise: float = 0.15
    noise_std: Tuple[float, float] = (0.005, 0.04)
    p_blur: float = 0.1
    blur_sigma: Tuple[float, float] = (0.3, 1.2)
    # depth (synthetic scenes only; monotone or smooth changes, renormalised to [0, 1])
    p_depth_gamma: float = 0.5
    depth_gamma: Tuple[float, float] = (0.6, 1.6)
    p_depth_blur: float = 0.3
    depth_blur_sigma: Tuple[float, float] = (0.5, 2.0)
    p_depth_noise: float = 0.3
    depth_noise_std: Tuple[float, float] = (0.0, 0.02)

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No randomness: plain ResizeTransform layout, no flips, no colour changes."""
        return cls(
            p_fit=1.0, p_zoom_small=0.0, p_hflip=0.0, p_vflip=0.0, p_antialias=0.0,
            p_color=0.0, p_gray=0.0, p_medical=0.0, p_gamma=0.0, p_noise=0.0, p_blur=0.0,
            p_depth_gamma=0.0, p_depth_blur=0.0, p_depth_noise=0.0,
        )


@dataclass(frozen=True)
class Geometry:
    """Crop ``box`` of the input (rows ``r0:r1``, cols ``c0:c1``), optional flips, resize to
    ``out_shape`` and place at the top-left of ``size x size``."""

    in_shape: Tuple[int, int]
    box: Tuple[int, int, int, int]
    out_shape: Tuple[int, int]
    size: int
    hflip: bool = False
    vflip: bool = False
    antialias: bool = False

    @classmethod
    def fit(cls, shape: Tuple[int, int], size: int) -> "Geometry":
        """Exactly the layout of ``ResizeTransform(H, W, size)``."""
        h, w = int(shape[0]), int(shape[1])
        return cls((h, w), (0, h, 0, w), ResizeTransform(h, w, size).new_shape, int(size))

    @property
    def valid(self) -> np.ndarray:
        v = np.zeros((self.size, self.size), bool)
        v[: self.out_shape[0], : self.out_shape[1]] = True
        return v

    def apply(self, stack: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` float -> ``(C, size, size)`` float32, zero outside ``valid``."""
        r0, r1, c0, c1 = self.box
        crop = stack[:, r0:r1, c0:c1]
        if self.hflip:
            crop = crop[:, :, ::-1]
        if self.vflip:
            crop = crop[:, ::-1, :]
        res = resize_chw(crop, self.out_shape, self.antialias)
        out = np.zeros((stack.shape[0], self.size, self.size), np.float32)
        out[:, : self.out_shape[0], : self.out_shape[1]] = res
        return out

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        """``(K, H, W)`` bool -> ``(K, size, size)`` bool (bilinear, threshold 0.5)."""
        return self.apply(np.asarray(masks, np.float32)) > 0.5


def _window(lo_bound: float, extent: float, span: float, lo: float, hi: float,
            rng: np.random.Generator) -> float:
    """Start of a window of length ``span`` in ``[0, extent]`` that contains ``[lo, hi]``
    when it fits, else a random point of it."""
    if span >= extent:
        return 0.0
    if hi - lo <= span:
        a, b = max(0.0, hi - span), min(lo, extent - span)
    else:
        p = rng.uniform(lo, hi)
        a, b = max(0.0, p - span), min(p, extent - span)
    if b < a:
        a, b = b, a
    return float(rng.uniform(a, b)) if b > a else float(a)


def random_geometry(
    rng: np.random.Generator,
    shape: Tuple[int, int],
    size: int,
    cfg: Optional[AugmentConfig] = None,
    focus: Optional[np.ndarray] = None,
) -> Geometry:
    """A random :class:`Geometry` for an ``(H, W)`` input; the crop keeps (part of) the
    ``focus`` mask (the target) in view, and small targets are zoomed onto sometimes."""
    cfg = cfg or AugmentConfig()
    h, w = int(shape[0]), int(shape[1])
    base = size / max(h, w)
    hflip = bool(rng.random() < cfg.p_hflip)
    vflip = bool(rng.random() < cfg.p_vflip)
    antialias = bool(rng.random() < cfg.p_antialias)
    bbox = None
    if focus is not None and focus.any():
        rows, cols = np.flatnonzero(focus.any(1)), np.flatnonzero(focus.any(0))
        bbox = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    # (no random draw when p_zoom_crop is 0: the earlier configs' samples stay the same)
    zoom_crop = bbox is not None and cfg.p_zoom_crop > 0 and rng.random() < cfg.p_zoom_crop
    if zoom_crop:
        side = max(bbox[1] - bbox[0], bbox[3] - bbox[2])
        span = max(side * rng.uniform(*cfg.zoom_crop_expansion), cfg.zoom_crop_min)
        scale = max(base, size / span)  # never smaller than the whole image's fit
    elif rng.random() < cfg.p_fit:
        scale = base
    else:
        lo, hi = np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])
        scale = base * float(np.exp(rng.uniform(lo, hi)))
    if bbox is not None and cfg.p_zoom_small > 0 and not zoom_crop:
        side = max(bbox[1] - bbox[0], bbox[3] - bbox[2])
        if side * scale < cfg.small_side * size and rng.random() < cfg.p_zoom_small:
            scale = max(scale, rng.uniform(*cfg.zoom_side) * size / side)
    span = size / scale  # input pixels covered by the output square
    if bbox is None:
        bbox = (0, h, 0, w)
    # crop in the (unflipped) input; flips are applied to the crop afterwards
    r0 = _window(0, h, span, bbox[0], bbox[1], rng)
    c0 = _window(0, w, span, bbox[2], bbox[3], rng)
    ir0, ic0 = int(np.floor(r0)), int(np.floor(c0))
    ir1, ic1 = min(h, int(np.ceil(r0 + span))), min(w, int(np.ceil(c0 + span)))
    ir1, ic1 = max(ir1, ir0 + 1), max(ic1, ic0 + 1)
    nh = max(1, min(size, int(round((ir1 - ir0) * scale))))
    nw = max(1, min(size, int(round((ic1 - ic0) * scale))))
    if scale == base and (ir0, ir1, ic0, ic1) == (0, h, 0, w):
        nh, nw = ResizeTransform(h, w, size).new_shape
    return Geometry((h, w), (ir0, ir1, ic0, ic1), (nh, nw), int(size), hflip, vflip, antialias)


# --------------------------------------------------------------------------- colour


def _gray(img: np.ndarray) -> np.ndarray:
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma=(0, sigma, sigma) if img.ndim == 3 else sigma)


def color_augment(
    rng: np.random.Generator, image: np.ndarray, valid: np.ndarray,
    cfg: Optional[AugmentConfig] = None,
) -> np.ndarray:
    """Random colour changes of a ``(3, S, S)`` [0, 1] image; returns a new array, zero
    outside ``valid``. Variants: brightness/contrast/saturation/hue jitter, grey, a
    "medical" look (grey, random intensity window, low contrast, gamma, noise), gamma,
    noise, blur."""
    cfg = cfg or AugmentConfig()
    img = image.astype(np.float32, copy=True)
    vmask = valid.astype(bool)
    if not vmask.any():
        return img
    if rng.random() < cfg.p_color:
        # hue rotation about the grey axis, saturation, contrast and brightness are all
        # affine in RGB: fold them into one 3x3 matrix and one offset (one pass over pixels)
        lum = np.array([0.299, 0.587, 0.114])
        mat = np.eye(3)
        if cfg.hue > 0:
            a = rng.uniform(-cfg.hue, cfg.hue) * 2 * np.pi
            k = np.ones(3) / np.sqrt(3)
            kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
            mat = np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
        sat = rng.uniform(*cfg.saturation)
        mat = (sat * np.eye(3) + (1 - sat) * np.outer(np.ones(3), lum)) @ mat
        con = rng.uniform(*cfg.contrast)
        mean_rgb = img[:, vmask].mean(axis=1) if not vmask.all() else img.mean(axis=(1, 2))
        mean = float(lum @ mat @ mean_rgb)
        offset = (1 - con) * mean + rng.uniform(-cfg.brightness, cfg.brightness)
        mat = con * mat
        img = (mat.astype(np.float32) @ img.reshape(3, -1)).reshape(img.shape)
        img += np.float32(offset)
        np.clip(img, 0, 1, out=img)
    medical = rng.random() < cfg.p_medical
    grey = medical
    if medical:
        g = _gray(img)
        sample = g[vmask][:: max(1, int(vmask.sum()) // 4096)]
        lo_q, hi_q = rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0)
        lo, hi = np.quantile(sample, [lo_q, hi_q])
        g = np.clip((g - lo) / max(hi - lo, 1e-3), 0, 1)
        g = g ** rng.uniform(0.5, 2.0)
        c = rng.uniform(0.25, 0.9)  # low contrast: squeeze into [a, a + c]
        g = rng.uniform(0, 1 - c) + c * g
        img = np.repeat(g[None], 3, axis=0)
    elif rng.random() < cfg.p_gray:
        img = np.repeat(_gray(img)[None], 3, axis=0)
        grey = True
    if rng.random() < cfg.p_gamma:
        img = np.clip(img, 0, 1) ** rng.uniform(*cfg.gamma)
    if rng.random() < cfg.p_blur:
        img = _blur(img, rng.uniform(*cfg.blur_sigma))
    if medical or rng.random() < cfg.p_noise:
        std = rng.uniform(*cfg.noise_std)
        shape = img.shape[1:] if grey else img.shape  # grey stays grey
        img = img + rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    img = np.clip(img, 0, 1).astype(np.float32)
    img *= vmask[None]
    return img


def depth_augment(
    rng: np.random.Generator, depth: np.ndarray, valid: np.ndarray,
    cfg: Optional[AugmentConfig] = None,
) -> np.ndarray:
    """Degrade a ``(S, S)`` depth map like a monocular estimate (monotone gamma, blur,
    noise), then renormalise to [0, 1] over ``valid`` (zero outside)."""
    cfg = cfg or AugmentConfig()
    d = depth.astype(np.float32, copy=True)
    vmask = valid.astype(bool)
    if not vmask.any():
        return np.zeros_like(d)
    if rng.random() < cfg.p_depth_gamma:
        d = np.clip(d, 0, 1) ** rng.uniform(*cfg.depth_gamma)
    if rng.random() < cfg.p_depth_blur:
        # blur only inside the image: normalised convolution so padding does not leak in
        s = rng.uniform(*cfg.depth_blur_sigma)
        num = _blur(d * vmask, s)
        den = _blur(vmask.astype(np.float32), s)
        d = np.where(vmask, num / np.maximum(den, 1e-6), 0)
    if rng.random() < cfg.p_depth_noise:
        d = d + rng.standard_normal(d.shape, dtype=np.float32) * np.float32(
            rng.uniform(*cfg.depth_noise_std))
    vals = d[vmask]
    lo, hi = float(vals.min()), float(vals.max())
    d = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    return (np.clip(d, 0, 1) * vmask).astype(np.float32)


# --------------------------------------------------------------------------- all together


def augment_sample(
    rng: np.random.Generator,
    image: np.ndarray,
    size: int,
    masks: Optional[np.ndarray] = None,
    depth: Optional[np.ndarray] = None,
    ignore: Optional[np.ndarray] = None,
    focus: Optional[np.ndarray] = None,
    cfg: Optional[AugmentConfig] = None,
    geometry: Optional[Geometry] = None,
) -> dict:
    """Augment one sample consistently.

    ``image`` (H, W, 3) float [0, 1]; ``masks`` (K, H, W) bool; ``depth`` (H, W) float;
    ``ignore`` (H, W) bool; ``focus`` (H, W) bool keeps that region in the crop (defaults
    to ``masks[0]``). Returns ``image`` (3, S, S) float32, ``masks`` (K, S, S) bool,
    ``depth`` (S, S) float32 or None, ``ignore`` (S, S) bool (annotated ignore only),
    ``valid`` (S, S) bool and the ``geometry`` used.
    """
    cfg = cfg or AugmentConfig()
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    masks = np.zeros((0, h, w), bool) if masks is None else np.asarray(masks, bool)
    if masks.ndim == 2:
        masks = masks[None]
    if focus is None and len(masks):
        focus = masks[0]
    geo = geometry or random_geometry(rng, (h, w), size, cfg, focus)
    layers = [np.moveaxis(image, -1, 0)]
    if depth is not None:
        layers.append(np.asarray(depth, np.float32)[None])
    if len(masks):
        layers.append(masks.astype(np.float32))
    if ignore is not None:
        layers.append(np.asarray(ignore, np.float32)[None])
    out = geo.apply(np.concatenate(layers, axis=0))
    img = np.clip(out[:3], 0, 1)
    i = 3
    dep = None
    if depth is not None:
        dep, i = out[i], i + 1
    m = out[i : i + len(masks)] > 0.5
    i += len(masks)
    ign = out[i] > 0.5 if ignore is not None else np.zeros((size, size), bool)
    valid = geo.valid
    img = color_augment(rng, img, valid, cfg)
    if dep is not None:
        dep = depth_augment(rng, dep, valid, cfg)
    return {"image": img, "masks": m, "depth": dep, "ignore": ign & valid, "valid": valid,
            "geometry": geo}

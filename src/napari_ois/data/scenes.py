"""Synthetic order-aware scenes: objects at known depths composited back to front.

No RGB-D data with masks exists for training, so depth supervision comes from scenes built
out of the training images: real object cut-outs (their own pixels, cut with their masks)
and procedural shapes (ellipses, polygons, thresholded smooth-noise blobs) textured with
random crops of training images, placed at random depths over a background crop.

Depth model (larger = nearer, like the normalised inverse depth the predictor uses):

- the background occupies the band ``[0, bg_top]`` as a gentle ramp (a ground plane,
  usually nearer at the bottom) plus smooth noise;
- the objects get disjoint, increasing bands above it, in the order they are painted
  (back to front); inside its band each object is a plane / gentle gradient plus a bulge
  (nearer at its centre) plus a little noise, clipped to the band.

So wherever two objects overlap, the one painted later (in front) is nearer on every one
of its pixels, and the depth map is consistent with the occlusion order. Visible masks are
exact: ``labels`` holds, per pixel, the front-most object (``i + 1`` for object ``i``).
Everything is deterministic given the ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage as ndi

from .images import resize_chw

__all__ = ["SceneConfig", "Scene", "SceneGenerator"]


@dataclass
class SceneConfig:
    n_objects: Tuple[int, int] = (2, 7)  # inclusive range of objects painted per scene
    p_cutout: float = 0.6  # a real cut-out (else a procedural shape)
    size_frac: Tuple[float, float] = (0.15, 0.7)  # object longest side / scene shorter side
    min_visible_frac: float = 0.002  # objects with less visible area are not targets
    min_visible_px: int = 24
    min_cutout_frac: float = 0.01  # cut-outs come from objects >= 1% of their image
    min_cutout_px: int = 100
    max_cutout_upscale: float = 3.0  # a cut-out is never enlarged more (blocky edges)
    bg_top: Tuple[float, float] = (0.15, 0.35)  # background depth band [0, bg_top]
    band_gap: float = 0.25  # fraction of each object's depth slot left empty (separation)
    relief: Tuple[float, float] = (0.2, 1.0)  # variation inside a band, fraction of band
    depth_noise: float = 0.05  # iid noise inside an object's band, fraction of the band
    feather: float = 0.6  # alpha blur (px) of the composited edges; masks stay hard
    p_shading: float = 0.4  # darken procedural shapes towards their rim
    p_recolor: float = 0.4  # random colour gains on procedural textures
    p_flat_texture: float = 0.15  # flat colour + noise instead of an image crop
    pool_size: Tuple[int, int] = (1, 3)  # source images loaded per scene (inclusive)
    max_tries: int = 10


@dataclass
class Scene:
    """One synthetic scene. Objects are indexed back to front (``0`` is the farthest).

    ``labels``: 0 background, ``i + 1`` where object ``i`` is the front-most;
    ``amodal``: each object's full mask before occlusion; ``keep``: whether its visible
    area is large enough to be a training target; ``object_depth``: centre of its band.
    """

    image: np.ndarray  # (H, W, 3) float32 [0, 1]
    depth: np.ndarray  # (H, W) float32 [0, 1], larger = nearer
    labels: np.ndarray  # (H, W) int32
    amodal: np.ndarray  # (N, H, W) bool
    object_depth: np.ndarray  # (N,) float32, increasing
    bands: np.ndarray  # (N, 2) float32, depth band of each object
    keep: np.ndarray  # (N,) bool
    kinds: List[str] = field(default_factory=list)

    @property
    def ids(self) -> np.ndarray:
        """Label values of the kept objects."""
        return np.flatnonzero(self.keep) + 1

    @property
    def masks(self) -> np.ndarray:
        """``(M, H, W)`` bool visible masks of the kept objects (disjoint)."""
        return np.stack([self.labels == i for i in self.ids]) if self.keep.any() else \
            np.zeros((0,) + self.labels.shape, bool)

    def visible(self, i: int) -> np.ndarray:
        """Visible mask of object ``i`` (kept or not)."""
        return self.labels == i + 1


# --------------------------------------------------------------------------- helpers


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    h, w = shape
    g = rng.random((1, max(2, cells), max(2, cells))).astype(np.float32)
    out = resize_chw(g, (h, w))[0]
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / (hi - lo) if hi > lo else np.zeros((h, w), np.float32)


def _unit_dt(mask: np.ndarray) -> np.ndarray:
    """Distance to the mask's edge (chamfer) normalised to [0, 1] inside it."""
    dt = ndi.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
    m = dt.max()
    return (dt / m).astype(np.float32) if m > 0 else dt.astype(np.float32)


def _fill_polygon(shape: Tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Even-odd fill of a polygon at pixel centres."""
    h, w = shape
    yy = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(w, dtype=np.float64)[None, :] + 0.5
    inside = np.zeros((h, w), bool)
    n = len(rows)
    for k in range(n):
        y0, x0, y1, x1 = rows[k], cols[k], rows[(k + 1) % n], cols[(k + 1) % n]
        if y0 == y1:
            continue
        cond = (yy >= min(y0, y1)) & (yy < max(y0, y1))  # (h, 1)
        xcross = x0 + (yy - y0) * (x1 - x0) / (y1 - y0)  # (h, 1)
        inside ^= cond & (xx < xcross)
    return inside


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def _bbox(mask: np.ndarray) -> Tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _random_crop_resized(
    rng: np.random.Generator, image: np.ndarray, shape: Tuple[int, int], zoom: Tuple[float, float]
) -> np.ndarray:
    """A random crop of ``image`` (H, W, 3) with the aspect of ``shape``, resized to it.
    ``zoom``: crop size relative to the largest crop of that aspect (log-uniform)."""
    H, W = image.shape[:2]
    h, w = shape
    fit = min(H / h, W / w)
    f = fit * float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))
    ch, cw = max(2, min(H, int(round(h * f)))), max(2, min(W, int(round(w * f))))
    r0, c0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    crop = np.moveaxis(image[r0 : r0 + ch, c0 : c0 + cw], -1, 0)
    if rng.random() < 0.5:
        crop = crop[:, :, ::-1]
    return np.moveaxis(resize_chw(crop, (h, w), antialias=True), 0, -1)


# --------------------------------------------------------------------------- generator


class SceneGenerator:
    """Builds :class:`Scene` objects from an image source (``TrainIndex`` or
    ``InMemorySource``: ``len``, ``sample_index(rng)``, ``load(i)``)."""

    def __init__(self, source, config: Optional[SceneConfig] = None) -> None:
        self.source = source
        self.cfg = config or SceneConfig()

    # -- objects: each returns (mask (h, w) bool, texture (h, w, 3) float32, kind)
    def _procedural_mask(self, rng: np.random.Generator, side: int) -> Tuple[np.ndarray, str]:
        kind = ("ellipse", "polygon", "blob")[int(rng.integers(0, 3))]
        aspect = rng.uniform(0.35, 1.0)
        h, w = (side, max(3, int(round(side * aspect))))
        if rng.random() < 0.5:
            h, w = w, h
        if kind == "ellipse":
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            cy, cx = (h - 1) / 2, (w - 1) / 2
            m = ((yy - cy) / max(h / 2, 1)) ** 2 + ((xx - cx) / max(w / 2, 1)) ** 2 <= 1.0
        elif kind == "polygon":
            n = int(rng.integers(3, 11))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(0.45, 1.0, n) if rng.random() < 0.6 else np.ones(n)
            rows = h / 2 + 0.5 * h * rad * np.sin(ang)
            cols = w / 2 + 0.5 * w * rad * np.cos(ang)
            m = _fill_polygon((h, w), rows, cols)
        else:
            noise = _smooth_noise(rng, (h, w), int(rng.integers(3, 7)))
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            r2 = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
            field_ = noise * np.clip(1.0 - r2, 0, 1)
            m = field_ > np.quantile(field_, rng.uniform(0.45, 0.7))
            m = ndi.binary_fill_holes(_largest_component(m))
        return m, kind

    def _texture(self, rng: np.random.Generator, pool: list, shape: Tuple[int, int]) -> np.ndarray:
        h, w = shape
        if rng.random() < self.cfg.p_flat_texture:
            tex = np.ones((h, w, 3), np.float32) * rng.random(3).astype(np.float32)
            tex += (_smooth_noise(rng, (h, w), 6)[..., None] - 0.5) * rng.uniform(0, 0.3)
            tex += rng.normal(0, 0.02, (h, w, 1)).astype(np.float32)
        else:
            img = pool[int(rng.integers(0, len(pool)))][0]
            tex = _random_crop_resized(rng, img, (h, w), (0.2, 1.0))
            if rng.random() < self.cfg.p_recolor:
                tex = tex * rng.uniform(0.5, 1.5, 3).astype(np.float32) + rng.uniform(-0.1, 0.1)
        return np.clip(tex, 0, 1).astype(np.float32)

    def _cutout(self, rng, pool, side) -> Optional[Tuple[np.ndarray, np.ndarray, str]]:
        cfg = self.cfg
        cands = []
        for k, (img, lab, name, ids) in enumerate(pool):
            cands.extend((k, int(i)) for i in ids)
        if not cands:
            return None
        k, obj = cands[int(rng.integers(0, len(cands)))]
        img, lab, name, _ = pool[k]
        m = lab == obj
        r0, r1, c0, c1 = _bbox(m)
        bh, bw = r1 - r0, c1 - c0
        s = min(side / max(bh, bw), cfg.max_cutout_upscale)
        th, tw = max(2, int(round(bh * s))), max(2, int(round(bw * s)))
        stack = np.concatenate(
            [np.moveaxis(img[r0:r1, c0:c1], -1, 0), m[None, r0:r1, c0:c1].astype(np.float32)]
        )
        if rng.random() < 0.5:
            stack = stack[:, :, ::-1]
        out = resize_chw(stack, (th, tw), antialias=s < 0.6)
        mask = out[3] > 0.5
        if mask.sum() < 4:
            return None
        return mask, np.clip(np.moveaxis(out[:3], 0, -1), 0, 1), f"cutout:{name}"

    def _load_pool(self, rng: np.random.Generator) -> list:
        cfg = self.cfg
        n = int(rng.integers(cfg.pool_size[0], cfg.pool_size[1] + 1))
        pool = []
        for _ in range(n):
            idx = self.source.sample_index(rng)
            img, lab = self.source.load(idx)
            name = self.source.set_name(idx) if hasattr(self.source, "set_name") else "source"
            area = np.bincount(np.clip(lab, 0, None).ravel())
            min_area = max(cfg.min_cutout_px, cfg.min_cutout_frac * lab.size)
            ids = np.flatnonzero(area >= min_area)
            ids = ids[ids > 0]
            pool.append((img, lab, name, ids))
        return pool

    # -- depth
    def _bands(self, rng: np.random.Generator, n: int, bg_top: float) -> np.ndarray:
        lo = bg_top + (1.0 - bg_top) * 0.05
        widths = rng.dirichlet(np.full(n, 2.0)) * (1.0 - lo)
        starts = lo + np.concatenate([[0.0], np.cumsum(widths)[:-1]])
        gap = self.cfg.band_gap / 2
        return np.stack([starts + gap * widths, starts + (1 - gap) * widths], 1).astype(np.float32)

    def _background_depth(self, rng, shape, bg_top) -> np.ndarray:
        h, w = shape
        theta = rng.normal(np.pi / 2, 0.35) if rng.random() < 0.8 else rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = np.sin(theta) * yy / h + np.cos(theta) * xx / w
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        ramp = ramp ** rng.uniform(0.7, 2.0)
        d = ramp * rng.uniform(0.3, 1.0) + 0.25 * _smooth_noise(rng, shape, int(rng.integers(2, 6)))
        d = (d - d.min()) / max(float(np.ptp(d)), 1e-6)
        return (d * bg_top).astype(np.float32)

    def _object_depth(self, rng, mask: np.ndarray, band: np.ndarray,
                      bulge: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        a = rng.uniform(0, 2 * np.pi)
        yy = np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(a) / max(h, w))
        xx = np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(a) / max(h, w))
        f = np.float32(rng.uniform(0, 1)) * (xx + yy) + np.float32(rng.uniform(0, 1.5)) * bulge
        if rng.random() < 0.5:
            f = f + 0.3 * _smooth_noise(rng, (h, w), 4) * np.float32(rng.uniform(0, 1))
        v = f[mask]
        f = (f - v.min()) / max(float(v.max() - v.min()), 1e-6) if v.size else f
        lo, hi = float(band[0]), float(band[1])
        relief = rng.uniform(*self.cfg.relief) * (hi - lo)
        centre = (lo + hi) / 2
        d = centre + (f - 0.5) * relief
        d = d + (rng.standard_normal((h, w), np.float32) * np.float32(self.cfg.depth_noise * (hi - lo)))
        return np.clip(d, lo, hi).astype(np.float32)

    # -- main
    def generate(self, rng: np.random.Generator, shape: Tuple[int, int] = (256, 256)) -> Scene:
        """One scene of ``shape`` (H, W). Retries when no object ends up visible enough."""
        for _ in range(self.cfg.max_tries):
            scene = self._generate_once(rng, (int(shape[0]), int(shape[1])))
            if scene.keep.any():
                return scene
        return scene

    def _generate_once(self, rng: np.random.Generator, shape: Tuple[int, int]) -> Scene:
        cfg = self.cfg
        h, w = shape
        pool = self._load_pool(rng)
        # background
        bg_img = pool[0][0]
        image = _random_crop_resized(rng, bg_img, (h, w), (0.4, 1.0))
        if rng.random() < 0.1:
            image = ndi.gaussian_filter(image, sigma=(rng.uniform(2, 8),) * 2 + (0,))
        bg_top = float(rng.uniform(*cfg.bg_top))
        depth = self._background_depth(rng, (h, w), bg_top)
        labels = np.zeros((h, w), np.int32)

        n = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
        bands = self._bands(rng, n, bg_top)
        short = min(h, w)
        amodal = np.zeros((n, h, w), bool)
        kinds: List[str] = []
        for i in range(n):
            frac = float(np.exp(rng.uniform(np.log(cfg.size_frac[0]), np.log(cfg.size_frac[1]))))
            side = max(6, int(round(frac * short)))
            obj = self._cutout(rng, pool, side) if rng.random() < cfg.p_cutout else None
            if obj is None:
                mask, kind = self._procedural_mask(rng, side)
                tex = self._texture(rng, pool, mask.shape)
            else:
                mask, tex, kind = obj
            bulge = np.sqrt(_unit_dt(mask))
            if obj is None and rng.random() < cfg.p_shading:
                tex = tex * (0.65 + 0.35 * bulge)[..., None]
            kinds.append(kind)
            ph, pw = mask.shape
            # centre anywhere inside the scene (objects may be cut by the border)
            cy = rng.uniform(0.05, 0.95) * h
            cx = rng.uniform(0.05, 0.95) * w
            y0, x0 = int(round(cy - ph / 2)), int(round(cx - pw / 2))
            # a margin for the feathered alpha
            pad = 2
            mpad = np.pad(mask, pad)
            tpad = np.pad(tex, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            dpad = np.pad(self._object_depth(rng, mask, bands[i], bulge), pad, mode="edge")
            y0, x0 = y0 - pad, x0 - pad
            # intersect the patch with the frame
            fy0, fx0 = max(0, y0), max(0, x0)
            fy1, fx1 = min(h, y0 + ph + 2 * pad), min(w, x0 + pw + 2 * pad)
            if fy1 <= fy0 or fx1 <= fx0:
                continue
            sl_f = (slice(fy0, fy1), slice(fx0, fx1))
            sl_p = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
            m = mpad[sl_p]
            if cfg.feather > 0:
                alpha = np.clip(ndi.gaussian_filter(mpad.astype(np.float32), cfg.feather), 0, 1)
                alpha = np.where(m, np.maximum(alpha[sl_p], 0.5), alpha[sl_p])  # mask >= half
            else:
                alpha = m.astype(np.float32)
            image[sl_f] = image[sl_f] * (1 - alpha[..., None]) + tpad[sl_p] * alpha[..., None]
            depth[sl_f] = np.where(m, dpad[sl_p], depth[sl_f])
            labels[sl_f] = np.where(m, i + 1, labels[sl_f])
            amodal[i][sl_f] = m
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        min_area = max(cfg.min_visible_px, cfg.min_visible_frac * h * w)
        keep = areas >= min_area
        return Scene(
            image=np.clip(image, 0, 1).astype(np.float32),
            depth=np.clip(depth, 0, 1).astype(np.float32),
            labels=labels,
            amodal=amodal,
            object_depth=bands.mean(1).astype(np.float32),
            bands=bands,
            keep=keep,
            kinds=kinds,
        )

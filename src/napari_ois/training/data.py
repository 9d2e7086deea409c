"""Training samples: proposal targets and the sample builder (and its torch datasets).

A sample is one object of a real training image or of a synthetic scene, augmented to the
model's input size (keys :data:`SAMPLE_KEYS`). The images come from an image source of
:mod:`napari_ois.data.sources` (``TrainIndex`` reads ``<data root>/train/*``;
``InMemorySource`` wraps arrays), the scenes from :mod:`napari_ois.data.scenes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..data.masks import IGNORE_LABEL
from ..data.scenes import SceneConfig, SceneGenerator
from .augment import AugmentConfig, Geometry, augment_sample

# --------------------------------------------------------------------------- proposal targets


def touching_pairs(labels: np.ndarray) -> np.ndarray:
    """Unordered pairs ``(a, b)``, ``a < b``, of objects that touch: object ``a`` dilated by a
    3x3 square overlaps object ``b`` (i.e. some pixels of the two are 8-neighbours).

    Labels ``<= 0`` (background, ignore) never touch anything. Returns ``(P, 2)`` int64.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {lab.shape}")
    pairs = []
    for a, b in (
        (lab[:, :-1], lab[:, 1:]),
        (lab[:-1, :], lab[1:, :]),
        (lab[:-1, :-1], lab[1:, 1:]),
        (lab[:-1, 1:], lab[1:, :-1]),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            pairs.append(np.stack([a[sel], b[sel]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    p = np.concatenate(pairs).astype(np.int64)
    lo, hi = p.min(axis=1), p.max(axis=1)
    base = int(hi.max()) + 1
    code = np.unique(lo * base + hi)
    return np.stack([code // base, code % base], axis=1)


def proposal_targets(labels: np.ndarray, obj_id: int, k: int = 3) -> np.ndarray:
    """DISNet-style ground truth for the first-click proposals of object ``obj_id``.

    Returns ``(k, H, W)`` bool (``k <= 3``): ``[object, object + touching objects, whole
    touching group]`` (touching: overlap after a 3x3 dilation; the group is the transitive
    closure). Where fewer distinct masks exist the last distinct one is repeated, so the
    masks always nest: ``out[0] <= out[1] <= out[2]``.
    """
    lab = np.asarray(labels)
    if obj_id <= 0 or not (lab == obj_id).any():
        raise ValueError(f"object {obj_id} is not in the label map")
    pairs = touching_pairs(lab)
    neighbours = set()
    group = {int(obj_id)}
    if len(pairs):
        adj: Dict[int, set] = {}
        for a, b in pairs.tolist():
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        neighbours = adj.get(int(obj_id), set())
        stack = [int(obj_id)]
        while stack:
            cur = stack.pop()
            for nb in adj.get(cur, ()):
                if nb not in group:
                    group.add(nb)
                    stack.append(nb)
    obj = lab == obj_id
    merged = obj | np.isin(lab, list(neighbours)) if neighbours else obj
    whole = np.isin(lab, sorted(group)) if len(group) > len(neighbours) + 1 else merged
    out = np.stack([obj, merged, whole])[: max(1, min(int(k), 3))]
    if k > 3:
        out = np.concatenate([out, np.repeat(out[-1:], k - 3, axis=0)])
    return out


# --------------------------------------------------------------------------- samples

#: Keys of a training sample (numpy arrays; ``S`` = sample size):
#:  image (3, S, S) float32 [0, 1] (not ImageNet-normalised; zero in the padding)
#:  depth (1, S, S) float32 [0, 1] (larger = nearer), zeros when ``has_depth`` is False
#:  has_depth bool; is_scene bool; source str (training set name or "scene")
#:  target (S, S) bool, the chosen object (== proposals[0])
#:  proposals (K, S, S) bool, nested first-click targets (object, + touching, group)
#:  valid (S, S) bool image pixels (False in the bottom/right padding)
#:  ignore (S, S) bool pixels to leave out of losses and clicks (padding or annotated ignore)
#:  prompt_mask (S, S) bool, a propagation sample's prompt (the object on a neighbouring
#:      slice; ``training.slices``), all False otherwise; is_prop bool marks those samples
SAMPLE_KEYS = (
    "image", "depth", "has_depth", "target", "proposals", "valid", "ignore", "is_scene",
    "source", "prompt_mask", "is_prop",
)


@dataclass
class SampleConfig:
    """How :class:`SampleBuilder` mixes and prepares samples."""

    size: int = 256
    scene_ratio: float = 0.5  # fraction of synthetic scenes (the rest: real images)
    min_object_frac: float = 0.002  # objects below this fraction of their image are skipped
    min_object_px: int = 16
    min_target_px: int = 16  # after augmentation, at the sample size
    num_proposals: int = 3
    # scene longest side / size. (1, 1): scenes are made at the sample size and only get
    # the padding layout, colour and depth augmentation (no resampling: faster, sharper);
    # otherwise they also get the random flip / scale / crop of real images.
    scene_scale: Tuple[float, float] = (1.0, 1.0)
    scene_aspect: Tuple[float, float] = (0.6, 1.0)  # scene short side / long side
    p_drop_depth: float = 0.0  # scenes given without depth (trains the no-depth mode)
    # share of propagation samples (a neighbouring slice's mask as the prompt; empty targets
    # where the structure ends), drawn from the source's slice-named volume sets
    p_propagate: float = 0.0
    max_tries: int = 20
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    scene_augment: Optional[AugmentConfig] = None  # default: ``augment``
    scene: SceneConfig = field(default_factory=SceneConfig)


class SampleBuilder:
    """Makes training samples (dicts of numpy arrays, keys :data:`SAMPLE_KEYS`) from an
    image source, mixing real images (a random object of a random image) and scenes."""

    def __init__(self, source, config: Optional[SampleConfig] = None) -> None:
        self.source = source
        self.cfg = config or SampleConfig()
        self.scenes = SceneGenerator(source, self.cfg.scene)
        self.slices = None
        if self.cfg.p_propagate > 0:
            from .slices import NeighbourSlices

            self.slices = NeighbourSlices(source, augment=self.cfg.augment,
                                          num_proposals=self.cfg.num_proposals)

    def make_sample(self, rng: np.random.Generator, size: Optional[int] = None) -> dict:
        """One sample of size ``size`` (default ``config.size``)."""
        size = int(size or self.cfg.size)
        if self.slices is not None and len(self.slices) and rng.random() < self.cfg.p_propagate:
            sample = self.slices.make_sample(rng, size)
            if sample is not None:
                return sample
        if rng.random() < self.cfg.scene_ratio:
            return self.make_scene_sample(rng, size)
        return self.make_real_sample(rng, size)

    def make_batch(self, rng: np.random.Generator, batch_size: int,
                   size: Optional[int] = None) -> dict:
        """``batch_size`` samples stacked along a new first axis (``source`` is a list)."""
        samples = [self.make_sample(rng, size) for _ in range(batch_size)]
        out = {}
        for k in samples[0]:
            vals = [s[k] for s in samples]
            out[k] = vals if isinstance(vals[0], str) else np.stack(vals)
        return out

    # -- real images
    def _pick_object(self, rng, labels: np.ndarray) -> Optional[int]:
        areas = np.bincount(np.clip(labels, 0, None).ravel())
        min_area = max(self.cfg.min_object_px, self.cfg.min_object_frac * labels.size)
        ids = np.flatnonzero(areas >= min_area)
        ids = ids[ids > 0]
        return int(rng.choice(ids)) if len(ids) else None

    def make_real_sample(self, rng: np.random.Generator, size: int) -> dict:
        last_err = "no object large enough"
        for _ in range(self.cfg.max_tries):
            idx = self.source.sample_index(rng)
            image, labels = self.source.load(idx)
            obj = self._pick_object(rng, labels)
            if obj is None:
                continue
            props = proposal_targets(labels, obj, self.cfg.num_proposals)
            ignore = labels == IGNORE_LABEL
            aug = augment_sample(rng, image, size, masks=props,
                                 ignore=ignore if ignore.any() else None, cfg=self.cfg.augment)
            sample = self._finish(aug, None, self.source.set_name(idx), False)
            if sample is not None:
                return sample
            last_err = "target vanished after augmentation"
        raise RuntimeError(f"could not make a real sample in {self.cfg.max_tries} tries ({last_err})")

    # -- synthetic scenes
    def make_scene_sample(self, rng: np.random.Generator, size: int) -> dict:
        cfg = self.cfg
        for _ in range(cfg.max_tries):
            long = max(8, int(round(size * rng.uniform(*cfg.scene_scale))))
            short = max(8, int(round(long * rng.uniform(*cfg.scene_aspect))))
            shape = (long, short) if rng.random() < 0.5 else (short, long)
            scene = self.scenes.generate(rng, shape)
            ids = scene.ids
            if not len(ids):
                continue
            obj = int(rng.choice(ids))
            props = proposal_targets(scene.labels, obj, cfg.num_proposals)
            geo = Geometry.fit(shape, size) if long == size else None
            aug = augment_sample(rng, scene.image, size, masks=props, depth=scene.depth,
                                 cfg=cfg.scene_augment or cfg.augment, geometry=geo)
            sample = self._finish(aug, aug["depth"], "scene", True)
            if sample is None:
                continue
            if rng.random() < cfg.p_drop_depth:
                sample["depth"] = np.zeros_like(sample["depth"])
                sample["has_depth"] = False
            return sample
        raise RuntimeError(f"could not make a scene sample in {cfg.max_tries} tries")

    def _finish(self, aug: dict, depth: Optional[np.ndarray], source: str,
                is_scene: bool) -> Optional[dict]:
        props = aug["masks"]
        # keep nesting exact after resampling (bilinear weights are >= 0, so this is a no-op
        # except for float round-off)
        props = props.copy()
        for k in range(1, len(props)):
            props[k] |= props[k - 1]
        valid = aug["valid"]
        props &= valid[None]
        if props[0].sum() < self.cfg.min_target_px:
            return None
        size = valid.shape[0]
        return {
            "image": aug["image"].astype(np.float32),
            "depth": (depth if depth is not None else np.zeros((size, size), np.float32))[None]
            .astype(np.float32),
            "has_depth": depth is not None,
            "target": props[0].copy(),
            "proposals": props,
            "valid": valid,
            "ignore": aug["ignore"] | ~valid,
            "is_scene": is_scene,
            "source": source,
            "prompt_mask": np.zeros((size, size), bool),
            "is_prop": False,
        }


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (no oversubscription)."""
    torch.set_num_threads(1)


class OISTrainDataset(Dataset):
    """Map-style dataset of ``length`` samples per epoch.

    Sample ``i`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, i])``, so
    it is the same whatever the number of DataLoader workers (worker-safe, reproducible).
    Call :meth:`set_epoch` between epochs (with non-persistent workers, the default, the
    new epoch reaches the workers).
    """

    def __init__(self, builder: SampleBuilder, length: int, size: Optional[int] = None,
                 seed: int = 0) -> None:
        self.builder = builder
        self.length = int(length)
        self.size = size
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        return self.builder.make_sample(rng, self.size)


class OISTrainStream(IterableDataset):
    """Endless stream of samples; each DataLoader worker gets its own generator
    ``default_rng([seed, worker_id, num_workers])``."""

    def __init__(self, builder: SampleBuilder, size: Optional[int] = None, seed: int = 0) -> None:
        self.builder = builder
        self.size = size
        self.seed = int(seed)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, wid, nw])
        while True:
            yield self.builder.make_sample(rng, self.size)

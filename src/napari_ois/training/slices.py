"""Propagation samples: an object's mask on one slice of a volume as the prompt for a
neighbouring slice (issue 33).

3D propagation asks the model, slice after slice, "here is the object's mask on the slice
next to this one: where is it here?" -- and where the structure has ended the right answer
is an empty mask. Training slices of the volume sets are named ``<case>_z<index>`` (the
SABS_CT, CHAOS_MR, ACDC_MR and BraTS folders of ``train/``; ``../shared/data/README.md``), so
the neighbours of a slice are the slices of the same case with the nearest indices.

A propagation sample carries ``prompt_mask`` (the neighbour's mask of the object, jittered as
a predicted mask would be) and ``target`` (the object on this slice, possibly empty); it has
no click (the loop gives it one padding click) and no proposals. ``is_prop`` marks it.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..data.masks import IGNORE_LABEL
from .augment import AugmentConfig, augment_sample

#: ``<case>_z<index>``: a slice of a volume (the training sets' naming)
SLICE_STEM = re.compile(r"^(?P<case>.+)_z(?P<z>\d+)$")


def slice_cases(source) -> Dict[str, List[Tuple[int, int]]]:
    """``{set/case: [(z, record index), ...] sorted by z}`` for the records of ``source``
    whose stems name a slice (cases with a single slice are left out)."""
    cases: Dict[str, List[Tuple[int, int]]] = {}
    records = getattr(source, "records", None)
    if records is None:
        return cases
    for i, rec in enumerate(records):
        m = SLICE_STEM.match(rec.stem)
        if m:
            cases.setdefault(f"{rec.set}/{m['case']}", []).append((int(m["z"]), i))
    return {k: sorted(v) for k, v in cases.items() if len(v) > 1}


def jitter_mask(rng: np.random.Generator, mask: np.ndarray, max_px: int = 2) -> np.ndarray:
    """A mask as a prediction might draw it: grown or shrunk by up to ``max_px`` pixels
    (never emptied)."""
    n = int(rng.integers(-max_px, max_px + 1))
    if n > 0:
        return ndimage.binary_dilation(mask, iterations=n)
    if n < 0:
        out = ndimage.binary_erosion(mask, iterations=-n)
        return out if out.any() else mask
    return mask


class NeighbourSlices:
    """Makes propagation samples from the slice-named records of an image source.

    Args:
        source: a ``TrainIndex`` (records with ``set`` and ``stem``) or anything with
            ``records``, ``load(i)``.
        max_gap: the neighbour is at most this many positions away in the case's sorted
            slices (the training folders keep every 2nd labelled slice, so position 1 is
            about 2 slices away).
        p_absent: the share of samples that, where the case allows it, show an object on
            the neighbour that is absent here (the end of a structure: the answer is empty).
        min_prompt_px: the prompt object's least area on the neighbour.
    """

    def __init__(self, source, max_gap: int = 2, p_absent: float = 0.8,
                 min_prompt_px: int = 30, augment: Optional[AugmentConfig] = None,
                 num_proposals: int = 3) -> None:
        self.source = source
        self.num_proposals = int(num_proposals)
        self.cases = slice_cases(source)
        self.names = sorted(self.cases)
        self.by_set: Dict[str, List[str]] = {}
        for name in self.names:  # sets drawn uniformly, then a case: ACDC's 170 cases
            self.by_set.setdefault(name.split("/")[0], []).append(name)  # do not swamp CT's 22
        self.sets = sorted(self.by_set)
        self.max_gap = int(max_gap)
        self.p_absent = float(p_absent)
        self.min_prompt_px = int(min_prompt_px)
        self.augment = augment or AugmentConfig()

    def __len__(self) -> int:
        return len(self.names)

    def make_sample(self, rng: np.random.Generator, size: int, max_tries: int = 20) -> Optional[dict]:
        """One propagation sample (keys of ``training.data.SAMPLE_KEYS``), or None when the
        source has no volume slices."""
        if not self.names:
            return None
        for _ in range(max_tries):
            names = self.by_set[self.sets[int(rng.integers(len(self.sets)))]]
            slices = self.cases[names[int(rng.integers(len(names)))]]
            pos = int(rng.integers(len(slices)))
            gap = int(rng.integers(1, self.max_gap + 1)) * (1 if rng.random() < 0.5 else -1)
            nb = min(max(pos + gap, 0), len(slices) - 1)
            if nb == pos:
                nb = pos - gap if 0 <= pos - gap < len(slices) else pos
            if nb == pos:
                continue
            i_here, i_nb = slices[pos][1], slices[nb][1]
            image, labels = self.source.load(i_here)
            _, labels_nb = self.source.load(i_nb)
            if labels_nb.shape != labels.shape:
                continue
            areas = np.bincount(np.clip(labels_nb, 0, None).ravel())
            ids = np.flatnonzero(areas >= self.min_prompt_px)
            ids = ids[ids > 0]
            if not len(ids):
                continue
            present = np.isin(ids, np.unique(labels[labels > 0]))
            absent = ids[~present]
            if len(absent) and rng.random() < self.p_absent:
                obj = int(rng.choice(absent))
            else:
                obj = int(rng.choice(ids))
            prompt = jitter_mask(rng, labels_nb == obj)
            target = labels == obj
            ignore = labels == IGNORE_LABEL
            aug = augment_sample(rng, image, size, masks=np.stack([target, prompt]),
                                 ignore=ignore if ignore.any() else None,
                                 focus=target | prompt, cfg=self.augment)
            valid = aug["valid"]
            tgt, pm = aug["masks"][0] & valid, aug["masks"][1] & valid
            if not pm.any():
                continue
            return prop_sample(aug["image"], tgt, pm, valid, aug["ignore"],
                               self.source.set_name(i_here), self.num_proposals)
        return None


def prop_sample(image: np.ndarray, target: np.ndarray, prompt: np.ndarray, valid: np.ndarray,
                ignore: np.ndarray, source: str, num_proposals: int = 3) -> dict:
    """A propagation sample's dict (proposals: the target repeated; they are not trained)."""
    size = valid.shape[0]
    return {
        "image": image.astype(np.float32),
        "depth": np.zeros((1, size, size), np.float32),
        "has_depth": False,
        "target": target.copy(),
        "proposals": np.repeat(target[None], max(1, num_proposals), axis=0),
        "valid": valid,
        "ignore": ignore | ~valid,
        "is_scene": False,
        "source": source,
        "prompt_mask": prompt.copy(),
        "is_prop": True,
    }

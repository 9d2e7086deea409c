"""Datasets of objects to segment: the evaluation layout, the training layout, names.

Evaluation layout (``shared/data/README.md``)::

    <set>/images/<stem>.<ext>      JPEG, PNG (8- or 16-bit), TIFF (any dtype, float32 too)
    <set>/masks/<stem>.png         one object on this image
    <set>/masks/<stem>/<k>.png     several objects on this image, one file each

Training layout::

    <set>/images/<stem>.jpg
    <set>/labels/<stem>.png        instance map: 0 background, 1..N one object each

Masks and instance maps are decoded by :mod:`napari_ois.data.masks`. Both readers yield
:class:`Sample` objects, one per object, with the image array exactly as stored (dtype and
channels untouched: :func:`napari_ois.data.images.read_image`; the predictor normalises it).
Objects of the same image share one image array and the same ``image_key``, so a runner can
reuse its embedding. The training code's image sources (sampled images with their instance
maps) are :mod:`napari_ois.data.sources`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .images import IMAGE_EXTENSIONS, PathLike, read_image
from .masks import MASK_EXTENSIONS, read_instance_map, read_mask
from .sources import data_roots


@dataclass
class Sample:
    """One object to segment: ``image`` as stored, ``gt`` and ``ignore`` boolean (H, W)."""

    image: np.ndarray
    gt: np.ndarray
    ignore: np.ndarray
    name: str
    image_key: str = ""
    meta: Dict[str, object] = field(default_factory=dict)

    def __iter__(self):  # allows ``image, gt, ignore, name = sample``
        return iter((self.image, self.gt, self.ignore, self.name))


_num_re = re.compile(r"(\d+)")


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in _num_re.split(s)]


def _list_files(folder: Path, extensions: Sequence[str]) -> List[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions
         and not p.name.startswith(".")),
        key=lambda p: _natural_key(p.name),
    )


# ------------------------------------------------------------------------ evaluation layout


class FolderDataset:
    """Images folder + masks folder paired by file stem (evaluation layout).

    Iterating yields one :class:`Sample` per object, images read lazily (one at a time).
    ``len()`` is the number of objects. Images without a mask are skipped (with a warning).
    """

    def __init__(self, images: PathLike, masks: PathLike, name: Optional[str] = None):
        self.images_dir = Path(images)
        self.masks_dir = Path(masks)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.images_dir}")
        if not self.masks_dir.is_dir():
            raise FileNotFoundError(f"masks folder not found: {self.masks_dir}")
        self.name = name or self.images_dir.resolve().parent.name
        self.entries: List[Tuple[Path, List[Tuple[str, Path]]]] = []
        missing = []
        for img in _list_files(self.images_dir, IMAGE_EXTENSIONS):
            stem = img.stem
            objs: List[Tuple[str, Path]] = []
            single = [self.masks_dir / f"{stem}{ext}" for ext in MASK_EXTENSIONS]
            single = [p for p in single if p.is_file()]
            if single:
                objs.append((stem, single[0]))
            sub = self.masks_dir / stem
            if sub.is_dir():
                for m in _list_files(sub, MASK_EXTENSIONS):
                    objs.append((f"{stem}/{m.stem}", m))
            if objs:
                self.entries.append((img, objs))
            else:
                missing.append(img.name)
        if missing:
            warnings.warn(
                f"{len(missing)} image(s) in {self.images_dir} have no mask and are skipped "
                f"(e.g. {missing[0]})", stacklevel=2)

    def __len__(self) -> int:
        return sum(len(objs) for _, objs in self.entries)

    @property
    def num_images(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Sample]:
        for img_path, objs in self.entries:
            image = read_image(img_path)
            for name, mpath in objs:
                gt, ignore = read_mask(mpath)
                if gt.shape != image.shape[:2]:
                    raise ValueError(
                        f"mask {mpath} has shape {gt.shape} but image {img_path} has "
                        f"{image.shape[:2]}")
                yield Sample(image, gt, ignore, name, image_key=str(img_path),
                             meta={"image": str(img_path), "mask": str(mpath)})

    def __repr__(self) -> str:
        return (f"FolderDataset({self.name!r}, images={self.num_images}, "
                f"objects={len(self)})")


def read_folder(images: PathLike, masks: PathLike) -> Iterator[Sample]:
    """Generator over the objects of an evaluation-layout folder pair."""
    return iter(FolderDataset(images, masks))


# -------------------------------------------------------------------------- training layout


class InstanceFolderDataset:
    """Training layout: ``images/<stem>.*`` + ``labels/<stem>.png`` instance maps.

    Yields one :class:`Sample` per instance id (1..N, in increasing order; ids absent from a
    map are skipped; ``ignore`` is all False). ``min_pixels`` drops tiny instances.
    """

    def __init__(self, root: PathLike, name: Optional[str] = None, min_pixels: int = 1,
                 images: str = "images", labels: str = "labels"):
        self.root = Path(root)
        self.images_dir = self.root / images
        self.labels_dir = self.root / labels
        for d in (self.images_dir, self.labels_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"folder not found: {d}")
        self.name = name or self.root.name
        self.min_pixels = int(min_pixels)
        self.entries: List[Tuple[Path, Path]] = []
        for img in _list_files(self.images_dir, IMAGE_EXTENSIONS):
            for ext in MASK_EXTENSIONS:
                lab = self.labels_dir / f"{img.stem}{ext}"
                if lab.is_file():
                    self.entries.append((img, lab))
                    break

    def __len__(self) -> int:
        """Number of images (the object count needs reading every label map)."""
        return len(self.entries)

    def __iter__(self) -> Iterator[Sample]:
        for img_path, lab_path in self.entries:
            image = read_image(img_path)
            labels = read_instance_map(lab_path)
            ids, counts = np.unique(labels, return_counts=True)
            for k, cnt in zip(ids, counts):
                if k == 0 or cnt < self.min_pixels:
                    continue
                gt = labels == k
                yield Sample(image, gt, np.zeros_like(gt), f"{img_path.stem}/{int(k)}",
                             image_key=str(img_path),
                             meta={"image": str(img_path), "labels": str(lab_path),
                                   "instance": int(k)})


def read_instance_folder(root: PathLike, min_pixels: int = 1) -> Iterator[Sample]:
    """Generator over the instances of a training-layout folder."""
    return iter(InstanceFolderDataset(root, min_pixels=min_pixels))


# --------------------------------------------------------------------------- name lookup


def _is_eval_layout(p: Path) -> bool:
    return (p / "images").is_dir() and (p / "masks").is_dir()


def _is_train_layout(p: Path) -> bool:
    return (p / "images").is_dir() and (p / "labels").is_dir()


def resolve_dataset(name: PathLike) -> Path:
    """Find a dataset folder by name or path.

    An existing folder is returned as is. Otherwise, for each root of :func:`data_roots`,
    try ``<root>/eval/<name>``, ``<root>/eval/<name>_dev``, ``<root>/<name>`` and
    ``<root>/train/<name>`` (case-insensitive name match). Raises ``FileNotFoundError``
    listing where it looked.
    """
    p = Path(name)
    if p.is_dir():
        return p
    s = str(name)
    looked: List[str] = []
    for root in data_roots():
        for sub, nm in (("eval", s), ("eval", f"{s}_dev"), ("", s), ("train", s)):
            parent = root / sub if sub else root
            looked.append(str(parent / nm))
            if not parent.is_dir():
                continue
            cand = parent / nm
            if cand.is_dir():
                return cand
            for child in parent.iterdir():
                if child.is_dir() and child.name.lower() == nm.lower():
                    return child
    raise FileNotFoundError(
        f"dataset {s!r} not found. Looked in: {', '.join(looked)}. Set NAPARI_OIS_DATA to "
        "the folder holding eval/<set> (e.g. ../shared/data) or pass --images/--masks.")


class SyntheticSceneDataset:
    """Held-out synthetic order-aware scenes with their depth maps (for the ablation).

    Scenes are composited from the TRAINING images by :mod:`napari_ois.data.scenes` with
    seeds that training never uses (training draws ``default_rng([seed, i])`` with 2
    entries; these use ``default_rng([9999, seed, i])``). Each sample's ``meta["depth"]``
    holds the scene's depth, which the runner passes to ``set_image``. Name:
    ``synthetic-scenes[:N]`` (default N = 50).
    """

    def __init__(self, n: int = 50, seed: int = 0, size: int = 320):
        self.n, self.seed, self.size, self.name = int(n), int(seed), int(size), f"synthetic-scenes:{n}"

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Sample]:
        from .scenes import SceneGenerator
        from .sources import TrainIndex

        gen = SceneGenerator(TrainIndex(cache="none"))
        for i in range(self.n):
            rng = np.random.default_rng([9999, self.seed, i])
            scene = gen.generate(rng, (self.size, self.size))
            ids = scene.ids
            if not len(ids):
                continue
            obj = int(rng.choice(ids))
            image = (np.clip(scene.image, 0, 1) * 255).astype(np.uint8)
            yield Sample(image, scene.labels == obj, np.zeros(scene.labels.shape, bool),
                         f"scene{i:03d}", image_key=f"scene{i:03d}", meta={"depth": scene.depth})


def load_dataset(name_or_path: PathLike):
    """A dataset object (evaluation or training layout) from a name or a folder."""
    if str(name_or_path).startswith("synthetic-scenes"):
        _, _, n = str(name_or_path).partition(":")
        return SyntheticSceneDataset(int(n) if n else 50)
    root = resolve_dataset(name_or_path)
    if _is_eval_layout(root):
        return FolderDataset(root / "images", root / "masks", name=root.name)
    if _is_train_layout(root):
        return InstanceFolderDataset(root, name=root.name)
    raise FileNotFoundError(
        f"{root} has neither images/+masks/ (evaluation layout) nor images/+labels/ "
        "(training layout)")


def available_datasets() -> Dict[str, Path]:
    """Named evaluation sets found under the data roots (name -> folder)."""
    out: Dict[str, Path] = {}
    for root in data_roots():
        ev = root / "eval"
        if ev.is_dir():
            for child in sorted(ev.iterdir()):
                if child.is_dir() and _is_eval_layout(child) and child.name not in out:
                    out[child.name] = child
    return out

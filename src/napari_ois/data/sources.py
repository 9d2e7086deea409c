"""Image sources for TRAINING (``<data root>/train/*``), never the evaluation sets.

Layouts (see ``../shared/data/README.md``):

- training layout: ``<set>/images/<stem>.jpg`` + ``<set>/labels/<stem>.png``, an instance
  map (0 background, 1..N one object each; 8- or 16-bit);
- evaluation layout (only ``train/BraTS`` here): ``<set>/images/<stem>.<ext>`` (JPEG, PNG
  or float32 TIFF) + ``<set>/masks/<stem>.png`` (255 foreground, 128 ignore) or
  ``<set>/masks/<stem>/<k>.png`` (one file per object).

Every loader returns the image as float32 RGB in [0, 1] (files read with
:func:`napari_ois.data.images.read_image`, converted by
:func:`napari_ois.data.images.to_unit_rgb`) and an int32 instance map
(:mod:`napari_ois.data.masks`): 0 background, 1..N objects, ``-1`` ignore (only an
evaluation-layout mask's 128 band produces it).

The data root is ``NAPARI_OIS_DATA`` if set, else ``../shared/data`` relative to the current
directory or to the project checkout (:func:`data_roots`, also where named evaluation sets
are looked up). Paths with an ``eval`` component are refused by every loader here
(:func:`refuse_eval`): the project is measured on those sets and must never train on them.

Image sources share one small duck-typed interface, used by the scene generator and the
sample builder: ``len(src)``, ``src.sample_index(rng) -> int``, ``src.load(i) -> (image,
labels)`` and ``src.set_name(i) -> str``. :class:`TrainIndex` reads files;
:class:`InMemorySource` wraps arrays (tests, smoke runs without data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .images import IMAGE_EXTENSIONS, PathLike, read_image, to_unit_rgb
from .masks import read_binary_masks, read_instance_map

ENV_DATA_ROOT = "NAPARI_OIS_DATA"

#: Project decision: per-set sampling weights (probability of a set is proportional to its
#: weight, then an image is drawn uniformly inside the set). Sets are balanced rather than
#: sampled by size so that the small medical / EM sets are seen often; a set that is not
#: listed gets weight 1.0.
DEFAULT_SET_WEIGHTS: Dict[str, float] = {
    "MSRA10K": 1.0,
    "ECSSD": 1.0,
    "PASCAL-S": 1.0,
    "CCP_clothing": 1.0,
    "Weizmann_horses": 0.5,
    "COCO128": 1.0,
    "CamVid": 0.7,
    "Kvasir": 0.8,
    "PH2": 0.5,
    "HC18": 0.5,
    "ISBI_EM": 0.7,
    "EPFL_EM_mito": 0.6,
    "BraTS": 0.6,
}

#: folders of the data root that hold evaluation data: never read for training
EVAL_FOLDERS = ("eval", "eval3d")


class EvalDataError(ValueError):
    """Raised when a training reader is pointed at the evaluation data."""


# --------------------------------------------------------------------------- paths


def refuse_eval(path: PathLike) -> Path:
    """Return ``Path(path)``; raise :class:`EvalDataError` if any component is one of
    :data:`EVAL_FOLDERS` (``eval``, the 2D evaluation sets; ``eval3d``, the volumes)."""
    p = Path(path)
    parts = p.parts + Path(os.path.normpath(os.path.abspath(p))).parts
    if any(part in EVAL_FOLDERS for part in parts):
        raise EvalDataError(
            f"refusing to read {str(path)!r}: it is inside an evaluation folder ('eval' or "
            "'eval3d'). The evaluation "
            "sets are for measuring only; the training code reads <data root>/train/* only."
        )
    return p


def data_roots() -> List[Path]:
    """Where named datasets are looked up, in order: ``$NAPARI_OIS_DATA``, ``../shared/data``
    relative to the current directory, and ``../shared/data`` relative to the project
    checkout this package lives in (when installed in development mode)."""
    roots: List[Path] = []
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        roots.extend(Path(p) for p in env.split(os.pathsep) if p)
    roots.append(Path.cwd().parent / "shared" / "data")
    here = Path(__file__).resolve()
    # src/napari_ois/data/sources.py -> project root is parents[3]
    if len(here.parents) > 3:
        roots.append(here.parents[3].parent / "shared" / "data")
    seen, out = set(), []
    for r in roots:
        key = str(r.resolve()) if r.exists() else str(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def default_data_root() -> Path:
    """The training data root: ``$NAPARI_OIS_DATA`` if set, else the first of
    :func:`data_roots` that holds ``train/`` (else ``../shared/data`` of the current
    directory, for the message)."""
    roots = data_roots()
    if os.environ.get(ENV_DATA_ROOT):
        return roots[0]
    return next((r for r in roots if (r / "train").is_dir()), roots[0])


def resolve_train_root(root: Optional[PathLike] = None) -> Path:
    """The ``train`` folder of the data root (``root`` may be the data root or ``train``).

    Raises ``FileNotFoundError`` with the places looked at when there is none, and
    :class:`EvalDataError` when ``root`` points into ``eval``.
    """
    base = Path(root) if root is not None else default_data_root()
    refuse_eval(base)
    candidates = [base / "train", base] if base.name != "train" else [base]
    for cand in candidates:
        if cand.is_dir() and cand.name == "train":
            return cand.resolve()
    hint = (
        f"set {ENV_DATA_ROOT}=/path/to/data (the folder holding train/) or run from the "
        "project root with the data at ../shared/data"
    )
    raise FileNotFoundError(
        f"no training data found: {base / 'train'} does not exist "
        f"(root={'given' if root is not None else 'default'}: {base}). {hint}."
    )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Record:
    """One training image: its set, stem, image file and label file(s)."""

    set: str
    stem: str
    image_path: Path
    label_path: Path  # instance map (training layout) or masks/<stem>.png / masks/<stem>/
    layout: str  # "instance" or "masks"


def _list_set(set_dir: Path) -> List[Record]:
    name = set_dir.name
    images = set_dir / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"{set_dir} has no images/ folder")
    labels, masks = set_dir / "labels", set_dir / "masks"
    records = []
    for img in sorted(images.iterdir()):
        if img.suffix.lower() not in IMAGE_EXTENSIONS or img.name.startswith("."):
            continue
        stem = img.stem
        if labels.is_dir():
            lab = labels / f"{stem}.png"
            if lab.is_file():
                records.append(Record(name, stem, img, lab, "instance"))
        elif masks.is_dir():
            single, multi = masks / f"{stem}.png", masks / stem
            if single.is_file():
                records.append(Record(name, stem, img, single, "masks"))
            elif multi.is_dir():
                records.append(Record(name, stem, img, multi, "masks"))
    return records


def load_record(rec: Record, image_bytes: Optional[bytes] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(image float32 (H, W, 3) in [0, 1], labels int32 (H, W))`` of one record."""
    image = to_unit_rgb(read_image(refuse_eval(rec.image_path), image_bytes))
    labels = _load_labels(rec)
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"{rec.set}/{rec.stem}: image {image.shape[:2]} and labels {labels.shape} differ"
        )
    return image, labels


def _load_labels(rec: Record) -> np.ndarray:
    refuse_eval(rec.label_path)
    if rec.layout == "instance":
        return read_instance_map(rec.label_path)
    if rec.label_path.is_dir():
        files = sorted(
            (p for p in rec.label_path.iterdir() if p.suffix.lower() == ".png"),
            key=lambda p: (len(p.stem), p.stem),
        )
        return read_binary_masks(files)
    return read_binary_masks([rec.label_path])


# --------------------------------------------------------------------------- sources


class TrainIndex:
    """The records of chosen training sets, with per-set sampling weights and a cache.

    Parameters
    ----------
    root:
        Data root (holding ``train/``) or the ``train`` folder itself; default
        :func:`default_data_root`.
    sets:
        Set names (folders of ``train/``); default all of them.
    weights:
        Per-set sampling weights; missing sets use :data:`DEFAULT_SET_WEIGHTS` or 1.0.
    cache:
        ``"none"``: read files each time; ``"bytes"``: keep the encoded files in memory (the
        whole train folder is ~200 MB, decoding a 384 px JPEG costs ~2 ms); ``"decoded"``:
        keep decoded uint8 images and label maps (fastest, several GB for all sets; stops
        adding once ``cache_max_mb`` is used). With DataLoader workers each worker has its
        own cache (filled lazily after the fork).
    max_per_set:
        Keep only the first ``max_per_set`` records of each set (quick runs).
    """

    def __init__(
        self,
        root: Optional[PathLike] = None,
        sets: Optional[Iterable[str]] = None,
        weights: Optional[Mapping[str, float]] = None,
        cache: str = "none",
        cache_max_mb: float = 4096.0,
        max_per_set: Optional[int] = None,
    ) -> None:
        if cache not in ("none", "bytes", "decoded"):
            raise ValueError(f"cache must be 'none', 'bytes' or 'decoded', not {cache!r}")
        self.train_root = resolve_train_root(root)
        available = sorted(p.name for p in self.train_root.iterdir() if p.is_dir())
        if sets is None:
            chosen = available
        else:
            chosen = list(sets)
            for s in chosen:
                refuse_eval(s)
                if s not in available or Path(s).name != s:
                    raise ValueError(
                        f"unknown training set {s!r}; available in {self.train_root}: "
                        f"{', '.join(available)}"
                    )
        self.records: List[Record] = []
        self._set_ranges: Dict[str, Tuple[int, int]] = {}
        for s in chosen:
            recs = _list_set(self.train_root / s)
            if max_per_set is not None:
                recs = recs[: int(max_per_set)]
            if not recs:
                continue
            self._set_ranges[s] = (len(self.records), len(self.records) + len(recs))
            self.records.extend(recs)
        if not self.records:
            raise FileNotFoundError(f"no image/label pairs found in sets {chosen} of {self.train_root}")
        w = dict(DEFAULT_SET_WEIGHTS)
        if weights:
            unknown = set(weights) - set(available)
            if unknown:
                raise ValueError(f"weights given for unknown sets: {sorted(unknown)}")
            w.update({k: float(v) for k, v in weights.items()})
        self.set_weights = {s: float(w.get(s, 1.0)) for s in self._set_ranges}
        total = sum(self.set_weights.values())
        if total <= 0:
            raise ValueError("set weights must not all be zero")
        self._set_names = list(self._set_ranges)
        self._set_p = np.array([self.set_weights[s] / total for s in self._set_names])
        self.cache = cache
        self.cache_max_bytes = int(cache_max_mb * 2**20)
        self._cache: Dict[int, object] = {}
        self._cache_bytes = 0

    # -- interface shared with InMemorySource
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    @property
    def sets(self) -> List[str]:
        return list(self._set_names)

    def set_name(self, i: int) -> str:
        return self.records[i].set

    def set_probabilities(self) -> Dict[str, float]:
        return dict(zip(self._set_names, map(float, self._set_p)))

    def indices_of(self, set_name: str) -> range:
        a, b = self._set_ranges[set_name]
        return range(a, b)

    def sample_index(self, rng: np.random.Generator) -> int:
        """A record index: a set by weight, then an image uniformly inside it."""
        s = self._set_names[int(rng.choice(len(self._set_names), p=self._set_p))]
        a, b = self._set_ranges[s]
        return int(rng.integers(a, b))

    def load(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(image float32 (H, W, 3) [0, 1], labels int32 (H, W))`` of record ``i``."""
        rec = self.records[i]
        if self.cache == "none":
            return load_record(rec)
        if self.cache == "bytes":
            entry = self._cache.get(i)
            if entry is None:
                entry = (refuse_eval(rec.image_path).read_bytes(), _load_labels(rec))
                self._remember(i, entry, len(entry[0]) + entry[1].nbytes)
            data, labels = entry
            image = to_unit_rgb(read_image(rec.image_path, data))
            return image, labels.astype(np.int32)
        entry = self._cache.get(i)
        if entry is None:
            raw = read_image(refuse_eval(rec.image_path))
            compact = raw if raw.dtype == np.uint8 else to_unit_rgb(raw)
            labels = _load_labels(rec)
            lab = labels.astype(np.int16) if labels.max() < 32768 else labels
            entry = (compact, lab)
            self._remember(i, entry, compact.nbytes + lab.nbytes)
        raw, lab = entry
        image = to_unit_rgb(raw)
        if image.shape[:2] != lab.shape:
            raise ValueError(f"{rec.set}/{rec.stem}: image and labels differ in shape")
        return image, lab.astype(np.int32)

    def preload(self, indices: Optional[Iterable[int]] = None) -> int:
        """Fill the cache now (all records by default); returns the cached bytes.

        Call it before creating a DataLoader: forked workers then share the parent's cache
        pages (copy-on-write; the arrays are only read) instead of each filling its own.
        With ``cache="decoded"`` all training sets take ~3.6 GB.
        """
        if self.cache == "none":
            raise ValueError("preload needs cache='bytes' or cache='decoded'")
        for i in range(len(self)) if indices is None else indices:
            if i not in self._cache:
                self.load(i)
            if self._cache_bytes >= self.cache_max_bytes:
                break
        return self._cache_bytes

    def _remember(self, i: int, entry: object, nbytes: int) -> None:
        if self._cache_bytes + nbytes <= self.cache_max_bytes:
            self._cache[i] = entry
            self._cache_bytes += nbytes

    def __repr__(self) -> str:
        sizes = {s: b - a for s, (a, b) in self._set_ranges.items()}
        return f"TrainIndex({self.train_root}, {sizes}, cache={self.cache!r})"


class InMemorySource:
    """Arrays as an image source: ``items`` of ``(image, labels)`` or ``(image, labels, set)``.

    Images go through ``to_unit_rgb``; labels become int32.
    """

    def __init__(self, items: Sequence[tuple], weights: Optional[Sequence[float]] = None):
        if not items:
            raise ValueError("InMemorySource needs at least one item")
        self.items = []
        for it in items:
            image, labels = to_unit_rgb(np.asarray(it[0])), np.asarray(it[1]).astype(np.int32)
            if image.shape[:2] != labels.shape:
                raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ")
            self.items.append((image, labels, str(it[2]) if len(it) > 2 else "memory"))
        p = np.ones(len(self.items)) if weights is None else np.asarray(weights, float)
        self._p = p / p.sum()

    def __len__(self) -> int:
        return len(self.items)

    def set_name(self, i: int) -> str:
        return self.items[i][2]

    def sample_index(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.items), p=self._p))

    def load(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        image, labels, _ = self.items[i]
        return image.copy(), labels.copy()


def synthetic_source(
    seed: int = 0, n: int = 6, shape: Tuple[int, int] = (96, 128), max_objects: int = 4
) -> InMemorySource:
    """Small random textured images with ellipse/rectangle instance maps (tests, smoke runs)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    items = []
    for k in range(n):
        base = ndi.gaussian_filter(rng.random((h, w, 3)), sigma=(3, 3, 0))
        base = (base - base.min()) / max(np.ptp(base), 1e-6)
        image = 0.6 * base + 0.4 * rng.random(3)
        labels = np.zeros((h, w), np.int32)
        for j in range(1, int(rng.integers(1, max_objects + 1)) + 1):
            cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
            ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
            if rng.random() < 0.5:
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            labels[m] = j
            image[m] = 0.5 * image[m] + 0.5 * rng.random(3)
        items.append(((np.clip(image, 0, 1) * 255).astype(np.uint8), labels, f"synthetic{k % 2}"))
    return InMemorySource(items)

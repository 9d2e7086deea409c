"""Readers for the TRAINING data (``<data root>/train/*``), never the evaluation sets.

Layouts (see ``../shared/data/README.md``):

- training layout: ``<set>/images/<stem>.jpg`` + ``<set>/labels/<stem>.png``, an instance
  map (0 background, 1..N one object each; 8- or 16-bit);
- evaluation layout (only ``train/BraTS`` here): ``<set>/images/<stem>.<ext>`` (JPEG, PNG
  or float32 TIFF) + ``<set>/masks/<stem>.png`` (255 foreground, 128 ignore) or
  ``<set>/masks/<stem>/<k>.png`` (one file per object).

Every loader returns the image as float32 RGB in [0, 1] (``napari_ois.imaging.to_unit_rgb``)
and an int32 instance map: 0 background, 1..N objects, ``-1`` ignore (only an evaluation-
layout mask's 128 band produces it).

The data root is ``NAPARI_OIS_DATA`` if set, else ``../shared/data`` relative to the current
directory. Paths with an ``eval`` component are refused by every reader here: the project is
measured on those sets and must never train on them.

Image sources share one small duck-typed interface, used by the scene generator and the
sample builder: ``len(src)``, ``src.sample_index(rng) -> int``, ``src.load(i) -> (image,
labels)`` and ``src.set_name(i) -> str``. :class:`TrainIndex` reads files;
:class:`InMemorySource` wraps arrays (tests, smoke runs without data).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from napari_ois.imaging import to_unit_rgb

ENV_DATA_ROOT = "NAPARI_OIS_DATA"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
IGNORE_LABEL = -1

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

PathLike = Union[str, os.PathLike]


class EvalDataError(ValueError):
    """Raised when a training reader is pointed at the evaluation data."""


# --------------------------------------------------------------------------- paths


def refuse_eval(path: PathLike) -> Path:
    """Return ``Path(path)``; raise :class:`EvalDataError` if any component is ``eval``."""
    p = Path(path)
    parts = p.parts + Path(os.path.normpath(os.path.abspath(p))).parts
    if "eval" in parts:
        raise EvalDataError(
            f"refusing to read {str(path)!r}: it is inside an 'eval' folder. The evaluation "
            "sets are for measuring only; the training code reads <data root>/train/* only."
        )
    return p


def default_data_root() -> Path:
    """``$NAPARI_OIS_DATA`` if set, else ``../shared/data`` relative to the current directory."""
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return Path(env)
    return Path.cwd() / ".." / "shared" / "data"


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


# --------------------------------------------------------------------------- decoding


def _decode(source: Union[PathLike, bytes], suffix: str) -> np.ndarray:
    suffix = suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        if isinstance(source, bytes):
            return np.asarray(tifffile.imread(io.BytesIO(source)))
        return np.asarray(tifffile.imread(str(source)))
    try:
        from PIL import Image

        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
        if arr.dtype == np.int32 and arr.size and arr.max() < 65536 and arr.min() >= 0:
            arr = arr.astype(np.uint16)  # old Pillow reads 16-bit PNG as mode "I"
        return arr
    except ImportError:  # pragma: no cover - Pillow comes with imageio
        import imageio.v3 as iio

        if isinstance(source, bytes):
            return np.asarray(iio.imread(source, extension=suffix))
        return np.asarray(iio.imread(str(source)))


def read_image(path: PathLike, data: Optional[bytes] = None) -> np.ndarray:
    """Read one image file as float32 RGB in [0, 1], shape ``(H, W, 3)``.

    ``data`` may hold the file's bytes (then ``path`` only gives the format).
    """
    p = refuse_eval(path)
    return to_unit_rgb(_decode(data if data is not None else p, p.suffix))


def read_raw(path: PathLike, data: Optional[bytes] = None) -> np.ndarray:
    """Read one image file as stored (uint8, uint16, float32 ...)."""
    p = refuse_eval(path)
    return _decode(data if data is not None else p, p.suffix)


def read_instance_map(path: PathLike) -> np.ndarray:
    """Read a training-layout instance map (8- or 16-bit PNG) as int32 ``(H, W)``."""
    arr = read_raw(path)
    if arr.ndim == 3:  # an RGB(A) label file: take the first channel (documented choice)
        arr = arr[..., 0]
    return arr.astype(np.int32)


def read_binary_masks(paths: Sequence[PathLike]) -> np.ndarray:
    """Evaluation-layout masks (255 fg, 128 ignore) -> one int32 instance map.

    Object ``k`` (1-based, in the order given) gets label ``k``; 128 becomes
    ``IGNORE_LABEL`` where no object claims the pixel.
    """
    out: Optional[np.ndarray] = None
    for k, path in enumerate(paths, start=1):
        m = read_raw(path)
        if m.ndim == 3:
            m = m[..., 0]
        if out is None:
            out = np.zeros(m.shape, np.int32)
        ignore = (m == 128) & (out == 0)
        out[ignore] = IGNORE_LABEL
        out[m > 128] = k
    if out is None:
        raise ValueError("no mask files given")
    return out


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
        if img.suffix.lower() not in IMAGE_EXTS or img.name.startswith("."):
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
    image = read_image(rec.image_path, image_bytes)
    labels = _load_labels(rec)
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"{rec.set}/{rec.stem}: image {image.shape[:2]} and labels {labels.shape} differ"
        )
    return image, labels


def _load_labels(rec: Record) -> np.ndarray:
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
                entry = (rec.image_path.read_bytes(), _load_labels(rec))
                self._remember(i, entry, len(entry[0]) + entry[1].nbytes)
            data, labels = entry
            image = read_image(rec.image_path, data)
            return image, labels.astype(np.int32)
        entry = self._cache.get(i)
        if entry is None:
            raw = read_raw(rec.image_path)
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

from dataclasses import field  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import Dataset, IterableDataset  # noqa: E402

from napari_ois.training.augment import AugmentConfig, Geometry, augment_sample  # noqa: E402
from napari_ois.training.scenes import SceneConfig, SceneGenerator  # noqa: E402

#: Keys of a training sample (numpy arrays; ``S`` = sample size):
#:  image (3, S, S) float32 [0, 1] (not ImageNet-normalised; zero in the padding)
#:  depth (1, S, S) float32 [0, 1] (larger = nearer), zeros when ``has_depth`` is False
#:  has_depth bool; is_scene bool; source str (training set name or "scene")
#:  target (S, S) bool, the chosen object (== proposals[0])
#:  proposals (K, S, S) bool, nested first-click targets (object, + touching, group)
#:  valid (S, S) bool image pixels (False in the bottom/right padding)
#:  ignore (S, S) bool pixels to leave out of losses and clicks (padding or annotated ignore)
SAMPLE_KEYS = (
    "image", "depth", "has_depth", "target", "proposals", "valid", "ignore", "is_scene",
    "source",
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

    def make_sample(self, rng: np.random.Generator, size: Optional[int] = None) -> dict:
        """One sample of size ``size`` (default ``config.size``)."""
        size = int(size or self.cfg.size)
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

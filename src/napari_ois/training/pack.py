"""A compact training pack: every training image and its instance map in one small file.

A GPU machine may be lent for minutes, with nothing but the repository and whatever files
travel with it. The pack holds what :mod:`.tensor_train` needs to train there without the
data folder: the training images resized (longest side ``side``) and JPEG-encoded, their
instance maps as 16-bit PNG (``65535`` = ignore), and a number of pre-built synthetic
order-aware scenes with their depth maps (PNG, 8-bit), so the order-aware branch is trained
too. One ``.npz`` of byte blobs; about 40 MB for all of ``train/`` at 224 px.

Built from the TRAINING readers only (they refuse ``eval/``)::

    napari-ois pack --out runs/pack.npz --side 224 --scenes 600
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

IGNORE_PNG = 65535
PACK_FORMAT = "napari-ois-pack/1"


def _encode_jpeg(rgb01: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb01, 0, 1) * 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _resize(image: np.ndarray, labels: np.ndarray, side: int, depth: Optional[np.ndarray] = None):
    """Longest side to ``side`` (never enlarged): image bilinear, labels nearest."""
    from PIL import Image

    h, w = labels.shape
    s = min(1.0, side / max(h, w))
    if s >= 1.0:
        return image, labels, depth
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = np.asarray(Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
                     .resize((nw, nh), Image.BILINEAR)).astype(np.float32) / 255
    lab = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((nw, nh), Image.NEAREST))
    if depth is not None:
        depth = np.asarray(Image.fromarray(depth.astype(np.float32)).resize((nw, nh), Image.BILINEAR))
    return img, lab.astype(np.int32), depth


def _labels_u16(labels: np.ndarray) -> np.ndarray:
    lab = labels.astype(np.int64)
    if lab.max(initial=0) >= IGNORE_PNG:
        raise ValueError(f"instance map has label {lab.max()} >= {IGNORE_PNG}")
    out = lab.astype(np.uint16)
    out[lab < 0] = IGNORE_PNG
    return out


def build_pack(
    out: Union[str, os.PathLike],
    root: Optional[Union[str, os.PathLike]] = None,
    sets: Optional[Sequence[str]] = None,
    side: int = 224,
    quality: int = 85,
    scenes: int = 600,
    max_per_set: Optional[int] = None,
    seed: int = 0,
    source=None,
    progress: bool = True,
) -> dict:
    """Write the pack to ``out`` (``.npz``) and return its summary.

    ``source`` (an image source such as ``InMemorySource``) replaces the training folders
    (tests, tiny packs); otherwise ``TrainIndex(root, sets)`` is read.
    """
    from tqdm import tqdm

    from ..data.scenes import SceneGenerator
    from ..data.sources import TrainIndex

    if side < 32:
        raise ValueError(f"side must be at least 32 px, got {side}")
    if source is None:
        source = TrainIndex(root, sets=sets, cache="none", max_per_set=max_per_set)
    blobs: list[bytes] = []
    items = []  # (image blob, label blob, depth blob or -1, set name)

    def add(image, labels, set_name, depth=None):
        image, labels, depth = _resize(image, labels, side, depth)
        if not (labels > 0).any():
            return
        i = len(blobs)
        blobs.append(_encode_jpeg(image, quality))
        blobs.append(_encode_png(_labels_u16(labels)))
        d = -1
        if depth is not None:
            d = len(blobs)
            blobs.append(_encode_png(np.round(np.clip(depth, 0, 1) * 255).astype(np.uint8)))
        items.append((i, i + 1, d, set_name))

    n = len(source)
    for i in tqdm(range(n), desc="pack: images", disable=not progress):
        image, labels = source.load(i)
        add(image, labels, source.set_name(i))
    gen = SceneGenerator(source)
    rng = np.random.default_rng([seed, 7])
    for _ in tqdm(range(scenes), desc="pack: scenes", disable=not progress):
        sc = gen.generate(rng, (side, side))
        lab = sc.labels.copy()
        lab[~np.isin(lab, sc.ids)] = 0  # objects too small to be targets become background
        add(sc.image, lab, "scene", sc.depth)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    set_names = sorted({it[3] for it in items})
    weights = getattr(source, "set_weights", None) or {}
    meta = {"format": PACK_FORMAT, "side": side, "quality": quality, "sets": set_names,
            "set_weights": {s: float(weights.get(s, 1.0)) for s in set_names if s != "scene"},
            "images": sum(it[3] != "scene" for it in items),
            "scenes": sum(it[3] == "scene" for it in items)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        blob=np.frombuffer(b"".join(blobs), np.uint8),
        offsets=offsets,
        items=np.array([[a, b, d] for a, b, d, _ in items], np.int64).reshape(-1, 3),
        item_set=np.array([set_names.index(it[3]) for it in items], np.int64),
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
    )
    meta["bytes"] = out.stat().st_size
    return meta


class Pack:
    """A pack decoded into padded arrays: ``images (N, side, side, 3) uint8``, ``labels
    (N, side, side) int32`` (-1 ignore, 0 background, 1.. objects; the padding is -2),
    ``depth (N, side, side) uint8`` (255 nearest) with ``has_depth (N,)``, ``shape (N, 2)``
    of the valid extent, ``item_set (N,)`` and the metadata."""

    def __init__(self, path: Union[str, os.PathLike]):
        from PIL import Image

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training pack not found: {path}")
        with np.load(path) as z:
            blob, offsets, items = z["blob"], z["offsets"], z["items"]
            self.item_set = z["item_set"].copy()
            self.meta = json.loads(bytes(z["meta"]).decode())
        if self.meta.get("format") != PACK_FORMAT:
            raise ValueError(f"{path} is not a napari-ois training pack ({self.meta.get('format')})")
        side = int(self.meta["side"])
        n = len(items)
        self.images = np.zeros((n, side, side, 3), np.uint8)
        self.labels = np.full((n, side, side), -2, np.int32)
        self.depth = np.zeros((n, side, side), np.uint8)
        self.has_depth = items[:, 2] >= 0
        self.shape = np.zeros((n, 2), np.int64)

        def get(k):
            return io.BytesIO(blob[offsets[k]:offsets[k + 1]].tobytes())

        for j, (a, b, d) in enumerate(items):
            img = np.asarray(Image.open(get(a)).convert("RGB"))
            lab = np.asarray(Image.open(get(b))).astype(np.int32)
            lab[lab == IGNORE_PNG] = -1
            h, w = lab.shape
            self.images[j, :h, :w] = img
            self.labels[j, :h, :w] = lab
            if d >= 0:
                self.depth[j, :h, :w] = np.asarray(Image.open(get(d)))
            self.shape[j] = (h, w)
        self.sets = list(self.meta["sets"])

    def __len__(self) -> int:
        return len(self.labels)

    def item_weights(self, scene_ratio: float = 0.35, set_weights: Optional[dict] = None) -> np.ndarray:
        """Per-item sampling probabilities: sets by weight (scenes get ``scene_ratio`` of the
        mass), then uniform inside a set."""
        w = dict(self.meta.get("set_weights", {}))
        w.update(set_weights or {})
        p = np.zeros(len(self), np.float64)
        real = [s for s in self.sets if s != "scene"]
        total = sum(w.get(s, 1.0) for s in real) or 1.0
        for si, s in enumerate(self.sets):
            sel = self.item_set == si
            if not sel.any():
                continue
            mass = scene_ratio if s == "scene" else (1 - scene_ratio) * w.get(s, 1.0) / total
            if "scene" not in self.sets and s != "scene":
                mass = w.get(s, 1.0) / total
            p[sel] = mass / sel.sum()
        return p / p.sum()


def add_train_pack_arguments(ap) -> None:
    """The arguments of ``napari-ois train-pack`` (``tensor_train.run`` reads them), on the
    argparse parser ``ap``: here, beside the pack, so that the command line and
    ``python -m napari_ois.training.tensor_train`` share them without importing each other."""
    ap.add_argument("--pack", required=True, help="training pack (.npz) from `napari-ois pack`")
    ap.add_argument("--config", required=True, help="training config YAML (arch, batch_size, lr, amp, ...)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--minutes", type=float, default=9.0, help="time budget (cosine lr over it)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--device", default=None, help="override the config's device")
    ap.add_argument("--init-from", default=None, help="start from this model (warm restart)")

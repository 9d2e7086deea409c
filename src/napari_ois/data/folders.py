"""The user's annotation folders: an image folder and its masks, as instance maps.

What ``napari-ois finetune --images DIR --masks DIR`` (``napari_ois.finetuning.finetune_folder``)
reads. The masks of an image ``<stem>.<ext>`` are, in ``masks_dir``:

- ``<stem>.png`` (or .tif, .tiff, .bmp): a binary mask in the evaluation layout (255 object,
  128 ignore, or 0 / 1), one object; or any other integer image, an instance label map
  (0 background, each nonzero id one object);
- ``<stem>/<k>.png``: one file per object (binary masks), numbered in file order after the
  objects of ``<stem>.png`` if both exist.

Ignore pixels become -1 in the instance maps. Every problem is an ``AnnotationError`` (a
``ValueError``) whose one-line message names the file or folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Tuple, Union

import numpy as np

from .datasets import _list_files
from .images import IMAGE_EXTENSIONS, read_image
from .masks import IGNORE_LABEL, IGNORE_VALUE, MASK_EXTENSIONS, decode_mask

PathLike = Union[str, os.PathLike]

__all__ = ["AnnotationError", "as_labels", "read_label_file", "read_folder_pairs"]


class AnnotationError(ValueError):
    """A problem with the user's annotations: a label array or a mask file (one-line message)."""


def as_labels(lab: Any, where: str, allow_ignore: bool = False) -> np.ndarray:
    """``lab`` as an int32 instance map (0 background, 1..N objects; -1 ignore where
    ``allow_ignore``), or an ``AnnotationError`` naming ``where`` and the problem."""
    arr = np.asarray(lab)
    if arr.dtype == np.bool_:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise AnnotationError(f"{where}: labels must be whole numbers (integer object ids), "
                                  f"got {arr.dtype} values that are not")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise AnnotationError(f"{where}: labels must be an integer array (object ids), got dtype {arr.dtype}")
    if arr.size and arr.min() < (-1 if allow_ignore else 0):
        raise AnnotationError(f"{where}: labels must be >= 0 (0 background, 1..N objects), "
                              f"found {int(arr.min())}")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise AnnotationError(f"{where}: label ids above {np.iinfo(np.int32).max} are not supported")
    return arr.astype(np.int32)


def read_label_file(path: Path) -> np.ndarray:
    """One mask file -> an instance map: a binary mask (values in {0, 128, 255}, or {0, 1})
    is one object with 128 = ignore (-1); any other integer image is an instance map."""
    arr = np.asarray(read_image(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise AnnotationError(f"{path}: a mask must be a 2D image, got shape {arr.shape}")
    values = np.unique(arr)
    if arr.dtype == np.bool_ or set(values.tolist()) <= {0, 1} or (
            arr.dtype == np.uint8 and set(values.tolist()) <= {0, IGNORE_VALUE, 255}):
        gt, ignore = decode_mask(arr)
        out = gt.astype(np.int32)
        out[ignore & ~gt] = IGNORE_LABEL
        return out
    return as_labels(arr, str(path))


def read_folder_pairs(images_dir: PathLike, masks_dir: PathLike) -> Tuple[list, list, list]:
    """``(images as stored, instance maps, names)`` of a folder pair: every image of
    ``images_dir`` that has a mask in ``masks_dir`` (see the module docstring); images without
    one are left out with a warning."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for flag, d in (("--images", images_dir), ("--masks", masks_dir)):
        if not d.is_dir():
            raise AnnotationError(f"{flag} {d}: folder not found")
    imgs, labs, names, unlabelled = [], [], [], []
    files = _list_files(images_dir, IMAGE_EXTENSIONS)
    if not files:
        raise AnnotationError(f"--images {images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    for img_path in files:
        stem = img_path.stem
        single = [masks_dir / f"{stem}{e}" for e in MASK_EXTENSIONS]
        single = [p for p in single if p.is_file()]
        sub = masks_dir / stem
        parts = _list_files(sub, MASK_EXTENSIONS) if sub.is_dir() else []
        if not single and not parts:
            unlabelled.append(img_path.name)
            continue
        image = read_image(img_path)
        labels = None
        for p in single[:1]:
            labels = read_label_file(p)
        for p in parts:
            m = read_label_file(p)
            if labels is None:
                labels = np.zeros(m.shape, np.int32)
            if m.shape != labels.shape:
                raise AnnotationError(f"{p}: mask is {m.shape[0]}x{m.shape[1]} but the other masks "
                                      f"of {stem} are {labels.shape[0]}x{labels.shape[1]}")
            nxt = int(labels.max()) + 1 if labels.size else 1
            labels[(m == IGNORE_LABEL) & (labels == 0)] = IGNORE_LABEL
            labels[m > 0] = nxt  # one file, one object
        if np.asarray(image).shape[:2] != labels.shape:
            raise AnnotationError(f"{img_path.name}: the image is "
                                  f"{'x'.join(map(str, np.asarray(image).shape[:2]))} but its mask is "
                                  f"{'x'.join(map(str, labels.shape))}: they must have the same size")
        imgs.append(image)
        labs.append(labels)
        names.append(img_path.name)
    if not imgs:
        raise AnnotationError(f"no image in {images_dir} has a mask in {masks_dir} "
                              f"(<stem>.png or <stem>/<k>.png; e.g. {files[0].stem}.png)")
    if unlabelled:
        warnings.warn(f"{len(unlabelled)} image(s) have no mask and are left out "
                      f"(e.g. {unlabelled[0]})", stacklevel=2)
    return imgs, labs, names

"""Writing an object's mask into a label array (no Qt, no torch): the new id, which pixels a
commit writes (existing labels kept unless overwrite; an edited label replaced), and the
checks of ids and label arrays. ``napari_ois.session`` writes through these (and re-exports
``next_label_id`` and ``paint_indices``)."""

from __future__ import annotations

from typing import Any

import numpy as np

Key = tuple  # the leading indices of a 2D slice; () for a 2D image


def next_label_id(labels: np.ndarray) -> int:
    """A label id not used anywhere in ``labels``: its maximum plus one (1 when empty)."""
    labels = np.asarray(labels)
    return 1 if labels.size == 0 else int(max(0, labels.max())) + 1


def paint_indices(
    labels: np.ndarray, key: Key, mask: np.ndarray, overwrite: bool = False
) -> tuple:
    """Index arrays (one per axis of ``labels``) of the pixels of ``mask`` on slice ``key``
    that a commit writes: all of them with ``overwrite``, else only the unlabelled (0) ones."""
    key = tuple(int(k) for k in key)
    plane = labels[key] if key else labels
    mask = np.asarray(mask, dtype=bool)
    if plane.shape != mask.shape:
        raise ValueError(
            f"the mask has shape {mask.shape} but the labels' slice {key} has shape {plane.shape}"
        )
    sel = mask if overwrite else (mask & (np.asarray(plane) == 0))
    rr, cc = np.nonzero(sel)
    lead = tuple(np.full(rr.shape, k, dtype=np.intp) for k in key)
    return lead + (rr, cc)


def as_int(value: Any, what: str) -> int:
    """``value`` as an int, or ``ValueError`` naming ``what`` (no bare "invalid literal")."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise ValueError(f"{what} must be a whole number; got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number; got {value!r}") from None
    if not np.isfinite(f) or f != int(f):
        raise ValueError(f"{what} must be a whole number; got {value!r}")
    return int(f)


def check_label_fits(labels: np.ndarray, label_id: int) -> None:
    dt = np.asarray(labels).dtype
    if not np.issubdtype(dt, np.integer):
        raise ValueError(f"the labels array has dtype {dt}; it must be an integer type")
    if isinstance(labels, np.ndarray) and not labels.flags.writeable:
        raise ValueError("the labels array is read-only: pass a writable copy (labels.copy()) or "
                         "let the session create its own")
    if label_id > np.iinfo(dt).max:
        raise ValueError(
            f"label id {label_id} does not fit the labels' dtype {dt} (max {np.iinfo(dt).max}): "
            "use a labels layer with a wider dtype (e.g. int32) or a new one"
        )


def write_indices(labels: np.ndarray, key: Key, mask: np.ndarray, label_id: int, overwrite: bool = False,
                  replace: bool = False) -> tuple:
    """``(indices, values)`` that write ``mask`` on slice ``key`` with ``label_id``
    (``paint_indices``); ``replace``: the pixels of ``label_id`` there outside ``mask`` get
    0 in the same write (``values`` is then an array, else ``label_id``)."""
    idx, value = paint_indices(labels, key, mask, overwrite), label_id
    key = tuple(int(k) for k in key)
    if replace:
        gone = np.nonzero((np.asarray(labels[key] if key else labels) == label_id) & ~np.asarray(mask, bool))
        if gone[0].size:
            gone = tuple(np.full(gone[0].shape, v, np.intp) for v in key) + gone
            idx = tuple(np.concatenate([a, b]) for a, b in zip(gone, idx))
            value = np.zeros(idx[0].shape, np.asarray(labels).dtype)
            value[gone[0].size:] = label_id
    return idx, value

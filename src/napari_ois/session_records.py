"""The records the interaction session keeps and hands out (no Qt, no torch).

``ObjectState`` is the current object of one slice (immutable: undo snapshots share its
arrays); ``PredictionRequest`` / ``PredictionResult`` are what crosses from the GUI thread
to the worker and back; ``PropagationStep`` and ``CommitRecord`` report propagation and
commits; ``PackedLogits`` and ``compact`` / ``expand`` keep undo snapshots of large images
small. ``napari_ois.session.InteractionSession`` makes and consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from .data.prompts import Box, paste

Key = tuple  # tuple[int, ...]: the leading indices of a 2D slice; () for a 2D image


@dataclass(frozen=True, eq=False)
class EditedLabel:
    """An existing label taken up as the current object (``InteractionSession.edit_label``):
    its id and its mask as it was, for ``window = (r0, r1, c0, c1)`` of the plane (None: the
    whole plane). A commit writes the object back under ``label_id``."""

    label_id: int
    mask: np.ndarray
    window: Optional[tuple] = None

    #: the logits of its pixels (+) and of the rest (-) as the current object: a sure mask
    LOGIT = 8.0

    @classmethod
    def take(cls, plane: np.ndarray, label_id: int) -> Optional["EditedLabel"]:
        """Label ``label_id`` of the labels ``plane`` (None when it is not there). On a plane
        over ``UNDO_FULL_PIXELS`` only a window around it is kept (the label's box, padded by
        half its size and at least 16 px)."""
        mask = np.asarray(plane) == label_id
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            return None
        if mask.size <= UNDO_FULL_PIXELS:
            return cls(int(label_id), mask)
        h, w = mask.shape
        pad = max(16, max(rows[-1] - rows[0], cols[-1] - cols[0]) // 2)
        win = (max(0, int(rows[0]) - pad), min(h, int(rows[-1]) + 1 + pad),
               max(0, int(cols[0]) - pad), min(w, int(cols[-1]) + 1 + pad))
        return cls(int(label_id), np.ascontiguousarray(mask[win[0]:win[1], win[2]:win[3]]), win)

    def state(self, plane: tuple, clicks: tuple = (), box: Optional[Box] = None) -> "ObjectState":
        """The current object that is this label as it was, with ``clicks`` (and ``box``) still
        to predict from it (its mask is their ``prev_mask``)."""
        logits = np.where(self.mask, np.float32(self.LOGIT), np.float32(-self.LOGIT)).astype(np.float32)
        return ObjectState(clicks=tuple(clicks), box=box, logits=logits, window=self.window,
                           plane=tuple(plane), edit=self)


@dataclass(frozen=True)
class ObjectState:
    """The current (not yet committed) object of one slice. Immutable: every change makes
    a new one, so that undo snapshots can share arrays safely.

    Attributes:
        clicks: the object's clicks in order.
        proposals: the ``Prediction`` of the first click (K masks, best first), or None.
        selected: index of the chosen proposal.
        logits: (H, W) float32 logits of the current mask: what the next prediction gets
            as ``prev_mask``. None before the first prediction.
        score: predicted IoU of the current mask.
        n_applied: how many of ``clicks`` the current mask accounts for (a click made
            while a prediction runs is counted once its own prediction is applied).
        box: the object's box prompt (``napari_ois.prompt.Box``) or None.
        box_applied: whether the current mask accounts for ``box``.
        window: None, or ``(r0, r1, c0, c1)`` when ``logits`` (and ``packed``) cover only
            that window of the plane (the predictor's window mode, big images).
        plane: ``(H, W)`` of the plane (with ``window``).
        edit: the ``EditedLabel`` this object is (``edit_label``), or None for a new object.
    """

    clicks: tuple = ()
    proposals: Any = None
    selected: int = 0
    logits: Optional[np.ndarray] = None
    score: Optional[float] = None
    n_applied: int = 0
    #: compact copy of ``logits`` (``PackedLogits``) held by undo snapshots of large images
    #: instead of ``logits``; ``InteractionSession.undo`` expands it again.
    packed: Any = None
    box: Optional[Box] = None
    box_applied: bool = False
    window: Optional[tuple] = None
    plane: Optional[tuple] = None
    edit: Optional[EditedLabel] = None

    @property
    def mask(self) -> Optional[np.ndarray]:
        """(H, W) bool mask of the current object, or None when nothing is predicted yet
        (a whole-plane copy when windowed: see ``mask_window`` for the crop)."""
        crop = self.mask_crop
        return None if crop is None else paste(crop, self.window, self.plane, False)

    @property
    def mask_crop(self) -> Optional[np.ndarray]:
        """The mask as kept: the ``window``'s part of the plane, or all of it without one."""
        if self.logits is None:
            return None if self.packed is None else self.packed.mask()
        return self.logits > 0

    @property
    def pending(self) -> bool:
        """True while some clicks (or the box) are not yet reflected by ``mask``."""
        return self.n_applied < len(self.clicks) or (self.box is not None and not self.box_applied)

    @property
    def has_prompt(self) -> bool:
        return bool(self.clicks) or self.box is not None or self.edit is not None


def restarted(obj: ObjectState, plane: tuple, clicks: tuple, box: Optional[Box]) -> ObjectState:
    """``obj`` to be predicted again from ``clicks`` and ``box``: from scratch, or from the
    label it edits (that label's mask as ``prev_mask``)."""
    return ObjectState(clicks=clicks, box=box) if obj.edit is None else obj.edit.state(plane, clicks, box)


@dataclass(frozen=True)
class PredictionRequest:
    """What ``compute`` predicts: a snapshot of one slice's object (made on the GUI thread)."""

    key: Key
    epoch: int
    clicks: tuple
    prev_mask: Optional[np.ndarray]
    multimask: bool
    box: Optional[Box] = None
    prev_window: Optional[tuple] = None  # the window ``prev_mask`` covers (big images)


@dataclass
class PredictionResult:
    request: PredictionRequest
    prediction: Any  # napari_ois.Prediction
    seconds: float
    embedded: bool  # True when this call had to compute the slice's embedding


@dataclass
class PropagationStep:
    """One slice reached by ``iter_propagate``."""

    key: Key
    mask: np.ndarray
    score: float
    click: tuple  # the (row, col) positive click used as prompt
    iou_prev: float = float("nan")  # IoU of ``mask`` with the previous slice's mask
    area_ratio: float = float("nan")  # its area / the previous slice's area


@dataclass
class CommitRecord:
    """The last committed object: where, which id, its mask on that slice and the clicks
    that made it (propagation carries them to the next slices)."""

    key: Key
    label_id: Optional[int]
    mask: np.ndarray
    clicks: tuple = ()
    #: an edited label (``edit_label``): each slice written replaces that label's pixels there
    replace: bool = False


#: undo snapshots of masks with more pixels than this keep a compact copy of the logits
UNDO_FULL_PIXELS = 1024 * 1024
#: longest side of the coarse logits an undo snapshot keeps (the model sees the previous mask
#: at its own input size, at most 1024 px, so this loses nothing the model could use)
UNDO_COARSE_SIDE = 1024


@dataclass(frozen=True)
class PackedLogits:
    """What an undo snapshot keeps of a large (H, W) logits array: the exact mask as packed
    bits (1 bit per pixel) and the logits subsampled to at most ``UNDO_COARSE_SIDE`` px
    (float16), about 0.25 byte per pixel instead of 4 at 4000 x 4000.

    ``logits()`` rebuilds full-resolution logits whose sign is exactly the mask (their
    values, what the next prediction gets as ``prev_mask``, come from the coarse copy)."""

    shape: tuple
    bits: np.ndarray
    coarse: np.ndarray
    step: int

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> "PackedLogits":
        logits = np.asarray(logits)
        h, w = logits.shape
        step = max(1, int(np.ceil(max(h, w) / UNDO_COARSE_SIDE)))
        coarse = np.clip(logits[::step, ::step], -6e4, 6e4).astype(np.float16)
        return cls((h, w), np.packbits(logits > 0), coarse, step)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes + self.coarse.nbytes)

    def mask(self) -> np.ndarray:
        h, w = self.shape
        return np.unpackbits(self.bits, count=h * w).reshape(h, w).view(bool)

    def logits(self) -> np.ndarray:
        h, w = self.shape
        s = self.step
        up = np.repeat(np.repeat(self.coarse.astype(np.float32), s, axis=0)[:h], s, axis=1)[:, :w]
        up = np.ascontiguousarray(up)
        m = self.mask()
        eps = np.float32(1e-3)
        np.maximum(up, eps, out=up, where=m)
        np.minimum(up, -eps, out=up, where=~m)
        return up


def advances(obj: ObjectState, req: PredictionRequest) -> bool:
    """Whether ``req`` accounts for more of ``obj``'s prompts than its mask does."""
    return len(req.clicks) > obj.n_applied or (req.box is not None and not obj.box_applied)


def shares_proposals(obj: ObjectState) -> bool:
    prop = obj.proposals
    return prop is not None and np.may_share_memory(obj.logits, np.asarray(prop.logits))


def compact(obj: ObjectState) -> ObjectState:
    """The undo snapshot of ``obj``: large logits are packed (see ``PackedLogits``), unless
    they are one of the proposals (kept once for the whole object anyway)."""
    lg = obj.logits
    if lg is None or np.size(lg) <= UNDO_FULL_PIXELS or np.ndim(lg) != 2 or shares_proposals(obj):
        return obj
    return replace(obj, logits=None, packed=PackedLogits.from_logits(lg))


def expand(obj: ObjectState) -> ObjectState:
    """The inverse of ``_compact``: full-resolution logits again (their sign is the mask)."""
    if obj.packed is None:
        return obj
    return replace(obj, logits=obj.packed.logits(), packed=None)


def snapshot_nbytes(obj: ObjectState) -> int:
    """Bytes an undo snapshot holds on its own (arrays shared with the object's proposals,
    which exist once per object, are not counted)."""
    n = 0
    if obj.logits is not None and not shares_proposals(obj):
        n += int(np.asarray(obj.logits).nbytes)
    if obj.packed is not None:
        n += obj.packed.nbytes
    return n

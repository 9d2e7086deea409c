"""Clicks: the one ``Click`` type and the click simulator of the standard protocol.

:class:`Click` is a click wherever it comes from: the user's (the interaction session keeps
napari's float coordinates) or the simulator's (integer pixels).

The simulator is the one every paper in ``shared/design/OIS_METHOD.md`` uses (RITM's
``Clicker``; also SimpleClick, SegNext, OIS), written with
``scipy.ndimage.distance_transform_edt`` instead of OpenCV:

First click
    At the interior point of the object farthest from its boundary: the Euclidean distance
    transform of the object mask padded by one background pixel on every side (so the image
    border counts as boundary), with "ignore" pixels removed from the object first (so they
    count as boundary too and can never be clicked).

Each next click
    The prediction is binarised at probability 0.49 (``sigmoid(logit) > 0.49``). The
    false-negative region (object, not predicted) and the false-positive region (predicted,
    not object), both without ignore pixels, are each padded by one pixel and
    distance-transformed. The region whose maximum distance is larger wins; the click goes
    at that maximum, positive when it came from the false negatives. A tie goes to the
    false positives (negative click), as in the reference implementation
    (``is_positive = fn_max > fp_max``).

Tie-breaking inside a region is deterministic: the first maximum in row-major (C) order,
i.e. ``np.argmax`` of the flattened distance map, which is the same pixel as RITM's
``np.where(dt == dt.max())[0]``.

As in the reference implementation, a pixel already clicked is never clicked again (its
distance is set to 0 before taking the maximum). The first click is the same computation
with an empty prediction, so it uses the same code path.

When neither region has any pixel (the prediction is perfect outside the ignore band), there
is nothing to correct: :func:`next_click` returns ``None`` and the runner stops that object,
carrying its last IoU forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

#: probability threshold of the protocol (RITM's ``pred_thr``)
PROB_THRESHOLD = 0.49
#: the same threshold on logits: sigmoid(x) > 0.49  <=>  x > log(0.49 / 0.51)
LOGIT_THRESHOLD = float(np.log(PROB_THRESHOLD / (1.0 - PROB_THRESHOLD)))


@dataclass(frozen=True)
class Click:
    """One click at ``(row, col)`` in image pixels (napari's data coordinates, pixel centres
    at integers); ``positive`` = on the object. The simulator's clicks are integer pixels."""

    row: float
    col: float
    positive: bool = True

    @property
    def coords(self) -> Tuple[float, float]:
        return (self.row, self.col)

    @property
    def label(self) -> int:
        """1 for a positive click, 0 for a negative one (the predictor's ``labels``)."""
        return 1 if self.positive else 0


def binarize(pred: np.ndarray) -> np.ndarray:
    """Turn a prediction into the protocol's binary mask.

    Boolean arrays are returned as they are; anything else is taken as **logits** and
    thresholded at ``sigmoid(x) > 0.49`` (use :func:`binarize_prob` for probabilities).
    """
    pred = np.asarray(pred)
    if pred.dtype == np.bool_:
        return pred
    return pred > LOGIT_THRESHOLD


def binarize_prob(prob: np.ndarray) -> np.ndarray:
    """Probabilities -> the protocol's binary mask (``prob > 0.49``)."""
    return np.asarray(prob) > PROB_THRESHOLD


def padded_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each ``True`` pixel to the nearest ``False`` pixel or to the image
    border: the distance transform of ``mask`` padded by one ``False`` pixel, cropped back.

    A pixel touching the border therefore has distance 1, like a pixel touching background.
    """
    from scipy.ndimage import distance_transform_edt  # here: ``Click`` users need no scipy

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float64)
    dt = distance_transform_edt(np.pad(mask, 1, mode="constant", constant_values=False))
    return dt[1:-1, 1:-1]


def _check(gt: np.ndarray, ignore: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=bool)
    if gt.ndim != 2:
        raise ValueError(f"ground-truth mask must be 2D (H, W); got shape {gt.shape}")
    if ignore is None:
        not_ignore = np.ones(gt.shape, dtype=bool)
    else:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore mask shape {ignore.shape} != ground truth {gt.shape}")
        not_ignore = ~ignore
    return gt, not_ignore


def next_click(
    gt: np.ndarray,
    pred: Optional[np.ndarray] = None,
    ignore: Optional[np.ndarray] = None,
    clicked: Optional[np.ndarray] = None,
) -> Optional[Click]:
    """The protocol's next click for the prediction ``pred`` of object ``gt``.

    Parameters
    ----------
    gt : (H, W) bool ground truth.
    pred : (H, W) current prediction: bool mask, or float logits (binarised at
        ``sigmoid > 0.49``). ``None`` means nothing predicted yet (this gives the first click).
    ignore : (H, W) bool, pixels never clicked and never counted.
    clicked : (H, W) bool, pixels already clicked (never clicked again).

    Returns ``None`` when there is no error region left.
    """
    gt, not_ignore = _check(gt, ignore)
    if pred is None:
        pred_mask = np.zeros_like(gt)
    else:
        pred_mask = binarize(pred)
        if pred_mask.shape != gt.shape:
            raise ValueError(f"prediction shape {pred_mask.shape} != ground truth {gt.shape}")
    fn = gt & ~pred_mask & not_ignore
    fp = ~gt & pred_mask & not_ignore
    fn_dt = padded_distance(fn)
    fp_dt = padded_distance(fp)
    if clicked is not None:
        fn_dt[clicked] = 0.0
        fp_dt[clicked] = 0.0
    fn_max = float(fn_dt.max()) if fn_dt.size else 0.0
    fp_max = float(fp_dt.max()) if fp_dt.size else 0.0
    if fn_max <= 0.0 and fp_max <= 0.0:
        return None
    positive = fn_max > fp_max
    dt = fn_dt if positive else fp_dt
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return Click(int(r), int(c), bool(positive))


def first_click(gt: np.ndarray, ignore: Optional[np.ndarray] = None) -> Optional[Click]:
    """The first click: the object pixel farthest from its boundary (image border and ignore
    pixels count as boundary). ``None`` if the object has no pixel outside ``ignore``."""
    return next_click(gt, None, ignore)


class Clicker:
    """Stateful simulator for one object: keeps the clicks made so far.

    >>> clicker = Clicker(gt, ignore)
    >>> click = clicker.make_next_click(None)          # first click
    >>> click = clicker.make_next_click(logits)        # after each prediction
    >>> clicker.points, clicker.labels                 # what the predictor takes
    """

    def __init__(self, gt: np.ndarray, ignore: Optional[np.ndarray] = None):
        self.gt, not_ignore = _check(gt, ignore)
        self.ignore = ~not_ignore
        self.clicks: List[Click] = []
        self._clicked = np.zeros(self.gt.shape, dtype=bool)

    def make_next_click(self, pred: Optional[np.ndarray]) -> Optional[Click]:
        """Add and return the next click for prediction ``pred`` (``None`` -> first click).
        Returns ``None`` (and adds nothing) when there is no error region left."""
        click = next_click(self.gt, pred, self.ignore, self._clicked if self.clicks else None)
        if click is not None:
            self.clicks.append(click)
            self._clicked[click.row, click.col] = True
        return click

    def add_click(self, click: Click) -> None:
        """Add a click made elsewhere (integer pixel coordinates)."""
        self.clicks.append(click)
        self._clicked[click.row, click.col] = True

    @property
    def points(self) -> List[List[int]]:
        return [[c.row, c.col] for c in self.clicks]

    @property
    def labels(self) -> List[int]:
        return [c.label for c in self.clicks]

    def __len__(self) -> int:
        return len(self.clicks)


def simulate_clicks(
    gt: np.ndarray,
    predictions: Sequence[np.ndarray],
    ignore: Optional[np.ndarray] = None,
) -> List[Optional[Click]]:
    """Clicks for a fixed sequence of predictions: ``[first, after predictions[0], ...]``."""
    clicker = Clicker(gt, ignore)
    out = [clicker.make_next_click(None)]
    for p in predictions:
        out.append(clicker.make_next_click(p))
    return out

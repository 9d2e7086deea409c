"""Metrics of the interactive-segmentation protocol.

- IoU between a binary prediction and the ground truth, "ignore" pixels excluded from both.
- NoC@t: the first click count whose IoU reaches ``t`` (``>= t``); ``max_clicks`` if never.
- NoF@t: the number of objects that never reach ``t`` within ``max_clicks`` clicks.
  (RITM's code counts ``NoC == max_clicks``, which also counts an object reaching ``t`` at
  exactly the last click; we count "never reached", as the protocol text says.)
- k-mIoU: the mean IoU over objects after ``k`` clicks, ``k = 1..max_clicks``. A sequence
  shorter than ``max_clicks`` (the run stopped early) is padded by carrying its last IoU.

IoU values are fractions in [0, 1] everywhere in this package (the printed table shows
percentages, like the papers).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

NOC_THRESHOLDS = (0.85, 0.90, 0.95)
NOF_THRESHOLDS = (0.90, 0.95)


def iou(pred: np.ndarray, gt: np.ndarray, ignore: Optional[np.ndarray] = None) -> float:
    """Intersection over union of two boolean masks, pixels in ``ignore`` excluded.

    Two empty masks have IoU 1 (nothing to find, nothing found).
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth {gt.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        pred = pred & keep
        gt = gt & keep
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt)) / float(union)


def pad_ious(ious: Sequence[float], max_clicks: int) -> np.ndarray:
    """``ious`` truncated/padded to ``max_clicks`` entries, padding with the last value.

    An empty sequence becomes zeros (an object that got no prediction at all).
    """
    arr = np.asarray(list(ious), dtype=np.float64)[:max_clicks]
    if arr.size == 0:
        return np.zeros(max_clicks, dtype=np.float64)
    if arr.size < max_clicks:
        arr = np.concatenate([arr, np.full(max_clicks - arr.size, arr[-1])])
    return arr


def noc(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach ``threshold``: the first ``k`` (1-based) with
    ``ious[k-1] >= threshold``, or ``max_clicks`` if it is never reached."""
    arr = pad_ious(ious, max_clicks)
    hit = np.flatnonzero(arr >= threshold)
    return int(hit[0]) + 1 if hit.size else int(max_clicks)


def reached(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> bool:
    """Whether the sequence reaches ``threshold`` within ``max_clicks`` clicks."""
    return bool(np.any(pad_ious(ious, max_clicks) >= threshold))


def nof(all_ious: Iterable[Sequence[float]], threshold: float, max_clicks: int = 20) -> int:
    """Number of failures: objects that never reach ``threshold`` within ``max_clicks``."""
    return int(sum(not reached(s, threshold, max_clicks) for s in all_ious))


def miou_curve(all_ious: Iterable[Sequence[float]], max_clicks: int = 20) -> np.ndarray:
    """``(max_clicks,)`` mean IoU after k = 1..max_clicks clicks (padded sequences)."""
    rows = [pad_ious(s, max_clicks) for s in all_ious]
    if not rows:
        return np.full(max_clicks, np.nan)
    return np.mean(np.stack(rows), axis=0)


def k_miou(all_ious: Iterable[Sequence[float]], k: int, max_clicks: int = 20) -> float:
    """Mean IoU after ``k`` clicks (1-based)."""
    if not 1 <= k <= max_clicks:
        raise ValueError(f"k must be in 1..{max_clicks}; got {k}")
    return float(miou_curve(all_ious, max_clicks)[k - 1])


def summarize(
    all_ious: Sequence[Sequence[float]],
    max_clicks: int = 20,
    noc_thresholds: Sequence[float] = NOC_THRESHOLDS,
    nof_thresholds: Sequence[float] = NOF_THRESHOLDS,
) -> Dict[str, object]:
    """Summary of a set of per-object IoU sequences.

    Keys: ``num_objects``, ``max_clicks``, ``NoC@85``/``NoC@90``/``NoC@95`` (mean over
    objects), ``NoF@90``/``NoF@95`` (counts), ``1-mIoU``, ``5-mIoU`` (fractions; ``nan`` if
    ``max_clicks`` < k) and ``mIoU`` (the list of k-mIoU for k = 1..max_clicks).
    """
    all_ious = [list(s) for s in all_ious]
    n = len(all_ious)
    out: Dict[str, object] = {"num_objects": n, "max_clicks": int(max_clicks)}
    for t in noc_thresholds:
        vals = [noc(s, t, max_clicks) for s in all_ious]
        out[f"NoC@{round(t * 100)}"] = float(np.mean(vals)) if vals else float("nan")
    for t in nof_thresholds:
        out[f"NoF@{round(t * 100)}"] = nof(all_ious, t, max_clicks)
    curve = miou_curve(all_ious, max_clicks)
    for k in (1, 5):
        out[f"{k}-mIoU"] = float(curve[k - 1]) if k <= max_clicks else float("nan")
    out["mIoU"] = [float(v) for v in curve]
    return out


def noc_per_object(all_ious: Sequence[Sequence[float]], threshold: float,
                   max_clicks: int = 20) -> List[int]:
    """NoC@threshold of each object."""
    return [noc(s, threshold, max_clicks) for s in all_ious]

"""Instance segmentation scores (F1, precision, recall at an IoU threshold, one-to-one
matching) and the classical automatic baseline (Otsu threshold + distance-transform
watershed) that ``segment_all`` is compared with.

    >>> s = instance_scores(gt_labels, pred_labels)          # complete instance maps
    >>> s["f1"], s["precision"], s["recall"]
    >>> annotated_recall(gt_masks, pred_labels)["recall"]      # only some objects annotated
    >>> labels = otsu_watershed(image)

Matching: a ground-truth object and a predicted one match when their IoU exceeds
``iou_threshold`` (0.5); pairs are assigned one-to-one by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the IoU matrix. Above 0.5 a match is unique
anyway (two disjoint masks cannot both overlap a third by more than half its union), so this
equals greedy matching there; the assignment keeps lower thresholds one-to-one too.
``TP`` matched pairs, ``FP = predicted - TP``, ``FN = ground truth - TP``;
``precision = TP / predicted``, ``recall = TP / ground truth``, ``F1 = 2 TP / (predicted +
ground truth)``. An image with no objects and no predictions scores 1.

No torch and nothing of the model: numpy, scipy and scikit-image.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


def _as_labels(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D label image, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold whole-number labels (0 background)")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return arr.astype(np.int64, copy=False)


def iou_matrix(gt: np.ndarray, pred: np.ndarray):
    """IoU of every ground-truth object with every predicted one.

    Returns ``(iou, gt_ids, pred_ids)``: ``iou`` is ``(len(gt_ids), len(pred_ids))``, the ids
    the nonzero labels present in each map (any integers; they need not be 1..N).
    """
    gt = _as_labels(gt, "ground truth")
    pred = _as_labels(pred, "prediction")
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    g_inv, p_inv = g_inv.ravel(), p_inv.ravel()
    ng, npd = len(g_ids), len(p_ids)
    inter = np.bincount(g_inv * npd + p_inv, minlength=ng * npd).reshape(ng, npd).astype(np.float64)
    g_area = inter.sum(1)
    p_area = inter.sum(0)
    g_keep = g_ids != 0
    p_keep = p_ids != 0
    inter = inter[g_keep][:, p_keep]
    union = g_area[g_keep][:, None] + p_area[p_keep][None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou, g_ids[g_keep], p_ids[p_keep]


def match(iou: np.ndarray, iou_threshold: float = 0.5):
    """One-to-one pairs ``(gt_index, pred_index)`` with IoU above ``iou_threshold``
    (Hungarian assignment maximising the matched IoU)."""
    from scipy.optimize import linear_sum_assignment

    if iou.size == 0:
        return np.zeros((0, 2), np.int64)
    weight = np.where(iou > iou_threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    ok = weight[rows, cols] > 0
    return np.stack([rows[ok], cols[ok]], 1).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 1.0


def instance_scores(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> Dict[str, float]:
    """F1, precision and recall of ``pred`` against a complete instance map ``gt``.

    Both are ``(H, W)`` label images, 0 background. Returns ``tp``, ``fp``, ``fn``,
    ``n_gt``, ``n_pred``, ``precision``, ``recall``, ``f1`` and ``mean_matched_iou``.
    """
    iou, g_ids, p_ids = iou_matrix(gt, pred)
    pairs = match(iou, iou_threshold)
    tp = len(pairs)
    n_gt, n_pred = len(g_ids), len(p_ids)
    matched = iou[pairs[:, 0], pairs[:, 1]] if tp else np.zeros(0)
    return {
        "tp": tp, "fp": n_pred - tp, "fn": n_gt - tp, "n_gt": n_gt, "n_pred": n_pred,
        "precision": _ratio(tp, n_pred), "recall": _ratio(tp, n_gt),
        "f1": _ratio(2 * tp, n_gt + n_pred),
        "mean_matched_iou": float(matched.mean()) if tp else 0.0,
    }


def annotated_recall(gt_masks: Sequence[np.ndarray], pred: np.ndarray,
                     iou_threshold: float = 0.5, ignore: Optional[Sequence[np.ndarray]] = None) -> Dict[str, float]:
    """Recall of the annotated objects only, for images where only some objects are drawn
    (precision cannot be measured there: an unmatched prediction may be an object nobody
    annotated).

    ``gt_masks``: one boolean ``(H, W)`` mask per annotated object; ``ignore``: optional
    matching masks of pixels left out of each IoU (e.g. a 128 band). Matching is one-to-one
    as in :func:`instance_scores`. Returns ``tp``, ``n_gt``, ``recall``,
    ``mean_matched_iou`` and ``best_ious`` (each object's best IoU with any prediction).
    """
    pred = _as_labels(pred, "prediction")
    p_ids = np.unique(pred)
    p_ids = p_ids[p_ids != 0]
    if not len(gt_masks):
        return {"tp": 0, "n_gt": 0, "recall": 1.0, "mean_matched_iou": 0.0, "best_ious": []}
    index = {int(v): i for i, v in enumerate(p_ids)}
    p_area = np.bincount(np.searchsorted(p_ids, pred[pred > 0]), minlength=len(p_ids)) if len(p_ids) else np.zeros(0)
    iou = np.zeros((len(gt_masks), len(p_ids)))
    for g, m in enumerate(gt_masks):
        m = np.asarray(m, bool)
        if m.shape != pred.shape:
            raise ValueError(f"annotated mask {g} has shape {m.shape}; the prediction {pred.shape}")
        area_p = p_area
        keep = np.ones(pred.shape, bool)
        if ignore is not None and ignore[g] is not None:
            keep = ~np.asarray(ignore[g], bool)
            area_p = np.bincount(np.searchsorted(p_ids, pred[keep & (pred > 0)]), minlength=len(p_ids))
        ids, inter = np.unique(pred[m & keep], return_counts=True)
        area_g = int((m & keep).sum())
        for v, n in zip(ids, inter):
            if v == 0:
                continue
            j = index[int(v)]
            iou[g, j] = n / (area_g + area_p[j] - n)
    pairs = match(iou, iou_threshold)
    tp = len(pairs)
    matched = iou[pairs[:, 0], pairs[:, 1]] if tp else np.zeros(0)
    return {"tp": tp, "n_gt": len(gt_masks), "recall": tp / len(gt_masks),
            "mean_matched_iou": float(matched.mean()) if tp else 0.0,
            "best_ious": (iou.max(1) if iou.shape[1] else np.zeros(len(gt_masks))).round(4).tolist()}


def summarize_scores(per_image: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Pooled counts over images (micro average): precision, recall and F1 from the summed
    TP, FP and FN, plus the mean of the per-image F1 (or recall)."""
    tp = sum(s["tp"] for s in per_image)
    n_gt = sum(s["n_gt"] for s in per_image)
    out = {"images": len(per_image), "tp": tp, "n_gt": n_gt, "recall": _ratio(tp, n_gt)}
    if per_image and all("n_pred" in s for s in per_image):
        n_pred = sum(s["n_pred"] for s in per_image)
        out.update(n_pred=n_pred, precision=_ratio(tp, n_pred), f1=_ratio(2 * tp, n_gt + n_pred),
                   mean_image_f1=float(np.mean([s["f1"] for s in per_image])))
    else:
        out["mean_image_recall"] = float(np.mean([s["recall"] for s in per_image])) if per_image else 1.0
    return out


# --------------------------------------------------------------------------- baseline
def otsu_watershed(image: np.ndarray, polarity: str = "auto", object_size: Optional[float] = None,
                   smooth: float = 1.0, min_area: int = 30, contrast_limits=None) -> np.ndarray:
    """The classical automatic baseline: Otsu threshold, then a watershed of the distance
    transform to split touching objects. Returns ``(H, W)`` int32 labels (0 background).

    - The image is read as the model reads it (``data.images.to_unit_rgb``, then the mean
      of the three channels), smoothed by a Gaussian of ``smooth`` px.
    - ``polarity``: ``"bright"`` (objects above the threshold, e.g. fluorescence),
      ``"dark"`` (below, e.g. H&E nuclei) or ``"auto"``: the side that falls into more
      separate pieces (objects are many; the background is one connected phase).
    - Markers: the maxima of the (smoothed) distance transform at least ``object_size / 4``
      apart (``object_size``: the typical diameter; by default the median equivalent
      diameter of the thresholded pieces of at least ``min_area`` px); objects under
      ``min_area`` px (30: the size under which the shared data's label maps drop objects)
      or a tenth of that median are dropped; holes are filled.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    from ..data.images import to_unit_rgb

    if polarity not in ("auto", "bright", "dark"):
        raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    grey = to_unit_rgb(np.asarray(image), contrast_limits).mean(-1)
    if smooth > 0:
        grey = ndi.gaussian_filter(grey, smooth)
    if float(grey.max()) <= float(grey.min()):
        return np.zeros(grey.shape, np.int32)
    t = threshold_otsu(grey)
    sides = {"bright": grey > t, "dark": grey <= t}
    if polarity == "auto":
        counts = {}
        for k, fg in sides.items():
            fg = ndi.binary_opening(fg, iterations=1)
            lab, n = ndi.label(fg)
            sizes = np.bincount(lab.ravel())[1:]
            counts[k] = int((sizes >= 9).sum())
        polarity = max(counts, key=lambda k: (counts[k], k == "bright"))
    fg = ndi.binary_fill_holes(ndi.binary_opening(sides[polarity], iterations=1))
    lab, n = ndi.label(fg)
    if n == 0:
        return np.zeros(grey.shape, np.int32)
    sizes = np.bincount(lab.ravel())[1:]
    big = sizes[sizes >= min_area]
    med = float(np.median(big if len(big) else sizes))
    if object_size is None:
        object_size = 2.0 * np.sqrt(med / np.pi)
    dist = ndi.distance_transform_edt(fg)
    dist_s = ndi.gaussian_filter(dist, 1.0)
    sep = max(2, int(round(object_size / 4)))
    peaks = peak_local_max(dist_s, min_distance=sep, labels=lab, exclude_border=False)
    markers = np.zeros(grey.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    # a piece without a peak (too thin) keeps one marker at its deepest pixel
    has = np.zeros(n + 1, bool)
    has[lab[peaks[:, 0], peaks[:, 1]]] = True
    missing = np.flatnonzero(~has[1:]) + 1
    if len(missing):
        pos = ndi.maximum_position(dist, lab, missing)
        for k, (r, c) in enumerate(pos):
            markers[int(r), int(c)] = len(peaks) + 1 + k
    labels = watershed(-dist_s, markers, mask=fg)
    areas = np.bincount(labels.ravel())
    small = areas < max(float(min_area), 0.1 * med)
    small[0] = False
    labels[small[labels]] = 0
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)

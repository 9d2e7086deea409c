"""3D propagation: extend a 2D mask slice by slice along one axis of a stack. No Qt.

The interaction session (``InteractionSession.iter_propagate``, the plugin's Propagate) and the
volumetric evaluation (``napari_ois.evaluation.volume``, ``napari-ois eval3d``) both walk a
stack with :func:`propagate_slices`. It knows nothing of the session or of a predictor: it
takes ``predict_slice(index, points, labels, prev_mask) -> (mask, score)``, a callable that
predicts one slice of the stack (the caller owns embeddings and caches).

On every slice the prompt is made from the previous slice's mask by :func:`slice_prompt`
(the one place that rule lives); the slice's prediction is then checked against the stop
rules (object vanished, lost, sudden area change, overlap lost, low predicted quality) and
against where the walk may go (``z_range``, the ``stop_at`` anchor slices, the stack's ends).
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Iterator, Optional, Sequence

import numpy as np

from .data.clicks import Click
from .session_records import Key, PropagationStep

__all__ = [
    "interior_point",
    "agrees",
    "slice_prompt",
    "check_area_ratio",
    "check_z_range",
    "floor_area",
    "slice_name",
    "propagate_slices",
    "stopped_by_rule",
    "clear_past_stops",
]

#: ``predict_slice(index, points, labels, prev_mask) -> (mask (H, W) bool, score)``
PredictSlice = Callable[[int, list, list, np.ndarray], tuple]


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its boundary (ties: the first in raster order).

    The image border counts as boundary (the mask is padded by one background pixel): the
    same rule as the click simulator's first click (``data.clicks.padded_distance``)."""
    from .data.clicks import padded_distance

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the mask is empty: no interior point")
    dist = padded_distance(mask)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def agrees(click: Click, mask: np.ndarray) -> bool:
    """Whether a click agrees with a mask: a positive click inside it, a negative one outside
    (a click off the plane agrees with nothing)."""
    r, c = int(round(click.row)), int(round(click.col))
    if not (0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]):
        return False
    return bool(mask[r, c]) == bool(click.positive)


#: how the next slice is prompted: "clicks" (the mask, an interior click and the object's
#: agreeing clicks: any model) or "mask" (the mask alone: a model trained on neighbouring-slice
#: samples, ``training.slices``, which answers an empty mask where the structure has ended)
PROMPTS = ("clicks", "mask")


def slice_prompt(prev_mask: np.ndarray, clicks: Sequence[Click] = (),
                 prompt: str = "clicks") -> tuple[list, list, np.ndarray]:
    """The prompt for the next slice from the previous slice's mask: ``(points, labels,
    prev_mask)`` for ``predict(points, labels, prev_mask=prev_mask, multimask=False)``.

    ``prev_mask`` = that mask; one positive click at its interior point (farthest from the
    boundary), then the object's own ``clicks`` (those that made the start mask) that still
    agree with that mask -- a positive click inside it, a negative one outside. (The clicks
    matter: given its mask and a lone click, a model reads a first refinement and may redraw
    the object; given the clicks that made it, it keeps it.)

    ``prompt="mask"``: the mask alone (no point), for models trained for it; they were never
    shown a click beside a neighbouring slice's mask.

    ``points[0]``, when there is one, is reported as ``PropagationStep.click``."""
    prev_mask = np.asarray(prev_mask, dtype=bool)
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {list(PROMPTS)}, got {prompt!r}")
    if prompt == "mask":
        return [], [], prev_mask
    carried = [c for c in clicks if agrees(c, prev_mask)]
    points = [list(interior_point(prev_mask))] + [[c.row, c.col] for c in carried]
    labels = [1] + [int(c.positive) for c in carried]
    return points, labels, prev_mask


def check_area_ratio(area_ratio) -> tuple:
    """``(lo, hi)`` of a propagation's area-ratio rule, or ``(None, None)`` when it is off."""
    if area_ratio is None:
        return None, None
    try:
        lo, hi = (float(v) for v in area_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"area_ratio must be (low, high), e.g. (0.5, 2.0), or None; got {area_ratio!r}") from None
    if not (0.0 <= lo <= 1.0 <= hi):
        raise ValueError(f"area_ratio ({lo:g}, {hi:g}) must satisfy 0 <= low <= 1 <= high")
    return lo, hi


def check_z_range(z_range, n_slices: int) -> tuple[int, int]:
    """``(lo, hi)`` (inclusive) of the slices a propagation may reach; None: the whole stack.
    Either end may be None (that end of the stack); ends outside the stack are clipped."""
    if z_range is None:
        return 0, n_slices - 1
    try:
        lo, hi = z_range
    except (TypeError, ValueError):
        raise ValueError(f"z_range must be (first, last) slice indices (inclusive) or None; got {z_range!r}") from None
    ends = []
    for v, default in ((lo, 0), (hi, n_slices - 1)):
        if v is None:
            ends.append(default)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"z_range must hold whole slice indices; got {z_range!r}") from None
        if not np.isfinite(f) or f != int(f):
            raise ValueError(f"z_range must hold whole slice indices; got {z_range!r}")
        ends.append(int(f))
    lo, hi = ends
    if lo > hi:
        raise ValueError(f"z_range ({lo}, {hi}) is empty: its first slice comes after its last")
    return max(0, lo), min(n_slices - 1, hi)


def floor_area(start_area: int, min_area: Optional[int] = None) -> int:
    """The area (pixels) under which an object has vanished: ``min_area``, by default
    ``max(4, 2 %`` of the start mask``)``."""
    return max(4, int(0.02 * int(start_area))) if min_area is None else int(min_area)


def slice_name(key: Key) -> str:
    """``"image"`` for a 2D image's key ``()``, else ``"slice 3"`` / ``"slice 1,3"``."""
    return "image" if not key else "slice " + ",".join(str(k) for k in key)


#: the stop rules of :func:`propagate_slices` and their defaults: the one place they live (the
#: session forwards its keywords, the dock and ``eval3d`` start from these)
STOP_RULES = {
    "max_slices": None,
    "min_score": 0.5,
    "min_area": None,
    "area_ratio": (0.5, 2.0),
    "min_overlap": 0.3,
    "stop_empty": True,
}


def propagate_slices(
    predict_slice: PredictSlice,
    plane_shape: Sequence[int],
    n_slices: int,
    start: int,
    start_mask: np.ndarray,
    clicks: Sequence[Click] = (),
    *,
    directions: Sequence[int] = (1, -1),
    max_slices: Optional[int] = STOP_RULES["max_slices"],
    min_score: float = STOP_RULES["min_score"],
    min_area: Optional[int] = STOP_RULES["min_area"],
    area_ratio: Optional[Sequence[float]] = STOP_RULES["area_ratio"],
    min_overlap: Optional[float] = STOP_RULES["min_overlap"],
    stop_empty: bool = STOP_RULES["stop_empty"],
    stop_at: Collection[int] = (),
    z_range: Optional[Sequence[Optional[int]]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    stops: Optional[dict] = None,
    key_of: Optional[Callable[[int], Key]] = None,
    prompt: str = "clicks",
) -> Iterator[PropagationStep]:
    """Extend ``start_mask`` (on slice ``start`` of ``n_slices``) through its neighbours.

    The mask on slice z is the prompt for z +- 1 (:func:`slice_prompt`); ``predict_slice(z,
    points, labels, prev_mask)`` returns that slice's ``(mask, score)``. A direction stops (that
    slice is not yielded) when

    - the object vanishes: fewer than ``min_area`` pixels (default ``max(4, 2 %`` of the start
      mask``)``; with ``stop_empty=False`` only an empty mask stops, through the next rule);
    - it no longer overlaps the mask it came from (no common pixel);
    - its area changes suddenly: the ratio of its area to the previous slice's is outside
      ``area_ratio`` (default ``(0.5, 2.0)``; None: no area rule) -- a leak into a
      neighbouring structure, or the object being lost;
    - its IoU with the previous slice's mask is below ``min_overlap`` (default 0.3; None: only
      no overlap at all stops);
    - its predicted quality (IoU score) is below ``min_score`` (-inf: never);
    - the next slice is an anchor (``stop_at``: slice indices never entered, e.g. slices that
      have clicks of their own; the start slice itself is ignored), or lies outside
      ``z_range`` (``(lo, hi)``, inclusive), or the stack ends, or after ``max_slices``;
    - ``should_stop()`` returns True (the whole propagation ends: "cancelled").

    Why each direction stopped goes into ``stops`` (``{+1: "...", -1: "..."}``, in words; the
    dict is updated as the walk goes, so a caller can read it after a partial iteration).
    ``key_of(z)`` makes the steps' keys (default ``(z,)``); messages name slices by key.
    ``prompt``: :func:`slice_prompt`'s ("clicks" or "mask"; see :data:`PROMPTS`).
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {list(PROMPTS)}, got {prompt!r}")
    stops = {} if stops is None else stops
    key_of = key_of or (lambda z: (z,))
    n_slices = int(n_slices)
    start = int(start)
    if not 0 <= start < n_slices:
        raise ValueError(f"start slice {start} lies outside the stack of {n_slices} slices")
    mask = np.asarray(start_mask, dtype=bool)
    if mask.shape != tuple(plane_shape):
        raise ValueError(f"mask has shape {mask.shape}; the image plane is {tuple(plane_shape)}")
    if not mask.any():
        raise ValueError(f"nothing to propagate on {slice_name(key_of(start))}: the start mask is empty")
    lo_ratio, hi_ratio = check_area_ratio(area_ratio)
    if min_overlap is not None:
        min_overlap = float(min_overlap)
        if not 0.0 <= min_overlap <= 1.0:
            raise ValueError(f"min_overlap must lie in [0, 1] (an IoU) or be None; got {min_overlap}")
    z_lo, z_hi = check_z_range(z_range, n_slices)
    if not z_lo <= start <= z_hi:
        raise ValueError(f"the start slice {start} lies outside z_range ({z_lo}, {z_hi})")
    anchors = {int(z) for z in stop_at} - {start}
    clicks = tuple(clicks)
    area0 = int(mask.sum())
    floor = floor_area(area0, min_area)
    for d in directions:
        d = 1 if d > 0 else -1
        prev = mask
        prev_area = area0
        z = start
        steps = 0
        while True:
            if should_stop is not None and should_stop():
                stops[d] = "cancelled"
                return
            z += d
            if not 0 <= z < n_slices:
                stops[d] = "end of the stack"
                break
            if not z_lo <= z <= z_hi:
                stops[d] = f"end of the Z range ({z_lo}-{z_hi})"
                break
            if z in anchors:
                stops[d] = f"anchor at {slice_name(key_of(z))} (it has clicks of its own)"
                break
            if max_slices is not None and steps >= max_slices:
                stops[d] = f"{max_slices} slices done"
                break
            points, labels, prompt_mask = slice_prompt(prev, clicks, prompt)
            m, score = predict_slice(z, points, labels, prompt_mask)
            m = np.asarray(m, dtype=bool)
            score = float(score)
            area = int(m.sum())
            inter = int(np.count_nonzero(m & prev))
            iou = inter / max(1, area + prev_area - inter)
            ratio = area / max(1, prev_area)
            where = slice_name(key_of(z))
            if stop_empty and area < floor:
                stops[d] = f"object vanished at {where} ({area} px)"
                break
            if inter == 0:
                stops[d] = f"object lost at {where} (no overlap with the previous slice)"
                break
            if lo_ratio is not None and not lo_ratio <= ratio <= hi_ratio:
                change = "grew" if ratio > 1 else "shrank"
                stops[d] = (
                    f"area {change} suddenly at {where}: {prev_area} -> {area} px "
                    f"(x{ratio:.2f}, outside [{lo_ratio:g}, {hi_ratio:g}])"
                )
                break
            if min_overlap is not None and iou < min_overlap:
                stops[d] = f"overlap lost at {where}: IoU {iou:.2f} with the previous slice < {min_overlap:.2f}"
                break
            if score < min_score:
                stops[d] = f"quality {score:.2f} < {min_score:.2f} at {where}"
                break
            steps += 1
            click = tuple(int(v) for v in points[0]) if points else None
            yield PropagationStep(key_of(z), m, score, click, iou_prev=iou, area_ratio=ratio)
            prev = m
            prev_area = area


def stopped_by_rule(why: Any) -> bool:
    """Whether a direction's stop message (``stops[d]``) is a stop rule that judged the
    object gone or wrong (vanished, lost, area change, overlap, quality), not where the walk
    was allowed to go (stack end, Z range, anchor, slice count) or a cancel."""
    if not isinstance(why, str):
        return False
    return not why.startswith(("end of the stack", "end of the Z range", "anchor at", "cancelled")) \
        and not why.endswith("slices done")


def clear_past_stops(stops: dict, reached: Sequence[int], n_slices: int, present: Callable[[int], bool],
                     anchors: Collection[int] = (), z_range: Optional[Sequence[Optional[int]]] = None) -> list:
    """The slices whose old prediction a re-propagation clears: where a stop rule ended a
    direction (``stopped_by_rule(stops[d])``: the object judged gone or wrong), from the slice
    past the last one ``reached = (lo, hi)`` on, up to the first slice where the object is
    already absent (``present(z)`` False), the end of ``z_range`` or of the stack -- a leak past
    the structure's end. Towards an anchor (``anchors``, slice indices) where the object is
    present, nothing is cleared: the structure runs on to that anchor, so the stop only means
    that the new walk was not trusted further, and the old prediction there stays (clearing it
    wiped whole organs in ``eval3d``: a negative click on a slice past one end, or a leaky
    walk from a click at one end, emptied every slice up to the first click's). Towards an
    anchor where the object is absent (a negative click that ended it there), the slices up
    to it are cleared. So a stop removes a leak, but not the structure itself. The rule of a
    correction, in the session's corrections (``napari_ois.corrections``) and in the
    volumetric protocol (``evaluation.volume``)."""
    lo_z, hi_z = check_z_range(z_range, n_slices)
    anchors = {int(a) for a in anchors}
    out = []
    for d, last in ((1, int(reached[1])), (-1, int(reached[0]))):
        if not stopped_by_rule(stops.get(d)):
            continue
        z, run = last + d, []
        while lo_z <= z <= hi_z and z not in anchors and present(z):
            run.append(z)
            z += d
        if not (z in anchors and lo_z <= z <= hi_z and present(z)):
            out.extend(run)
    return out

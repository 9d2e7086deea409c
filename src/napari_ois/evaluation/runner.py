"""Run the interactive-segmentation protocol on a model and a set of objects.

For each object:

1. ``model.set_image(image)`` (timed: the embedding time). Consecutive objects of the same
   image (``Sample.image_key``) reuse the embedding unless ``reuse_embedding=False``.
2. First click (the simulator's, see :mod:`.clicker`), ``predict(multimask=True)``. The
   top-scored proposal is taken (what the user sees first); the IoU of the top-scored
   proposal and the best IoU among all proposals (an oracle choice) are recorded as
   first-click-proposal metrics.
   With ``first_prompt="box"`` the first prompt is instead the object's tight ground-truth
   box (``Box.of_mask``), predicted as one refined mask; the clicks that follow correct it
   and are given together with the box.
3. Each next click: ``predict(multimask=False, prev_mask=<previous logits>)`` with all
   clicks so far. Only the ``predict`` call is timed (seconds per click).
4. After each click the prediction is binarised at ``sigmoid(logit) > 0.49`` and its IoU
   (ignore pixels excluded) recorded; the simulator places the next click from the same
   binary mask. The object stops after ``max_clicks`` clicks, when no error pixel is left,
   or (optionally) once its IoU reaches ``stop_iou``; shorter sequences are padded with
   their last IoU by the metrics.

The result is a JSON-serialisable dict (see :func:`evaluate`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..data.clicks import PROB_THRESHOLD, Clicker, binarize
from ..data.prompts import Box
from .metrics import NOC_THRESHOLDS, iou, noc, summarize

RESULT_FORMAT = "napari-ois-eval/1"


def model_display_name(model, default: Optional[str] = None) -> str:
    """A short name for a model object (its ``name`` attribute, else its class name)."""
    if default:
        return str(default)
    for attr in ("model_name", "name"):
        v = getattr(model, attr, None)
        if isinstance(v, str) and v:
            return v
    return type(model).__name__


def _prediction_arrays(out):
    """(logits or masks (K,H,W), scores (K,)) from a predictor output (a window's prediction,
    ``Prediction.window``, pasted into the whole image)."""
    logits = getattr(out, "logits", None)
    if getattr(out, "window", None) is not None:
        n = len(out.masks)
        logits = np.stack([out.full_logits(i) if logits is not None else out.full_mask(i)
                           for i in range(n)])
    elif logits is None:
        logits = np.asarray(out.masks, dtype=bool)
    logits = np.asarray(logits)
    if logits.ndim == 2:
        logits = logits[None]
    scores = getattr(out, "scores", None)
    if scores is None:
        scores = np.zeros(logits.shape[0], dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != logits.shape[0]:
        raise ValueError(f"predictor returned {logits.shape[0]} masks but "
                         f"{scores.shape[0]} scores")
    return logits, scores


def _n_items(samples, limit):
    try:
        n = len(samples)
    except TypeError:
        n = None
    if limit is not None:
        n = limit if n is None else min(n, limit)
    return n


def evaluate(
    model,
    samples: Iterable,
    max_clicks: int = 20,
    limit: Optional[int] = None,
    progress: bool = True,
    *,
    model_name: Optional[str] = None,
    dataset_name: Optional[str] = None,
    stop_iou: Optional[float] = None,
    reuse_embedding: bool = True,
    warmup: bool = True,
    first_prompt: str = "click",
) -> Dict[str, object]:
    """Evaluate ``model`` (predictor interface) on ``samples`` (iterable of
    :class:`~.datasets.Sample` or ``(image, gt, ignore, name)`` tuples).

    Returns a dict with keys ``format``, ``model``, ``dataset``, ``protocol``, ``summary``
    (NoC@85/90/95, NoF@90/95, 1-mIoU, 5-mIoU, mIoU curve, first-click proposal metrics),
    ``timing`` (seconds per click, embedding time), ``objects`` (per object: name, IoU per
    click, clicks, seconds per click, embedding seconds, first-click proposals) and
    ``skipped`` (objects with no clickable pixel).
    """
    if max_clicks < 1:
        raise ValueError("max_clicks must be >= 1")
    if first_prompt not in ("click", "box"):
        raise ValueError(f"first_prompt must be 'click' or 'box', not {first_prompt!r}")
    if first_prompt == "box" and not getattr(model, "accepts_boxes", False):
        raise ValueError(f"{model_display_name(model, model_name)} takes no box prompts: "
                         "evaluate box-first with a model built for boxes")
    n_total = _n_items(samples, limit)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_total, desc=f"eval {model_display_name(model, model_name)}",
                       unit="obj", leave=True, dynamic_ncols=True)
        except Exception:  # pragma: no cover
            bar = None

    objects: List[Dict[str, object]] = []
    skipped: List[str] = []
    embed_times: List[float] = []
    prev_key = None
    warmed = not warmup
    t_start = time.perf_counter()
    count = 0
    try:
        for sample in samples:
            if limit is not None and count >= limit:
                break
            count += 1
            if hasattr(sample, "gt"):
                image, gt, ignore, name = sample.image, sample.gt, sample.ignore, sample.name
                key = getattr(sample, "image_key", "") or None
                depth = getattr(sample, "meta", {}).get("depth")
            else:
                image, gt, ignore, name = sample
                key, depth = None, None
            gt = np.asarray(gt, dtype=bool)
            ignore = np.zeros_like(gt) if ignore is None else np.asarray(ignore, dtype=bool)
            t_obj = time.perf_counter()
            clicker = Clicker(gt, ignore)
            if first_prompt == "box":  # the box is the first prompt; clicks follow
                box, promptable = Box.of_mask(gt), bool(np.any(gt & ~ignore))
            else:
                box, promptable = None, clicker.make_next_click(None) is not None
            if not promptable:
                skipped.append(str(name))
                if bar is not None:
                    bar.update(1)
                continue

            embed_s: Optional[float] = None
            if not (reuse_embedding and key is not None and key == prev_key):
                t0 = time.perf_counter()
                if depth is not None:  # samples may carry a depth map (synthetic scenes)
                    model.set_image(image, depth=depth)
                else:
                    model.set_image(image)
                embed_s = time.perf_counter() - t0
                embed_times.append(embed_s)
                prev_key = key
            if not warmed:  # one untimed call so lazy initialisation is not counted
                model.predict(points=clicker.points, labels=clicker.labels, prev_mask=None,
                              **({"box": box} if box is not None else {"multimask": True}))
                warmed = True

            ious: List[float] = []
            secs: List[float] = []
            first: Dict[str, object] = {}
            prev_logits = None
            for k in range(max_clicks):
                t0 = time.perf_counter()
                if box is not None:
                    out = model.predict(points=clicker.points, labels=clicker.labels,
                                        prev_mask=prev_logits, multimask=False, box=box)
                else:
                    out = model.predict(points=clicker.points, labels=clicker.labels,
                                        prev_mask=prev_logits, multimask=(k == 0))
                secs.append(time.perf_counter() - t0)
                logits, scores = _prediction_arrays(out)
                if k == 0 and box is not None:
                    cur = logits[0]
                    first = {"prompt": "box", "box": list(box.as_tuple()),
                             "iou": iou(binarize(cur), gt, ignore)}
                elif k == 0:
                    top = int(np.argmax(scores)) if scores.size else 0
                    prop_masks = [binarize(l) for l in logits]
                    prop_ious = [iou(m, gt, ignore) for m in prop_masks]
                    first = {
                        "num_proposals": int(logits.shape[0]),
                        "top_index": top,
                        "scores": [float(s) for s in scores],
                        "ious": prop_ious,
                        "pixels": [int(np.count_nonzero(m)) for m in prop_masks],
                        "top_iou": float(prop_ious[top]),
                        "best_iou": float(max(prop_ious)),
                    }
                    cur = logits[top]
                else:
                    cur = logits[0]
                pred = binarize(cur)
                ious.append(iou(pred, gt, ignore))
                if stop_iou is not None and ious[-1] >= stop_iou:
                    break
                if k + 1 >= max_clicks:
                    break
                if clicker.make_next_click(pred) is None:
                    break  # perfect outside the ignore band: nothing left to click
                prev_logits = cur
            rec = {
                "name": str(name),
                "image": str(key) if key is not None else None,
                "shape": [int(gt.shape[0]), int(gt.shape[1])],
                "object_pixels": int(np.count_nonzero(gt & ~ignore)),
                "ious": [float(v) for v in ious],
                "clicks": [[c.row, c.col, c.label]
                           for c in clicker.clicks[: len(ious) - (box is not None)]],
                "click_seconds": [float(s) for s in secs],
                "embed_seconds": embed_s,
                "object_seconds": time.perf_counter() - t_obj,
                "first_click": first,
            }
            for t in NOC_THRESHOLDS:
                rec[f"NoC@{round(t * 100)}"] = noc(ious, t, max_clicks)
            objects.append(rec)
            if bar is not None:
                bar.update(1)
                mi = np.mean([o["ious"][0] for o in objects])
                n90 = np.mean([o["NoC@90"] for o in objects])
                bar.set_postfix({"1-mIoU": f"{100 * mi:.1f}", "NoC90": f"{n90:.2f}"})
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t_start

    if skipped:
        warnings.warn(f"{len(skipped)} object(s) have no pixel outside the ignore band and "
                      f"were skipped (e.g. {skipped[0]})", stacklevel=2)
    all_ious = [o["ious"] for o in objects]
    summary = summarize(all_ious, max_clicks)
    firsts = [o["first_click"] for o in objects]
    if firsts and first_prompt == "box":
        summary["first_box_mIoU"] = float(np.mean([f["iou"] for f in firsts]))
    elif firsts:
        summary["first_click_top_mIoU"] = float(np.mean([f["top_iou"] for f in firsts]))
        summary["first_click_best_of_k_mIoU"] = float(np.mean([f["best_iou"] for f in firsts]))
        summary["first_click_num_proposals"] = int(max(f["num_proposals"] for f in firsts))
    all_secs = [s for o in objects for s in o["click_seconds"]]
    later = [s for o in objects for s in o["click_seconds"][1:]]
    timing = {
        "spc_mean": float(np.mean(all_secs)) if all_secs else float("nan"),
        "spc_median": float(np.median(all_secs)) if all_secs else float("nan"),
        "spc_first_click_mean": float(np.mean([o["click_seconds"][0] for o in objects]))
        if objects else float("nan"),
        "spc_later_clicks_mean": float(np.mean(later)) if later else float("nan"),
        "embed_mean_s": float(np.mean(embed_times)) if embed_times else float("nan"),
        "embed_median_s": float(np.median(embed_times)) if embed_times else float("nan"),
        "num_embeddings": len(embed_times),
        "num_clicks": len(all_secs),
        "object_mean_s": float(np.mean([o["object_seconds"] for o in objects]))
        if objects else float("nan"),
        "wall_s": float(wall),
    }
    return {
        "format": RESULT_FORMAT,
        "model": model_display_name(model, model_name),
        "dataset": dataset_name or getattr(samples, "name", None) or "samples",
        "protocol": {
            "max_clicks": int(max_clicks),
            "prob_threshold": PROB_THRESHOLD,
            "first_prompt": first_prompt,
            "first_click": ("box: the tight ground-truth box, refined mask" if first_prompt == "box"
                            else "multimask=True, top-scored proposal"),
            "later_clicks": "multimask=False, prev_mask = previous logits",
            "stop_iou": stop_iou,
            "reuse_embedding": bool(reuse_embedding),
            "zoom_in": getattr(model, "zoom_in", None) is not None,
            "flip_tta": bool(getattr(model, "flip_tta", False)),
            "precision": getattr(model, "precision", "fp32"),
        },
        "summary": summary,
        "timing": timing,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "device": str(getattr(model, "device", "cpu")),
        },
        "skipped": skipped,
        "objects": objects,
    }


def sat_latency(model, image: np.ndarray, grid: int = 16, multimask: bool = True
                ) -> Dict[str, float]:
    """SAT latency: set the image once, then a ``grid x grid`` grid of single positive clicks
    (cell centres), each its own prediction. Returns embedding, total and per-click seconds.
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    t0 = time.perf_counter()
    model.set_image(img)
    embed = time.perf_counter() - t0
    rows = (np.arange(grid) + 0.5) * h / grid
    cols = (np.arange(grid) + 0.5) * w / grid
    per: List[float] = []
    for r in rows:
        for c in cols:
            p = [[int(min(h - 1, r)), int(min(w - 1, c))]]
            t1 = time.perf_counter()
            model.predict(points=p, labels=[1], prev_mask=None, multimask=multimask)
            per.append(time.perf_counter() - t1)
    clicks = float(np.sum(per))
    return {
        "grid": int(grid),
        "num_clicks": len(per),
        "embed_s": float(embed),
        "clicks_total_s": clicks,
        "click_mean_s": float(np.mean(per)),
        "total_s": float(embed + clicks),
    }


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def save_json(result: Union[Dict, Sequence[Dict]], path: Union[str, os.PathLike]) -> Path:
    """Write one result dict (or a list of them) as JSON (NaN -> null)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(result), f, indent=1)
    return path


def load_results(path: Union[str, os.PathLike]) -> List[Dict]:
    """Read a JSON file written by :func:`save_json`: always a list of result dicts."""
    with open(path, "r", encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and "results" in data:
        data = data["results"]
    if isinstance(data, dict):
        data = [data]
    return list(data)

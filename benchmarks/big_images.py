"""Small objects in big images: first-click IoU, IoU after three protocol clicks, click
latency and memory against the image side, with the predictor's window mode off ("whole":
the image embedded whole, resized to the model input) and on ("windows", ``WindowSearch``).

Objects: the held-out ``COCO_MVal_dev`` objects whose bounding box is 40-160 px across. Each
is pasted with its whole photo (or, with ``--context F``, its box grown by F times its side on
each side) into a cluttered canvas of side N: a mosaic of 240 px tiles cropped at random from
the other dev photos (never an object's own photo), at a random place away from the borders.
The photo is then one more rectangle among the tiles, and the object has the context it has
in its own photo (a small patch around the object would stand out as a rectangle of its
own, which the larger windows segment as "the thing it belongs to"). The same
objects are also segmented in their own photo ("own photo": the reference). Every arm uses
the same first click (the protocol's, in the own photo, moved with the paste); the next two
clicks follow the protocol (``data.clicks.Clicker``) in a frame around the pasted patch
(``--frame`` px more on each side), and the IoU counts every predicted pixel, also outside
that frame. Canvases up to 16384 px are numpy arrays; 40000 px is a dask array rendered on
demand (1024 px chunks: nothing is held whole) whose reads are counted (the reader's
``pixels_read`` and the pixels the dask chunks generated, per click, as a share of the plane).

Latency is the wall time of ``predict`` (first click and later clicks); the embedding /
``set_image`` time apart. Memory: the peak resident set above the one before ``set_image``
(sampled every 2 ms by a thread), per object.

    bash scripts/beside_training.sh runs/cef14 python benchmarks/big_images.py \\
        --out benchmarks/results/big_images/default.json

Prints a table and writes JSON; no timed assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

SIDES = (1024, 4096, 6000, 8192, 16384, 40000)
TILE = 240


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """The peak resident set above the one at ``__enter__``, sampled by a thread."""

    def __init__(self, every: float = 0.002):
        self.every = every
        self.peak = 0

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def as_rgb8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def bbox(mask: np.ndarray) -> tuple:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def load_objects(min_side=40, max_side=160, limit: Optional[int] = None, every: int = 1):
    """(objects, pool): the dev objects 40-160 px across, and the other photos (tiles)."""
    from napari_ois.data.datasets import load_dataset

    objs, images = [], {}
    for s in load_dataset("COCO_MVal_dev"):
        images[s.image_key] = as_rgb8(s.image)
        r0, r1, c0, c1 = bbox(s.gt)
        if min_side <= max(r1 - r0, c1 - c0) <= max_side:
            objs.append(s)
    objs = objs[::every][:limit]
    used = {o.image_key for o in objs}
    pool = [im for k, im in images.items() if k not in used and min(im.shape[:2]) >= TILE]
    return objs, pool


class Canvas:
    """A ``side`` x ``side`` RGB canvas of random photo tiles with pasted patches, rendered
    by region (deterministic: the same pixels whichever way it is read)."""

    def __init__(self, side: int, pool: list, seed: int):
        self.side, self.pool, self.seed = side, pool, seed
        self.patches: list = []  # (array (h, w, 3), r, c)
        self.generated = 0

    def paste(self, patch: np.ndarray, r: int, c: int) -> None:
        self.patches.append((patch, r, c))

    def region(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0, 3), np.uint8)
        for ti in range(r0 // TILE, (r1 - 1) // TILE + 1):
            for tj in range(c0 // TILE, (c1 - 1) // TILE + 1):
                rng = np.random.default_rng([self.seed, ti, tj])
                img = self.pool[int(rng.integers(len(self.pool)))]
                y = int(rng.integers(img.shape[0] - TILE + 1))
                x = int(rng.integers(img.shape[1] - TILE + 1))
                a0, a1 = max(r0, ti * TILE), min(r1, (ti + 1) * TILE)
                b0, b1 = max(c0, tj * TILE), min(c1, (tj + 1) * TILE)
                out[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = img[y + a0 - ti * TILE:y + a1 - ti * TILE,
                                                            x + b0 - tj * TILE:x + b1 - tj * TILE]
        for patch, pr, pc in self.patches:
            a0, a1 = max(r0, pr), min(r1, pr + patch.shape[0])
            b0, b1 = max(c0, pc), min(c1, pc + patch.shape[1])
            if a1 > a0 and b1 > b0:
                out[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = patch[a0 - pr:a1 - pr, b0 - pc:b1 - pc]
        self.generated += (r1 - r0) * (c1 - c0)
        return out

    def numpy(self) -> np.ndarray:
        return self.region(0, self.side, 0, self.side)

    def dask(self, chunk: int = 1024):
        import dask.array as da

        def block(x, block_info=None):
            (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
            return self.region(r0, r1, c0, c1)

        base = da.zeros((self.side, self.side, 3), dtype=np.uint8, chunks=(chunk, chunk, 3))
        return base.map_blocks(block, dtype=np.uint8)


def prediction_iou(out, k: int, gt_frame: np.ndarray, frame: tuple) -> tuple:
    """(IoU, the mask on the frame) of proposal ``k``; predicted pixels outside the frame
    count as false positives."""
    f0, f1, g0, g1 = frame
    window = getattr(out, "window", None)
    mask = np.asarray(out.masks[k])
    on_frame = np.zeros(gt_frame.shape, bool)
    if window is None:
        on_frame[:] = mask[f0:f1, g0:g1]
    else:
        r0, r1, c0, c1 = window
        a0, a1, b0, b1 = max(r0, f0), min(r1, f1), max(c0, g0), min(c1, g1)
        if a1 > a0 and b1 > b0:
            on_frame[a0 - f0:a1 - f0, b0 - g0:b1 - g0] = mask[a0 - r0:a1 - r0, b0 - c0:b1 - c0]
    inter = np.count_nonzero(on_frame & gt_frame)
    union = np.count_nonzero(gt_frame) + np.count_nonzero(mask) - inter
    return (inter / union if union else 1.0), on_frame


def run_protocol(pred, first_click, gt_frame, frame, clicks: int = 3) -> dict:
    """The first click (given) then protocol clicks on the frame; IoU per click, seconds."""
    from napari_ois.data.clicks import Click, Clicker

    f0, _, g0, _ = frame
    clicker = Clicker(gt_frame)
    clicker.add_click(Click(first_click[0] - f0, first_click[1] - g0, True))
    ious, secs, first = [], [], {}
    prev = prev_window = None
    for i in range(clicks):
        pts = [[c.row + f0, c.col + g0] for c in clicker.clicks]
        t0 = time.perf_counter()
        out = pred.predict(pts, clicker.labels, prev_mask=prev, prev_window=prev_window,
                           multimask=(i == 0))
        secs.append(time.perf_counter() - t0)
        if i == 0:
            props = [prediction_iou(out, k, gt_frame, frame)[0] for k in range(len(out.masks))]
            first = {"top_iou": props[0], "best_iou": max(props), "ious": props,
                     "scores": [float(s) for s in out.scores]}
        iou, on_frame = prediction_iou(out, 0, gt_frame, frame)
        ious.append(iou)
        prev, prev_window = out.logits[0], getattr(out, "window", None)
        if i + 1 < clicks and clicker.make_next_click(on_frame) is None:
            ious += [iou] * (clicks - 1 - i)
            break
    return {"ious": ious, "seconds": secs, "first": first,
            "window": list(map(int, prev_window)) if prev_window is not None else None}


def own_photo(pred, obj, click, clicks=3) -> dict:
    pred.set_image(obj.image)
    h, w = obj.gt.shape
    return run_protocol(pred, click, obj.gt, (0, h, 0, w), clicks)


def summarise(records: list) -> dict:
    if not records:
        return {}
    first_s = [r["seconds"][0] for r in records]
    later_s = [s for r in records for s in r["seconds"][1:]]
    all_s = [s for r in records for s in r["seconds"]]
    out = {
        "objects": len(records),
        "first_click_iou": float(np.mean([r["first"]["top_iou"] for r in records])),
        "first_click_best_iou": float(np.mean([r["first"]["best_iou"] for r in records])),
        "iou_3_clicks": float(np.mean([r["ious"][-1] for r in records])),
        "median_click_s": float(np.median(all_s)),
        "median_first_click_s": float(np.median(first_s)),
        "median_later_click_s": float(np.median(later_s)) if later_s else None,
    }
    for key in ("set_image_s", "peak_rss_mb", "read_pct_max", "generated_pct_max"):
        vals = [r[key] for r in records if r.get(key) is not None]
        if vals:
            out[key if key.endswith("max") else key + "_median"] = float(
                np.max(vals) if key.endswith("max") else np.median(vals))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sides", default=",".join(map(str, SIDES)))
    ap.add_argument("--whole-up-to", type=int, default=8192,
                    help="run the whole-image arm ('before') only up to this side")
    ap.add_argument("--objects", type=int, default=12, help="how many objects (spread over the 34)")
    ap.add_argument("--whole-objects", type=int, default=None,
                    help="objects for the whole-image arm above 4096 px (default: all)")
    ap.add_argument("--context", type=float, default=-1.0,
                    help="own photo pasted around the object, x its side (negative: the whole photo)")
    ap.add_argument("--frame", type=int, default=256)
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--lazy-from", type=int, default=20000, help="sides from this on are dask arrays")
    ap.add_argument("--out", default="benchmarks/results/big_images/default.json")
    args = ap.parse_args(argv)

    import torch

    from napari_ois import load_predictor
    from napari_ois.data.clicks import first_click
    from napari_ois.predictor import WindowSearch

    objs, pool = load_objects()
    every = max(1, len(objs) // max(1, args.objects))
    objs = objs[::every][:args.objects]
    sides = [int(s) for s in args.sides.split(",") if s]
    pred = load_predictor(args.model, device="cpu")
    print(f"{len(objs)} objects ({', '.join(o.name for o in objs)}); torch threads {torch.get_num_threads()}",
          flush=True)
    # warm up
    pred.set_image(objs[0].image)
    pred.predict([[10, 10]], [1])

    results = {"own_photo": [], "arms": {}}
    clicks_of = {}
    for i, obj in enumerate(objs):
        c = first_click(obj.gt, obj.ignore)
        clicks_of[i] = (c.row, c.col)
        rec = own_photo(pred, obj, clicks_of[i], args.clicks)
        rec["name"] = obj.name
        results["own_photo"].append(rec)
    print("own photo:", json.dumps(summarise(results["own_photo"])), flush=True)

    for side in sides:
        lazy = side >= args.lazy_from
        arms = ["windows"] + (["whole"] if side <= args.whole_up_to and not lazy else [])
        if side <= WindowSearch().threshold:
            arms.append("windows_forced")
        for arm in arms:
            recs = []
            for i, obj in enumerate(objs):
                if arm == "whole" and side > 4096 and args.whole_objects is not None and i >= args.whole_objects:
                    continue
                rng = np.random.default_rng(1000 + i)
                r0, r1, c0, c1 = bbox(obj.gt)
                obj_side = max(r1 - r0, c1 - c0)
                h, w = obj.gt.shape
                m = max(h, w) if args.context < 0 else int(round(args.context * obj_side))
                p0, p1, q0, q1 = max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)
                patch = as_rgb8(obj.image)[p0:p1, q0:q1]
                ph, pw = patch.shape[:2]
                margin = min(side // 10, 400)
                pr = int(rng.integers(margin, side - ph - margin)) if side - ph - 2 * margin > 0 else 0
                pc = int(rng.integers(margin, side - pw - margin)) if side - pw - 2 * margin > 0 else 0
                canvas = Canvas(side, pool, seed=i)
                canvas.paste(patch, pr, pc)
                image = canvas.dask() if lazy else canvas.numpy()
                f0, f1 = max(0, pr - args.frame), min(side, pr + ph + args.frame)
                g0, g1 = max(0, pc - args.frame), min(side, pc + pw + args.frame)
                gt_frame = np.zeros((f1 - f0, g1 - g0), bool)
                gt_frame[pr - f0:pr - f0 + ph, pc - g0:pc - g0 + pw] = obj.gt[p0:p1, q0:q1]
                click = (clicks_of[i][0] - p0 + pr, clicks_of[i][1] - q0 + pc)
                canvas.generated = 0
                with PeakRSS() as peak:
                    t0 = time.perf_counter()
                    if arm == "whole":
                        st = pred.set_image(image, windows=False)
                    elif arm == "windows_forced":
                        st = pred.set_image(image, windows=True)
                    else:
                        st = pred.set_image(image)
                    set_s = time.perf_counter() - t0
                    reader = getattr(st, "reader", None)
                    reads, generated = [], []
                    if lazy:  # per click: what the reader read and what dask generated
                        orig = pred.predict

                        def counted(*a, **k):
                            reader.pixels_read = 0
                            canvas.generated = 0
                            out = orig(*a, **k)
                            reads.append(reader.pixels_read / side ** 2 * 100)
                            generated.append(canvas.generated / side ** 2 * 100)
                            return out

                        pred.predict = counted
                    try:
                        rec = run_protocol(pred, click, gt_frame, (f0, f1, g0, g1), args.clicks)
                    finally:
                        if lazy:
                            del pred.predict
                rec.update(name=obj.name, side=side, arm=arm, set_image_s=set_s, peak_rss_mb=peak.grown_mb,
                           object_px=int(obj_side), windowed=bool(getattr(st, "windowed", False)))
                if lazy:
                    rec.update(read_pct=reads, generated_pct=generated, read_pct_max=max(reads),
                               generated_pct_max=max(generated))
                recs.append(rec)
                del image, canvas, st
                pred.reset_image()
            results["arms"][f"{side}/{arm}"] = {"summary": summarise(recs), "objects": recs}
            print(f"{side:>6} {arm:<15}", json.dumps(summarise(recs)), flush=True)

    own = summarise(results["own_photo"])
    table = [("own photo", "-", own)]
    for key, val in results["arms"].items():
        side, arm = key.split("/")
        table.append((side, arm, val["summary"]))
    print()
    print(f"{'side':>9} {'arm':<15} {'1st IoU':>8} {'best-of-K':>9} {'IoU@3':>6} {'click ms':>9} "
          f"{'1st ms':>7} {'later ms':>8} {'set s':>6} {'+RSS MB':>8} {'read %':>7}")
    for side, arm, s in table:
        if not s:
            continue
        later = s.get("median_later_click_s")
        print(f"{side:>9} {arm:<15} {s['first_click_iou']:8.3f} {s['first_click_best_iou']:9.3f} "
              f"{s['iou_3_clicks']:6.3f} {s['median_click_s'] * 1000:9.0f} {s['median_first_click_s'] * 1000:7.0f} "
              f"{(later or 0) * 1000:8.0f} {s.get('set_image_s_median', 0):6.2f} "
              f"{s.get('peak_rss_mb_median', 0):8.0f} {s.get('generated_pct_max', float('nan')):7.3f}")
    results["meta"] = {
        "model": args.model, "objects": [o.name for o in objs], "sides": sides, "clicks": args.clicks,
        "context": args.context, "frame": args.frame, "whole_up_to": args.whole_up_to,
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(), "python": sys.version.split()[0], "window_search": vars(WindowSearch()),
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

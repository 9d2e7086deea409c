"""Zoom-in crop floor study: does cropping tighter around small objects save clicks?

    NAPARI_OIS_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/zoom_floor.py \
        checkpoints/cef12.safetensors benchmarks/results/zoom_floor/cef12.json [--floors 64 32 48]

Evaluates the model with the papers' protocol (20 clicks) on every dev-set object under
``--max-side`` px across (the side of a square of its area), once per ``ZoomIn.min_crop``
floor, and writes each object's IoU per click and NoC per floor. ZoomIn's crop is the mask's
box grown 1.4x but at least ``min_crop`` px a side, so the floor decides how far small objects
are magnified. Prints NoC@85/90 per floor and per size band. docs/benchmarks.md, "Zoom-in crop
floor for small objects", has the figures.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compare import SETS  # sibling scripts of benchmarks/ (run from there, as contention.py does)
from size_breakdown import by_size, object_side

from napari_ois.data.datasets import load_dataset
from napari_ois.evaluation.baselines import get_model
from napari_ois.evaluation.runner import evaluate
from napari_ois.predictor import ZoomIn

BANDS = (0, 10, 20, 40, 80)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out", help="JSON to write")
    ap.add_argument("--floors", type=int, nargs="+", default=[64, 32, 48])
    ap.add_argument("--max-side", type=float, default=80)
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    args = ap.parse_args(argv)
    samples = [(s, smp) for s in args.sets for smp in load_dataset(s)
               if object_side({"object_pixels": int(smp.gt.sum())}) < args.max_side]
    where = {smp.name: s for s, smp in samples}
    print(f"{len(samples)} objects under {args.max_side:g} px across", flush=True)
    predictor = get_model(args.model, device="cpu")
    results = {}
    for floor in args.floors:
        predictor.zoom_in = ZoomIn(min_crop=floor)
        t = time.perf_counter()
        r = evaluate(predictor, [smp for _, smp in samples], progress=False,
                     model_name=f"min_crop={floor}")
        objs = [{"set": where[o["name"]], "name": o["name"], "object_pixels": o["object_pixels"],
                 "ious": o["ious"], "NoC@85": o["NoC@85"], "NoC@90": o["NoC@90"]}
                for o in r["objects"]]
        results[str(floor)] = objs
        bands = [f"{b['lo']}-{b['hi']} px: {b['noc']:.2f}" for b in by_size(objs, 85, BANDS)]
        per_set = {s: sum(o["NoC@85"] for o in objs if o["set"] == s) for s in args.sets}
        print(f"min_crop {floor}: NoC@85 {r['summary']['NoC@85']:.3f}, NoC@90 "
              f"{r['summary']['NoC@90']:.3f} ({time.perf_counter() - t:.0f} s); by side "
              f"{'; '.join(bands)}; clicks to 85 % by set {per_set}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "max_side": args.max_side,
                                          "floors": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

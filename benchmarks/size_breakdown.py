"""Clicks to a threshold by object size, from `napari-ois eval --json` results.

    python benchmarks/size_breakdown.py RESULT.json [...] [--threshold 85] [--small 20]

An object's size is the side of a square of its area (sqrt of its pixels at full resolution).
Prints, per size band, the objects, their mean NoC and the share that never reach the
threshold, then each file's NoC with and without the objects under ``--small`` pixels, and the
share of all clicks those take. docs/benchmarks.md, "A twelfth warm restart", has the figures.
"""
from __future__ import annotations

import argparse
import json
import math

from napari_ois.evaluation.metrics import reached

BANDS = (0, 10, 20, 40, 80, 160, math.inf)


def object_side(obj: dict) -> float:
    return math.sqrt(obj["object_pixels"])


def by_size(objects: list[dict], threshold: int = 85, bands=BANDS) -> list[dict]:
    """Per band [lo, hi) of object side: count, mean NoC@threshold, share never reaching it."""
    key = f"NoC@{threshold}"
    rows = []
    for lo, hi in zip(bands[:-1], bands[1:]):
        inside = [o for o in objects if lo <= object_side(o) < hi]
        if not inside:
            continue
        never = [o for o in inside if not reached(o["ious"], threshold / 100, len(o["ious"]))]
        rows.append({"lo": lo, "hi": hi, "objects": len(inside),
                     "noc": sum(o[key] for o in inside) / len(inside),
                     "never": len(never) / len(inside)})
    return rows


def without_small(objects: list[dict], threshold: int = 85, small: float = 20) -> dict:
    """NoC over all objects and over those at least ``small`` px across, and the small ones' clicks."""
    key = f"NoC@{threshold}"
    rest = [o for o in objects if object_side(o) >= small]
    clicks = sum(o[key] for o in objects)
    rest_clicks = sum(o[key] for o in rest)
    return {"objects": len(objects), "small": len(objects) - len(rest),
            "noc": clicks / len(objects), "noc_without_small": rest_clicks / max(len(rest), 1),
            "clicks": clicks, "small_clicks": clicks - rest_clicks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--threshold", type=int, default=85, choices=(85, 90, 95))
    parser.add_argument("--small", type=float, default=20)
    args = parser.parse_args(argv)
    everything, total, small_total = [], 0, 0
    print(f"| file | objects | under {args.small:g} px | NoC@{args.threshold} | without them |")
    print("|---|---|---|---|---|")
    for path in args.results:
        objects = json.load(open(path))["objects"]
        everything += objects
        s = without_small(objects, args.threshold, args.small)
        total += s["clicks"]; small_total += s["small_clicks"]
        print(f"| {path} | {s['objects']} | {s['small']} | {s['noc']:.2f} | {s['noc_without_small']:.2f} |")
    print(f"\nobjects under {args.small:g} px take {small_total} of {total} clicks "
          f"({small_total / max(total, 1):.1%})\n")
    print(f"| object side (px) | objects | NoC@{args.threshold} | never reach it |")
    print("|---|---|---|---|")
    for r in by_size(everything, args.threshold):
        print(f"| {r['lo']:g}-{r['hi']:g} | {r['objects']} | {r['noc']:.2f} | {r['never']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One table per metric: models (result folders) x dev sets, from `napari-ois eval --json` files.

    python benchmarks/compare.py default=benchmarks/results geodesic=benchmarks/results \
        ef=runs/res/ef --tags default geodesic model [--markdown]

Each ``NAME=FOLDER`` reads ``FOLDER/<tag>_<set>.json`` (the files `benchmarks/quality.sh`
writes, tag = the model argument's file stem); ``--tags`` gives the tag per NAME (default:
NAME). Prints NoC@85, NoC@90, 5-mIoU, first-click top-scored vs best-of-K mIoU, and (box-first
results, ``quality.sh MODEL N OUT box``) the mIoU after the box, and the first-click misses:
the objects whose best proposal beats the top-scored one by more than 5 points (in
parentheses: of those, how many the top-scored proposal was the larger mask; from evaluations
that record the proposals' sizes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = ["GrabCut", "COCO_MVal_dev", "Kvasir_dev", "PH2_dev", "HC18_dev", "ISBI_EM_dev", "BraTS_dev"]


def load(folder: Path, tag: str) -> dict:
    out = {}
    for s in SETS:
        f = folder / f"{tag}_{s}.json"
        if f.is_file():
            res = json.loads(f.read_text())
            out[s] = dict(res["summary"], first_click_misses=first_click_misses(res["objects"]))
    return out


def first_click_misses(objects: list, margin: float = 0.05):
    """'M of N' objects whose best proposal beats the top-scored by > ``margin`` (and, where
    the proposals' pixel counts are recorded, ' (L larger)': misses where the top-scored
    proposal is the larger mask)."""
    firsts = [o["first_click"] for o in objects if o.get("first_click", {}).get("ious")]
    if not firsts:
        return None
    miss = [f for f in firsts if f["best_iou"] - f["top_iou"] > margin]
    text = f"{len(miss)} of {len(firsts)}"
    if all("pixels" in f for f in miss):
        larger = sum(f["pixels"][f["top_index"]] > f["pixels"][f["ious"].index(f["best_iou"])]
                     for f in miss)
        text += f" ({larger} larger)"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="NAME=FOLDER")
    ap.add_argument("--tags", nargs="*", default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    names, data = [], {}
    for i, spec in enumerate(args.models):
        name, folder = spec.split("=", 1)
        tag = args.tags[i] if args.tags else name
        names.append(name)
        data[name] = load(Path(folder), tag)
    metrics = [("NoC@85", "{:.2f}"), ("NoC@90", "{:.2f}"), ("5-mIoU", "{:.1%}"),
               ("first_click_top_mIoU", "{:.1%}"), ("first_click_best_of_k_mIoU", "{:.1%}"),
               ("first_box_mIoU", "{:.1%}"), ("first_click_misses", "{}")]
    for m, fmt in metrics:
        rows = [["model"] + [s.replace("_dev", "") for s in SETS]]
        for n in names:
            rows.append([n] + [fmt.format(data[n][s][m]) if s in data[n] and data[n][s].get(m) is not None
                               else "-" for s in SETS])
        print(f"\n{m}")
        if args.markdown:
            print("| " + " | ".join(rows[0]) + " |")
            print("|" + "---|" * len(rows[0]))
            for r in rows[1:]:
                print("| " + " | ".join(r) + " |")
        else:
            for r in rows:
                print("  ".join(f"{c:>10}" for c in r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

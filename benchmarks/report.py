"""Tables and curves for docs/benchmarks.md from the JSON files of ``napari-ois eval``.

    python benchmarks/report.py [--results benchmarks/results] [--images docs/images]

Prints one markdown table per dataset (every model that has a result for it) and writes the
mIoU-vs-clicks curves as ``<images>/curves_<dataset>.png``.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

from napari_ois.evaluation.plot import plot_curves

ORDER = ["GrabCut", "COCO_MVal_dev", "Kvasir_dev", "PH2_dev", "HC18_dev", "ISBI_EM_dev",
         "BraTS_dev"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--images", default="docs/images")
    args = p.parse_args()
    by_set = defaultdict(list)
    for f in sorted(Path(args.results).glob("*.json")):
        r = json.loads(f.read_text())
        if isinstance(r, dict) and "summary" in r:
            by_set[str(r["dataset"])].append(r)
    Path(args.images).mkdir(parents=True, exist_ok=True)
    for ds in sorted(by_set, key=lambda d: (ORDER.index(d) if d in ORDER else 99, d)):
        rows = by_set[ds]
        print(f"\n**{ds}**\n")
        print("| model | objects | NoC@85 | NoC@90 | NoC@95 | NoF@90 | NoF@95 | 1-mIoU | 5-mIoU | SPC median (s) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            s, t = r["summary"], r.get("timing", {})
            print(f"| {Path(str(r['model'])).stem} | {s['num_objects']} | {s['NoC@85']:.2f} | "
                  f"{s['NoC@90']:.2f} | {s['NoC@95']:.2f} | {s['NoF@90']} | {s['NoF@95']} | "
                  f"{100 * s['1-mIoU']:.1f} | {100 * s['5-mIoU']:.1f} | {t['spc_median']:.3f} |")
        out = Path(args.images) / f"curves_{ds.replace(':', '_')}.png"
        plot_curves(rows, out)
        print(f"\n![mIoU vs clicks on {ds}](images/{out.name})")


if __name__ == "__main__":
    main()

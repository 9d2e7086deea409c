"""The ship table: NoC@85/90 and the first-click gap of two models on the whole dev sets, from
benchmarks/results/full_dev/<model>_<set>.json, and the ship rule of issue 36 (summed NoC@85 down,
no set worse by more than 0.3 clicks).

    python benchmarks/ship_table.py                 # cef14 (shipped) against cef15
    python benchmarks/ship_table.py --old cef6 --new cef14
"""
import argparse
import json
import os
from pathlib import Path

R = Path(__file__).resolve().parent / "results" / "full_dev"
SETS = ["GrabCut", "COCO_MVal_dev", "Kvasir_dev", "PH2_dev", "HC18_dev", "ISBI_EM_dev", "BraTS_dev",
        "SABS_CT_dev", "CHAOS_MR_dev", "ACDC_MR_dev", "HE_nuclei_dev"]


def first(d):
    top, best = d["first_click_top_mIoU"], d["first_click_best_of_k_mIoU"]
    scale = 100 if top <= 1 else 1
    return f"{scale * top:.1f} / {scale * best:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="cef14")
    ap.add_argument("--new", default="cef15")
    args = ap.parse_args(argv)
    old, new = args.old, args.new
    print(f"| set | objects | NoC@85 {old} | NoC@85 {new} | NoC@90 {old} | NoC@90 {new} | "
          f"1st click top/best {old} | 1st click top/best {new} |")
    print("|---|---|---|---|---|---|---|---|")
    tot = {old: 0.0, new: 0.0}
    worse, missing = [], []
    for s in SETS:
        rows = {}
        for m in (old, new):
            f = R / f"{m}_{s}.json"
            if os.path.exists(f):
                rows[m] = json.load(open(f))["summary"]
        if len(rows) < 2:
            missing.append(s)
            print(f"| {s} | missing: {' '.join(m for m in (old, new) if m not in rows)} |")
            continue
        a, b = rows[old], rows[new]
        n = b["num_objects"]
        if a["num_objects"] != n:
            missing.append(s)
            print(f"| {s} | objects differ: {a['num_objects']} against {n} |")
            continue
        tot[old] += a["NoC@85"] * n
        tot[new] += b["NoC@85"] * n
        if b["NoC@85"] - a["NoC@85"] > 0.3:
            worse.append(s)
        print(f"| {s} | {n} | {a['NoC@85']:.2f} | {b['NoC@85']:.2f} | {a['NoC@90']:.2f} | {b['NoC@90']:.2f} "
              f"| {first(a)} | {first(b)} |")
    print(f"summed NoC@85 clicks over the sets both have: {old} {round(tot[old])}, {new} {round(tot[new])}; "
          f"sets worse by > 0.3: {worse or 'none'}; left out: {missing or 'none'}")
    ok = not missing and not worse and tot[new] < tot[old]
    print(f"ship rule ({new} over {old}): {'met' if ok else 'not met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

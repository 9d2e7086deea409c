"""The ship table: NoC@85/90 and the first-click gap of cef6 and cef14 on the whole dev sets, from
benchmarks/results/full_dev/*.json, and the ship rule of issue 36 (summed NoC@85 down, no set worse by
more than 0.3 clicks). Run: python benchmarks/ship_table.py"""
import json, os
R = str(__import__("pathlib").Path(__file__).resolve().parent / "results" / "full_dev")
sets = ["GrabCut", "COCO_MVal_dev", "Kvasir_dev", "PH2_dev", "HC18_dev", "ISBI_EM_dev", "BraTS_dev",
        "SABS_CT_dev", "CHAOS_MR_dev", "ACDC_MR_dev", "HE_nuclei_dev"]
rows = {}
for m in ("cef6", "cef13", "cef14"):
    for s in sets:
        f = f"{R}/{m}_{s}.json"
        if os.path.exists(f):
            d = json.load(open(f))["summary"]
            rows[(m, s)] = d
print("| set | objects | NoC@85 cef6 | NoC@85 cef14 | NoC@90 cef6 | NoC@90 cef14 | 1st click top/best cef6 | 1st click top/best cef14 |")
print("|---|---|---|---|---|---|---|---|")
tot = {"cef6": 0, "cef14": 0}; worse = []
for s in sets:
    a, b = rows.get(("cef6", s)), rows.get(("cef14", s))
    if not a or not b:
        print(f"| {s} | missing {'cef6' if not a else ''} {'cef14' if not b else ''} |"); continue
    n = b["num_objects"]
    tot["cef6"] += a["NoC@85"] * n; tot["cef14"] += b["NoC@85"] * n
    if b["NoC@85"] - a["NoC@85"] > 0.3: worse.append(s)
    f = lambda d: f"{100*d['first_click_top_mIoU']:.1f} / {100*d['first_click_best_of_k_mIoU']:.1f}" if d['first_click_top_mIoU'] <= 1 else f"{d['first_click_top_mIoU']:.1f} / {d['first_click_best_of_k_mIoU']:.1f}"
    print(f"| {s} | {n} | {a['NoC@85']:.2f} | {b['NoC@85']:.2f} | {a['NoC@90']:.2f} | {b['NoC@90']:.2f} | {f(a)} | {f(b)} |")
print("summed NoC85 clicks:", {k: round(v) for k, v in tot.items()}, "sets worse by > 0.3:", worse)

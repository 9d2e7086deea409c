"""First-click proposals: how ranking rules compare with the best of K (docs/benchmarks.md).

    OMP_NUM_THREADS=1 python benchmarks/first_click_rules.py default runs/first_click_rules.json

For the first 30 objects of each dev set: the first click's K proposals (logits, quality
scores, IoU with the object, share of the image), SAM's stability score per proposal, and
the refined mask (token 0); prints the mean IoU of the top-scored, the best of K, the most
stable, score x stability, token 0 and "the smallest proposal scored within alpha of the
top", and writes the per-object rows as JSON.
"""
import json, sys
import numpy as np
from napari_ois.data.datasets import load_dataset
from napari_ois.predictor import load_predictor
from napari_ois.evaluation.metrics import iou
from napari_ois.data.clicks import Clicker, binarize

model, out = sys.argv[1], sys.argv[2]
pred = load_predictor(model, device="cpu")
res = {}
for set_ in ["GrabCut", "COCO_MVal_dev", "Kvasir_dev", "PH2_dev", "HC18_dev", "ISBI_EM_dev", "BraTS_dev"]:
    ds = load_dataset(set_); rows = []; prev = None
    for n, s in enumerate(ds):
        if n >= 30: break
        gt = np.asarray(s.gt, bool); ign = np.zeros_like(gt) if s.ignore is None else np.asarray(s.ignore, bool)
        key = getattr(s, "image_key", None)
        if key is None or key != prev:
            pred.set_image(s.image); prev = key
        c = Clicker(gt, ign); c.make_next_click(None)
        P = pred.predict(points=c.points, labels=c.labels, multimask=True)
        T = pred.predict(points=c.points, labels=c.labels, multimask=False)
        L = P.logits
        stab = [(l > 1).sum() / max((l > -1).sum(), 1) for l in L]
        rows.append({"scores": P.scores.tolist(), "ious": [iou(binarize(l), gt, ign) for l in L],
                     "stab": [float(x) for x in stab], "area": [float((l > 0).mean()) for l in L],
                     "tok0_iou": iou(binarize(T.logits[0]), gt, ign), "tok0_score": float(T.scores[0])})
    res[set_] = rows
    S = np.array([r["scores"] for r in rows]); I = np.array([r["ious"] for r in rows]); St = np.array([r["stab"] for r in rows])
    ix = np.arange(len(I))
    print(set_.ljust(14), "top %.3f best %.3f stab %.3f score*stab %.3f tok0 %.3f" % (
        I[ix, S.argmax(1)].mean(), I.max(1).mean(), I[ix, St.argmax(1)].mean(), I[ix, (S * St).argmax(1)].mean(),
        np.mean([r["tok0_iou"] for r in rows])), flush=True)
json.dump(res, open(out, "w"))


def smallest_within(row, alpha):
    """The smallest proposal whose score is at least ``alpha`` times the top score."""
    s, a = np.array(row["scores"]), np.array(row["area"])
    idx = np.flatnonzero(s >= alpha * s.max())
    return int(idx[a[idx].argmin()])


print("smallest proposal scored within alpha of the top:")
for alpha in (0.9, 0.8, 0.7, 0.6, 0.5):
    print(f"  alpha {alpha}: " + "  ".join(
        f"{name} {np.mean([r['ious'][smallest_within(r, alpha)] for r in rows]):.3f}"
        for name, rows in res.items()))

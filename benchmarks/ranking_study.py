"""First-click ranking: fit the quality head offline on cached features, with other losses.

The quality head ranks the K first-click proposals; trained with a mean-squared error on
each proposal's IoU it learned which *token* is usually best, not which is best on the
image at hand (docs/benchmarks.md, "First-click ranking"). This study separates the two
halves of that problem at almost no CPU cost:

1. ``extract``: draw training samples (the training data, never ``eval/``), run the frozen
   model once on a first click, and keep per proposal the mask-aware head's input
   (``ois.MaskQuality.features``: the pooled features inside, on the boundary of and just
   outside the mask, its area and confidence, the quality and mask tokens), the token
   head's score and the proposal's IoU with the clicked object (full resolution).
2. ``fit``: fit the mask-aware head's MLP on part of those samples, with the mean-squared
   error the training loop uses, a listwise ranking loss (cross-entropy over the K
   proposals against a softmax of their IoUs), or both, and report on the held-back
   samples the mean IoU of the top-scored proposal against the best of K.
3. ``apply``: write a model file with the fitted head (``mask_quality: true``), to be
   evaluated with ``napari-ois eval --max-clicks 1`` on the dev sets.

    NAPARI_OIS_DATA=../shared/data python benchmarks/ranking_study.py extract \\
        --model default --samples 4000 --out runs/rank/default.pt
    python benchmarks/ranking_study.py fit --cache runs/rank/default.pt --json runs/rank/fit.json
    python benchmarks/ranking_study.py apply --cache runs/rank/default.pt --model default \\
        --loss both --out runs/rank/default_ranked.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_ois.data.clicks import padded_distance
from napari_ois.model.ois import MLP, OISModel
from napari_ois.registry import build_model, save_model
from napari_ois.training.loop import TrainConfig, make_builder, sample_first_click, warm_start
from napari_ois.training.losses import soft_iou

LOSSES = ("mse", "rank", "both")


def _with_mask_quality(name_or_path):
    """The model's weights in one that has the mask-aware head (its MLP at zero)."""
    model = build_model(name_or_path)
    if model.mask_quality is not None:
        return model
    new = OISModel(model.cfg.replace(mask_quality=True))
    left = warm_start(new, name_or_path)
    assert all(k.startswith("mask_quality.") for k in left), left
    return new


def click_centrality(masks: np.ndarray, click: tuple[float, float]) -> np.ndarray:
    """Per mask (K, H, W bool), how central the click lies in it: the distance from the click
    to the mask's edge over the largest such distance inside the mask (1 at its innermost
    point, 0 on or outside it). Users, and the protocol, click near the middle of what they mean."""
    r = min(int(click[0]), masks.shape[1] - 1)
    c = min(int(click[1]), masks.shape[2] - 1)
    out = np.zeros(len(masks), dtype=np.float32)
    for k, m in enumerate(masks):
        dt = padded_distance(m)
        if dt.max() > 0:
            out[k] = dt[r, c] / dt.max()
    return out


@torch.no_grad()
def extract(args) -> None:
    torch.set_num_threads(args.threads)
    model = _with_mask_quality(args.model).eval()
    mq = model.mask_quality
    captured = {}
    hook = mq.register_forward_hook(lambda m, inp, out: captured.update(x=m.features(*inp)))
    tc = TrainConfig(data_root=os.environ.get("NAPARI_OIS_DATA", "../shared/data"),
                     scene_ratio=args.scene_ratio, min_object_frac=0.001, p_zoom_crop=0.0,
                     cache="bytes")
    s = model.cfg.img_size
    builder = make_builder(tc, s, model.cfg.num_proposals)
    feats, scores, ious, sets, refined, agree, central = [], [], [], [], [], [], []
    t0 = time.time()
    for i in range(0, args.samples, args.batch):
        rng = np.random.default_rng([args.seed, i])
        batch = builder.make_batch(rng, min(args.batch, args.samples - i), s)
        image = torch.from_numpy(batch["image"])
        has = torch.from_numpy(batch["has_depth"])
        depth = torch.from_numpy(batch["depth"]) * has.view(-1, 1, 1, 1).float()
        target = batch["target"]
        valid = batch["valid"] & ~batch["ignore"]
        clicks = [[sample_first_click(target[j], valid[j], rng)] for j in range(len(target))]
        emb = model.encode(image, depth if bool(has.any()) else None)
        logits, iou = model.decode(emb, torch.tensor(clicks, dtype=torch.float32),
                                   torch.ones(len(target), 1, dtype=torch.long))
        full = F.interpolate(logits.float(), size=(s, s), mode="bilinear", align_corners=False)
        all_iou = soft_iou(full, torch.from_numpy(target)[:, None], torch.from_numpy(valid)[:, None])
        ious.append(all_iou[:, 1:])
        refined.append(all_iou[:, 0])
        # each proposal's agreement (IoU) with the refined mask (token 0)
        agree.append(soft_iou(full[:, 1:], full[:, :1] > 0, torch.ones_like(full[:, :1], dtype=torch.bool)))
        props = (full[:, 1:] > 0).numpy()
        central.append(torch.from_numpy(np.stack(
            [click_centrality(props[j], clicks[j][0]) for j in range(len(target))])))
        feats.append(captured["x"][:, 1:].half())
        scores.append(iou[:, 1:].float())
        sets += list(batch["source"])
        if (i // args.batch) % 25 == 0:
            print(f"{i + len(target)} samples, {time.time() - t0:.0f} s, "
                  f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB", flush=True)
    hook.remove()
    out = {"features": torch.cat(feats), "token_scores": torch.cat(scores),
           "ious": torch.cat(ious), "sets": sets,
           "refined_iou": torch.cat(refined), "agreement": torch.cat(agree),
           "centrality": torch.cat(central), "model": str(args.model),
           "seconds": time.time() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, args.out)
    print(f"wrote {args.out}: {len(sets)} samples in {out['seconds']:.0f} s")


def _loss(pred, iou, kind: str, tau: float) -> torch.Tensor:
    mse = F.mse_loss(pred, iou)
    if kind == "mse":
        return mse
    rank = -(torch.softmax(iou / tau, -1) * torch.log_softmax(pred / tau, -1)).sum(-1).mean()
    return rank if kind == "rank" else mse + 0.1 * rank


def fit_head(x, base, iou, kind: str, *, epochs: int = 60, lr: float = 1e-3, tau: float = 0.05,
             seed: int = 0, hidden: int = 128) -> MLP:
    """The mask-aware head's MLP fitted so that ``base + mlp(x)`` rates each proposal."""
    torch.manual_seed(seed)
    mlp = MLP(x.shape[-1], hidden, 1, 3)
    torch.nn.init.zeros_(mlp.layers[-1].weight)
    torch.nn.init.zeros_(mlp.layers[-1].bias)
    opt = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=1e-4)
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        for j in range(0, n, 64):
            idx = perm[j:j + 64]
            pred = base[idx] + mlp(x[idx])[..., 0]
            loss = _loss(pred, iou[idx], kind, tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mlp


def ranking_figures(score, iou, sets) -> dict:
    top = iou.gather(1, score.argmax(1, keepdim=True))[:, 0]
    best = iou.max(1).values
    out = {"all": {"n": len(sets), "top": float(top.mean()), "best": float(best.mean())}}
    for name in sorted(set(sets)):
        m = torch.tensor([s == name for s in sets])
        out[name] = {"n": int(m.sum()), "top": float(top[m].mean()), "best": float(best[m].mean())}
    return out


def _split(cache, holdout: float):
    n = cache["ious"].shape[0]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    k = int(n * holdout)
    return perm[k:], perm[:k]


def fit(args) -> None:
    torch.set_num_threads(args.threads)
    c = torch.load(args.cache)
    x, base, iou, sets = c["features"].float(), c["token_scores"], c["ious"], c["sets"]
    tr, te = _split(c, args.holdout)
    sets_te = [sets[i] for i in te]
    results = {"token head": ranking_figures(base[te], iou[te], sets_te)}
    for kind in args.losses:
        t0 = time.time()
        mlp = fit_head(x[tr], base[tr], iou[tr], kind, epochs=args.epochs, tau=args.tau)
        with torch.no_grad():
            score = base[te] + mlp(x[te])[..., 0]
        results[kind] = ranking_figures(score, iou[te], sets_te)
        results[kind]["fit_seconds"] = time.time() - t0
    if "centrality" in c:  # the geometric cue: how central the click lies in each proposal
        cen = c["centrality"].float()
        for w in args.centrality_weights:
            results[f"token + {w:g} x centrality"] = ranking_figures(base[te] + w * cen[te], iou[te], sets_te)
        xc = torch.cat([x, cen[..., None]], -1)
        mlp = fit_head(xc[tr], base[tr], iou[tr], "mse", epochs=args.epochs, tau=args.tau)
        with torch.no_grad():
            score = base[te] + mlp(xc[te])[..., 0]
        results["mse, with centrality"] = ranking_figures(score, iou[te], sets_te)
    for name, r in results.items():
        print(f"{name:>10}: " + ", ".join(
            f"{k} {100 * v['top']:.1f}/{100 * v['best']:.1f}" for k, v in r.items() if isinstance(v, dict)))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cache": str(args.cache), "holdout": args.holdout,
                                               "epochs": args.epochs, "tau": args.tau,
                                               "results": results}, indent=1))


def apply(args) -> None:
    torch.set_num_threads(args.threads)
    c = torch.load(args.cache)
    model = _with_mask_quality(args.model).eval()
    mlp = fit_head(c["features"].float(), c["token_scores"], c["ious"], args.loss,
                   epochs=args.epochs, tau=args.tau)
    model.mask_quality.mlp.load_state_dict(mlp.state_dict())
    notes = {"summary": f"{args.model} with a mask-aware quality head fitted offline "
                        f"(benchmarks/ranking_study.py, loss {args.loss}, "
                        f"{c['ious'].shape[0]} training samples)"}
    save_model(model, args.out, notes=notes, half=args.half)
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--model", default="default")
    e.add_argument("--samples", type=int, default=4000)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--scene-ratio", type=float, default=0.0)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--out", required=True)
    for q in (sub.add_parser("fit"), sub.add_parser("apply")):
        q.add_argument("--cache", required=True)
        q.add_argument("--epochs", type=int, default=60)
        q.add_argument("--tau", type=float, default=0.05)
    sub.choices["fit"].add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    sub.choices["fit"].add_argument("--holdout", type=float, default=0.25)
    sub.choices["fit"].add_argument("--json")
    sub.choices["fit"].add_argument("--centrality-weights", type=float, nargs="*",
                                    default=[0.05, 0.1, 0.2, 0.4])
    a = sub.choices["apply"]
    a.add_argument("--model", default="default")
    a.add_argument("--loss", choices=LOSSES, default="both")
    a.add_argument("--out", required=True)
    a.add_argument("--half", action="store_true")
    for q in sub.choices.values():
        q.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    {"extract": extract, "fit": fit, "apply": apply}[args.cmd](args)


if __name__ == "__main__":
    main()

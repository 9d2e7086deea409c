"""Training from a pack with everything on one device: the GPU path (CPU works too).

Where :mod:`.loop` builds each sample in numpy (scenes, augmentation, exact distance
transforms), this pipeline keeps the whole pack on the device and makes each batch there:

- objects drawn by set weight (synthetic scenes with depth get ``scene_ratio``);
- geometry by one affine grid per sample (``grid_sample``): a crop around the object, from
  "the whole image" to about 3.5 x the object (a share ``p_zoom_crop`` laid out as zoom-in
  inference crops, 1.2-1.8 x the object), with flips; labels resampled nearest, so the
  targets stay exact; pixels outside the image are marked invalid;
- colour (brightness, contrast, saturation, gamma, grey, inversion) as tensor ops;
- first-click proposal targets (object, + touching objects, + their touching objects) from
  3 x 3 dilations of the label map;
- clicks from a chamfer distance computed by repeated 3 x 3 erosion (exact up to the cap
  ``dist_cap``, which is far beyond what the click rule needs to tell centres from edges):
  the first inside the object, DT-weighted; each next at the centre of the larger error;
- the losses of :func:`.loop.step_losses`; bf16 autocast on CUDA.

The learning rate follows a cosine over the time budget (``--minutes``), so a run fits its
lease whatever the throughput; resuming is a warm restart from ``model.safetensors``
(``--init-from``), not an exact continuation.

    napari-ois train-pack --pack runs/pack.npz --config configs/gpu-ois-tiny-ef.yaml \
        --out runs/gpu --minutes 9 --device cuda
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .pack import Pack, add_train_pack_arguments


# --------------------------------------------------------------------------- pack on device
class DevicePack:
    """A :class:`Pack` as tensors on ``device``, with its object table for sampling."""

    def __init__(self, pack: Pack, device, scene_ratio: float = 0.35, min_object_px: int = 16):
        self.device = torch.device(device)
        self.side = pack.labels.shape[-1]
        self.images = torch.from_numpy(pack.images).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = torch.from_numpy(pack.labels).to(self.device)
        self.depth = torch.from_numpy(pack.depth).to(self.device)
        self.has_depth = torch.from_numpy(pack.has_depth).to(self.device)
        self.shape = torch.from_numpy(pack.shape).to(self.device)
        p_item = pack.item_weights(scene_ratio)
        items, ids, boxes, probs = [], [], [], []
        for j in range(len(pack)):
            lab = pack.labels[j]
            vals, counts = np.unique(lab[lab > 0], return_counts=True)
            keep = vals[counts >= min_object_px]
            for v in keep:
                rows, cols = np.nonzero(lab == v)
                items.append(j)
                ids.append(int(v))
                boxes.append((rows.min(), rows.max() + 1, cols.min(), cols.max() + 1))
                probs.append(p_item[j] / len(keep))
        if not items:
            raise ValueError("the pack has no object of at least "
                             f"{min_object_px} px")
        self.obj_item = torch.tensor(items, device=self.device)
        self.obj_id = torch.tensor(ids, device=self.device)
        self.obj_box = torch.tensor(np.array(boxes, np.float32), device=self.device)
        p = torch.tensor(probs, dtype=torch.float64)
        self.obj_p = (p / p.sum()).float().to(self.device)

    @property
    def num_objects(self) -> int:
        return len(self.obj_id)


@dataclasses.dataclass
class TensorAugment:
    p_fit: float = 0.3  # the whole image in view (else a crop around the object)
    context: tuple = (1.3, 3.5)  # crop side / object's longest side
    p_hflip: float = 0.5
    p_vflip: float = 0.15
    brightness: float = 0.25
    contrast: float = 0.3
    saturation: float = 0.4
    gamma: float = 0.3
    p_gray: float = 0.2
    p_invert: float = 0.05
    p_drop_depth: float = 0.3
    min_target_px: int = 12
    # the layout of zoom-in inference (as the CPU loop's AugmentConfig.p_zoom_crop): the crop
    # spans the object's longest side times ``zoom_crop_expansion``, the whole object in view,
    # at least ``zoom_crop_min`` pack pixels; 0 keeps the random draws of the earlier configs
    p_zoom_crop: float = 0.0
    zoom_crop_expansion: tuple = (1.2, 1.8)
    zoom_crop_min: float = 24.0


def _rand(n, gen, device, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def make_batch(dp: DevicePack, batch_size: int, size: int, gen: torch.Generator,
               aug: Optional[TensorAugment] = None, num_proposals: int = 3) -> dict:
    """A training batch on the pack's device (keys as the CPU samples: image (B, 3, S, S) in
    [0, 1], depth (B, 1, S, S), has_depth, target, valid, ignore, proposals)."""
    aug = aug or TensorAugment()
    dev = dp.device
    n = batch_size * 2  # draw spares: a crop can lose its object
    o = torch.multinomial(dp.obj_p, n, replacement=True, generator=gen)
    item, oid, box = dp.obj_item[o], dp.obj_id[o], dp.obj_box[o]
    hw = dp.shape[item].float()
    side = dp.side
    ocy, ocx = (box[:, 0] + box[:, 1]) / 2, (box[:, 2] + box[:, 3]) / 2
    olong = torch.maximum(box[:, 1] - box[:, 0], box[:, 3] - box[:, 2]).clamp(min=4)
    ilong = hw.max(1).values
    fit = _rand(n, gen, dev) < aug.p_fit
    lo, hi = math.log(aug.context[0]), math.log(aug.context[1])
    crop = olong * torch.exp(_rand(n, gen, dev, lo, hi))
    crop = torch.minimum(crop, ilong * 1.15).clamp(min=16.0)
    jit = (_rand(n, gen, dev, -0.25, 0.25), _rand(n, gen, dev, -0.25, 0.25))
    cy = torch.where(fit, hw[:, 0] / 2, ocy + jit[0] * crop)
    cx = torch.where(fit, hw[:, 1] / 2, ocx + jit[1] * crop)
    crop = torch.where(fit, ilong, crop)
    if aug.p_zoom_crop > 0:
        zoom = _rand(n, gen, dev) < aug.p_zoom_crop
        zcrop = (olong * _rand(n, gen, dev, *aug.zoom_crop_expansion)).clamp(min=aug.zoom_crop_min)
        zcrop = torch.minimum(zcrop, ilong)  # never wider than the whole image (as the CPU loop)
        # the centre moves at most as far as keeps the object's box inside the crop
        zy = ocy + _rand(n, gen, dev, -0.5, 0.5) * (zcrop - (box[:, 1] - box[:, 0])).clamp(min=0)
        zx = ocx + _rand(n, gen, dev, -0.5, 0.5) * (zcrop - (box[:, 3] - box[:, 2])).clamp(min=0)
        cy, cx, crop = torch.where(zoom, zy, cy), torch.where(zoom, zx, cx), torch.where(zoom, zcrop, crop)
    fx = torch.where(_rand(n, gen, dev) < aug.p_hflip, -1.0, 1.0)
    fy = torch.where(_rand(n, gen, dev) < aug.p_vflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = fx * crop / side
    theta[:, 0, 2] = 2 * cx / side - 1
    theta[:, 1, 1] = fy * crop / side
    theta[:, 1, 2] = 2 * cy / side - 1
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    lab = F.grid_sample((dp.labels[item] + 2).unsqueeze(1).float(), grid, mode="nearest",
                        padding_mode="zeros", align_corners=False)[:, 0].round().long() - 2
    target = lab == oid[:, None, None]
    area = target.flatten(1).sum(1)
    ok = torch.nonzero(area >= aug.min_target_px).flatten()
    if ok.numel() == 0:  # nothing survived (tiny pack, tiny objects): show whole images
        return make_batch(dp, batch_size, size, gen, dataclasses.replace(aug, p_fit=1.0, min_target_px=1),
                          num_proposals)
    pick = ok[torch.arange(batch_size, device=dev) % ok.numel()]
    item, oid, grid, lab, target = item[pick], oid[pick], grid[pick], lab[pick], target[pick]
    b = batch_size
    img = F.grid_sample(dp.images[item].float() / 255, grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    valid = lab >= -1
    ignore = (lab == -1) | ~valid
    img = _color(img, valid, aug, gen)
    depth = F.grid_sample(dp.depth[item].unsqueeze(1).float() / 255, grid, mode="bilinear",
                          padding_mode="zeros", align_corners=False)
    has_depth = dp.has_depth[item] & (_rand(b, gen, dev) >= aug.p_drop_depth)
    depth = depth * has_depth.view(b, 1, 1, 1)
    props = proposal_masks(lab, oid, num_proposals) & valid[:, None]
    return {"image": img, "depth": depth, "has_depth": has_depth, "target": target & valid,
            "valid": valid, "ignore": ignore, "proposals": props}


def _color(img, valid, aug: TensorAugment, gen):
    b, dev = img.shape[0], img.device
    v = valid[:, None].float()
    gray = (img * img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    sat = _rand(b, gen, dev, 1 - aug.saturation, 1 + aug.saturation).view(b, 1, 1, 1)
    to_gray = (_rand(b, gen, dev) < aug.p_gray).view(b, 1, 1, 1)
    img = torch.where(to_gray, gray.expand_as(img), gray + (img - gray) * sat)
    mean = (img * v).sum((1, 2, 3), keepdim=True) / (3 * v.sum((1, 2, 3), keepdim=True)).clamp(min=1)
    con = _rand(b, gen, dev, 1 - aug.contrast, 1 + aug.contrast).view(b, 1, 1, 1)
    bri = _rand(b, gen, dev, -aug.brightness, aug.brightness).view(b, 1, 1, 1) * 0.5
    img = ((img - mean) * con + mean + bri).clamp(0, 1)
    gam = torch.exp(_rand(b, gen, dev, -aug.gamma, aug.gamma)).view(b, 1, 1, 1)
    img = img.clamp(min=1e-6) ** gam
    inv = (_rand(b, gen, dev) < aug.p_invert).view(b, 1, 1, 1)
    img = torch.where(inv, 1 - img, img)
    return img * v


def proposal_masks(lab: torch.Tensor, oid: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k, S, S)`` nested targets: the object, + the objects touching it, + theirs."""
    cur = lab == oid[:, None, None]
    out = [cur]
    for _ in range(max(0, min(k, 3) - 1)):
        ring = F.max_pool2d(cur[:, None].float(), 3, 1, 1)[:, 0] > 0
        grown = cur.clone()
        for i in range(lab.shape[0]):
            ids = torch.unique(lab[i][ring[i] & ~cur[i]])
            ids = ids[ids > 0]
            if ids.numel():
                grown[i] |= torch.isin(lab[i], ids)
        cur = grown
        out.append(cur)
    while len(out) < k:
        out.append(out[-1])
    return torch.stack(out[:k], 1)


# --------------------------------------------------------------------------- clicks
def chamfer_distance(mask: torch.Tensor, cap: int = 32) -> torch.Tensor:
    """``(B, H, W)`` bool -> chessboard distance to the nearest outside pixel (the image
    border counts as outside), capped at ``cap``: the number of 3 x 3 erosions a pixel survives."""
    x = mask[:, None].float()
    dist = torch.zeros_like(x)
    for _ in range(cap):  # no early exit: it would synchronise a GPU every iteration
        dist += x
        x = -F.max_pool2d(-F.pad(x, (1, 1, 1, 1), value=0.0), 3, 1)
    return dist[:, 0]


def _pick(weights: torch.Tensor, gen) -> torch.Tensor:
    """One flat index per row of ``weights`` (B, P), sampled proportionally (rows > 0)."""
    return torch.multinomial(weights, 1, generator=gen)[:, 0]


def first_clicks(target: torch.Tensor, usable: torch.Tensor, gen, p_center: float = 0.3) -> torch.Tensor:
    """(B, 2) (row, col) pixel centres inside each target: 30 % at the distance maximum,
    else DT-weighted among pixels at least ``u * max`` deep (``u`` in [0, 0.6])."""
    b, h, w = target.shape
    dt = chamfer_distance(target & usable).flatten(1)
    dt = torch.where(dt.max(1, keepdim=True).values > 0, dt, target.flatten(1).float())
    mx = dt.max(1, keepdim=True).values
    u = torch.where(_rand(b, gen, dt.device)[:, None] < p_center, torch.ones_like(mx[:, :1]),
                    _rand(b, gen, dt.device, 0.0, 0.6)[:, None])
    wts = dt * (dt >= u * mx)
    wts = torch.where(wts.sum(1, keepdim=True) > 0, wts, torch.ones_like(wts))
    idx = _pick(wts, gen)
    return torch.stack([idx // w, idx % w], 1).float() + 0.5


def next_clicks(pred, target, usable, gen):
    """(B, 2) clicks and (B,) labels: the centre of the larger error region (jittered among
    pixels at least 0.6-1.0 x the maximum depth); ``None`` rows (no error) get label -1."""
    b, h, w = pred.shape
    fn, fp = target & ~pred & usable, ~target & pred & usable
    dfn, dfp = chamfer_distance(fn).flatten(1), chamfer_distance(fp).flatten(1)
    mfn, mfp = dfn.max(1).values, dfp.max(1).values
    positive = mfn >= mfp
    dt = torch.where(positive[:, None], dfn, dfp)
    mx = torch.maximum(mfn, mfp)[:, None]
    u = _rand(b, gen, dt.device, 0.6, 1.0)[:, None]
    wts = ((dt >= u * mx) & (dt > 0)).float()
    none = wts.sum(1) == 0
    wts[none] = 1.0
    idx = _pick(wts, gen)
    pts = torch.stack([idx // w, idx % w], 1).float() + 0.5
    labels = positive.long()
    labels[none] = -1
    return pts, labels


def target_boxes(target: torch.Tensor, gen, jitter: float) -> torch.Tensor:
    """(B, H, W) bool -> (B, 4) jittered tight boxes in model coordinates (``loop.sample_box``)."""
    b, h, w = target.shape
    rows, cols = target.any(2), target.any(1)
    ar_h = torch.arange(h, device=target.device)
    ar_w = torch.arange(w, device=target.device)
    r0 = torch.where(rows, ar_h, h).min(1).values.float()
    r1 = torch.where(rows, ar_h, -1).max(1).values.float() + 1
    c0 = torch.where(cols, ar_w, w).min(1).values.float()
    c1 = torch.where(cols, ar_w, -1).max(1).values.float() + 1
    box = torch.stack([r0, c0, r1, c1], 1)
    side = torch.stack([r1 - r0, c1 - c0, r1 - r0, c1 - c0], 1)
    moved = box + (_rand(4 * b, gen, target.device, -jitter, jitter).view(b, 4) * side)
    lim = torch.tensor([h, w, h, w], device=target.device, dtype=box.dtype)
    moved = torch.minimum(moved.clamp(min=0), lim)
    ok = (moved[:, 2] - moved[:, 0] >= 1) & (moved[:, 3] - moved[:, 1] >= 1)
    moved = torch.where(ok[:, None], moved, box)
    return torch.where(rows.any(1)[:, None], moved, torch.zeros_like(moved))


def tensor_train_step(model, batch: dict, gen, max_extra_clicks: int = 3,
                      p_first_click_only: float = 0.35, amp: bool = False,
                      iou_loss_weight: float = 1.0, p_box_first: float = 0.25,
                      box_jitter: float = 0.1, quality_target: str = "object",
                      proposal_relax: float = 0.1) -> dict:
    """The CPU loop's step with the click simulation as tensor ops (same losses)."""
    from .loop import step_losses

    dev = batch["image"].device
    s = model.cfg.img_size
    usable = batch["valid"] & ~batch["ignore"]
    target = batch["target"]
    use_depth = bool(batch["has_depth"].any())
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        emb = model.encode(batch["image"], batch["depth"] if use_depth else None)
    coords = first_clicks(target, usable, gen)[:, None]
    labels = torch.ones(coords.shape[0], 1, dtype=torch.long, device=dev)
    boxes, box_first = None, torch.zeros(coords.shape[0], dtype=torch.bool, device=dev)
    if model.cfg.box_prompts:  # box-first samples: the jittered box, the click slot is padding
        box_first = _rand(coords.shape[0], gen, dev) < p_box_first
        boxes = target_boxes(target, gen, box_jitter) * box_first[:, None]
        labels = torch.where(box_first[:, None], -1, labels)
        coords = coords * ~box_first[:, None, None]
    first_only = bool(_rand(1, gen, dev)[0] < p_first_click_only)
    n_extra = 0 if first_only else int(torch.randint(1, max_extra_clicks + 1, (1,), generator=gen,
                                                     device=dev)[0])
    prev = None
    for j in range(n_extra):
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits, iou = model.decode(emb, coords, labels, prev, boxes=boxes)
        logits, iou = logits.float(), iou.float()
        if j == 0:
            k = 1 + iou[:, 1:].argmax(1)
            k = torch.where(box_first, torch.zeros_like(k), k)
            chosen = logits[torch.arange(len(k), device=dev), k][:, None]
        else:
            chosen = logits[:, :1]
        prob = torch.sigmoid(F.interpolate(chosen, size=(s, s), mode="bilinear", align_corners=False))
        prev = prob
        pts, lab = next_clicks(prob[:, 0] > 0.5, target, usable, gen)
        none = lab < 0  # perfect already: repeat the last click
        pts = torch.where(none[:, None], coords[:, -1], pts)
        lab = torch.where(none, labels[:, -1], lab)
        coords = torch.cat([coords, pts[:, None]], 1)
        labels = torch.cat([labels, lab[:, None]], 1)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        logits, iou_pred = model.decode(emb, coords, labels, prev, boxes=boxes)
    res = step_losses(model, logits, iou_pred, target, usable, batch["proposals"],
                      first_click_only=n_extra == 0, iou_loss_weight=iou_loss_weight,
                      box_first=box_first if boxes is not None else None,
                      quality_target=quality_target, proposal_relax=proposal_relax)
    res["clicks"] = n_extra + 1
    return res


# --------------------------------------------------------------------------- run
def train_from_pack(tc, pack_path, out_dir, minutes: float, progress: bool = True,
                    max_steps: Optional[int] = None) -> dict:
    """Train ``tc``'s model (``arch`` + ``warm_start`` / ``init_from``) from a pack for
    ``minutes`` (cosine lr over that time) or ``max_steps``; writes ``model.safetensors``,
    ``last.pt`` (weights and step, no optimiser state) and ``history.json`` to ``out_dir``."""
    from ..registry import resolve_device, save_model
    from .loop import build_model_for_training, optimizer_step, set_train_mode, trained_parameters

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(tc.seed)
    t_load = time.time()
    dp = DevicePack(Pack(pack_path), device, scene_ratio=tc.scene_ratio)
    model = build_model_for_training(tc).to(device)
    opt = torch.optim.AdamW(trained_parameters(model, tc), lr=tc.lr, weight_decay=tc.weight_decay,
                            fused=device.type == "cuda")
    set_train_mode(model, tc)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    aug = TensorAugment(p_drop_depth=tc.p_drop_depth, p_zoom_crop=tc.p_zoom_crop)
    s = model.cfg.img_size
    budget = max(1.0, minutes * 60)
    print(f"pack: {len(dp.images)} images, {dp.num_objects} objects on {device} "
          f"({time.time() - t_load:.1f} s)", flush=True)
    t0 = time.time()
    step, history, running = 0, [], {}
    while True:
        elapsed = time.time() - t0
        frac = elapsed / budget
        if frac >= 1 or (max_steps is not None and step >= max_steps):
            break
        lr = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup)) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = make_batch(dp, tc.batch_size, s, gen, aug, model.cfg.num_proposals)
        res = tensor_train_step(model, batch, gen, tc.max_extra_clicks, tc.p_first_click_only,
                                amp=tc.amp, iou_loss_weight=tc.iou_loss_weight,
                                p_box_first=tc.p_box_first, box_jitter=tc.box_jitter,
                                quality_target=tc.quality_target,
                                proposal_relax=tc.proposal_relax)
        optimizer_step(model, opt, res["loss"], tc.grad_clip)
        step += 1
        if step % tc.log_every == 0:
            for k in ("loss", "iou"):
                v = float(res[k].detach())
                running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
            sps = step * tc.batch_size / max(time.time() - t0, 1e-6)
            history.append({"step": step, "samples": step * tc.batch_size, "lr": lr,
                            "seconds": time.time() - t0, "samples_per_s": sps, **running})
            if progress:
                print(f"step {step} {time.time() - t0:.0f}s lr {lr:.2e} loss {running['loss']:.3f} "
                      f"iou {running['iou']:.3f} {sps:.0f} samples/s", flush=True)
    model.eval()
    notes = {"train_steps": step, "samples_seen": step * tc.batch_size,
             "train_minutes": round((time.time() - t0) / 60, 1), "device": str(device),
             "pipeline": "tensor_train (pack)", "pack": str(pack_path)}
    torch.save({"model": model.state_dict(), "step": step, "config": model.cfg.to_dict(),
                "train_config": dataclasses.asdict(tc), "history": history}, out / "last.pt")
    save_model(model, out / "model.safetensors", notes=notes)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return {"step": step, "history": history, "notes": notes}


def main(argv=None) -> int:
    """``python -m napari_ois.training.tensor_train`` (what ``napari-ois train-pack`` runs)."""
    import argparse

    ap = argparse.ArgumentParser(prog="napari-ois train-pack", description=__doc__.splitlines()[0])
    add_train_pack_arguments(ap)
    return run(ap.parse_args(argv))


def run(args) -> int:
    from .loop import TrainConfig

    import sys

    for path in (args.pack, args.config):
        if not Path(path).is_file():
            print(f"napari-ois train-pack: error: {path} not found", file=sys.stderr)
            return 2
    tc = TrainConfig.from_yaml(args.config)
    if args.device:
        tc.device = args.device
    if args.init_from:
        tc.warm_start, tc.init_from = args.init_from, None
    res = train_from_pack(tc, args.pack, args.out, args.minutes, max_steps=args.max_steps)
    print(f"done: {res['step']} steps, {res['notes']['samples_seen']} samples -> {args.out}/model.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

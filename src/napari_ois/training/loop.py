"""The training loop: iterative click simulation, NFL + min-over-proposals + quality losses.

One step:

1. a batch of samples (real objects and synthetic order-aware scenes, see ``data.py``);
2. the image is encoded once; a first positive click is placed inside the object;
3. 0..``max_extra_clicks`` simulated clicks follow without gradient: predict, feed the
   prediction back as the previous mask, click the centre of the larger error region
   (the evaluation protocol's rule, with a little randomness);
4. the last prediction is trained: on a first click the K proposals get the
   min-over-proposals loss against the nested ground-truth set and token 0 the object's
   loss; after more clicks token 0 gets the object's loss; the quality head regresses the
   IoU each mask actually has.

Sample ``i`` of the run is drawn from ``default_rng([seed, i])`` and the clicks of step ``t``
from ``default_rng([seed, 1, t])``, so that ``--resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from ..data.clicks import padded_distance
from ..model import OISConfig, OISModel, get_config
from ..data.prompts import Box
from .losses import normalized_focal_loss, proposal_loss, soft_iou


QUALITY_TARGETS = ("object", "reading")


@dataclass
class TrainConfig:
    # model: an architecture name plus overrides, or an existing model to fine-tune
    arch: str = "ois-tiny"
    model_overrides: dict = field(default_factory=dict)
    init_from: Optional[str] = None  # registry name or weights path: fine-tune it
    # registry name or weights path whose tensors start the (new) architecture ``arch``:
    # every tensor of the file must fit the new model; the new model's extra parameters
    # (e.g. the click embedding of fusion="early") keep their initialisation.
    warm_start: Optional[str] = None
    # data
    data_root: Optional[str] = None  # holds train/ (default: $NAPARI_OIS_DATA or ../shared/data)
    sets: Optional[list] = None  # training sets (default: all of train/)
    set_weights: dict = field(default_factory=dict)
    folders: list = field(default_factory=list)  # [{images: DIR, masks: DIR}] user folders
    scene_ratio: float = 0.35
    p_drop_depth: float = 0.3
    # objects under this share of their image are never sampled (SampleConfig.min_object_frac);
    # at the default 0.2 %, 43 % of the ISBI_EM cells and 39 % of the COCO128 instances of train/
    # are skipped (first 40 label maps of each)
    min_object_frac: float = 0.002
    # share of the real samples laid out as zoom-in inference sees an object (AugmentConfig.
    # p_zoom_crop: the crop 1.2-1.8x the object's longest side); 0: the layouts before it.
    # The CPU pipeline's (make_builder); the GPU pack pipeline reads it too (TensorAugment)
    p_zoom_crop: float = 0.0
    # share of propagation samples: the object's mask on a neighbouring slice of a volume as
    # the only prompt, the answer on this slice (empty past the structure's end); drawn from
    # the slice-named volume sets of train/ (``training.slices``). The CPU pipeline only.
    p_propagate: float = 0.0
    # share of the propagation samples that are then corrected as a user corrects a
    # propagated slice (issue 33): after the mask-only prediction, the click rounds add the
    # simulator's clicks on its errors with that prediction as the previous mask -- a
    # negative click where the structure has ended teaches an empty answer. 0: the mask stays
    # the only prompt through the click rounds.
    p_prop_correct: float = 0.0
    cache: str = "bytes"
    workers: int = 1
    # optimisation
    steps: int = 2000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: int = 100
    grad_clip: float = 1.0
    max_extra_clicks: int = 3
    p_first_click_only: float = 0.35
    # box_prompts models: the share of samples whose first prompt is the object's box
    # (jittered by up to ``box_jitter`` of its side per edge) instead of a click
    p_box_first: float = 0.25
    box_jitter: float = 0.1
    iou_loss_weight: float = 1.0
    # what the quality head learns to predict for each first-click proposal: "object", its IoU
    # with the clicked object (what the user and the protocol judge the top pick by, as SAM
    # trains its IoU head); "reading", its IoU with the best-matching reading (object, + touching,
    # group): the runs before 2026-12-03, whose heads rate a whole group as highly as the object
    quality_target: str = "object"
    # the weight of each first-click proposal's pull towards its nearest reading, beside the
    # min-over-proposals loss (``losses.proposal_loss``'s ``relax``): 0.1 keeps the tokens
    # that win no reading learning; larger pulls every proposal to the object where it has
    # only one reading (a lone polyp, a salient object). A refit study at 0.5 against 0.1
    # was undecided (docs/benchmarks.md, first-click ranking)
    proposal_relax: float = 0.1
    # train only these submodules (e.g. [iou_head]: refit the quality head of a trained model);
    # the rest is frozen and kept in eval mode. Empty: train everything.
    train_only: list = field(default_factory=list)
    amp: bool = False  # bf16 autocast (GPU)
    compile: bool = False  # torch.compile the encoder
    channels_last: bool = False
    device: str = "auto"
    threads: Optional[int] = None
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    time_limit_min: Optional[float] = None  # stop (and checkpoint) after this many minutes
    # cosine over training minutes as well as steps: the learning rate reaches zero when this
    # much training time is spent (resumes included) or at ``steps``, whichever comes first,
    # whatever the machine's speed, and the run ends there
    schedule_minutes: Optional[float] = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a config file. ``base: OTHER.yaml`` (relative to this file's folder) starts from
        that config and overrides the keys given here; bases may have bases of their own."""
        data = _read_config_chain(Path(path))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {sorted(map(str, unknown))}")
        tc = cls(**data)
        tc.validate(str(path))
        return tc

    def validate(self, where: str = "training config") -> None:
        """Every field has the type its default has (ints may stand for floats)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if v is None or default is None:
                continue
            want = type(default)
            ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                ok = True
            if not ok:
                raise ValueError(f"{where}: {f.name} must be {want.__name__}, got {v!r}")
        if self.quality_target not in QUALITY_TARGETS:
            raise ValueError(f"{where}: quality_target must be one of {list(QUALITY_TARGETS)}, "
                             f"got {self.quality_target!r}")


def _read_config_chain(path: Path, seen: tuple = ()) -> dict:
    """The mapping in ``path`` laid over the one its ``base:`` key names (recursively)."""
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ValueError(f"{path}: the training configs' base keys go round in a circle: {chain}")
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config must be a mapping of keys to values, "
                         f"not a {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"{path}: base must be the path of another config file, got {base!r}")
    merged = _read_config_chain(path.parent / base, (*seen, path.resolve()))
    merged.update(data)
    return merged


# --------------------------------------------------------------------------- data
class FolderSource:
    """User folders in the evaluation layout (images + masks) as a training image source."""

    def __init__(self, folders: list):
        from ..data.datasets import FolderDataset
        from ..data.images import to_unit_rgb

        self.items = []
        for f in folders:
            for s in FolderDataset(f["images"], f["masks"]):
                labels = s.gt.astype(np.int32)
                labels[s.ignore] = -1
                self.items.append((to_unit_rgb(s.image), labels, Path(f["images"]).parent.name))
        if not self.items:
            raise FileNotFoundError(f"no image/mask pairs found in {folders}")

    def __len__(self):
        return len(self.items)

    def set_name(self, i):
        return self.items[i][2]

    def sample_index(self, rng):
        return int(rng.integers(len(self.items)))

    def load(self, i):
        image, labels, _ = self.items[i]
        return image.copy(), labels.copy()


class StepSamples(torch.utils.data.Dataset):
    """Sample ``i`` of the whole run, drawn with ``default_rng([seed, i])``."""

    def __init__(self, builder, size: int, seed: int, start: int, count: int):
        self.builder, self.size, self.seed, self.start, self.count = builder, size, seed, start, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        s = self.builder.make_sample(np.random.default_rng([self.seed, self.start + i]), self.size)
        return {k: v for k, v in s.items() if k != "source"}


def make_builder(tc: TrainConfig, size: int, num_proposals: int):
    from ..data.sources import TrainIndex
    from .augment import AugmentConfig
    from .data import SampleBuilder, SampleConfig

    if tc.folders:
        source = FolderSource(tc.folders)
    else:
        source = TrainIndex(tc.data_root, sets=tc.sets, weights=tc.set_weights or None, cache=tc.cache)
    cfg = SampleConfig(size=size, scene_ratio=tc.scene_ratio, num_proposals=num_proposals,
                       p_drop_depth=tc.p_drop_depth, min_object_frac=tc.min_object_frac,
                       augment=AugmentConfig(p_zoom_crop=tc.p_zoom_crop),
                       p_propagate=tc.p_propagate)
    return SampleBuilder(source, cfg)


# --------------------------------------------------------------------------- clicks
def sample_first_click(target: np.ndarray, valid: np.ndarray, rng) -> tuple[float, float]:
    """A positive click inside the object: mostly near its centre (DT-weighted), sometimes anywhere."""
    dt = padded_distance(target & valid)
    if dt.max() <= 0:
        r, c = np.argwhere(target)[0]
        return float(r) + 0.5, float(c) + 0.5
    if rng.random() < 0.3:
        idx = int(np.argmax(dt))  # the protocol's first click
    else:
        w = (dt >= dt.max() * rng.uniform(0.0, 0.6)) * dt
        flat = w.ravel() / w.sum()
        idx = int(rng.choice(flat.size, p=flat))
    r, c = np.unravel_index(idx, dt.shape)
    return float(r) + 0.5, float(c) + 0.5


def sample_box(target: np.ndarray, rng, jitter: float) -> tuple[float, float, float, float]:
    """The object's tight box in model coordinates (pixel ``i`` spans ``[i, i + 1]``), each
    edge moved by up to ``jitter`` of the box's side."""
    box = Box.of_mask(target)
    if box is None:
        return (0.0, 0.0, 0.0, 0.0)
    box = tuple(v + 0.5 for v in box.as_tuple())
    r0, c0, r1, c1 = box
    h, w = r1 - r0, c1 - c0
    d = rng.uniform(-jitter, jitter, 4) * np.array([h, w, h, w])
    side_r, side_c = target.shape
    r0, r1 = np.clip([r0 + d[0], r1 + d[2]], 0, side_r)
    c0, c1 = np.clip([c0 + d[1], c1 + d[3]], 0, side_c)
    if r1 - r0 < 1 or c1 - c0 < 1:
        return box
    return float(r0), float(c0), float(r1), float(c1)


def sample_next_click(pred: np.ndarray, target: np.ndarray, valid: np.ndarray, rng):
    """The protocol's next click (centre of the larger error region), jittered a little."""
    fn = target & ~pred & valid
    fp = ~target & pred & valid
    dfn, dfp = padded_distance(fn), padded_distance(fp)
    if max(dfn.max(), dfp.max()) <= 0:
        return None
    positive = dfn.max() >= dfp.max()
    dt = dfn if positive else dfp
    cand = np.argwhere(dt >= dt.max() * rng.uniform(0.6, 1.0))
    r, c = cand[rng.integers(len(cand))]
    return float(r) + 0.5, float(c) + 0.5, int(positive)


# --------------------------------------------------------------------------- model
def build_model_for_training(tc: TrainConfig) -> OISModel:
    if tc.init_from:
        from ..registry import build_model

        model = build_model(tc.init_from)
        if tc.model_overrides:
            raise ValueError("model_overrides cannot change a model loaded with init_from")
        return model
    model = OISModel(get_config(tc.arch, **tc.model_overrides))
    if tc.warm_start:
        warm_start(model, tc.warm_start)
    return model


def warm_start(model: OISModel, name_or_path: str) -> list[str]:
    """Copy the tensors of a trained model into ``model``; returns the keys left at their init.

    Raises ``ValueError`` when the file has tensors the model lacks or of other shapes
    (another architecture): a warm start only adds parameters, it never drops any.
    """
    from ..registry import build_model

    state = build_model(name_or_path).state_dict()
    own = model.state_dict()
    extra = sorted(set(state) - set(own))
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    if extra or shapes:
        raise ValueError(
            f"warm_start {name_or_path!r} does not fit {model.cfg.name}: "
            f"{len(extra)} tensors the model lacks (e.g. {extra[:3]}), "
            f"{len(shapes)} of other shapes (e.g. {shapes[:3]})"
        )
    model.load_state_dict(state, strict=False)
    return sorted(set(own) - set(state))


def lr_at(step: int, tc: TrainConfig, seconds: float = 0.0) -> float:
    """Linear warm-up over ``tc.warmup`` steps, then a cosine to zero over the remaining steps;
    with ``tc.schedule_minutes``, over the training time (``seconds`` spent so far) or the
    steps, whichever is further along (the run ends at whichever limit it meets first)."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    if tc.schedule_minutes:
        t = max(t, seconds / (tc.schedule_minutes * 60))
    return tc.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def optimizer_step(model, opt, loss: torch.Tensor, grad_clip: float) -> None:
    """Backward ``loss``, clip the gradient norm to ``grad_clip`` (0: off) and step ``opt``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def trained_parameters(model: OISModel, tc: TrainConfig) -> list:
    """The parameters the optimiser updates: all, or those of ``tc.train_only`` (the rest
    are frozen: ``requires_grad`` off, so their gradients are never computed)."""
    if not tc.train_only:
        return list(model.parameters())
    names = dict(model.named_modules())
    missing = [n for n in tc.train_only if n not in names or not n]
    if missing:
        raise ValueError(f"train_only: {missing} not a submodule of {model.cfg.name}; e.g. "
                         f"{[n for n, _ in model.named_children()]}")
    keep = {id(p) for n in tc.train_only for p in names[n].parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if id(p) in keep]


def set_train_mode(model: OISModel, tc: TrainConfig) -> None:
    """Training mode for what trains; frozen parts stay in eval mode (normalisation
    statistics unchanged)."""
    if not tc.train_only:
        model.train()
        return
    model.eval()
    for n in tc.train_only:
        model.get_submodule(n).train()


def _upsample(logits, size):
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def train_step(model: OISModel, batch: dict, tc: TrainConfig, rng, device) -> dict:
    """One optimisation step's forward pass and loss (no ``backward`` here)."""
    s = model.cfg.img_size
    image = batch["image"].to(device, non_blocking=True)
    depth = batch["depth"].to(device) * batch["has_depth"].to(device).view(-1, 1, 1, 1).float()
    target = batch["target"].numpy()
    valid_np = batch["valid"].numpy() & ~batch["ignore"].numpy()
    b = image.shape[0]
    if tc.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    use_depth = bool(batch["has_depth"].any())
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.amp):
        emb = model.encode(image, depth if use_depth else None)

    # propagation samples (``training.slices``): a neighbouring slice's mask is the prompt,
    # every click slot is padding, and the mask stays the prompt through the click rounds
    is_prop = np.asarray(batch["is_prop"]).astype(bool) if "is_prop" in batch else np.zeros(b, bool)
    prop_prev = None
    if is_prop.any():
        prop_prev = batch["prompt_mask"].to(device).float()[:, None]
    # box-first samples: the object's jittered box, the click slot starts as padding
    box_first = np.zeros(b, dtype=bool)
    boxes = None
    if model.cfg.box_prompts:
        box_first = (rng.random(b) < tc.p_box_first) & ~is_prop
        boxes = torch.tensor(
            [sample_box(target[i], rng, tc.box_jitter) if box_first[i] else (0.0,) * 4
             for i in range(b)], dtype=torch.float32, device=device)
    # the propagation samples whose prompt stays the neighbour's mask through the click rounds
    # (the others are corrected from their first prediction on: ``TrainConfig.p_prop_correct``)
    prop_fixed = is_prop & ~(rng.random(b) < tc.p_prop_correct) if tc.p_prop_correct > 0 else is_prop
    no_click = box_first | is_prop
    clicks = [[(0.0, 0.0) if no_click[i] else sample_first_click(target[i], valid_np[i], rng)]
              for i in range(b)]
    labels = [[-1 if no_click[i] else 1] for i in range(b)]
    n_extra = 0 if rng.random() < tc.p_first_click_only else int(rng.integers(1, tc.max_extra_clicks + 1))
    prev = has_prev = None
    if prop_prev is not None:  # only the propagation samples have a previous mask yet
        prev = prop_prev * torch.from_numpy(is_prop).to(device).view(-1, 1, 1, 1)
        has_prev = torch.from_numpy(is_prop).to(device)
    box_first_t = torch.from_numpy(box_first).to(device)
    is_prop_t = torch.from_numpy(is_prop).to(device)
    prop_fixed_t = torch.from_numpy(prop_fixed).to(device)
    for j in range(n_extra):
        coords_t = torch.tensor(clicks, dtype=torch.float32, device=device)
        labels_t = torch.tensor(labels, dtype=torch.long, device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.amp):
            logits, iou = model.decode(emb, coords_t, labels_t, prev, has_prev, boxes=boxes)
        logits, iou = logits.float(), iou.float()
        if j == 0:  # a first click shows the top-scored proposal, as in the evaluation
            k = 1 + iou[:, 1:].argmax(1)
            k = torch.where(box_first_t | is_prop_t, torch.zeros_like(k), k)  # the refined mask
            chosen = logits[torch.arange(b), k][:, None]
        else:
            chosen = logits[:, :1]
        prob = torch.sigmoid(_upsample(chosen, s))
        if prop_prev is not None:
            prob = torch.where(prop_fixed_t.view(-1, 1, 1, 1), prop_prev, prob)
        prev, has_prev = prob, None
        pred = (prob[:, 0] > 0.5).cpu().numpy()
        for i in range(b):
            if prop_fixed[i]:
                clicks[i].append((0.0, 0.0))
                labels[i].append(-1)
                continue
            nxt = sample_next_click(pred[i], target[i], valid_np[i], rng)
            if nxt is None:  # perfect already: repeat the last click (still a valid prompt)
                nxt = (*clicks[i][-1], labels[i][-1])
            clicks[i].append(nxt[:2])
            labels[i].append(nxt[2])

    coords_t = torch.tensor(clicks, dtype=torch.float32, device=device)
    labels_t = torch.tensor(labels, dtype=torch.long, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.amp):
        logits, iou_pred = model.decode(emb, coords_t, labels_t, prev, has_prev, boxes=boxes)
    tgt = batch["target"].to(device)
    valid = torch.from_numpy(valid_np).to(device)
    res = step_losses(model, logits, iou_pred, tgt, valid, batch["proposals"].to(device),
                      first_click_only=n_extra == 0, iou_loss_weight=tc.iou_loss_weight,
                      box_first=box_first_t | is_prop_t, quality_target=tc.quality_target,
                      proposal_relax=tc.proposal_relax)
    res["clicks"] = n_extra + 1
    return res


def step_losses(model: OISModel, logits, iou_pred, tgt, valid, props, first_click_only: bool,
                iou_loss_weight: float = 1.0, box_first: Optional[torch.Tensor] = None,
                quality_target: str = "object", proposal_relax: float = 0.1) -> dict:
    """The trained prediction's losses (shared by the CPU loop and the tensor pipeline).

    ``logits`` (B, K + 1, S/4, S/4) and ``iou_pred`` (B, K + 1) of the last decode; ``tgt``,
    ``valid`` (B, S, S) bool; ``props`` (B, K, S, S) the nested first-click targets, the
    object first; ``box_first`` (B,) bool: samples prompted by a box, whose proposals are not
    trained; ``quality_target``, ``proposal_relax``: see :class:`TrainConfig`.
    """
    s = model.cfg.img_size
    device = logits.device
    logits, iou_pred = logits.float(), iou_pred.float()
    full0 = _upsample(logits[:, :1], s)  # token 0 is trained at full resolution
    loss_mask = normalized_focal_loss(full0[:, 0], tgt, valid).mean()
    iou_true = soft_iou(full0, tgt[:, None], valid[:, None])
    iou_loss = F.mse_loss(iou_pred[:, :1], iou_true)
    prop_loss = torch.zeros((), device=device)
    clicked = None if box_first is None else ~box_first
    if clicked is not None and first_click_only and not bool(clicked.any()):
        first_click_only = False  # only boxes: nothing for the proposals to learn
    elif clicked is not None and first_click_only:
        logits, iou_pred, props, valid = logits[clicked], iou_pred[clicked], props[clicked], valid[clicked]
    if first_click_only and model.cfg.num_proposals > 0:
        # proposals are trained at the logits' own stride-4 resolution (cheaper)
        distinct = torch.ones(props.shape[:2], dtype=torch.bool, device=device)
        for g in range(1, props.shape[1]):
            distinct[:, g] = (props[:, g] != props[:, g - 1]).flatten(1).any(1)
        props4 = F.avg_pool2d(props.float(), 4) > 0.5
        valid4 = F.avg_pool2d(valid[:, None].float(), 4)[:, 0] > 0.5
        prop_loss, prop_iou = proposal_loss(logits[:, 1:], props4, valid4, distinct,
                                            quality_target=quality_target,
                                            relax=proposal_relax)
        iou_loss = iou_loss + F.mse_loss(iou_pred[:, 1:], prop_iou)
    loss = loss_mask + prop_loss + iou_loss_weight * iou_loss
    return {
        "loss": loss,
        "mask": loss_mask.detach(),
        "proposals": prop_loss.detach(),
        "iou_loss": iou_loss.detach(),
        "iou": iou_true.mean().detach(),
    }


# --------------------------------------------------------------------------- run
def save_checkpoint(path: Path, model, opt, step: int, tc: TrainConfig, history: list,
                    seconds: float = 0.0) -> None:
    """``seconds``: training time spent up to ``step`` (all runs of a resumed training)."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "seconds": seconds,
            "config": model.cfg.to_dict(),
            "train_config": dataclasses.asdict(tc),
            "history": history,
        },
        tmp,
    )
    os.replace(tmp, path)


#: a file in the run folder that sets the torch threads while the run goes on (an integer;
#: read at every log step): ``echo 1 > RUN/threads`` before a one-thread evaluation or test
#: shares the CPU, ``echo 2 > RUN/threads`` after (or delete it: back to ``TrainConfig.threads``).
#: Two spinning OpenMP threads beside another busy process lose about 70 % of their samples/s
#: (docs/training.md, "Sharing the CPU"); one thread on its own core loses far less.
THREADS_FILE = "threads"
#: beside it, optionally, the process id of whoever asked (``scripts/beside_training.sh``
#: writes its own): once that process is gone the request is stale and ignored, so a wrapper
#: killed before it could delete :data:`THREADS_FILE` does not leave the run on one thread.
THREADS_OWNER_FILE = "threads.owner"


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):  # alive under another user, or cannot tell
        return False
    return False


class ThreadControl:
    """Follows ``RUN/threads`` (:data:`THREADS_FILE`): the thread count torch uses now."""

    def __init__(self, out: Path, default: Optional[int]):
        self.path = Path(out) / THREADS_FILE
        self.owner = Path(out) / THREADS_OWNER_FILE
        self.default = default or torch.get_num_threads()
        self.current = torch.get_num_threads()

    def wanted(self) -> int:
        try:
            n = int(self.path.read_text().strip())
        except (OSError, ValueError):  # absent, being written, or not a number: the config's
            return self.default
        try:
            owner = int(self.owner.read_text().strip())
        except (OSError, ValueError):  # no owner named: the request stands
            owner = None
        if owner is not None and _process_gone(owner):
            return self.default
        return max(1, min(n, os.cpu_count() or n))

    def update(self) -> Optional[int]:
        """Apply the file's count if it changed; returns the new count, else None."""
        n = self.wanted()
        if n == self.current:
            return None
        torch.set_num_threads(n)
        self.current = n
        return n


def train(tc: TrainConfig, out_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
          stop_at_step: Optional[int] = None) -> dict:
    """Train (or fine-tune) a model; writes ``last.pt``, ``model.safetensors`` and ``history.json``.

    ``stop_at_step`` ends the run early (with a checkpoint) without changing the schedule,
    so that a later ``resume`` continues it exactly.
    """
    from tqdm import tqdm

    from ..registry import resolve_device, save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    model = build_model_for_training(tc).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(trained_parameters(model, tc), lr=tc.lr, weight_decay=tc.weight_decay)
    start, history, prior_seconds = 0, [], 0.0
    ckpt_path = out / "last.pt"
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if OISConfig.from_dict(ckpt["config"]) != model.cfg:
            raise ValueError(f"{ckpt_path} was trained with another model config")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, history = int(ckpt["step"]), list(ckpt.get("history", []))
        prior_seconds = float(ckpt.get("seconds", history[-1]["seconds"] if history else 0.0))
    (out / "train_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(tc), sort_keys=False))
    if tc.compile:
        model.encoder = torch.compile(model.encoder)

    s = model.cfg.img_size
    builder = make_builder(tc, s, model.cfg.num_proposals)
    remaining = tc.steps - start
    if remaining <= 0:
        print(f"nothing to do: {ckpt_path} is at step {start} of {tc.steps}")
        return {"step": start, "history": history}
    dataset = StepSamples(builder, s, tc.seed, start * tc.batch_size, remaining * tc.batch_size)
    from .data import worker_init

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=tc.batch_size, shuffle=False, num_workers=tc.workers,
        worker_init_fn=worker_init if tc.workers else None, drop_last=True,
        persistent_workers=False, prefetch_factor=4 if tc.workers else None,
        pin_memory=device.type == "cuda",
    )
    set_train_mode(model, tc)
    threads = ThreadControl(out, tc.threads)
    t0 = time.time()
    step = start
    bar = tqdm(total=tc.steps, initial=start, disable=not progress, dynamic_ncols=True)
    running: dict[str, float] = {}
    for batch in loader:
        lr = lr_at(step, tc, prior_seconds + time.time() - t0)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([tc.seed, 1, step])
        res = train_step(model, batch, tc, rng, device)
        optimizer_step(model, opt, res["loss"], tc.grad_clip)
        step += 1
        for k in ("loss", "mask", "proposals", "iou_loss", "iou"):
            v = float(res[k].detach())
            running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
        elapsed = time.time() - t0
        spent = prior_seconds + elapsed
        sps = (step - start) * tc.batch_size / max(elapsed, 1e-6)
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}", iou=f"{running['iou']:.3f}", sps=f"{sps:.1f}")
        if step % tc.log_every == 0 or step == tc.steps:
            history.append({"step": step, "samples": step * tc.batch_size, "lr": lr,
                            "seconds": spent, "samples_per_s": sps, "threads": threads.current,
                            **running})
            if threads.update() is not None:
                tqdm.write(f"step {step}: {threads.current} torch threads ({threads.path})")
        scheduled_end = bool(tc.schedule_minutes) and spent >= tc.schedule_minutes * 60
        stop = (tc.time_limit_min is not None and elapsed > tc.time_limit_min * 60) or (
            stop_at_step is not None and step >= stop_at_step) or scheduled_end
        if step % tc.ckpt_every == 0 or step == tc.steps or stop:
            save_checkpoint(ckpt_path, model, opt, step, tc, history, spent)
            (out / "history.json").write_text(json.dumps(history, indent=1))
        if scheduled_end:
            print(f"schedule of {tc.schedule_minutes} min done at step {step}")
            break
        if stop:
            print(f"stopped at step {step} of {tc.steps} (resume with --resume)")
            break
    bar.close()
    model.eval()
    raw = getattr(model.encoder, "_orig_mod", None)
    if raw is not None:
        model.encoder = raw
    notes = {"train_steps": step, "samples_seen": step * tc.batch_size,
             "train_minutes": round((prior_seconds + time.time() - t0) / 60, 1), "device": str(device)}
    if tc.p_propagate > 0:  # trained on neighbouring-slice samples: propagate with the mask alone
        notes["propagation_prompt"] = "mask"
    save_model(model, out / "model.safetensors", notes=notes)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return {"step": step, "history": history, "notes": notes}

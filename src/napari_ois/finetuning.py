"""Fine-tune a model on the user's own annotations, in minutes, on the CPU they have.

Two entry points share one engine (:func:`run_finetune`):

- :func:`finetune` (``napari_ois.finetune``): images as numpy arrays and integer label
  images of the same ``H, W`` (e.g. napari Labels layer data), each nonzero id one object;
- :func:`finetune_folder` (``napari-ois finetune --images DIR --masks DIR --out DIR``): masks
  in the evaluation layout (``<stem>.png`` with 255 object / 128 ignore, or
  ``<stem>/<k>.png`` one file per object) or one instance label map ``<stem>.png`` per image,
  read by :mod:`napari_ois.data.folders` (the data layer).

What the engine does:

1. checks the inputs (too few objects, empty labels, mismatched shapes: one-line
   ``ValueError`` naming the problem) and the base model (a registry name, a weights file or
   a folder holding ``model.safetensors``);
2. converts every image with :func:`napari_ois.data.images.to_unit_rgb`, the intensity
   handling of prediction (uint8 / 255; 16-bit, int and float images windowed by their
   0.5-99.5 percentiles or the given contrast limits; grey repeated to RGB);
3. keeps back a few objects (``holdout`` of them, at least 1; whole images when that is
   possible, else single objects, which are then "ignore" in the training labels) to check
   itself;
4. trains with the loss and click simulation of ``napari-ois train`` (:func:`napari_ois.training.loop.train_step`)
   with stronger augmentation (90-degree rotations, vertical flips, wider scale range, more
   colour / grey / noise / blur) and a cosine learning rate over a step budget that grows
   with the number of training objects (:func:`planned_steps`, or ``steps``) or over the
   time budget, whichever ends first (``TrainConfig.schedule_minutes``): the run ends when
   the steps are done or ``minutes`` are spent. A fixed step budget makes the result the
   same on a fast and a slow machine (given the time); more steps on a few objects fit
   those objects and forget the rest (docs/finetune.md). The batch-norm layers keep the
   base's running statistics (a few augmented images are no estimate of them);
5. at intervals, evaluates the held-back objects with the evaluation protocol (first click at
   the object's centre, each next click at the centre of the larger error) and keeps the
   checkpoint with the best mean IoU over the first ``check_clicks`` clicks; the base model is
   the score to beat (step 0), so the written model is never worse than the base there;
6. writes ``OUT/model.safetensors`` + ``OUT/model.json`` (what ``--model OUT``,
   ``--model OUT/model.safetensors`` and ``load_predictor`` load) and ``OUT/finetune.json``
   (what was done). Files are written under temporary names and renamed at the end: a
   cancelled or failed run (``should_stop``, Ctrl-C, an error) writes no model and leaves a
   model already in ``OUT`` untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

#: fewest usable objects a fine-tuning needs (at least one is held back, two train)
MIN_OBJECTS = 3
#: share of the objects held back to check the run (at least 1, at most MAX_HOLDOUT)
HOLDOUT_FRACTION = 0.15
MAX_HOLDOUT = 20
#: the smallest object (pixels) a fine-tuning trains on. Training from scratch also skips
#: objects under 0.2 % of their image (``SampleConfig.min_object_frac``); a user's few
#: annotations are all kept: nuclei, cells or lesions are often that small, and the
#: augmentation zooms onto small targets (``AugmentConfig.p_zoom_small``).
MIN_OBJECT_PX = 16
#: share of the training samples cropped as zoom-in inference crops an object (1.2-1.8x its
#: longest side; ``AugmentConfig.p_zoom_crop``): the check and every later use of the model
#: refine on such crops (zoom-in is on by default)
ZOOM_CROP = 0.4
#: the step budget: this many steps (of ``batch_size`` samples) per training object, at
#: least MIN_STEPS. Measured (docs/finetune.md): on 4-8 training objects, 150-250 steps
#: with the learning rate decayed to zero helped the unseen images of the set; 900-1,200
#: steps in the same 10 minutes on two free cores fitted the few objects and hurt them
STEPS_PER_OBJECT = 40
MIN_STEPS = 160
#: images are stored at most this long side for training (labels: nearest neighbour)
MAX_SIDE = 1024
#: file names inside OUT
MODEL_FILE = "model.safetensors"
SUMMARY_FILE = "finetune.json"


class FinetuneError(ValueError):
    """A problem with the inputs, the base model or the output folder (one-line message)."""


@dataclass
class Annotated:
    """One annotated image: float RGB for training, the labels, and its name."""

    name: str
    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1]
    labels: np.ndarray  # int32 (H, W): 0 background, -1 ignore, 1..N objects


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` did. ``model_path`` is None when the run was cancelled."""

    cancelled: bool
    model_path: Optional[Path]
    out_dir: Path
    summary: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs
def _shrink(rgb: np.ndarray, labels: np.ndarray, max_side: int) -> Tuple[np.ndarray, np.ndarray]:
    h, w = labels.shape
    if max(h, w) <= max_side:
        return rgb, labels
    from .data.images import resize_chw

    s = max_side / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = resize_chw(np.moveaxis(rgb, -1, 0), (nh, nw), antialias=True)
    rows = np.minimum((np.arange(nh) + 0.5) / s, h - 1).astype(int)
    cols = np.minimum((np.arange(nw) + 0.5) / s, w - 1).astype(int)
    return np.ascontiguousarray(np.moveaxis(small, 0, -1)), labels[rows][:, cols]


def prepare_arrays(images: Sequence[Any], label_images: Sequence[Any],
                   contrast_limits: Any = None, names: Optional[Sequence[str]] = None,
                   max_side: int = MAX_SIDE, allow_ignore: bool = False) -> List[Annotated]:
    """Check and convert images + label images (see :func:`finetune`); images whose labels are
    all zero are left out (with a warning), none at all is an error. ``allow_ignore``: -1 marks
    "ignore" pixels (the folder reader's decoded 128 band)."""
    from .data.folders import AnnotationError, as_labels
    from .data.images import to_unit_rgb

    if isinstance(images, np.ndarray) or isinstance(label_images, np.ndarray):
        if not (isinstance(images, np.ndarray) and isinstance(label_images, np.ndarray)):
            raise FinetuneError("give images and label_images both as lists (one entry per image) "
                                "or both as one array")
        images, label_images = [images], [label_images]
    images, label_images = list(images), list(label_images)
    if not images:
        raise FinetuneError("no images given")
    if len(images) != len(label_images):
        raise FinetuneError(f"{len(images)} images but {len(label_images)} label images: give one "
                            "label image per image")
    limits = contrast_limits
    if limits is None or (len(limits) == 2 and np.isscalar(limits[0])):
        limits = [limits] * len(images)
    elif len(limits) != len(images):
        raise FinetuneError(f"{len(limits)} contrast limits for {len(images)} images")
    out: List[Annotated] = []
    empty = []
    for i, (img, lab) in enumerate(zip(images, label_images)):
        name = str(names[i]) if names is not None else f"image {i}"
        img = np.asarray(img)
        try:
            lab = as_labels(lab, name, allow_ignore)
        except AnnotationError as exc:
            raise FinetuneError(str(exc)) from None
        # a stack (Z, H, W[, C]) with labels (Z, H, W): one image per slice
        if lab.ndim == 3 and img.ndim >= 3 and img.shape[:3] == lab.shape:
            pairs = [(img[z], lab[z], f"{name} z={z}") for z in range(lab.shape[0])]
            pairs = [p for p in pairs if (p[1] > 0).any()] or pairs[:1]
        else:
            pairs = [(img, lab, name)]
        for im2, lab2, nm in pairs:
            if lab2.ndim != 2:
                raise FinetuneError(f"{nm}: labels must be 2D (H, W) or a stack (Z, H, W) "
                                    f"matching the image, got shape {lab2.shape}")
            if im2.ndim < 2 or im2.shape[:2] != lab2.shape:
                raise FinetuneError(f"{nm}: the image is {'x'.join(map(str, im2.shape[:2]))} "
                                    f"(shape {im2.shape}) but its labels are "
                                    f"{'x'.join(map(str, lab2.shape))}: they must have the same H, W")
            try:
                rgb = to_unit_rgb(im2, limits[i])
            except ValueError as exc:
                raise FinetuneError(f"{nm}: {exc}") from None
            if not (lab2 > 0).any():
                empty.append(nm)
                continue
            rgb, lab2 = _shrink(rgb, lab2, max_side)
            out.append(Annotated(nm, rgb, lab2))
    if not out:
        raise FinetuneError(f"the labels are empty: none of the {len(empty)} label image(s) has an "
                            "object (nonzero id); annotate at least "
                            f"{MIN_OBJECTS} objects")
    if empty:
        warnings.warn(f"{len(empty)} label image(s) have no object and are left out "
                      f"(e.g. {empty[0]})", stacklevel=3)
    return out


def count_objects(items: List[Annotated]) -> Tuple[List[Tuple[int, int]], int]:
    """``([(item index, object id)] of usable objects, number too small to train on)``."""
    usable, small = [], 0
    for i, it in enumerate(items):
        areas = np.bincount(np.clip(it.labels, 0, None).ravel())
        for k in np.flatnonzero(areas[1:]) + 1:
            if areas[k] >= MIN_OBJECT_PX:
                usable.append((i, int(k)))
            else:
                small += 1
    return usable, small


def planned_steps(training_objects: int) -> int:
    """The default step budget for ``training_objects`` objects (see STEPS_PER_OBJECT)."""
    return max(MIN_STEPS, STEPS_PER_OBJECT * int(training_objects))


def split_holdout(items: List[Annotated], rng: np.random.Generator,
                  fraction: float = HOLDOUT_FRACTION) -> Tuple[List[Annotated], list, dict]:
    """Hold back ``max(1, round(fraction * N))`` objects (at most MAX_HOLDOUT): whole images
    when possible (the check then sees images it never trained on), else single objects,
    which become "ignore" (-1) in the training labels. Returns ``(training items, held-back
    samples (image uint8 RGB, gt, ignore, name), info)``."""
    usable, small = count_objects(items)
    n = len(usable)
    if n < MIN_OBJECTS:
        extra = f" ({small} more are too small: under {MIN_OBJECT_PX} px)" if small else ""
        raise FinetuneError(f"too few objects: {n} usable{extra}; fine-tuning needs at least "
                            f"{MIN_OBJECTS} (one is kept back to check the result)")
    want = int(min(MAX_HOLDOUT, max(1, round(fraction * n))))
    cap = max(want, int(0.35 * n))
    per_image = {}
    for i, k in usable:
        per_image.setdefault(i, []).append(k)
    held_images: List[int] = []
    held = 0
    for i in rng.permutation(sorted(per_image)).tolist():
        if held >= want:
            break
        cnt = len(per_image[i])
        left_imgs = len(per_image) - len(held_images) - 1
        if held + cnt <= cap and left_imgs >= 1 and n - held - cnt >= 2:
            held_images.append(i)
            held += cnt
    held_objects: List[Tuple[int, int]] = [(i, k) for i in held_images for k in per_image[i]]
    rest = [(i, k) for i, k in usable if i not in held_images]
    if held < want:
        picks = rng.choice(len(rest), size=want - held, replace=False)
        held_objects += [rest[j] for j in sorted(picks.tolist())]
    from .data.datasets import Sample

    samples, rgb8 = [], {}
    for i, k in held_objects:  # grouped by image: the check encodes each image once
        it = items[i]
        if i not in rgb8:  # the training's float RGB as 8-bit: to_unit_rgb gives it back
            rgb8[i] = np.round(it.rgb * 255).astype(np.uint8)
        samples.append(Sample(rgb8[i], it.labels == k, it.labels < 0, f"{it.name}#{k}",
                              image_key=f"{i}:{it.name}"))
    train_items = []
    partial = {}
    for i, k in held_objects:
        if i not in held_images:
            partial.setdefault(i, []).append(k)
    for i, it in enumerate(items):
        if i in held_images:
            continue
        labels = it.labels
        if i in partial:
            labels = labels.copy()
            labels[np.isin(labels, partial[i])] = -1  # never trained on, never a background
        train_items.append(Annotated(it.name, it.rgb, labels))
    info = {"objects": n, "too_small": small, "held_back_objects": len(held_objects),
            "held_back_images": [items[i].name for i in held_images],
            "held_back": [s.name for s in samples], "training_images": len(train_items),
            "training_objects": n - len(held_objects)}
    return train_items, samples, info


# --------------------------------------------------------------------------- training data
class RotatingSource:
    """The training images as an image source (``len``, ``sample_index``, ``load``,
    ``set_name``) that also rotates them by a random multiple of 90 degrees."""

    def __init__(self, items: List[Annotated], rotate: bool = True):
        self.items = items
        self.turns = 4 if rotate else 1

    def __len__(self) -> int:
        return len(self.items) * self.turns

    def set_name(self, i: int) -> str:
        return "finetune"

    def sample_index(self, rng) -> int:
        return int(rng.integers(len(self.items))) * self.turns + int(rng.integers(self.turns))

    def load(self, i: int):
        it, k = self.items[i // self.turns], i % self.turns
        return (np.ascontiguousarray(np.rot90(it.rgb, k)),
                np.ascontiguousarray(np.rot90(it.labels, k)))


def strong_augment():
    """The training augmentation, stronger: a small annotated set must not be memorised."""
    from .training.augment import AugmentConfig

    return AugmentConfig(p_fit=0.15, scale_range=(0.5, 2.2), p_zoom_crop=ZOOM_CROP,
                         p_vflip=0.5, p_color=0.9,
                         brightness=0.2, contrast=(0.5, 1.6), saturation=(0.3, 1.7), hue=0.08,
                         p_gray=0.2, p_medical=0.2, p_gamma=0.3, p_noise=0.3,
                         noise_std=(0.005, 0.06), p_blur=0.2, blur_sigma=(0.3, 1.5))


def sample_builder(items: List[Annotated], model_cfg, tc, rotate: bool = True):
    """The fine-tune's training samples: ``items`` rotated, strongly augmented, mixed with
    synthetic scenes (``tc.scene_ratio``), every object of at least :data:`MIN_OBJECT_PX`."""
    from .training.data import SampleBuilder, SampleConfig

    return SampleBuilder(
        RotatingSource(items, rotate),
        SampleConfig(size=model_cfg.img_size, scene_ratio=tc.scene_ratio,
                     num_proposals=model_cfg.num_proposals, p_drop_depth=tc.p_drop_depth,
                     min_object_px=MIN_OBJECT_PX, min_object_frac=0.0,
                     augment=strong_augment()))


def _batch(samples: list):
    import torch

    keys = ("image", "depth", "has_depth", "target", "proposals", "valid", "ignore")
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in keys}


# --------------------------------------------------------------------------- model + output
def resolve_model_path(name_or_path: PathLike) -> str:
    """A folder holding ``model.safetensors`` stands for that file; anything else is kept."""
    p = Path(name_or_path)
    if p.is_dir():
        f = p / MODEL_FILE
        if not f.is_file():
            raise FinetuneError(f"model folder {p} has no {MODEL_FILE}")
        return str(f)
    return str(name_or_path)


def load_base(base: PathLike):
    """The model to start from, with a one-line message when it cannot be fine-tuned."""
    from .registry import build_model, registry

    key = resolve_model_path(base)
    try:
        model = build_model(key)
    except KeyError:
        raise FinetuneError(f"base model {str(base)!r}: unknown; use one of {sorted(registry())}, "
                            "a .safetensors/.pt file or a folder holding model.safetensors") from None
    except FileNotFoundError as exc:
        raise FinetuneError(f"base model {str(base)!r}: {exc}") from None
    except (ValueError, RuntimeError) as exc:
        text = " ".join(str(exc).split())
        raise FinetuneError(f"base model {str(base)!r} cannot be fine-tuned: it is not a model of a "
                            f"known OIS architecture ({text})") from None
    return model


def _check_out(out: Path, need_bytes: int) -> None:
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {out}: is a file, not a folder")
    anc = out
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise FinetuneError(f"--out {out}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise FinetuneError(f"--out {out}: folder {anc} is not writable")
    free = shutil.disk_usage(anc).free
    if free < need_bytes:
        raise FinetuneError(f"not enough disk space for the model in {out}: "
                            f"{free / 2**20:.1f} MB free, about {need_bytes / 2**20:.1f} MB needed")


def _write_outputs(model, out: Path, notes: dict, summary: dict) -> Path:
    """Write the model and the summary under temporary names, then rename them into place."""
    from .registry import save_model

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp_model = out / f"model{tag}.safetensors"
    tmp_json, tmp_summary = tmp_model.with_suffix(".json"), out / f"{SUMMARY_FILE}{tag}"
    try:
        save_model(model, tmp_model, notes=notes)
        tmp_summary.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp_model, out / MODEL_FILE)
        os.replace(tmp_json, out / "model.json")
        os.replace(tmp_summary, out / SUMMARY_FILE)
    except BaseException as exc:
        for p in (tmp_model, tmp_json, tmp_summary):
            p.unlink(missing_ok=True)
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError) and exc.errno == 28:
            raise FinetuneError(f"no disk space left while writing the model to {out}: "
                                "nothing was written") from None
        raise
    return out / MODEL_FILE


# --------------------------------------------------------------------------- held-back check
def heldout_score(model, samples: list, device, clicks: int) -> float:
    """Mean IoU over the first ``clicks`` clicks of the evaluation protocol (held-back objects)."""
    from .evaluation.metrics import pad_ious
    from .evaluation.runner import evaluate
    from .predictor import OISPredictor

    modes = [(m, m.training) for m in model.modules()]  # a frozen encoder stays in eval mode
    try:
        pred = OISPredictor(model, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate(pred, samples, max_clicks=clicks, progress=False, warmup=False)
    finally:
        for m, training in modes:
            m.training = training
    ious = [pad_ious(o["ious"], clicks) for o in res["objects"]]
    return float(np.mean(ious)) if ious else float("nan")


# --------------------------------------------------------------------------- engine
@contextlib.contextmanager
def _weights(model, params):
    """``model`` with the weights ``params`` (a list as ``model.parameters()``) inside the
    block, its own after it; None: its own throughout."""
    import torch

    if params is None:
        yield model
        return
    own = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        torch._foreach_copy_(list(model.parameters()), params)
    try:
        yield model
    finally:
        with torch.no_grad():
            torch._foreach_copy_(list(model.parameters()), own)


def _stop_fn(should_stop) -> Callable[[], bool]:
    if should_stop is None:
        return lambda: False
    if hasattr(should_stop, "is_set"):
        return should_stop.is_set
    if callable(should_stop):
        return lambda: bool(should_stop())
    raise FinetuneError("should_stop must be a callable or a threading.Event")


def run_finetune(items: List[Annotated], out: PathLike, base: PathLike = "default",
                 minutes: float = 10.0, *, device: str = "auto", should_stop=None,
                 progress: Optional[Callable[[dict], None]] = None, batch_size: int = 8,
                 lr: float = 1e-4, encoder_lr_scale: float = 1.0, checks: int = 8,
                 check_clicks: int = 3, holdout: float = HOLDOUT_FRACTION, rotate: bool = True, seed: int = 0,
                 steps: Optional[int] = None, update_norm_stats: bool = False,
                 ema_decay: float = 0.0,
                 threads: Optional[int] = None, source: str = "arrays") -> FinetuneResult:
    """Fine-tune ``base`` on ``items`` (from :func:`prepare_arrays`) for at most ``minutes``
    and write the best checkpoint to ``out`` (see the module docstring).

    ``should_stop``: a callable or ``threading.Event``, checked before each step: when it is
    true the run ends, nothing is written and ``FinetuneResult.cancelled`` is True (Ctrl-C
    does the same). ``progress`` is called after each step and check with a dict: ``step``,
    ``steps_planned``, ``elapsed_s``, ``total_s`` (elapsed + left), ``left_s`` (the time
    budget left, or the estimated time of the remaining steps when less), ``loss``, ``lr``, ``heldout_iou`` (latest check),
    ``best_iou``, ``base_iou`` (NaN until measured), ``phase`` ("check" or "train").
    ``checks``: held-back checks during the run (plus one of the base before it).
    ``steps``: the step budget (None: :func:`planned_steps` of the training objects); the run
    ends at it or when ``minutes`` are spent, and the learning rate reaches zero there.
    ``update_norm_stats``: False (default) keeps the batch-norm layers' running statistics as
    the base has them (their scale and shift still learn); True lets the fine-tune's batches
    update them, which made the result much less predictable (docs/finetune.md). ``ema_decay`` > 0: the checks score, and the
    run keeps, a running average of the weights (this decay per step) instead of the weights.
    ``encoder_lr_scale``: the image encoder's learning rate is ``lr`` times this (0 freezes
    it; the decoder, prompt encoder and heads always learn at ``lr``).
    """
    import torch

    from .registry import resolve_device

    t_start = time.monotonic()
    out = Path(out)
    if isinstance(minutes, bool) or not (isinstance(minutes, (int, float)) and math.isfinite(minutes)
                                         and minutes > 0):
        raise FinetuneError(f"minutes must be a positive number, got {minutes!r}")
    if int(batch_size) < 1:
        raise FinetuneError(f"batch_size must be >= 1, got {batch_size}")
    if int(check_clicks) < 1:
        raise FinetuneError(f"check_clicks must be >= 1, got {check_clicks}")
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise FinetuneError(f"steps must be a whole number >= 1, got {steps!r}")
    if not (math.isfinite(ema_decay) and 0 <= ema_decay < 1):
        raise FinetuneError(f"ema_decay must be a number in [0, 1), got {ema_decay}")
    if not 0 < holdout < 1:
        raise FinetuneError(f"holdout must be between 0 and 1, got {holdout}")
    if not (math.isfinite(encoder_lr_scale) and encoder_lr_scale >= 0):
        raise FinetuneError(f"encoder_lr_scale must be a number >= 0, got {encoder_lr_scale}")
    stop = _stop_fn(should_stop)
    train_items, held, info = split_holdout(items, np.random.default_rng([seed, 7]), holdout)
    model = load_base(base)
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    _check_out(out, 2 * n_bytes + 2**20)
    dev = resolve_device(device)
    run = _Run(model, train_items, held, info, out, str(base), float(minutes), dev, stop,
               progress, int(batch_size), float(lr), float(encoder_lr_scale), int(checks),
               int(check_clicks), rotate, int(seed), source, t_start,
               int(steps) if steps is not None else None, bool(update_norm_stats),
               float(ema_decay))
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return run.go()
    finally:
        if threads:
            torch.set_num_threads(old_threads)


@dataclass
class _Run:
    model: Any
    train_items: list
    held: list
    info: dict
    out: Path
    base: str
    minutes: float
    dev: Any
    stop: Callable[[], bool]
    progress: Optional[Callable[[dict], None]]
    batch_size: int
    lr: float
    encoder_lr_scale: float
    checks: int
    check_clicks: int
    rotate: bool
    seed: int
    source: str
    t_start: float
    steps: Optional[int] = None
    update_norm_stats: bool = False
    ema_decay: float = 0.0

    def report(self, state: dict, phase: str) -> None:
        """Tell ``progress`` where the run is; ``left_s`` is the time budget left or, once a
        step's time is known, the time the remaining steps take if that is less."""
        if self.progress is not None:
            el = time.monotonic() - self.t_start
            left = max(0.0, self.minutes * 60.0 - el)
            if state.get("step_s"):
                rest = (state["steps_planned"] - state["step"]) * state["step_s"]
                left = min(left, rest + state.get("check_s", 0.0))
            self.progress({**state, "phase": phase, "elapsed_s": el, "total_s": el + left,
                           "left_s": left})

    def param_groups(self, tc) -> list:
        """The optimizer's groups: the image encoder at ``lr * encoder_lr_scale``, everything
        else at ``lr``. At 0 the encoder is frozen as training freezes parts
        (``tc.train_only``: every other submodule; :func:`.training.loop.trained_parameters`)."""
        from .training.loop import trained_parameters

        if self.encoder_lr_scale == 0:
            tc.train_only = [n for n, _ in self.model.named_children() if n != "encoder"]
            return [{"params": trained_parameters(self.model, tc), "lr_scale": 1.0}]
        enc, rest = [], []
        for name, p in self.model.named_parameters():
            (enc if name.split(".")[0] == "encoder" else rest).append(p)
        return [{"params": rest, "lr_scale": 1.0},
                {"params": enc, "lr_scale": self.encoder_lr_scale}]

    def go(self) -> FinetuneResult:
        try:
            return self._go()
        except KeyboardInterrupt:
            return FinetuneResult(True, None, self.out, {"cancelled": "interrupted"})

    def _go(self) -> FinetuneResult:
        import torch

        from .training.loop import TrainConfig, lr_at, optimizer_step, set_train_mode, train_step

        model, dev, bs = self.model, self.dev, self.batch_size
        steps_planned = self.steps or planned_steps(self.info["training_objects"])
        state = {"step": 0, "loss": float("nan"), "lr": 0.0, "heldout_iou": float("nan"),
                 "best_iou": float("nan"), "base_iou": float("nan"),
                 "steps_planned": steps_planned, "step_s": 0.0}

        def cancelled() -> FinetuneResult:
            return FinetuneResult(True, None, self.out, {"cancelled_at_step": state["step"]})

        def snapshot() -> dict:
            return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

        if self.stop():
            return cancelled()
        torch.manual_seed(self.seed)
        model.to(dev)
        cfg = model.cfg
        warmup = min(10, max(1, steps_planned // 10))
        tc = TrainConfig(arch=cfg.name, batch_size=bs, lr=self.lr, warmup=warmup, workers=0,
                         scene_ratio=0.15, seed=self.seed, steps=steps_planned, device=str(dev),
                         amp=dev.type == "cuda")
        builder = sample_builder(self.train_items, cfg, tc, self.rotate)
        opt = torch.optim.AdamW(self.param_groups(tc), lr=tc.lr, weight_decay=tc.weight_decay)

        # the base model is the score to beat
        self.report(state, "check")
        t_check = time.monotonic()
        base_iou = heldout_score(model, self.held, dev, self.check_clicks)
        check_s = time.monotonic() - t_check
        state.update(base_iou=base_iou, best_iou=base_iou, heldout_iou=base_iou, check_s=check_s)
        history = [{"step": 0, "seconds": round(time.monotonic() - self.t_start, 1),
                    "heldout_iou": base_iou}]
        best_state, best_step = snapshot(), 0
        self.report(state, "check")

        # training time: what is left after the setup, this check and one more at the end
        t0 = time.monotonic()
        train_s = max(1.0, self.minutes * 60.0 - (t0 - self.t_start) - check_s - 1.0)
        tc.schedule_minutes = train_s / 60.0
        next_check = 1  # checks at every 1/checks of the way (steps or time, the further one)
        set_train_mode(model, tc)  # a frozen encoder stays in eval mode (its statistics too)
        if not self.update_norm_stats:  # batch-norm layers keep the base's running statistics
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        # a running average of the weights (ema_decay > 0): what the checks score and keep
        avg = [p.detach().clone() for p in model.parameters()] if self.ema_decay > 0 else None
        step, running, step_s = 0, None, 0.0
        while True:
            if self.stop():
                return cancelled()
            spent = time.monotonic() - t0
            if step >= steps_planned or spent + step_s >= train_s:  # done, or out of time
                break
            t_step = time.monotonic()
            cur_lr = lr_at(step, tc, spent)
            for g in opt.param_groups:
                g["lr"] = cur_lr * g["lr_scale"]
            samples = [builder.make_sample(np.random.default_rng([self.seed, step * bs + j]),
                                           cfg.img_size) for j in range(bs)]
            res = train_step(model, _batch(samples), tc,
                             np.random.default_rng([self.seed, 1, step]), dev)
            optimizer_step(model, opt, res["loss"], tc.grad_clip)
            step += 1
            if avg is not None:  # the usual warm-up of the decay: early steps count more
                with torch.no_grad():
                    torch._foreach_lerp_(avg, [p.detach() for p in model.parameters()],
                                         1.0 - min(self.ema_decay, (1 + step) / (10 + step)))
            loss = float(res["loss"].detach())
            running = loss if running is None else 0.9 * running + 0.1 * loss
            state.update(step=step, loss=running, lr=cur_lr)
            dt = time.monotonic() - t_step
            step_s = dt if step == 1 else 0.8 * step_s + 0.2 * dt
            state["step_s"] = step_s
            spent = time.monotonic() - t0
            done = max(step / steps_planned, spent / train_s)
            if (done * self.checks >= next_check or step >= steps_planned
                    or spent + step_s >= train_s):
                if self.stop():
                    return cancelled()
                next_check = math.floor(done * self.checks) + 1
                self.report(state, "check")
                with _weights(model, avg):
                    score = heldout_score(model, self.held, dev, self.check_clicks)
                    if score >= state["best_iou"]:  # ties go to the longer-trained model
                        state["best_iou"], best_state, best_step = score, snapshot(), step
                history.append({"step": step, "seconds": round(time.monotonic() - self.t_start, 1),
                                "loss": running, "lr": cur_lr, "heldout_iou": score})
                state["heldout_iou"] = score
            self.report(state, "train")
        if self.stop():
            return cancelled()

        model.load_state_dict(best_state)
        model.eval().cpu()
        used = (time.monotonic() - self.t_start) / 60
        info = self.info
        kept = ("the base model (no checkpoint beat it on the held-back objects)" if best_step == 0
                else f"the checkpoint of step {best_step}")
        summary = {
            "base": self.base, "source": self.source, "device": str(dev),
            "minutes_budget": self.minutes, "minutes_used": round(used, 2),
            "steps_planned": steps_planned, "steps": step,
            "batch_size": bs, "samples_seen": step * bs, "lr": self.lr,
            "encoder_lr_scale": self.encoder_lr_scale, "best_step": best_step,
            "kept": kept, "heldout_clicks": self.check_clicks,
            "heldout_iou_base": state["base_iou"], "heldout_iou_best": state["best_iou"],
            **info, "history": history,
        }
        notes = {
            "finetuned_from": self.base,
            "summary": (f"{cfg.name} fine-tuned from {self.base} on {info['training_objects']} "
                        f"objects of {info['training_images']} image(s) ({step} steps x {bs}, "
                        f"{used:.1f} min, {dev}); held-back mean IoU over the first "
                        f"{self.check_clicks} clicks {state['base_iou']:.3f} -> "
                        f"{state['best_iou']:.3f}; kept {kept}"),
            "finetune": {k: summary[k] for k in (
                "steps", "batch_size", "minutes_used", "best_step", "heldout_iou_base",
                "heldout_iou_best", "held_back_objects", "training_objects")},
        }
        model.cfg = model.cfg.replace(notes={})  # the base's own training notes do not apply
        if self.stop():
            return cancelled()
        path = _write_outputs(model, self.out, notes, summary)
        return FinetuneResult(False, path, self.out, summary)


# --------------------------------------------------------------------------- public API
def default_out_dir() -> Path:
    from .registry import cache_dir

    return cache_dir() / "finetuned" / time.strftime("ft-%Y%m%d-%H%M%S")


def finetune(images: Sequence[Any], label_images: Sequence[Any], minutes: float = 10.0,
             out: Optional[PathLike] = None, base: PathLike = "default", *,
             contrast_limits: Any = None, device: str = "auto", should_stop=None,
             progress: Union[bool, Callable[[dict], None]] = True, **options) -> Optional[Path]:
    """Fine-tune a model on annotated images; returns the written model file, or None when
    cancelled.

    Args:
        images: list of 2D images (``(H, W)`` or ``(H, W, C)``; any dtype: uint8, 16-bit and
            float are windowed as prediction does), or stacks ``(Z, H, W[, C])``.
        label_images: list of integer label arrays of the same ``H, W`` (or ``Z, H, W``), e.g.
            napari Labels layer data: 0 background, each nonzero id one object.
        minutes: time budget (cosine learning rate over it; the run ends when it is spent).
        out: output folder (default: a new folder under the model cache); it receives
            ``model.safetensors``, ``model.json`` and ``finetune.json``.
        base: the model to start from: a registry name, a weights file or a model folder.
        contrast_limits: ``(low, high)`` for every image or one per image (the napari layer's
            contrast limits), else the percentile window prediction uses.
        should_stop: callable or ``threading.Event``; when true the run stops and writes nothing.
        progress: True shows a progress bar, a callable gets the progress dicts of
            :func:`run_finetune`.
        options: passed to :func:`run_finetune` (``batch_size``, ``lr``, ``seed``, ``threads``...).

    The returned path loads with ``napari_ois.load_predictor(path)``.
    """
    items = prepare_arrays(images, label_images, contrast_limits)
    res = _run_with_progress(items, Path(out) if out is not None else default_out_dir(), base,
                             minutes, device, should_stop, progress, options)
    return res.model_path


def finetune_folder(images: PathLike, masks: PathLike, out: PathLike, base: PathLike = "default",
                    minutes: float = 10.0, *, device: str = "auto", should_stop=None,
                    progress: Union[bool, Callable[[dict], None]] = True,
                    **options) -> FinetuneResult:
    """Fine-tune on a folder pair (``napari-ois finetune``; the folders' layout:
    :mod:`napari_ois.data.folders`); see :func:`finetune`."""
    from .data.folders import AnnotationError, read_folder_pairs

    try:
        imgs, labs, names = read_folder_pairs(images, masks)
    except AnnotationError as exc:
        raise FinetuneError(str(exc)) from None
    items = prepare_arrays(imgs, labs, names=names, allow_ignore=True)
    options.setdefault("source", f"{images} + {masks}")
    return _run_with_progress(items, Path(out), base, minutes, device, should_stop, progress,
                              options)


def _fmt(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def progress_text(p: dict) -> str:
    """One line of a progress dict: step, loss, held-back IoU (latest, base, best)."""
    if p["base_iou"] != p["base_iou"]:
        return "checking the base model on the held-back objects"
    return (f"step {p['step']}, loss {_fmt(p['loss'])}, held-back IoU {_fmt(p['heldout_iou'])} "
            f"(base {_fmt(p['base_iou'])}, best {_fmt(p['best_iou'])})")


def _run_with_progress(items, out, base, minutes, device, should_stop, progress,
                       options) -> FinetuneResult:
    bar = None
    callback = progress if callable(progress) else None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(minutes * 60), unit="s", desc="fine-tune", dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                              "[{remaining} left{postfix}]")

        def callback(p: dict) -> None:
            bar.total = max(1, round(p["total_s"]))  # the steps may end before the minutes
            bar.update(min(p["elapsed_s"], bar.total) - bar.n)
            bar.set_postfix_str(progress_text(p), refresh=False)
            bar.refresh()
    try:
        res = run_finetune(items, out, base, minutes, device=device, should_stop=should_stop,
                           progress=callback, **options)
        if bar is not None and not res.cancelled:
            bar.update(bar.total - bar.n)  # done: the time left is zero
        return res
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------- command line
def cmd_finetune(args) -> int:

    res = finetune_folder(args.images, args.masks, args.out, base=args.base, minutes=args.minutes,
                          device=args.device, progress=not args.no_progress,
                          batch_size=args.batch_size, lr=args.lr,
                          encoder_lr_scale=args.encoder_lr_scale, seed=args.seed,
                          threads=args.threads, check_clicks=args.check_clicks,
                          steps=args.steps or None, update_norm_stats=args.update_norm_stats,
                          ema_decay=args.ema_decay)
    if res.cancelled:
        print(f"napari-ois finetune: cancelled: no model written ({args.out} is unchanged)")
        return 130
    s = res.summary
    print(f"fine-tuned {s['base']} on {s['training_objects']} objects of {s['training_images']} "
          f"image(s): {s['steps']} of {s['steps_planned']} planned steps x {s['batch_size']} in {s['minutes_used']:.1f} min on "
          f"{s['device']}")
    print(f"held-back check ({s['held_back_objects']} object(s), mean IoU over the first "
          f"{s['heldout_clicks']} clicks): base {s['heldout_iou_base']:.3f}, kept "
          f"{s['heldout_iou_best']:.3f} ({s['kept']})")
    print(f"wrote {res.model_path} (+ model.json, finetune.json): use it with --model {res.out_dir}")
    return 0


def _minutes(text: str) -> float:
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return v


def add_parsers(sub) -> None:
    f = sub.add_parser(
        "finetune", help="fine-tune a model on your own annotated images, in minutes",
        description="Fine-tune a model (the shipped default or --base) on annotated images with "
        "the training's click-simulation loss and strong augmentation, for at most --minutes on "
        "the CPU (or a GPU if present). A few objects are kept back to check the run; the best "
        "checkpoint on them is written to OUT/model.safetensors (use --model OUT). See "
        "docs/finetune.md.")
    f.add_argument("--images", required=True, help="folder of images (any dtype: 8/16-bit, float TIFF)")
    f.add_argument("--masks", required=True,
                   help="folder of masks: <stem>.png (255 object, 128 ignore) or <stem>/<k>.png "
                   "(one file per object), or <stem>.png instance label maps (0 background, "
                   "1..N objects)")
    f.add_argument("--out", required=True, help="output folder (model.safetensors, model.json, "
                   "finetune.json); a model already there is replaced only when the run succeeds")
    f.add_argument("--base", default="default",
                   help="model to start from: a registry name, a weights file or a model folder "
                   "(default: the shipped default)")
    f.add_argument("--minutes", type=_minutes, default=10.0, help="time budget (default 10)")
    f.add_argument("--device", default="auto", help="auto (a GPU if present), cpu, cuda or mps")
    f.add_argument("--batch-size", type=int, default=8, help="samples per step (default 8)")
    f.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    f.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="the image encoder learns at --lr times this (0 freezes it; default 1)")
    f.add_argument("--steps", type=int, default=0,
                   help=f"step budget (default 0: {STEPS_PER_OBJECT} per training object, at least "
                   f"{MIN_STEPS}); the run ends at it or at --minutes, whichever comes first")
    f.add_argument("--update-norm-stats", action="store_true",
                   help="let the fine-tune's batches update the batch-norm statistics (default: "
                   "they stay as the base has them)")
    f.add_argument("--ema-decay", type=float, default=0.0,
                   help="keep a running average of the weights with this decay per step "
                   "(e.g. 0.95; default 0: the weights themselves)")
    f.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    f.add_argument("--check-clicks", type=int, default=3,
                   help="the held-back objects are scored by their mean IoU over this many "
                   "protocol clicks (default 3)")
    f.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_finetune)

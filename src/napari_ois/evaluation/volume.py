"""The volumetric protocol (``napari-ois eval3d``): one structure in 3D in a few interactions.

Input: a folder of volumes ``<case>.tif`` (or ``.nii.gz`` with nibabel), axes ``(Z, Y, X)``, and
a folder of label volumes of the same names. Every nonzero id with at least ``min_voxels``
voxels is one structure, segmented on its own (the others are not known to it).

Interaction 1
    One positive click at the interior point (the maximum of the distance transform, the click
    rule of ``data.clicks``) of the structure's largest Z slice -- or, with
    ``first_prompt="box"``, the 2D box of that slice -- predicts that slice (a lone click: the
    top-scored of the K proposals, as the 2D runner), then the plugin's propagation
    (``napari_ois.propagation.propagate_slices``, the session's default stop rules) walks Z in
    both directions.
Interaction k >= 2
    The largest connected 3D error region (missed or extra voxels, 6-connected,
    ``scipy.ndimage.label``; a tie goes to the extra voxels). On the slice where it is largest,
    a click at its interior point (pixels already clicked on that slice excluded): positive
    for a miss, negative for an extra. That slice is predicted again with all its clicks (and
    its box), ``prev_mask`` = its current prediction (the logits where the slice was predicted
    directly); then the propagation starts again from it in both directions, up to the next
    slice that has clicks of its own (``stop_at``: those slices are never changed by another
    slice's propagation) or a stop rule. The slices it reaches are replaced; where a stop rule
    ended it (the object judged gone or wrong), the old prediction is cleared from there up to
    the next anchor, the end of the stack or the first slice where it is already empty (so a
    stop removes a leak, but not another piece of the structure further along Z). An empty
    corrected slice clears both sides the same way.

Each interaction's Dice over the volume and its seconds (predictions, propagation and any
slice embedding it needed) are recorded. An object whose prediction is already perfect gets no
more interactions; its Dice is carried to the end. Every prediction is binarised at the
protocol's threshold (``sigmoid(logit) > 0.49``, ``data.clicks.binarize``).

Every slice is windowed the same: uint8 volumes by their dtype range (0, 255), as napari shows
them; other dtypes by the 0.5 and 99.5 percentiles of the whole volume, computed once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.clicks import Click, binarize, first_click, padded_distance
from ..data.prompts import Box
from ..propagation import STOP_RULES, clear_past_stops, propagate_slices
from .metrics import noc

RESULT_FORMAT = "napari-ois-eval3d/1"
#: file names read as volumes, longest first (``a.nii.gz`` is ``.nii.gz``, not ``.gz``)
VOLUME_SUFFIXES = (".nii.gz", ".tiff", ".tif", ".nii")
NOI_THRESHOLDS = (0.80, 0.85, 0.90)
#: the session's (and the widget's) default stop rules
DEFAULT_PROPAGATION = dict(STOP_RULES)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- files
def volume_suffix(path: PathLike) -> Optional[str]:
    """The volume suffix of ``path`` (``.tif``, ``.nii.gz``, ...) or None."""
    name = Path(path).name.lower()
    for s in VOLUME_SUFFIXES:
        if name.endswith(s) and len(name) > len(s):
            return s
    return None


def case_name(path: PathLike) -> str:
    """``<case>`` of ``<case>.tif`` / ``<case>.nii.gz``."""
    p = Path(path)
    suffix = volume_suffix(p)
    return p.name[: len(p.name) - len(suffix)] if suffix else p.stem


def _nibabel(path: PathLike):
    try:
        import nibabel
    except ImportError:
        raise ValueError(f"{path}: reading NIfTI volumes needs nibabel (pip install nibabel), "
                         "or convert the volume to a (Z, Y, X) TIFF") from None
    return nibabel


def volume_shape(path: PathLike) -> tuple:
    """The shape of a volume file, read from its header (no pixels). NIfTI volumes are
    given as (Z, Y, X), the reverse of their stored (X, Y, Z) axes."""
    path = Path(path)
    if volume_suffix(path) in (".nii", ".nii.gz"):
        return tuple(int(s) for s in reversed(_nibabel(path).load(str(path)).shape))
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            return tuple(int(s) for s in tf.series[0].shape)
    except Exception as exc:  # noqa: BLE001 - not a TIFF, truncated, ...
        raise ValueError(f"{path}: could not be read as a TIFF volume ({_reason(exc)})") from None


def read_volume(path: PathLike) -> np.ndarray:
    """A volume file as a numpy array, axes (Z, Y, X) (NIfTI: its stored axes reversed)."""
    path = Path(path)
    if volume_suffix(path) in (".nii", ".nii.gz"):
        return np.asarray(_nibabel(path).load(str(path)).dataobj).T
    import tifffile

    try:
        return np.asarray(tifffile.imread(str(path)))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: could not be read as a TIFF volume ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Case:
    """One volume and its labels."""

    name: str
    image: Path
    labels: Path


def find_cases(images: PathLike, labels: PathLike) -> List[Case]:
    """The cases of an ``--images`` / ``--labels`` pair of folders, sorted by name. Raises
    ``FileNotFoundError`` / ``ValueError`` naming the folder or file that is missing or wrong
    (checked from the headers, before any model runs): a missing labels file, a 2D image or
    4D volume, a volume whose shape differs from its labels'."""
    images, labels = Path(images), Path(labels)
    for flag, folder in (("--images", images), ("--labels", labels)):
        if not folder.exists():
            raise FileNotFoundError(f"{flag} {folder}: folder not found")
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder}: not a folder")
    files = sorted(p for p in images.iterdir() if p.is_file() and volume_suffix(p))
    if not files:
        raise FileNotFoundError(f"--images {images}: no volumes (<case>.tif, .tiff, .nii.gz or .nii)")
    label_files = {}
    for p in labels.iterdir():
        if p.is_file() and volume_suffix(p):
            label_files.setdefault(case_name(p), []).append(p)
    cases = []
    seen = {}
    for p in files:
        name = case_name(p)
        if name in seen:
            raise ValueError(f"--images {images}: two volumes for case {name!r}: {seen[name].name} "
                             f"and {p.name}")
        seen[name] = p
        found = sorted(label_files.get(name, []), key=lambda q: (volume_suffix(q) != volume_suffix(p), q.name))
        if not found:
            raise FileNotFoundError(f"no labels for {p}: expected {labels / (name + volume_suffix(p))}")
        cases.append(Case(name, p, found[0]))
    for c in cases:
        check_case_shapes(c, volume_shape(c.image), volume_shape(c.labels))
    return cases


def check_case_shapes(case: Case, image_shape: tuple, labels_shape: tuple) -> None:
    """``ValueError`` naming the file when a case cannot be evaluated in 3D."""
    if len(image_shape) == 2:
        raise ValueError(f"{case.image} is a 2D image (shape {tuple(image_shape)}): eval3d needs "
                         "volumes (Z, Y, X); use `napari-ois eval` for 2D images")
    if len(image_shape) != 3:
        raise ValueError(f"{case.image} has shape {tuple(image_shape)}: eval3d needs one grey volume "
                         "(Z, Y, X)")
    if tuple(labels_shape) != tuple(image_shape):
        raise ValueError(f"{case.labels} has shape {tuple(labels_shape)} but its volume {case.image} has "
                         f"shape {tuple(image_shape)}: they must match voxel for voxel")


def volume_contrast_limits(volume: np.ndarray) -> Optional[Tuple[float, float]]:
    """One intensity window for every slice of ``volume``: (0, 255) for uint8 (napari's and
    the 2D protocol's), None for bool, else the 0.5 and 99.5 percentiles of its finite values
    (its min and max when those are equal)."""
    vol = np.asarray(volume)
    if vol.dtype == np.bool_:
        return None
    if vol.dtype == np.uint8:
        return 0.0, 255.0
    finite = vol[np.isfinite(vol)] if np.issubdtype(vol.dtype, np.floating) else vol.reshape(-1)
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1.0
    return lo, hi


def structures(labels: np.ndarray, min_voxels: int = 500) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    """``(kept, too_small)``: ``[(id, voxels), ...]`` of the nonzero ids of ``labels`` with at
    least ``min_voxels`` voxels, and of the others; ids in increasing order."""
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    kept, small = [], []
    for i, n in zip(ids.tolist(), counts.tolist()):
        if i == 0:
            continue
        (kept if n >= min_voxels else small).append((int(i), int(n)))
    return kept, small


def _as_labels(labels: np.ndarray, path: PathLike) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.integer):
        return labels
    if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        return labels.astype(np.int64)
    raise ValueError(f"{path}: labels must be whole numbers (0 background, k = structure k); "
                     f"got dtype {labels.dtype}")


# --------------------------------------------------------------------------- metrics
def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean volumes (two empty ones: 1)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth {gt.shape}")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & gt)) / total


def error_click(gt: np.ndarray, pred: np.ndarray,
                clicked: Optional[Dict[int, np.ndarray]] = None) -> Optional[Tuple[int, Click]]:
    """The protocol's next 3D correction: ``(z, click)`` or None when ``pred`` is perfect.

    The largest 6-connected region of missed (``gt & ~pred``) or extra (``pred & ~gt``) voxels
    (a tie: the extra one); on its largest slice, the pixel farthest from its boundary
    (``data.clicks.padded_distance``), never one already clicked (``clicked[z]``: a bool
    plane); positive for a miss. Where every pixel of that slice is clicked, the region's next
    largest slice, then the next region, is used."""
    from scipy import ndimage

    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    regions = []  # (voxels, extra first on a tie, kind, label map, id)
    for positive, err in ((True, gt & ~pred), (False, pred & ~gt)):
        if not err.any():
            continue
        lab, n = ndimage.label(err)
        sizes = np.bincount(lab.reshape(-1))[1:]
        for i in np.argsort(-sizes, kind="stable")[:8]:  # the largest few suffice
            regions.append((int(sizes[i]), not positive, positive, lab, int(i) + 1))
    regions.sort(key=lambda r: (-r[0], not r[1]))
    for _, _, positive, lab, rid in regions:
        region = lab == rid
        per_slice = region.sum(axis=(1, 2))
        for z in np.argsort(-per_slice, kind="stable"):
            if per_slice[z] == 0:
                break
            dist = padded_distance(region[z])
            if clicked is not None and int(z) in clicked:
                dist[clicked[int(z)]] = 0.0
            if dist.max() <= 0:
                continue
            r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
            return int(z), Click(int(r), int(c), bool(positive))
    return None


# --------------------------------------------------------------------------- one structure
@dataclass
class Anchor:
    """A slice with prompts of its own: its clicks, its box, its last direct prediction."""

    clicks: List[Click] = field(default_factory=list)
    box: Optional[Box] = None
    logits: Optional[np.ndarray] = None


class StructureRun:
    """The protocol on one structure: its prediction, its anchor slices, one interaction at a
    time (:meth:`first_interaction`, then :meth:`next_interaction` or :meth:`correct`).

    Args:
        session: an ``InteractionSession`` on the volume (it embeds slices and caches them);
            its predictor predicts.
        gt: the structure's (Z, Y, X) boolean mask.
        first_prompt: "click" or "box".
        propagation: keyword arguments of ``propagate_slices`` (the stop rules, ``z_range``);
            default ``DEFAULT_PROPAGATION``.
        name: names the structure in messages (e.g. ``"sabs22.tif, id 6"``).
    """

    def __init__(self, session: Any, gt: np.ndarray, *, first_prompt: str = "click",
                 propagation: Optional[dict] = None, name: str = "the structure"):
        gt = np.asarray(gt, dtype=bool)
        if gt.ndim != 3:
            raise ValueError(f"{name}: the structure must be a (Z, Y, X) volume; got shape {gt.shape}")
        if tuple(gt.shape) != tuple(session.spatial_shape):
            raise ValueError(f"{name}: the structure has shape {gt.shape}, the volume {session.spatial_shape}")
        if not gt.any():
            raise ValueError(f"{name}: the structure is empty (no voxel): nothing to click on")
        if first_prompt not in ("click", "box"):
            raise ValueError(f"first_prompt must be 'click' or 'box', not {first_prompt!r}")
        self.session = session
        self.predictor = session.predictor
        self.gt = gt
        self.first_prompt = first_prompt
        self.propagation = dict(DEFAULT_PROPAGATION if propagation is None else propagation)
        # the model's own way to prompt the next slice (a mask alone for models trained on
        # neighbouring-slice samples), unless the caller chose one
        self.propagation.setdefault("prompt", getattr(self.predictor, "propagation_prompt", "clicks"))
        self.name = name
        self.pred = np.zeros(gt.shape, dtype=bool)
        self.anchors: Dict[int, Anchor] = {}
        self.clicked: Dict[int, np.ndarray] = {}
        self.n_slices = gt.shape[0]

    # ----------------------------------------------------------------- predictions
    def _predict(self, z: int, points, labels, prev_mask, multimask, box=None) -> np.ndarray:
        """Logits (H, W) of slice ``z`` (the top-scored proposal for ``multimask``)."""
        self.session.ensure_embedding((z,))
        kw = {} if box is None else {"box": box}
        out = self.predictor.predict(points, labels, prev_mask=prev_mask, multimask=multimask, **kw)
        logits = getattr(out, "logits", None)
        logits = np.asarray(out.masks, dtype=bool) if logits is None else np.asarray(logits)
        if logits.ndim == 2:
            logits = logits[None]
        top = 0
        if multimask:
            scores = np.asarray(getattr(out, "scores", np.zeros(len(logits))), dtype=float).reshape(-1)
            top = int(np.argmax(scores)) if scores.size else 0
        return logits[top]

    def _predict_slice(self, z: int, points, labels, prev_mask) -> tuple:
        """``propagate_slices``' per-slice prediction."""
        self.session.ensure_embedding((z,))
        out = self.predictor.predict(points, labels, prev_mask=prev_mask, multimask=False)
        logits = getattr(out, "logits", None)
        mask = binarize(np.asarray(out.masks[0], dtype=bool) if logits is None else np.asarray(logits)[0])
        return mask, float(np.asarray(out.scores).reshape(-1)[0])

    def _propagate(self, z: int) -> dict:
        """Propagate from slice ``z`` both ways; replace what it reaches, clear past a stop
        rule up to the next anchor or empty slice. Returns ``{"reached": [lo, hi], "stops":
        {"up": why, "down": why}}``."""
        start = self.pred[z]
        stops: dict = {}
        lo = hi = z
        if start.any():
            anchor = self.anchors[z]
            steps = propagate_slices(
                self._predict_slice, start.shape, self.n_slices, z, start, anchor.clicks,
                stop_at=set(self.anchors), stops=stops, **self.propagation)
            for step in steps:
                zz = step.key[0]
                self.pred[zz] = step.mask
                lo, hi = min(lo, zz), max(hi, zz)
        else:
            stops = {1: "object vanished at the corrected slice", -1: "object vanished at the corrected slice"}
        # a leak ends where the old prediction does (propagation.clear_past_stops)
        for zz in clear_past_stops(stops, (lo, hi), self.n_slices, lambda zz: self.pred[zz].any(), self.anchors,
                                   self.propagation.get("z_range")):
            self.pred[zz] = False
        return {"reached": [int(lo), int(hi)],
                "stops": {"up": stops.get(1), "down": stops.get(-1)}}

    # ----------------------------------------------------------------- interactions
    def first_interaction(self) -> dict:
        """Interaction 1: the largest slice's interior click (or box), then propagation."""
        areas = self.gt.sum(axis=(1, 2))
        z = int(np.argmax(areas))
        anchor = self.anchors[z] = Anchor()
        if self.first_prompt == "box":
            anchor.box = Box.of_mask(self.gt[z])
            anchor.logits = self._predict(z, [], [], None, False, anchor.box)
            prompt = {"box": list(anchor.box.as_tuple())}
        else:
            click = first_click(self.gt[z])
            anchor.clicks.append(click)
            self._mark(z, click)
            anchor.logits = self._predict(z, [[click.row, click.col]], [1], None, True)
            prompt = {"click": [click.row, click.col, 1]}
        self.pred[z] = binarize(anchor.logits)
        return {"slice": z, **prompt, "slice_dice": dice(self.pred[z], self.gt[z]), **self._propagate(z)}

    def next_interaction(self) -> Optional[dict]:
        """Interaction k >= 2: a click on the largest 3D error region, the slice predicted
        again, propagation from it. None (nothing done) when the prediction is perfect."""
        found = error_click(self.gt, self.pred, self.clicked)
        if found is None:
            return None
        return self.correct(*found)

    def correct(self, z: int, click: Click) -> dict:
        """Add ``click`` on slice ``z``, predict that slice with all its prompts and propagate
        from it (see the module's description)."""
        z = int(z)
        anchor = self.anchors.get(z)
        if anchor is None:
            anchor = self.anchors[z] = Anchor()
        anchor.clicks.append(click)
        self._mark(z, click)
        points = [[c.row, c.col] for c in anchor.clicks]
        labels = [c.label for c in anchor.clicks]
        prev = anchor.logits
        if prev is None and self.pred[z].any():
            prev = self.pred[z]
        if prev is None and anchor.box is None and len(points) == 1 and click.positive:
            anchor.logits = self._predict(z, points, labels, None, True)  # a new object there
        else:
            anchor.logits = self._predict(z, points, labels, prev, False, anchor.box)
        self.pred[z] = binarize(anchor.logits)
        return {"slice": z, "click": [click.row, click.col, click.label],
                "slice_dice": dice(self.pred[z], self.gt[z]), **self._propagate(z)}

    def _mark(self, z: int, click: Click) -> None:
        plane = self.clicked.setdefault(z, np.zeros(self.gt.shape[1:], dtype=bool))
        plane[int(round(click.row)), int(round(click.col))] = True

    def dice(self) -> float:
        return dice(self.pred, self.gt)


def run_structure(session: Any, gt: np.ndarray, interactions: int = 6, **kwargs: Any) -> Tuple[dict, np.ndarray]:
    """The protocol on one structure: ``(record, final prediction)``. The record has
    ``dice`` (one per interaction: an object that became perfect carries its Dice),
    ``seconds`` (one per interaction made), ``fp_voxels``, ``fn_voxels`` and ``interactions``
    (per interaction: the slice, the prompt, ``slice_dice`` -- the 2D Dice of that slice's own
    prediction, before propagation --, the slices the propagation reached and why it stopped
    each way). ``kwargs`` go to :class:`StructureRun`."""
    if interactions < 1:
        raise ValueError("interactions must be >= 1")
    run = StructureRun(session, gt, **kwargs)
    dices: List[float] = []
    secs: List[float] = []
    steps: List[dict] = []
    for k in range(interactions):
        t0 = time.perf_counter()
        info = run.first_interaction() if k == 0 else run.next_interaction()
        if info is None:
            break
        secs.append(time.perf_counter() - t0)
        steps.append(info)
        dices.append(run.dice())
    dices += [dices[-1]] * (interactions - len(dices))
    gt = run.gt
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    pz = np.nonzero(run.pred.any(axis=(1, 2)))[0]
    record = {
        "voxels": int(gt.sum()),
        "gt_slices": [int(zs[0]), int(zs[-1])],
        "pred_slices": [int(pz[0]), int(pz[-1])] if pz.size else None,
        "dice": [float(d) for d in dices],
        "seconds": [float(s) for s in secs],
        "fp_voxels": int(np.count_nonzero(run.pred & ~gt)),
        "fn_voxels": int(np.count_nonzero(gt & ~run.pred)),
        "interactions": steps,
    }
    return record, run.pred


# --------------------------------------------------------------------------- a set
def _class_names(labels_dir: Path) -> Dict[str, str]:
    for folder in (labels_dir, labels_dir.parent):
        path = folder / "classes.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    return {str(k): str(v) for k, v in data.items()}
            except (OSError, ValueError):
                pass
    return {}


def summarize_volumes(objects: Sequence[dict], interactions: int) -> dict:
    """Mean Dice per interaction, NoI@80/85/90 (mean interactions to reach that Dice, capped
    at ``interactions``), NoF (objects that never reach it), seconds per interaction, and the
    mean 2D Dice of interaction 1's clicked slice alone (``first_slice_dice_mean``)."""
    if not objects:
        return {"num_objects": 0}
    d = np.array([o["dice"][:interactions] for o in objects], dtype=float)
    secs = [s for o in objects for s in o["seconds"]]
    out: Dict[str, Any] = {
        "num_objects": len(objects),
        "dice_per_interaction": [float(v) for v in d.mean(axis=0)],
    }
    firsts = [o["interactions"][0].get("slice_dice") for o in objects if o.get("interactions")]
    if firsts and None not in firsts:  # the clicked slice alone (2D), to set 3D against
        out["first_slice_dice_mean"] = float(np.mean(firsts))
    for t in NOI_THRESHOLDS:
        p = round(t * 100)
        out[f"noi{p}"] = float(np.mean([noc(o["dice"], t, interactions) for o in objects]))
        out[f"nof{p}"] = int(sum(max(o["dice"][:interactions]) < t for o in objects))
    out["seconds_per_interaction_median"] = float(np.median(secs)) if secs else float("nan")
    out["seconds_per_interaction_mean"] = float(np.mean(secs)) if secs else float("nan")
    out["fp_voxels_mean"] = float(np.mean([o["fp_voxels"] for o in objects]))
    return out


def evaluate_volumes(
    predictor: Any,
    images: PathLike,
    labels: PathLike,
    *,
    interactions: int = 6,
    first_prompt: str = "click",
    limit: Optional[int] = None,
    min_voxels: int = 500,
    save_masks: Optional[PathLike] = None,
    propagation: Optional[dict] = None,
    progress: bool = True,
    model_name: Optional[str] = None,
    dataset_name: Optional[str] = None,
    log: Any = None,
) -> Dict[str, Any]:
    """Run the volumetric protocol on every case of ``images`` / ``labels`` (see the module).

    ``limit``: at most that many structures (cases in name order, ids in increasing order).
    ``save_masks``: a folder; ``<case>.tif`` there gets every evaluated structure's final
    prediction under its own id (the labels' dtype; where two predictions overlap, the higher
    id is written last and wins: ``shared_voxels`` in the record counts such voxels).
    ``log``: a callable taking one line (e.g. ``print``) for notes and skipped files.

    Returns ``{"format", "model", "dataset", "protocol", "summary", "per_label", "timing",
    "objects", "skipped"}``; each object ``{"case", "label", "name", "dice", "seconds",
    "fp_voxels", ...}`` (see :func:`run_structure`).
    """
    from ..session import InteractionSession
    from .runner import model_display_name

    if interactions < 1:
        raise ValueError("interactions must be >= 1")
    if min_voxels < 1:
        raise ValueError("min_voxels must be >= 1")
    if first_prompt == "box" and not getattr(predictor, "accepts_boxes", False):
        raise ValueError(f"{model_display_name(predictor, model_name)} takes no box prompts: "
                         "evaluate box-first with a model built for boxes")
    say = log or (lambda line: None)
    cases = find_cases(images, labels)
    names = _class_names(Path(labels))
    out_dir = None
    if save_masks is not None:
        out_dir = Path(save_masks)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--save-masks {out_dir}: is a file, not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"eval3d {model_display_name(predictor, model_name)}", unit="obj",
                       total=limit, dynamic_ncols=True)
        except Exception:  # pragma: no cover
            bar = None
    objects: List[dict] = []
    skipped: List[dict] = []
    t_start = time.perf_counter()
    try:
        for case in cases:
            if limit is not None and len(objects) >= limit:
                break
            volume = read_volume(case.image)
            lab = _as_labels(read_volume(case.labels), case.labels)
            check_case_shapes(case, volume.shape, lab.shape)
            kept, small = structures(lab, min_voxels)
            for i, n in small:
                skipped.append({"case": case.name, "label": i, "voxels": n,
                                "why": f"fewer than {min_voxels} voxels"})
            if not kept:
                say(f"{case.labels}: no structure of at least {min_voxels} voxels "
                    f"({'ids and voxels: ' + str(dict(small)) if small else 'all background'}); skipped")
                continue
            cl = volume_contrast_limits(volume)
            session = InteractionSession(predictor, volume, rgb=False, contrast_limits=cl,
                                         cache_size=volume.shape[0])
            saved = np.zeros(lab.shape, dtype=lab.dtype) if out_dir is not None else None
            finals = {}
            for label_id, n in kept:
                if limit is not None and len(objects) >= limit:
                    break
                rec, final = run_structure(
                    session, lab == label_id, interactions, first_prompt=first_prompt,
                    propagation=propagation, name=f"{case.labels}, id {label_id}")
                objects.append({"case": case.name, "label": label_id,
                                "name": names.get(str(label_id)), **rec})
                finals[label_id] = final
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"dice1": f"{np.mean([o['dice'][0] for o in objects]):.3f}",
                                     f"dice{interactions}": f"{np.mean([o['dice'][-1] for o in objects]):.3f}"})
            if finals:
                count = np.zeros(lab.shape, dtype=np.uint16)
                for final in finals.values():
                    count += final
                for o in objects[len(objects) - len(finals):]:
                    o["shared_voxels"] = int(np.count_nonzero(finals[o["label"]] & (count > 1)))
            if saved is not None and finals:
                import tifffile

                for label_id in sorted(finals):
                    saved[finals[label_id]] = label_id
                path = out_dir / f"{case.name}.tif"
                tifffile.imwrite(str(path), saved, compression="zlib",
                                 metadata={"axes": "ZYX"})
            session.clear_cache()
    finally:
        if bar is not None:
            bar.close()
    if not objects:
        raise ValueError(f"--labels {labels}: no structure of at least {min_voxels} voxels in any case")
    per_label: Dict[str, dict] = {}
    for label_id in sorted({o["label"] for o in objects}):
        objs = [o for o in objects if o["label"] == label_id]
        per_label[str(label_id)] = {"name": names.get(str(label_id)),
                                    **summarize_volumes(objs, interactions)}
    secs = [s for o in objects for s in o["seconds"]]
    return {
        "format": RESULT_FORMAT,
        "model": model_display_name(predictor, model_name),
        "dataset": dataset_name or Path(images).resolve().parent.name,
        "protocol": {
            "interactions": int(interactions),
            "first_prompt": first_prompt,
            "min_voxels": int(min_voxels),
            "first_interaction": ("the 2D box of the largest slice" if first_prompt == "box" else
                                  "a positive click at the interior point of the largest slice, "
                                  "top-scored proposal") + ", then propagation both ways",
            "next_interactions": "a click at the interior point of the largest 3D error region "
                                 "on its largest slice; that slice predicted again, propagation "
                                 "from it up to anchor slices or a stop rule (cleared past a stop)",
            "propagation": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in (DEFAULT_PROPAGATION if propagation is None else propagation).items()},
            "threshold": "sigmoid(logit) > 0.49",
            "intensity_window": "uint8: (0, 255); else the 0.5/99.5 percentiles of the volume",
            "zoom_in": getattr(predictor, "zoom_in", None) is not None,
        },
        "summary": {"num_cases": len({o["case"] for o in objects}), **summarize_volumes(objects, interactions)},
        "per_label": per_label,
        "timing": {"wall_s": float(time.perf_counter() - t_start),
                   "seconds_total": float(np.sum(secs)) if secs else 0.0,
                   "device": str(getattr(predictor, "device", "cpu"))},
        "skipped": skipped,
        "objects": objects,
    }

"""The interaction session: clicks, proposals, undo, commit and 3D propagation. No Qt.

``InteractionSession`` turns a predictor (``napari_ois.OISPredictor`` or anything with the
same ``set_image``/``predict``/``state``/``set_state`` methods) into the click-by-click
workflow of the napari plugin. It can be driven directly from a script or the napari
console (see ``docs/plugin.md``)::

    from napari_ois import load_predictor
    from napari_ois.session import InteractionSession

    session = InteractionSession(load_predictor("default"), image)   # (H, W[, C]) or a stack
    session.add_click((120, 245))                  # first click: K proposals, best selected
    session.select_proposal(1)                     # choose another proposal
    session.add_click((130, 300), positive=False)  # refine with a negative click
    session.set_box((40, 60, 200, 310))            # or start (or redo) an object from a box
    session.undo()                                 # drop the last click, restore the mask
    mask = session.commit()                        # write a new label id, start the next object
    session.labels                                 # the committed objects (int32 label image)

Images are a single 2D image (``(H, W)`` or ``(H, W, C)`` with ``rgb=True``) or a stack
whose last two (spatial) axes are the image plane: ``(Z, H, W)``, ``(T, Z, H, W)``, ... . A
2D slice is addressed by its *key*, the tuple of its leading indices (``()`` for a 2D
image, ``(z,)`` for a 3D stack). Every slice has its own current object, click history and
cached embedding.

Threading: the napari widget splits a prediction into ``request`` (GUI thread),
``compute`` (worker thread: the only method that touches the predictor, together with
``ensure_embedding`` and ``iter_propagate``) and ``apply`` (GUI thread). ``apply`` refuses
results that no longer match the object (an undo, a proposal change, a commit or a reset
happened meanwhile), so a stale mask never replaces a newer one. Use one worker at a time:
the predictor is not thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .data.clicks import Click
from .data.prompts import Box, wants_proposals
from .propagation import interior_point, propagate_slices
from .propagation import slice_name as _ordinal
from .label_writes import as_int as _as_int
from .label_writes import check_label_fits as _check_label_fits
from .label_writes import next_label_id, paint_indices, write_indices
from .session_records import (
    CommitRecord,
    EditedLabel,
    Key,
    ObjectState,
    PredictionRequest,
    PredictionResult,
    PropagationStep,
    advances,
    compact,
    expand,
    restarted,
    snapshot_nbytes,
)

__all__ = ["InteractionSession", "next_label_id", "paint_indices", "interior_point"]

FIRST_CLICK_POSITIVE = (
    "the first click of an object must be positive: click on the object first "
    "(negative clicks then remove parts of it)"
)


@dataclass
class _Slice:
    obj: ObjectState = field(default_factory=ObjectState)
    history: list = field(default_factory=list)  # [(epoch pushed in, ObjectState before)]
    epoch: int = 0


# --------------------------------------------------------------------------- session
class InteractionSession:
    """Clicks of the current object, proposals, undo and commit, per image or 2D slice.

    Args:
        predictor: an ``OISPredictor`` (or a compatible object); may be None and set later
            with ``set_predictor``.
        image: a 2D image, an RGB(A) image (``rgb=True``) or a stack ``(..., H, W[, C])``.
            Numpy or any array that slices to numpy (dask, zarr).
        rgb: whether the last axis holds colour channels. None guesses: a 3D array whose
            last axis has 3 or 4 entries is RGB(A) (napari's rule).
        contrast_limits: intensity window passed to ``set_image`` (e.g. the napari layer's
            contrast limits), so that the model sees what the user sees.
        depth: optional depth map with the image's spatial shape (one 2D map per slice).
        labels: optional integer array with the image's spatial shape that ``commit``
            writes into; created (int32 zeros) at the first commit when not given.
        max_proposals: keep only the best ``max_proposals`` first-click proposals.
        cache_size: how many slice embeddings to keep (least recently used are dropped).
        channels: which channel(s) the model sees: one index (grey) or three (RGB), of the
            colour axis (``rgb``) or of ``channel_axis``; None: the default rule.
        channel_axis: the axis of ``image`` that holds channels (napari's ``channel_axis``;
            e.g. 0 for ``(C, H, W)`` or ``(C, Z, H, W)``); not counted as a spatial axis.

    ``image`` may also be a multiscale pyramid (a list of arrays, largest first, as napari's
    multiscale layers hold; their leading axes the same at every level). Big, lazy (dask,
    zarr) and multiscale images are read by window (the predictor's window mode): the
    object's mask is then kept for a window of the plane (``ObjectState.window``,
    ``mask_window``), and ``mask`` pastes it into the whole plane on demand.
    """

    def __init__(
        self,
        predictor: Any,
        image: Any,
        *,
        rgb: Optional[bool] = None,
        contrast_limits: Optional[Sequence[float]] = None,
        depth: Optional[np.ndarray] = None,
        labels: Optional[np.ndarray] = None,
        max_proposals: Optional[int] = None,
        cache_size: int = 32,
        channels: Any = None,
        channel_axis: Optional[int] = None,
    ):
        from .data.windows import WindowReader, is_pyramid

        self.pyramid = is_pyramid(image)
        if self.pyramid:
            image = list(image)
        shape = tuple(int(s) for s in np.shape(image[0] if self.pyramid else image))
        self.channel_axis: Optional[int] = None
        if channel_axis is not None:
            if rgb:
                raise ValueError("rgb=True and channel_axis exclude each other: give one of them")
            ax = int(channel_axis)
            if not -len(shape) <= ax < len(shape):
                raise ValueError(f"channel_axis {channel_axis} is not an axis of the image (shape {shape})")
            ax %= len(shape)
            if ax == len(shape) - 2 or len(shape) < 3:
                raise ValueError(f"channel_axis {channel_axis} of an image of shape {shape}: the channels "
                                 "must be before the plane's two axes or the last axis")
            self.channel_axis = ax
            rgb = False
        elif rgb is None:  # napari's guess, without its 30-px floor: (..., H, W, 3 or 4) is colour
            rgb = len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > shape[-1]
        if self.channel_axis is not None:
            spatial = shape[:self.channel_axis] + shape[self.channel_axis + 1:]
            n_channels = shape[self.channel_axis]
        else:
            spatial = shape[:-1] if rgb else shape
            n_channels = shape[-1] if rgb else 1
        if channels is not None:  # checked now, not at the first click
            WindowReader._channel_mode(channels, int(n_channels))
        self.channels = channels
        lead = {tuple(int(v) for v in np.shape(lv))[:len(spatial) - 2 + (self.channel_axis is not None
                                                                          and self.channel_axis < len(spatial) - 2)]
                for lv in (image if self.pyramid else [])}
        if self.pyramid and len(lead) > 1 and len(spatial) > 2:
            raise ValueError("a multiscale stack must keep its leading (slice) axes at every level; "
                             f"got levels of shapes {[tuple(np.shape(lv)) for lv in image]}")
        if len(spatial) < 2:
            raise ValueError(f"image has shape {shape}: it needs at least two spatial axes (H, W)")
        if min(spatial[-2:]) < 1:
            raise ValueError(f"image has shape {shape}: its plane is empty")
        self.image = image
        self.rgb = bool(rgb)
        self.spatial_shape: tuple = spatial
        from .data.images import check_contrast_limits

        self.contrast_limits = check_contrast_limits(contrast_limits)
        self.depth = None
        if depth is not None:
            self._check_depth(depth)
            self.depth = depth
        self.labels = None
        if labels is not None:
            self._check_labels(labels)
            self.labels = labels
        self.max_proposals = max_proposals
        self.cache_size = int(cache_size)
        self.predictor = predictor
        self.last_commit: Optional[CommitRecord] = None
        #: why the last propagation stopped, per direction (+1 / -1), in words
        self.propagation_stops: dict = {}
        self._slices: dict = {}
        self._cache: "OrderedDict[Key, Any]" = OrderedDict()
        self._cache_gen = 0
        self._lock = threading.RLock()
        self._current: Key = (0,) * (len(spatial) - 2)

    # ----------------------------------------------------------------- geometry
    @property
    def plane_shape(self) -> tuple:
        """(H, W) of one slice."""
        return self.spatial_shape[-2:]

    @property
    def leading_shape(self) -> tuple:
        """Shape of the slice index: () for a 2D image, (Z,) for a 3D stack, ..."""
        return self.spatial_shape[:-2]

    @property
    def is_stack(self) -> bool:
        return len(self.leading_shape) > 0

    @property
    def num_proposals(self) -> int:
        k = int(getattr(self.predictor, "num_proposals", 1) or 1)
        return k if self.max_proposals is None else max(1, min(k, int(self.max_proposals)))

    def check_key(self, key: Any) -> Key:
        """Normalise a slice index (int, sequence or None for the current slice) to a key."""
        if key is None:
            return self._current
        if np.isscalar(key):
            key = (key,)
        key = tuple(key)
        lead = self.leading_shape
        if len(key) != len(lead):
            raise ValueError(
                f"slice index {key} has {len(key)} entries; this image has {len(lead)} leading "
                f"axes (shape {self.spatial_shape})"
            )
        out = []
        for k, n in zip(key, lead):
            try:
                fk = float(k)
            except (TypeError, ValueError):
                raise ValueError(f"slice index {key!r} must be numbers (one per leading axis)") from None
            if not np.isfinite(fk):
                raise ValueError(f"slice index {key} is not finite")
            i = int(round(float(k)))
            if not 0 <= i < n:
                raise ValueError(f"slice index {key} lies outside the stack of shape {lead}")
            out.append(i)
        return tuple(out)

    @property
    def current_key(self) -> Key:
        return self._current

    def set_slice(self, key: Any) -> Key:
        """Make ``key`` the current slice (the default for every per-slice method)."""
        self._current = self.check_key(key)
        return self._current

    def split_point(self, point: Sequence[float], key: Any = None) -> tuple[Key, float, float]:
        """``(row, col)`` (on ``key`` or the current slice) or a full ``(*index, row, col)``
        coordinate -> ``(key, row, col)``, checked against the image."""
        lead = len(self.leading_shape)
        try:
            if point is None or isinstance(point, (str, bytes)):
                raise TypeError
            pt = [float(v) for v in np.asarray(point, dtype=float).reshape(-1)]
        except (TypeError, ValueError):
            raise ValueError(
                f"a click needs numbers: (row, col) or {lead + 2} coordinates (slice index + row, col); "
                f"got {point!r}"
            ) from None
        if len(pt) == 2:
            k = self.check_key(key)
        elif len(pt) == lead + 2:
            k = self.check_key(pt[:lead])
        else:
            raise ValueError(
                f"a click needs (row, col) or {lead + 2} coordinates (slice index + row, col); got {pt}"
            )
        r, c = pt[-2], pt[-1]
        h, w = self.plane_shape
        if not (np.isfinite(r) and np.isfinite(c)):
            raise ValueError(f"click ({r}, {c}) is not finite")
        # napari pixel centres are integers: pixel i covers [i - 0.5, i + 0.5)
        if not (-0.5 <= r < h - 0.5 and -0.5 <= c < w - 0.5):
            raise ValueError(
                f"click (row {r:.1f}, col {c:.1f}) lies outside the image plane of {h} x {w} pixels"
            )
        return k, float(min(max(r, 0.0), h - 1)), float(min(max(c, 0.0), w - 1))

    def image_slice(self, key: Any = None) -> np.ndarray:
        """The 2D image (``(H, W)`` or ``(H, W, C)``) of slice ``key``, as numpy (read whole:
        a pyramid's largest level; a channel axis last)."""
        key = self.check_key(key)
        plane = self._plane(key)
        if self.pyramid:
            plane = plane[0]
        plane = np.asarray(plane)
        return np.moveaxis(plane, 0, -1) if self._channels_first() else plane

    def plane_to_read(self, key: Any = None) -> Any:
        """Slice ``key`` for a reader that works by window (``segment_all``): the lazy plane or
        the pyramid's planes themselves where the image is lazy or multiscale and has no
        channel choice; otherwise ``image_slice``."""
        key = self.check_key(key)
        plane = self._plane(key)
        lazy = self.pyramid or not isinstance(plane, np.ndarray)
        return plane if lazy and self.channel_axis is None and self.channels is None else self.image_slice(key)

    def _channels_first(self) -> bool:
        return self.channel_axis is not None and self.channel_axis != len(self.spatial_shape)

    def _index(self, array: Any, key: Key) -> Any:
        """``array``'s plane of slice ``key`` (lazy arrays stay lazy)."""
        if not key:
            return array
        if self._channels_first():
            idx = list(key)
            idx.insert(self.channel_axis, slice(None))
            return array[tuple(idx)]
        return array[key]

    def _plane(self, key: Key) -> Any:
        """What the predictor reads for slice ``key``: the plane (``(H, W)``, ``(H, W, C)``
        or ``(C, H, W)``), or the list of a pyramid's planes; never read whole here."""
        if self.pyramid:
            return [self._index(level, key) for level in self.image]
        return self._index(self.image, key)

    def _image_options(self) -> dict:
        """``set_image``'s channel keywords, given only when set (any predictor works)."""
        opts = {}
        if self.channels is not None:
            opts["channels"] = self.channels
        if self._channels_first():
            opts["channel_axis"] = 0
        return opts

    # ----------------------------------------------------------------- settings
    def _check_depth(self, depth) -> None:
        if tuple(np.shape(depth)) != tuple(self.spatial_shape):
            raise ValueError(
                f"the depth map has shape {tuple(np.shape(depth))}; it must match the image's "
                f"spatial shape {self.spatial_shape}"
            )

    def _check_labels(self, labels) -> None:
        if not (hasattr(labels, "shape") and hasattr(labels, "dtype") and hasattr(labels, "__setitem__")):
            raise ValueError(
                f"the labels must be an integer array (numpy) of shape {self.spatial_shape}; got "
                f"{type(labels).__name__}"
            )
        if tuple(np.shape(labels)) != tuple(self.spatial_shape):
            raise ValueError(
                f"the labels have shape {tuple(np.shape(labels))}; they must match the image's "
                f"spatial shape {self.spatial_shape}"
            )

    def clear_cache(self) -> None:
        """Forget all slice embeddings (they are recomputed on demand)."""
        with self._lock:
            self._cache.clear()
            self._cache_gen += 1

    def set_contrast_limits(self, contrast_limits: Optional[Sequence[float]]) -> None:
        from .data.images import check_contrast_limits

        new = check_contrast_limits(contrast_limits)
        if new != self.contrast_limits:
            self.contrast_limits = new
            self.clear_cache()

    def set_depth(self, depth: Optional[np.ndarray]) -> None:
        if depth is not None:
            self._check_depth(depth)
        self.depth = depth
        self.clear_cache()

    def set_predictor(self, predictor: Any) -> None:
        """Use another model: embeddings are dropped and every object keeps its clicks but is
        predicted again by the new model (its undo history is cleared). A model without box
        prompts drops the boxes (and an object whose first click is negative is reset)."""
        self.predictor = predictor
        self.clear_cache()
        boxes = bool(getattr(predictor, "accepts_boxes", False))
        for st in self._slices.values():
            st.epoch += 1
            st.history.clear()
            clicks, box = st.obj.clicks, st.obj.box if boxes else None
            if box is None and clicks and not clicks[0].positive:
                clicks = ()
            st.obj = ObjectState(clicks=clicks, box=box)

    # ----------------------------------------------------------------- embeddings
    def is_embedded(self, key: Any = None) -> bool:
        key = self.check_key(key)
        with self._lock:
            return key in self._cache

    def ensure_embedding(self, key: Any = None) -> bool:
        """Make slice ``key`` the predictor's current image, computing its embedding unless it
        is cached. Returns True when it had to be computed. (Worker thread.)"""
        key = self.check_key(key)
        if self.predictor is None:
            raise RuntimeError("no model is loaded: load one before clicking")
        with self._lock:
            state = self._cache.get(key)
            gen = self._cache_gen
            if state is not None:
                self._cache.move_to_end(key)
        if state is not None:
            self.predictor.set_state(state)
            return False
        depth = None
        if self.depth is not None:
            depth = np.asarray(self.depth[key] if key else self.depth)
        state = self.predictor.set_image(
            self._plane(key), depth=depth, contrast_limits=self.contrast_limits, **self._image_options()
        )
        if state is None:  # a predictor whose set_image returns nothing
            state = self.predictor.state
        with self._lock:
            if gen == self._cache_gen:
                self._cache[key] = state
                while len(self._cache) > max(1, self.cache_size):
                    self._cache.popitem(last=False)
        return True

    # ----------------------------------------------------------------- state access
    def _slice(self, key: Key) -> _Slice:
        st = self._slices.get(key)
        if st is None:
            st = self._slices[key] = _Slice()
        return st

    def state(self, key: Any = None) -> ObjectState:
        """The current object of slice ``key`` (default: the current slice)."""
        return self._slice(self.check_key(key)).obj

    def clicks(self, key: Any = None) -> tuple:
        return self.state(key).clicks

    def box(self, key: Any = None) -> Optional[Box]:
        """The box prompt of slice ``key``'s current object, or None."""
        return self.state(key).box

    def mask(self, key: Any = None) -> Optional[np.ndarray]:
        """The current object's (H, W) bool mask on slice ``key``, or None."""
        return self.state(key).mask

    def mask_window(self, key: Any = None) -> tuple:
        """``(mask, window)``: the current object's mask as kept, for ``window = (r0, r1, c0,
        c1)`` of the plane on big images (None: the mask covers the whole plane); ``(None,
        None)`` before the first prediction."""
        obj = self.state(key)
        crop = obj.mask_crop
        return crop, (None if crop is None else obj.window)

    def proposals(self, key: Any = None):
        """The first click's ``Prediction`` (masks, scores, logits; best first) or None."""
        return self.state(key).proposals

    def can_undo(self, key: Any = None) -> bool:
        return bool(self._slice(self.check_key(key)).history)

    def active_keys(self) -> list:
        """Slices that have a current (uncommitted) object with clicks or a box."""
        return [k for k, st in self._slices.items() if st.obj.has_prompt]

    def all_clicks(self) -> list:
        """``[(key, Click), ...]`` of every slice's current object, slices in sorted order."""
        return [(k, c) for k in sorted(self.active_keys()) for c in self._slices[k].obj.clicks]

    def _push(self, st: _Slice) -> None:
        st.history.append((st.epoch, compact(st.obj)))

    def undo_nbytes(self, key: Any = None) -> list:
        """Bytes held by each undo step of slice ``key`` (oldest first), not counting the
        first click's proposals (held once per object)."""
        return [snapshot_nbytes(snap) for _, snap in self._slice(self.check_key(key)).history]

    # ----------------------------------------------------------------- editing (GUI thread)
    def push_click(self, point: Sequence[float], positive: bool = True, key: Any = None) -> tuple[Key, Click]:
        """Record a click without predicting (see ``add_click``). Returns ``(key, click)``.

        ``point`` is ``(row, col)`` on slice ``key`` (default current) or a full coordinate
        ``(*slice_index, row, col)``; the clicked slice becomes the current one. Raises
        ``ValueError`` for a click outside the image.
        """
        k, r, c = self.split_point(point, key)
        st = self._slice(k)
        if not positive and not st.obj.clicks and st.obj.box is None and st.obj.edit is None:
            raise ValueError(FIRST_CLICK_POSITIVE)
        self._current = k
        self._push(st)
        click = Click(r, c, bool(positive))
        st.obj = replace(st.obj, clicks=st.obj.clicks + (click,))
        return k, click

    def set_box(self, box: Any, key: Any = None) -> Key:
        """Give slice ``key``'s object a box prompt (a ``Box``, ``(r0, c0, r1, c1)``, or the
        corners of a napari rectangle), replacing its box; ``None`` removes it. The object is
        then predicted again from its box and all its clicks (undoable). Needs a predictor
        with box prompts. Returns the slice key."""
        k = self.check_key(key)
        st = self._slice(k)
        if box is not None:
            if not getattr(self.predictor, "accepts_boxes", False):
                raise ValueError("this model takes no box prompts: click on the object instead "
                                 "(or choose a model built for boxes)")
            box = Box.coerce(box).clipped(self.plane_shape)
        if box == st.obj.box:
            return k
        if box is None and st.obj.clicks and not st.obj.clicks[0].positive and st.obj.edit is None:
            raise ValueError(FIRST_CLICK_POSITIVE + " (without a box; delete the negative "
                             "clicks first, or reset the object)")
        self._current = k
        self._push(st)
        st.epoch += 1
        st.obj = restarted(st.obj, self.plane_shape, st.obj.clicks, box)
        return k

    def undo(self, key: Any = None) -> bool:
        """Drop the last click (or proposal choice, or reset) of slice ``key``; the previous
        mask comes back. Returns False when there is nothing to undo."""
        st = self._slice(self.check_key(key))
        if not st.history:
            return False
        _, snap = st.history.pop()
        st.obj = expand(snap)
        st.epoch += 1
        return True

    def select_proposal(self, index: int, key: Any = None) -> Optional[np.ndarray]:
        """Choose first-click proposal ``index`` (0 = best). With later clicks, those are
        predicted again starting from the chosen proposal. Returns the (new) mask."""
        k = self.check_key(key)
        st = self._slice(k)
        prop = st.obj.proposals
        if prop is None:
            raise ValueError(f"no proposals on {_ordinal(k)}: click first")
        n = len(prop.masks)
        index = _as_int(index, "the proposal index")
        if not 0 <= index < n:
            raise ValueError(f"proposal {index} does not exist: there are {n} (0..{n - 1})")
        if index == st.obj.selected and st.obj.n_applied >= 1:
            return st.obj.mask
        self._push(st)
        st.epoch += 1
        st.obj = replace(
            st.obj, selected=index, logits=prop.logits[index],
            score=float(prop.scores[index]), n_applied=1, packed=None,
            window=getattr(prop, "window", None),
        )
        return st.obj.mask

    def cycle_proposal(self, step: int = 1, key: Any = None) -> Optional[np.ndarray]:
        """Select the next (``step=1``) or previous (``-1``) proposal, wrapping around."""
        obj = self.state(key)
        if obj.proposals is None:
            raise ValueError("no proposals yet: click first")
        n = len(obj.proposals.masks)
        return self.select_proposal((obj.selected + _as_int(step, "the proposal step")) % n, key)

    def reset_object(self, key: Any = None) -> None:
        """Drop every click of the current object of slice ``key`` (undoable). An edited label
        with clicks goes back to the label as it was; without them the edit is dropped."""
        st = self._slice(self.check_key(key))
        if st.obj.has_prompt or st.obj.logits is not None:
            self._push(st)
        st.epoch += 1
        edit = st.obj.edit
        st.obj = edit.state(self.plane_shape) if edit is not None and (
            st.obj.clicks or st.obj.box is not None) else ObjectState()

    def clear(self) -> None:
        """Drop every slice's current object and history (committed labels are kept)."""
        for st in self._slices.values():
            st.epoch += 1
        self._slices.clear()

    def replace_clicks(self, clicks: Sequence[Click], key: Any = None) -> None:
        """Set the clicks of slice ``key``'s object (e.g. after points were edited by hand);
        the object is predicted again from scratch (undoable)."""
        st = self._slice(self.check_key(key))
        clicks = tuple(clicks)
        if clicks == st.obj.clicks:
            return
        if clicks and not clicks[0].positive and st.obj.box is None and st.obj.edit is None:
            raise ValueError(FIRST_CLICK_POSITIVE + " (delete the negative clicks first, or reset the object)")
        self._push(st)
        st.epoch += 1
        st.obj = restarted(st.obj, self.plane_shape, clicks, st.obj.box)

    def edit_label(self, label_id: int, labels: Optional[np.ndarray] = None, key: Any = None) -> np.ndarray:
        """Take label ``label_id`` of ``labels`` (default ``self.labels``) on slice ``key``
        (default current) as the current object: its mask is that label's pixels, the next
        click refines it (the mask is its ``prev_mask``; no first-click proposals; a first
        click may be negative), and ``commit`` writes it back under the same id, its removed
        pixels set to 0 (other ids untouched unless ``overwrite``). The slice's uncommitted
        object is dropped (undo starts from the label). Returns the (H, W) mask."""
        k = self.check_key(key)
        lid = _as_int(label_id, "the label id")
        if lid < 1:
            raise ValueError(f"label id must be >= 1 (0 is background); got {lid}")
        target = self._target(labels)
        edit = EditedLabel.take(np.asarray(target[k] if k else target), lid)
        if edit is None:
            raise ValueError(f"label {lid} is not in the labels{f' on slice {k}' if k else ''}")
        st = self._slice(k)
        st.epoch += 1
        st.history.clear()
        st.obj = edit.state(self.plane_shape)
        self._current = k
        return st.obj.mask

    # ----------------------------------------------------------------- prediction (split)
    def needs_prediction(self, key: Any = None) -> bool:
        return self.state(key).pending

    def request(self, key: Any = None) -> Optional[PredictionRequest]:
        """A snapshot of what to predict next on slice ``key`` (None when up to date).

        An object's first click is predicted alone (K proposals, ``wants_proposals``); later
        clicks are predicted together with the current mask as ``prev_mask`` (only the latest
        state: clicks that came in while a prediction ran are predicted in one go). A box is
        predicted with all the object's clicks, then stays part of every later request."""
        k = self.check_key(key)
        st = self._slice(k)
        obj = st.obj
        if not obj.pending:
            return None
        fresh = obj.proposals is None and obj.logits is None
        if fresh and wants_proposals(1, obj.box):
            return PredictionRequest(k, st.epoch, obj.clicks[:1], None, True)
        prev = None if fresh else obj.logits
        return PredictionRequest(k, st.epoch, obj.clicks, prev, False, obj.box,
                                 prev_window=None if fresh else obj.window)

    def compute(self, request: PredictionRequest) -> PredictionResult:
        """Run the model for ``request`` (worker thread). Touches only the predictor."""
        t0 = time.perf_counter()
        embedded = self.ensure_embedding(request.key)
        pts = [[c.row, c.col] for c in request.clicks]
        lab = [1 if c.positive else 0 for c in request.clicks]
        box = {} if request.box is None else {"box": request.box}
        if request.prev_window is not None:
            box["prev_window"] = request.prev_window
        pred = self.predictor.predict(pts, lab, prev_mask=request.prev_mask,
                                      multimask=request.multimask, **box)
        return PredictionResult(request, pred, time.perf_counter() - t0, embedded)

    def apply(self, result: PredictionResult) -> bool:
        """Take a computed prediction into the object (GUI thread). Returns False, changing
        nothing, when the result is stale (the object changed in another way than by new
        clicks since the request) or older than what is shown."""
        req = result.request
        st = self._slices.get(req.key)
        if st is None or st.epoch != req.epoch:
            return False
        n = len(req.clicks)
        obj = st.obj
        if n > len(obj.clicks) or obj.clicks[:n] != req.clicks or req.box != obj.box:
            return False
        if not advances(obj, req):
            return False
        new = self._updated(obj, result)
        st.obj = new
        # undo snapshots of the same state, taken while this prediction ran, get it too
        for i, (ep, snap) in enumerate(st.history):
            if (ep == req.epoch and snap.clicks == req.clicks and snap.box == req.box
                    and advances(snap, req)):
                st.history[i] = (ep, compact(self._updated(snap, result)))
        return True

    def _updated(self, obj: ObjectState, result: PredictionResult) -> ObjectState:
        pred = result.prediction
        n = len(result.request.clicks)
        if result.request.multimask:
            k = len(pred.masks)
            if self.max_proposals is not None:
                k = max(1, min(k, int(self.max_proposals)))
            prop = replace(  # same Prediction type, best k proposals (no torch import here)
                pred, masks=np.asarray(pred.masks[:k]), scores=np.asarray(pred.scores[:k]),
                logits=np.asarray(pred.logits[:k]),
            )
            return replace(obj, proposals=prop, selected=0, logits=prop.logits[0],
                           score=float(prop.scores[0]), n_applied=n, packed=None,
                           window=getattr(pred, "window", None), plane=self.plane_shape)
        return replace(obj, logits=np.asarray(pred.logits[0]), score=float(pred.scores[0]),
                       n_applied=n, packed=None, box_applied=result.request.box is not None,
                       window=getattr(pred, "window", None), plane=self.plane_shape)

    def predict_pending(self, key: Any = None) -> Optional[np.ndarray]:
        """Predict synchronously until slice ``key``'s mask reflects all its clicks."""
        k = self.check_key(key)
        while True:
            req = self.request(k)
            if req is None:
                return self.mask(k)
            if not self.apply(self.compute(req)):  # pragma: no cover - single-threaded use
                raise RuntimeError("internal error: a synchronous prediction was refused")

    # ----------------------------------------------------------------- one-call API
    def add_click(self, point: Sequence[float], positive: bool = True, key: Any = None) -> np.ndarray:
        """Add a click to the current object and predict. Returns the object's mask.

        The first click of an object yields ``num_proposals`` proposals (the best one is
        selected; see ``proposals`` and ``select_proposal``); every later click refines the
        selected mask (it is fed back as ``prev_mask``)."""
        k, _ = self.push_click(point, positive, key)
        return self.predict_pending(k)

    def commit(
        self,
        labels: Optional[np.ndarray] = None,
        *,
        key: Any = None,
        overwrite: bool = False,
        label_id: Optional[int] = None,
        writer: Optional[Callable[[tuple, int], Any]] = None,
    ) -> np.ndarray:
        """Write the current object of slice ``key`` with a new label id and start the next
        object. Returns the object's (H, W) mask.

        Args:
            labels: integer array with the image's spatial shape to write into; default
                ``self.labels`` (created as int32 zeros on first use).
            overwrite: False (default) keeps every existing label: only unlabelled pixels get
                the new id. True writes the whole mask.
            label_id: the id to use; default ``next_label_id(labels)`` (max + 1).
            writer: ``writer(indices, label_id)`` does the writing instead of
                ``labels[indices] = label_id`` (the widget passes ``Labels.data_setitem``).
        """
        k = self.check_key(key)
        st = self._slice(k)
        mask = st.obj.mask
        if mask is None or not mask.any():
            what = "clicks still being predicted" if st.obj.pending else "no object"
            raise ValueError(f"nothing to commit on {_ordinal(k)}: {what} (click on an object first)")
        target = self._target(labels)
        edit = st.obj.edit
        if edit is not None and label_id is not None and _as_int(label_id, "the label id") != edit.label_id:
            raise ValueError(f"this object is label {edit.label_id} (edit_label): it is committed under that id")
        if edit is not None:
            label_id = edit.label_id
        lid = next_label_id(target) if label_id is None else _as_int(label_id, "the label id")
        if lid < 1:
            raise ValueError(f"label id must be >= 1 (0 is background); got {lid}")
        _check_label_fits(target, lid)
        if not overwrite and edit is None and len(paint_indices(target, k, mask, overwrite=False)[-1]) == 0:
            raise ValueError(
                f"nothing to commit on {_ordinal(k)}: the object ({int(mask.sum())} px) lies entirely "
                "on existing labels, which are kept; turn on overwrite to replace them, or refine "
                "the object (it and its clicks are kept)"
            )
        lid = self.write_mask(target, k, mask, label_id=lid, overwrite=overwrite, writer=writer,
                              replace=edit is not None)
        self.last_commit = CommitRecord(k, lid, mask, st.obj.clicks, replace=edit is not None)
        st.epoch += 1
        st.history.clear()
        st.obj = ObjectState()
        return mask

    def _target(self, labels: Optional[np.ndarray]) -> np.ndarray:
        if labels is not None:
            self._check_labels(labels)
            return labels
        if self.labels is None:
            self.labels = np.zeros(self.spatial_shape, np.int32)
        return self.labels

    def write_mask(
        self,
        labels: np.ndarray,
        key: Any,
        mask: np.ndarray,
        *,
        label_id: Optional[int] = None,
        overwrite: bool = False,
        writer: Optional[Callable[[tuple, int], Any]] = None,
        replace: bool = False,
    ) -> int:
        """Write ``mask`` on slice ``key`` of ``labels`` with ``label_id`` (default a new id),
        keeping existing labels unless ``overwrite``. ``replace``: the mask replaces that
        label on the slice (its pixels outside the mask become 0; one ``writer`` call, with
        an array of values). Returns the id."""
        k = self.check_key(key)
        lid = next_label_id(labels) if label_id is None else _as_int(label_id, "the label id")
        if lid < 1:
            raise ValueError(f"label id must be >= 1 (0 is background); got {lid}")
        _check_label_fits(labels, lid)
        idx, value = write_indices(labels, k, mask, lid, overwrite, replace)
        if writer is not None:
            writer(idx, value)
        else:
            labels[idx] = value
        return lid

    # ----------------------------------------------------------------- 3D propagation
    def iter_propagate(
        self,
        key: Any = None,
        mask: Optional[np.ndarray] = None,
        *,
        axis: int = -1,
        clicks: Optional[Sequence[Click]] = None,
        **rules: Any,
    ) -> Iterator[PropagationStep]:
        """Extend a mask from slice ``key`` through its neighbours along a leading axis.

        The walk and its stop rules are ``napari_ois.propagation.propagate_slices`` (see
        there): the mask on slice z is the prompt for z +- 1 (``propagation.slice_prompt``:
        ``prev_mask`` = that mask, one positive click at its interior point, and the object's
        own ``clicks`` that still agree with that mask). A direction stops when the object
        vanishes (``min_area``; ``stop_empty``), is lost, changes area suddenly
        (``area_ratio``), no longer overlaps the previous slice (``min_overlap``), has a low
        predicted quality (``min_score``), at an anchor slice (``stop_at``: indices along
        ``axis`` never entered), outside ``z_range`` (``(lo, hi)`` inclusive, along ``axis``),
        at the end of the stack, after ``max_slices``, or when ``should_stop()`` returns True.

        ``propagation_stops`` tells why, per direction (+1 / -1), in words.
        (Worker thread: it runs the predictor.)

        Args:
            key: the start slice (default current); ``mask`` its mask (default the current
                object's mask there).
            axis: which leading axis to walk (default the last one, the one next to H, W).
            clicks: the object's clicks on the start slice (``Click``); default: the clicks
                of the current object there when ``mask`` is None, else none.
            rules: ``propagate_slices``' keywords, with its defaults (``directions``: +1,
                -1 or both, +1 first; the stop rules of ``propagation.STOP_RULES``;
                ``stop_at``, ``z_range``, ``should_stop``).
        """
        k = self.check_key(key)
        if clicks is None:
            clicks = self.clicks(k) if mask is None else ()
        clicks = tuple(clicks)
        if not self.is_stack:
            raise ValueError("propagation needs a stack (3D or more): this image is a single 2D plane")
        if mask is None:
            mask = self.mask(k)
        if mask is None or not np.asarray(mask).any():
            raise ValueError(f"nothing to propagate on {_ordinal(k)}: segment an object there first")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(self.plane_shape):
            raise ValueError(f"mask has shape {mask.shape}; the image plane is {self.plane_shape}")
        if not isinstance(axis, (int, np.integer)) or not -len(self.leading_shape) <= axis < len(self.leading_shape):
            raise ValueError(f"axis {axis!r} is not a leading axis of this stack (shape {self.leading_shape})")
        ax = range(len(self.leading_shape))[axis]

        def key_of(z: int) -> Key:
            return k[:ax] + (int(z),) + k[ax + 1:]

        def predict_slice(z: int, points: list, labels: list, prev_mask: np.ndarray) -> tuple:
            self.ensure_embedding(key_of(z))
            out = self.predictor.predict(points, labels, prev_mask=prev_mask, multimask=False)
            if getattr(out, "window", None) is not None:  # a big image's window: the whole plane
                return out.full_mask(0), float(out.scores[0])
            return out.masks[0], float(out.scores[0])

        self.propagation_stops = {}
        yield from propagate_slices(
            predict_slice, self.plane_shape, self.leading_shape[ax], k[ax], mask, clicks,
            stops=self.propagation_stops, key_of=key_of,
            prompt=getattr(self.predictor, "propagation_prompt", "clicks"), **rules,
        )

    def iter_propagate_commit(self, record: CommitRecord, **kwargs: Any) -> Iterator[PropagationStep]:
        """``iter_propagate`` from a committed object: from its slice and mask, guided by the
        clicks that made it unless ``clicks`` is given (the one place that default lives)."""
        kwargs.setdefault("clicks", record.clicks)
        return self.iter_propagate(record.key, record.mask, **kwargs)

    def propagate(
        self,
        labels: Optional[np.ndarray] = None,
        *,
        key: Any = None,
        label_id: Optional[int] = None,
        overwrite: bool = False,
        writer: Optional[Callable[[tuple, int], Any]] = None,
        **kwargs: Any,
    ) -> list:
        """Commit-and-propagate in one call (synchronous). Returns the slices written.

        Starts from the current object of slice ``key`` (committing it first, with a new id)
        or, without one, from the last committed object (same id). Every slice reached by
        ``iter_propagate`` (``kwargs`` go there) is written with that id, keeping existing
        labels unless ``overwrite``."""
        k = self.check_key(key)
        target = self._target(labels)
        mask = self.mask(k)
        if mask is not None and mask.any():
            self.commit(target, key=k, overwrite=overwrite, label_id=label_id, writer=writer)
        elif self.last_commit is None:
            raise ValueError("nothing to propagate: segment (or commit) an object first")
        rec = self.last_commit
        written = []
        for step in self.iter_propagate_commit(rec, **kwargs):
            self.write_mask(target, step.key, step.mask, label_id=rec.label_id,
                            overwrite=overwrite, writer=writer, replace=rec.replace)
            written.append(step.key)
        return written

    def __repr__(self) -> str:
        return (
            f"InteractionSession(image {self.spatial_shape}{' rgb' if self.rgb else ''}, "
            f"current {_ordinal(self._current)}, {len(self.active_keys())} open object(s), "
            f"{len(self._cache)} cached embedding(s))"
        )

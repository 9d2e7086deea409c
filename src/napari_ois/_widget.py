"""The napari dock widget: click, choose a proposal, commit; on 2D images and 3D stacks.

The widget only wires napari layers and one background worker to an
``napari_ois.session.InteractionSession``; every model call (loading, embedding,
prediction, propagation) runs off the GUI thread in napari's ``thread_worker`` machinery,
one job at a time (the predictor is not thread-safe). The next job is chosen when the
previous one finishes, from the *current* state only, so clicks made while a prediction
runs are predicted together (no pile-up) and results that no longer match the object are
dropped (no stale mask). See ``docs/plugin.md`` for the user guide and the shortcuts.

Hooks for scripts and tests: ``OISWidget(viewer, predictor=...)`` or
``widget.set_predictor(predictor)`` inject a ready predictor instead of loading a named
model; ``widget.session`` is the ``InteractionSession`` of the bound image;
``widget.is_idle`` tells whether background work is finished.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .session import Click, InteractionSession


from ._triton_guard import avoid_triton_llvm_clash as _avoid_triton_llvm_clash  # noqa: E402

_avoid_triton_llvm_clash()

if TYPE_CHECKING:  # pragma: no cover
    import napari

POSITIVE_COLOR = np.array([0.15, 0.95, 0.25, 1.0], np.float32)  # green disc
NEGATIVE_COLOR = np.array([1.0, 0.15, 0.55, 1.0], np.float32)  # magenta cross
PREVIEW_COLOR = (1.0, 0.8, 0.0, 1.0)
CHECKPOINT = "checkpoint file"
NEW_LABELS = "(new labels layer)"
DEPTH_CHOICES = (
    "none",
    "depth-anything-v2-small",
    "depth-anything-v2-base",
    "depth-anything-v2-large",
)
DEPTH_LAYER_PREFIX = "layer: "
DEVICES = ("auto", "cuda", "mps", "cpu")
CLICKS_LAYER = "OIS clicks"
PREVIEW_LAYER = "OIS current object"

#: viewer-wide shortcuts: (napari key, method, what it does). None of these keys is bound
#: by napari itself (viewer or any layer type); see docs/plugin.md.
SHORTCUTS = (
    ("N", "toggle_polarity", "toggle positive / negative for the next clicks"),
    ("K", "next_proposal", "next proposal (after the first click)"),
    ("Shift-K", "previous_proposal", "previous proposal"),
    ("U", "undo", "undo the last click (or proposal choice)"),
    ("Shift-U", "reset_object", "reset the current object (drop its clicks)"),
    ("Shift-Enter", "commit", "commit the current object as a new label"),
    ("G", "propagate", "propagate the object through the stack (3D)"),
)


def _predict_job(session: InteractionSession, request):
    return session.compute(request)


def _embed_job(session: InteractionSession, key):
    t0 = time.perf_counter()
    session.ensure_embedding(key)
    return time.perf_counter() - t0


def _load_job(model: str, device, depth: Optional[str]):
    """Build a predictor (worker thread). Returns (predictor, notes, seconds)."""
    from .predictor import OISPredictor
    from .registry import build_model

    t0 = time.perf_counter()
    net = build_model(model)
    notes = []
    provider = None
    if depth and depth != "none":
        try:
            from .depth import make_depth_provider

            provider = make_depth_provider(depth, device=str(device))
            if hasattr(provider, "load"):
                provider.load()  # surface download / checkpoint problems now
        except Exception as exc:  # noqa: BLE001 - any failure becomes a message
            notes.append(
                f"depth model {depth!r} is unavailable ({type(exc).__name__}: {exc}); "
                "running without depth"
            )
            provider = None
    pred = OISPredictor(net, device=device, depth_provider=provider)
    return pred, notes, time.perf_counter() - t0


def _propagate_job(session: InteractionSession, key, mask, options: dict):
    yield from session.iter_propagate(key, mask, **options)


class _UndoGroup:
    """Makes the writes of one propagation one undo step of a napari Labels layer.

    A propagation writes one slice per worker result, over many turns of the event loop, so
    a ``with layer.block_history():`` block cannot hold it. The context manager is entered
    when the propagation starts and left when it ends: napari stages every ``data_setitem``
    in between and records them as one history item (one Ctrl+Z takes the whole
    propagation back, with the commit it started from). Anything else written to that
    layer meanwhile (a commit on another slice) joins the same step."""

    def __init__(self, layer):
        self.layer = layer
        self._cm = None
        block = getattr(layer, "block_history", None)
        if callable(block):
            try:
                cm = block()
                cm.__enter__()
                self._cm = cm
            except Exception:  # noqa: BLE001 - without it every slice is its own undo step
                self._cm = None

    def close(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - the layer may be gone
                pass


class OISWidget(QWidget):
    """Dock widget for order-aware interactive segmentation.

    Args:
        napari_viewer: the viewer (napari passes it).
        predictor: optional ready predictor (``OISPredictor`` or compatible); without it the
            model chosen in the widget is loaded when first needed.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer", predictor: Any = None, parent=None):
        super().__init__(parent)
        _avoid_triton_llvm_clash()  # before anything imports timm (see the docstring)
        self.viewer = napari_viewer
        self.predictor = None
        self.model_label = ""
        self.session: Optional[InteractionSession] = None
        self.image_layer = None
        self.points_layer = None
        self.preview_layer = None
        self.labels_layer = None
        #: id(image layer) -> (image layer, its target Labels layer): every image keeps its own
        self._targets: dict = {}
        #: the spec ({"model", "device", "depth"}) of the loaded model; None when injected
        self._model_in_use: Optional[dict] = None
        self.messages: list = []  # (kind, text), newest last
        self.negative_mode = False
        self.prefetch = True
        #: napari progress bars for loading/embedding/propagation: True, False or None (auto)
        self.show_progress: Optional[bool] = None
        self._renderer: Optional[str] = None
        self._job = None
        self._gen = 0  # image/model generation: results of older generations are dropped
        self._model_gen = 0
        self._model_request: Optional[dict] = None
        self._load_failed: Optional[dict] = None
        self._propagate_request: Optional[dict] = None
        #: the labels layer's open undo group of the propagation being requested or run
        self._undo_group: Optional[_UndoGroup] = None
        self._blocked_request = None
        self._blocked_embed = None
        self._syncing = 0
        self._n_rendered = 0
        self._click_negative_once = False
        self._pump_scheduled = False
        self._points_render_scheduled = False
        self._pending_commit: Optional[dict] = None
        self._docked = False
        self._closed = False
        self._binding = False
        self._embed_seconds: Optional[float] = None
        self._notes = ""
        self._gl_note = ""
        self._thumb_cache: dict = {}

        self._build_ui()
        self._connect_viewer()
        if predictor is not None:
            self.set_predictor(predictor)
        self._reset_choices()
        self._on_image_changed()
        self._schedule_pump()

    # ================================================================= UI
    def _build_ui(self) -> None:
        from .registry import registry

        self.image_combo = ComboBox(label="image", choices=self._image_choices,
                                    tooltip="the image (2D, RGB or a 3D/4D stack) to segment")
        names = list(registry())
        self.model_combo = ComboBox(label="model", choices=names + [CHECKPOINT], value=names[0],
                                    tooltip="a named model (napari-ois models) or a checkpoint file")
        self.checkpoint = FileEdit(label="checkpoint", mode="r",
                                   filter="*.safetensors *.pt *.pth *.ckpt", value="",
                                   tooltip="weights file (.safetensors with its .json, or a training .pt)")
        self.depth_combo = ComboBox(label="depth", choices=self._depth_choices, value="none",
                                    tooltip="none, Depth Anything V2 (downloaded once), or a layer holding a depth map")
        self.device_combo = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.k_spin = SpinBox(label="proposals K", min=1, max=3, value=3,
                              tooltip="how many first-click proposals to show (at most what the model has)")
        self.labels_combo = ComboBox(label="labels", choices=self._labels_choices,
                                     tooltip="where committed objects go: a new layer or one you have")
        self.overwrite = CheckBox(text="overwrite existing labels", value=False,
                                  tooltip="off: a commit only fills unlabelled pixels (existing labels are kept)")
        self.negative_box = CheckBox(text="negative clicks [N]", value=False,
                                     tooltip="clicks remove from the object (Shift+click does it for one click)")
        self.min_quality = FloatSpinBox(label="stop below IoU", min=-1.0, max=1.0, step=0.05, value=0.5,
                                        tooltip="propagation stops on a slice whose predicted IoU is lower")
        self.max_area_change = FloatSpinBox(
            label="stop on area change x", min=1.0, max=100.0, step=0.25, value=2.0,
            tooltip="propagation stops where the object's area changes by more than this factor "
                    "from one slice to the next (a leak, or a lost object); 100: practically off")
        self.min_overlap = FloatSpinBox(
            label="stop below overlap", min=0.0, max=1.0, step=0.05, value=0.3,
            tooltip="propagation stops where the mask's IoU with the previous slice's mask is lower "
                    "(0: only where they do not overlap at all)")
        self._form = Container(widgets=[
            self.image_combo, self.model_combo, self.checkpoint, self.depth_combo,
            self.device_combo, self.k_spin, self.labels_combo, self.overwrite,
            self.negative_box, self.min_quality, self.max_area_change, self.min_overlap,
        ])

        self.proposal_list = QListWidget()
        self.proposal_list.setIconSize(QSize(56, 56))
        self.proposal_list.setViewMode(QListWidget.IconMode)
        self.proposal_list.setFlow(QListWidget.LeftToRight)
        self.proposal_list.setWrapping(False)
        self.proposal_list.setMovement(QListWidget.Static)
        self.proposal_list.setResizeMode(QListWidget.Adjust)
        self.proposal_list.setFixedHeight(100)
        self.proposal_list.setToolTip("first-click proposals with their predicted IoU; K / Shift+K cycle")

        def button(text, slot, tip):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda *_: slot())
            return b

        self.commit_button = button("Commit [Shift+Enter]", self.commit, "write the object with a new label id")
        self.undo_button = button("Undo [U]", self.undo, "remove the last click")
        self.reset_button = button("Reset object", self.reset_object, "drop the current object's clicks [Shift+U]")
        self.clear_button = button("Clear", self.clear, "drop all uncommitted clicks (committed labels stay)")
        self.propagate_button = button("Propagate [G]", self.propagate,
                                       "extend the object through neighbouring slices of a stack")

        self.device_notice = QLabel("")
        self.device_notice.setWordWrap(True)
        self.device_notice.setStyleSheet("color: #f0a030;")
        self.device_notice.setVisible(False)
        self.target_label = QLabel("")
        self.target_label.setWordWrap(True)
        self.target_label.setToolTip("the Labels layer that Commit and Propagate write into")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        help_text = QLabel(
            "click: positive · Shift+click or right-click: negative · N: toggle · "
            "K / Shift+K: proposals · U: undo · Shift+Enter: commit · G: propagate"
        )
        help_text.setWordWrap(True)
        help_text.setStyleSheet("color: gray;")

        layout = QVBoxLayout(self)
        layout.addWidget(self._form.native)
        layout.addWidget(QLabel("proposals (first click)"))
        layout.addWidget(self.proposal_list)
        row1 = QHBoxLayout()
        for b in (self.commit_button, self.undo_button, self.reset_button):
            row1.addWidget(b)
        row2 = QHBoxLayout()
        for b in (self.propagate_button, self.clear_button):
            row2.addWidget(b)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addWidget(self.target_label)
        layout.addWidget(self.device_notice)
        layout.addWidget(self.status_label)
        layout.addWidget(help_text)
        layout.addStretch(1)

        self.image_combo.changed.connect(lambda *_: self._on_image_changed())
        self.model_combo.changed.connect(lambda *_: self._on_model_changed())
        self.checkpoint.changed.connect(lambda *_: self._on_checkpoint_changed())
        self.depth_combo.changed.connect(lambda *_: self._on_depth_changed())
        self.device_combo.changed.connect(lambda *_: self._request_model())
        self.k_spin.changed.connect(lambda *_: self._on_k_changed())
        self.labels_combo.changed.connect(lambda *_: self._on_labels_changed())
        self.negative_box.changed.connect(lambda v: self._set_negative_mode(bool(v)))
        self.proposal_list.currentRowChanged.connect(self._on_proposal_row)

        self._contrast_timer = QTimer(self)  # debounces contrast-limit drags
        self._contrast_timer.setSingleShot(True)
        self._contrast_timer.setInterval(300)
        self._contrast_timer.timeout.connect(self._apply_contrast_limits)

    # ----------------------------------------------------------------- choices
    def _layers_of(self, kind: str) -> list:
        from napari.layers import Image, Labels

        cls = {"image": Image, "labels": Labels}[kind]
        try:
            return [ly for ly in self.viewer.layers if isinstance(ly, cls)]
        except RuntimeError:
            return []

    def _image_choices(self, *_):
        return [(ly.name, ly) for ly in self._layers_of("image")]

    def _labels_choices(self, *_):
        out = [(NEW_LABELS, None)]
        out += [(ly.name, ly) for ly in self._layers_of("labels") if ly is not self.preview_layer]
        return out

    def _depth_choices(self, *_):
        out = list(DEPTH_CHOICES)
        img = self.image_layer
        for ly in self._layers_of("image"):
            if ly is img or getattr(ly, "rgb", False) or getattr(ly, "multiscale", False):
                continue
            if img is not None and tuple(ly.data.shape) != self._spatial_shape(img):
                continue
            out.append(DEPTH_LAYER_PREFIX + ly.name)
        return out

    def _reset_choices(self, *_):
        if self._closed:
            return
        self._binding = True
        try:
            self._form.reset_choices()
            if self.image_combo.value is None or self.image_combo.value not in self.viewer.layers:
                images = self._layers_of("image")
                active = self.viewer.layers.selection.active
                pick = active if active in images else (images[-1] if images else None)
                if pick is not None:
                    self.image_combo.value = pick
        finally:
            self._binding = False

    # ================================================================= viewer wiring
    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers_changed)
        ev.removed.connect(self._on_layer_removed)
        ev.reordered.connect(self._on_layers_changed)
        if hasattr(ev, "renamed"):
            ev.renamed.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_dims_changed)
        self.viewer.dims.events.ndisplay.connect(self._on_dims_changed)
        for key, method, _ in SHORTCUTS:
            self.viewer.bind_key(key, self._shortcut(method), overwrite=True)

    def _shortcut(self, method: str):
        def handler(viewer):
            if not self._closed:
                getattr(self, method)()

        handler.__name__ = f"ois_{method}"
        handler.__doc__ = dict((m, d) for _, m, d in SHORTCUTS)[method]
        return handler

    def _on_layers_changed(self, event=None) -> None:
        self._reset_choices()
        self._on_image_changed()

    def _on_layer_removed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            if layer is self.points_layer:
                self.points_layer = None
            if layer is self.preview_layer:
                self.preview_layer = None
            if layer is self.labels_layer:
                self.labels_layer = None
            self._targets = {k: (img, lab) for k, (img, lab) in self._targets.items()
                             if img is not layer and lab is not layer}
            if layer is self.image_layer:
                name = layer.name
                self._unbind_image()
                self._status(f"image layer {name!r} was removed: choose another image "
                             "(committed labels are kept)", "error")
        self._reset_choices()
        self._on_image_changed()

    # ================================================================= public actions
    @property
    def is_idle(self) -> bool:
        """True when no background work runs or is about to start."""
        return self._job is None and not self._pump_scheduled

    def set_predictor(self, predictor: Any, name: str = "injected predictor") -> None:
        """Use ``predictor`` (an ``OISPredictor`` or compatible) instead of loading a model.

        Pending or running model loads are discarded; clicks are kept and predicted again."""
        self._model_gen += 1
        self._model_request = None
        self._load_failed = None
        self._model_in_use = None
        self._install_predictor(predictor, name)

    def toggle_polarity(self) -> None:
        self.negative_box.value = not self.negative_box.value

    def next_proposal(self) -> None:
        self._cycle(1)

    def previous_proposal(self) -> None:
        self._cycle(-1)

    def select_proposal(self, index: int) -> None:
        s = self.session
        if s is None:
            return
        try:
            s.select_proposal(index)
        except ValueError as exc:
            self._status(str(exc), "error")
            return
        self._after_edit()

    def undo(self) -> None:
        s = self.session
        if s is None:
            return self._status("nothing to undo: no image is selected", "error")
        if not s.undo():
            return self._status("nothing to undo on this slice")
        self._after_edit()
        self._status(f"undone: {len(s.clicks())} click(s) left")

    def reset_object(self) -> None:
        s = self.session
        if s is None:
            return
        s.reset_object()
        self._after_edit()
        self._status("object reset (U brings it back)")

    def clear(self) -> None:
        """Drop all uncommitted clicks and objects on every slice (labels stay)."""
        s = self.session
        if s is None:
            return
        s.clear()
        self._pending_commit = None
        self._gen += 1  # what runs now concerns the dropped objects
        if self.preview_layer is not None:
            self.preview_layer.data[...] = 0
            self.preview_layer.refresh()
        self._render_points()
        self._render_proposals()
        self._status("cleared all uncommitted clicks (committed labels are kept)")

    def commit(self) -> Optional[int]:
        """Write the current object into the labels layer with a new id. Returns the id."""
        s = self.session
        if s is None:
            self._status("nothing to commit: choose an image layer and click on an object", "error")
            return None
        key = s.current_key
        if s.needs_prediction(key) and self._pending_commit is None:
            # the last click is still being predicted: commit as soon as its mask is there
            self._pending_commit = {"key": key, "propagate": False}
            self._status("committing as soon as the last click is predicted...", "busy")
            self._schedule_pump()
            return None
        target = self._target_labels(create=True)
        if target is None:
            return None
        try:
            s.commit(target.data, key=key, overwrite=bool(self.overwrite.value),
                     writer=self._labels_writer(target))
        except ValueError as exc:
            self._status(str(exc), "error")
            return None
        rec = s.last_commit
        self._render_preview(key)
        self._render_points()
        self._render_proposals()
        written = int(np.count_nonzero(np.asarray(target.data[key] if key else target.data) == rec.label_id))
        where = "" if not key else f" on slice {key}"
        self._status(f"committed object {rec.label_id} ({written} px){where} to {target.name!r}")
        return rec.label_id

    def propagate(self) -> None:
        """Commit the current object (if any) and extend it through the stack, slice by slice."""
        s = self.session
        if s is None:
            return self._status("propagation needs an image: choose one", "error")
        if not s.is_stack:
            return self._status("propagation needs a 3D (or 4D) stack; this image is 2D", "error")
        if self._job is not None and self._job["kind"] == "propagate":
            return self._status("a propagation is already running")
        key = s.current_key
        if s.needs_prediction(key):
            self._pending_commit = {"key": key, "propagate": True}
            self._status("propagating as soon as the last click is predicted...", "busy")
            self._schedule_pump()
            return
        mask = s.mask(key)
        if mask is not None and mask.any():
            target = self._target_labels(create=True)
            if target is None:
                return
            self._open_undo_group(target)  # the commit and the propagated slices: one undo step
            if self.commit() is None:
                self._close_undo_group()
                return
        elif s.last_commit is None:
            return self._status("nothing to propagate: segment and commit an object first", "error")
        else:
            target = self._target_labels(create=False)
            if target is not None:
                self._open_undo_group(target)
        rec = s.last_commit
        self._propagate_request = {
            "key": rec.key, "mask": rec.mask, "label_id": rec.label_id, "gen": self._gen,
            "options": self.propagation_options(),
        }
        self._schedule_pump()

    def propagation_options(self) -> dict:
        """The stop rules of ``InteractionSession.iter_propagate`` set in the widget."""
        change = max(1.0, float(self.max_area_change.value))
        return {"min_score": float(self.min_quality.value), "area_ratio": (1.0 / change, change),
                "min_overlap": float(self.min_overlap.value)}

    def _open_undo_group(self, layer) -> None:
        self._close_undo_group()
        self._undo_group = _UndoGroup(layer)

    def _close_undo_group(self) -> None:
        group, self._undo_group = self._undo_group, None
        if group is not None:
            group.close()

    def _finish_pending_commit(self) -> None:
        """Run a commit (or propagation) that waited for the last click's prediction."""
        pc, s = self._pending_commit, self.session
        if pc is None or s is None:
            self._pending_commit = None
            return
        if s.needs_prediction(pc["key"]):
            return
        self._pending_commit = None
        if s.current_key != pc["key"]:
            return self._status("the commit was cancelled: the slice changed", "error")
        if pc["propagate"]:
            self.propagate()
        else:
            self.commit()

    def cancel(self) -> None:
        """Stop a running propagation (other jobs are short and simply dropped)."""
        self._pending_commit = None
        self._propagate_request = None
        job = self._job
        if job is not None and job["kind"] == "propagate":
            job["worker"].quit()  # its end closes the undo group
        else:
            self._close_undo_group()

    def close_widget(self) -> None:
        """Disconnect from the viewer and stop background work (the viewer stays)."""
        if self._closed:
            return
        self.cancel()
        self._closed = True
        try:
            ev = self.viewer.layers.events
            for emitter, cb in ((ev.inserted, self._on_layers_changed), (ev.removed, self._on_layer_removed),
                                (ev.reordered, self._on_layers_changed),
                                (self.viewer.dims.events.current_step, self._on_dims_changed),
                                (self.viewer.dims.events.ndisplay, self._on_dims_changed)):
                emitter.disconnect(cb)
            for key, _, _ in SHORTCUTS:
                self.viewer.bind_key(key, None)
        except Exception:  # noqa: BLE001 - the viewer may be half gone
            pass
        self._unbind_image()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        self.close_widget()
        super().closeEvent(event)

    def event(self, ev) -> bool:  # noqa: D401 - Qt override
        """Taken out of its dock (napari's dock close button): stop and disconnect."""
        if ev.type() == QEvent.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked and not self._closed:
                self.close_widget()
        return super().event(ev)

    # ================================================================= model
    def _model_spec(self) -> dict:
        model = self.model_combo.value
        if model == CHECKPOINT:
            path = self.checkpoint.value
            model = str(path) if path and Path(path).is_file() else ""
        depth = self.depth_combo.value or "none"
        if depth.startswith(DEPTH_LAYER_PREFIX):
            depth = "none"  # the depth map comes from a layer, through the session
        return {"model": model, "device": self.device_combo.value, "depth": depth}

    def _on_model_changed(self) -> None:
        if self.model_combo.value == CHECKPOINT:
            p = self.checkpoint.value
            if not p or not Path(p).is_file():
                return self._status("choose a checkpoint file (.safetensors or .pt)")
        self._request_model()

    def _on_checkpoint_changed(self) -> None:
        p = self.checkpoint.value
        if not p or str(p) in ("", ".") or Path(p).is_dir():
            return
        if not Path(p).is_file():
            return self._status(f"checkpoint not found: {p}", "error")
        if self.model_combo.value != CHECKPOINT:
            with self.model_combo.changed.blocked():
                self.model_combo.value = CHECKPOINT
        self._request_model()

    def _on_depth_changed(self) -> None:
        if self._binding:
            return
        value = self.depth_combo.value or "none"
        s = self.session
        if s is not None:
            depth = None
            if value.startswith(DEPTH_LAYER_PREFIX):
                name = value[len(DEPTH_LAYER_PREFIX):]
                layer = next((ly for ly in self._layers_of("image") if ly.name == name), None)
                if layer is None:
                    return self._status(f"depth layer {name!r} is gone", "error")
                depth = np.asarray(layer.data)
            try:
                s.set_depth(depth)
            except ValueError as exc:
                return self._status(str(exc), "error")
        current_depth = getattr(self.predictor, "depth_provider", None)
        wanted = self._model_spec()["depth"]
        if self.predictor is not None and (wanted != "none" or current_depth is not None):
            self._request_model()
        elif s is not None:
            s.set_predictor(s.predictor)  # re-predict with the new depth
            self._gen += 1
            self._after_edit()

    def _request_model(self) -> None:
        """Load the model, device and depth chosen in the widget (latest request wins)."""
        if self._binding or self._closed:
            return
        spec = self._model_spec()
        if not spec["model"]:
            return self._status("choose a checkpoint file first", "error")
        self._model_gen += 1
        self._gen += 1  # predictions of the old model are dropped when they come back
        self._model_request = spec
        self._load_failed = None
        self._schedule_pump()

    def _install_predictor(self, predictor, name: str, notes=()) -> None:
        self.predictor = predictor
        self.model_label = name
        self._gen += 1
        self._blocked_request = self._blocked_embed = None
        k = int(getattr(predictor, "num_proposals", 1) or 1)
        with self.k_spin.changed.blocked():
            self.k_spin.max = max(1, k)
            self.k_spin.value = max(1, k)
        if self.session is not None:
            self.session.max_proposals = int(self.k_spin.value)
            self.session.set_predictor(predictor)
        self._thumb_cache.clear()
        self._notes = " ".join(n.strip() for n in notes)
        dev = getattr(predictor, "device", None)
        dev_type = getattr(dev, "type", str(dev))
        self._update_device_notice(dev_type)
        msg = f"model {name} ready on {dev_type} ({k} proposals)"
        if notes:
            msg += ". " + " ".join(notes)
        self._status(msg, "error" if notes else "info")
        self._render_all()
        self._schedule_pump()

    def _revert_model_fields(self) -> None:
        """After a failed load: the model / checkpoint fields show the model in use again."""
        spec = self._model_in_use
        with self.model_combo.changed.blocked(), self.checkpoint.changed.blocked():
            if spec is None:  # an injected predictor (or none): no field can name it
                self.checkpoint.value = ""
                return
            name = spec["model"]
            if name in [c for c in self.model_combo.choices if c != CHECKPOINT]:
                self.model_combo.value = name
                self.checkpoint.value = ""
            else:
                self.model_combo.value = CHECKPOINT
                self.checkpoint.value = name
            if spec.get("device") in DEVICES:
                with self.device_combo.changed.blocked():
                    self.device_combo.value = spec["device"]

    def _update_device_notice(self, dev_type: Optional[str] = None) -> None:
        """The persistent notice line: running on the CPU, GPU fallback, depth problems."""
        if dev_type is None:
            dev = getattr(self.predictor, "device", None)
            dev_type = getattr(dev, "type", str(dev))
        text = " ".join(t for t in (self._notes, self._gl_note) if t)
        text = text + " " if text else ""
        if dev_type == "cpu":
            t = f" (about {self._embed_seconds:.1f} s here)" if self._embed_seconds else ""
            text += ("Running on the CPU: each new image or slice is embedded first" + t
                     + ", then clicks are fast. A GPU is much faster.")
        try:
            self.device_notice.setText(text.strip())
            self.device_notice.setVisible(bool(text.strip()))
        except RuntimeError:
            pass

    def _on_k_changed(self) -> None:
        if self.session is not None:
            self.session.max_proposals = int(self.k_spin.value)
        self._render_proposals()

    # ================================================================= image binding
    @staticmethod
    def _spatial_shape(layer) -> tuple:
        shape = tuple(int(s) for s in layer.data.shape)
        return shape[:-1] if getattr(layer, "rgb", False) else shape

    def _on_image_changed(self) -> None:
        if self._binding or self._closed:
            return
        layer = self.image_combo.value
        if layer is self.image_layer:
            return
        if layer is None:
            self._unbind_image()
            return
        self._bind_image(layer)

    def _bind_image(self, layer) -> None:
        self._unbind_image()
        if getattr(layer, "multiscale", False):
            return self._status(
                f"{layer.name!r} is a multiscale (pyramid) image: add its full-resolution level "
                "as a plain layer to segment it", "error")
        if layer.ndim < 2:
            return self._status(f"{layer.name!r} has fewer than 2 dimensions", "error")
        try:
            session = InteractionSession(
                self.predictor, layer.data, rgb=bool(layer.rgb),
                contrast_limits=self._contrast_limits(layer),
                max_proposals=int(self.k_spin.value),
            )
        except ValueError as exc:
            return self._status(f"cannot use {layer.name!r}: {exc}", "error")
        self.image_layer = layer
        self.session = session
        self._gen += 1
        self._thumb_cache.clear()
        layer.events.contrast_limits.connect(self._on_contrast_limits)
        layer.events.data.connect(self._on_image_data)
        self._ensure_helper_layers()
        self._reset_choices()
        target = self._remembered_target(layer, session)
        self.labels_layer = target
        with self.labels_combo.changed.blocked():
            self.labels_combo.value = target  # None: a new layer at the first commit
        self._update_target_label()
        self._on_depth_changed_for_new_image()
        self._sync_slice()
        self._render_all()
        kind = "stack " + " x ".join(map(str, session.spatial_shape)) if session.is_stack else \
            " x ".join(map(str, session.plane_shape))
        self._status(f"image {layer.name!r} ({kind}{', RGB' if session.rgb else ''}): click on an object")
        self._schedule_pump()

    def _on_depth_changed_for_new_image(self) -> None:
        value = self.depth_combo.value or "none"
        if value.startswith(DEPTH_LAYER_PREFIX):
            with self.depth_combo.changed.blocked():
                self.depth_combo.value = "none"

    def _unbind_image(self) -> None:
        layer = self.image_layer
        if layer is not None:
            for emitter, cb in ((layer.events.contrast_limits, self._on_contrast_limits),
                                (layer.events.data, self._on_image_data)):
                try:
                    emitter.disconnect(cb)
                except Exception:  # noqa: BLE001
                    pass
        if self.session is not None or layer is not None:
            self._gen += 1
        self.cancel()
        self.image_layer = None
        self.session = None
        self._propagate_request = None
        self._thumb_cache.clear()
        if not self._closed:
            self._clear_helper_layers()
            self._render_proposals()

    @staticmethod
    def _contrast_limits(layer):
        cl = getattr(layer, "contrast_limits", None)
        if cl is None:
            return None
        lo, hi = float(cl[0]), float(cl[1])
        return (lo, hi) if hi > lo else None

    def _on_contrast_limits(self, event=None) -> None:
        self._contrast_timer.start()

    def _apply_contrast_limits(self) -> None:
        if self.session is not None and self.image_layer is not None:
            self.session.set_contrast_limits(self._contrast_limits(self.image_layer))
            self._thumb_cache.clear()
            self._schedule_pump()

    def _on_image_data(self, event=None) -> None:
        layer = self.image_layer
        if layer is None:
            return
        self._unbind_image()
        self._bind_image(layer)

    # ----------------------------------------------------------------- helper layers
    def _ensure_helper_layers(self) -> None:
        img = self.image_layer
        s = self.session
        if img is None or s is None:
            return
        ndim = len(s.spatial_shape)
        scale, translate = np.asarray(img.scale), np.asarray(img.translate)
        size = max(4.0, 0.018 * max(s.plane_shape) * float(np.min(scale[-2:])))
        layers = self.viewer.layers
        pts = self.points_layer
        if pts is not None and (pts not in layers or pts.ndim != ndim):
            if pts in layers:
                layers.remove(pts)
            pts = None
        if pts is None:
            from napari.layers import Points

            pts = Points(
                np.empty((0, ndim)), ndim=ndim, name=CLICKS_LAYER, size=size,
                face_color=POSITIVE_COLOR, border_color="white", border_width=0.12,
                features={"positive": np.zeros(0, bool)}, scale=scale, translate=translate,
            )
            pts.feature_defaults["positive"] = True
            pts.events.data.connect(self._on_points_data)
            pts.mouse_drag_callbacks.insert(0, self._on_points_press)
            self.points_layer = pts
        else:
            pts.scale, pts.translate = scale, translate
            pts.size = size
        prev = self.preview_layer
        if prev is not None and (prev not in layers or tuple(prev.data.shape) != tuple(s.spatial_shape)):
            if prev in layers:
                layers.remove(prev)
            prev = None
        if prev is None:
            from napari.layers import Labels

            prev = Labels(
                np.zeros(s.spatial_shape, np.uint8), name=PREVIEW_LAYER, opacity=0.55,
                scale=scale, translate=translate,
                colormap={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: PREVIEW_COLOR},
            )
            self.preview_layer = prev
        else:
            prev.scale, prev.translate = scale, translate
            prev.data[...] = 0
            prev.refresh()
        if prev not in layers:
            layers.append(prev)
        if pts not in layers:
            layers.append(pts)
        pts.mode = "add"
        layers.selection.active = pts
        self._render_points()
        self._style_next_click(self.negative_mode)

    def _clear_helper_layers(self) -> None:
        try:
            if self.preview_layer is not None and self.preview_layer in self.viewer.layers:
                self.preview_layer.data[...] = 0
                self.preview_layer.refresh()
            if self.points_layer is not None and self.points_layer in self.viewer.layers:
                with self._sync():
                    self.points_layer.data = np.empty((0, self.points_layer.ndim))
                self._n_rendered = 0
        except RuntimeError:  # Qt objects already deleted while the viewer closes
            pass

    def _target_labels(self, create: bool):
        """The labels layer commits go to (creating one if asked). None (+ message) if unusable."""
        s, img = self.session, self.image_layer
        layer = self.labels_combo.value
        if layer is not None and layer not in self.viewer.layers:
            layer = None
        if layer is None:
            if not create:
                return None
            layer = self.viewer.add_labels(
                np.zeros(s.spatial_shape, np.int32), name=f"{img.name} objects",
                scale=np.asarray(img.scale), translate=np.asarray(img.translate),
            )
            self.labels_layer = layer
            self._remember_target(img, layer)
            layers = self.viewer.layers
            if self.preview_layer is not None and self.preview_layer in layers:
                layers.move(layers.index(layer), layers.index(self.preview_layer))  # under the preview
            self._reset_choices()
            with self.labels_combo.changed.blocked():
                self.labels_combo.value = layer
            if self.points_layer is not None and self.points_layer in self.viewer.layers:
                self.viewer.layers.selection.active = self.points_layer
            return layer
        if tuple(layer.data.shape) != tuple(s.spatial_shape):
            self._status(f"labels layer {layer.name!r} has shape {tuple(layer.data.shape)} but the image "
                         f"has {tuple(s.spatial_shape)}: choose another layer or '{NEW_LABELS}'", "error")
            return None
        if not isinstance(layer.data, np.ndarray):
            self._status(f"labels layer {layer.name!r} is not an in-memory numpy array: choose "
                         f"'{NEW_LABELS}'", "error")
            return None
        self.labels_layer = layer
        self._remember_target(img, layer)
        return layer

    # ----------------------------------------------------------------- per-image targets
    def _remember_target(self, image, labels) -> None:
        if image is None:
            return
        if labels is None:
            self._targets.pop(id(image), None)
        else:
            self._targets[id(image)] = (image, labels)
        self._update_target_label()

    def _remembered_target(self, image, session):
        """The Labels layer ``image`` committed to before (kept per image), else a layer named
        ``<image> objects`` of its shape, else None (a new layer at the first commit)."""
        layers = self._layers_of("labels")
        shape = tuple(session.spatial_shape)
        entry = self._targets.get(id(image))
        if entry is not None and entry[0] is image:
            lab = entry[1]
            if lab in layers and tuple(lab.data.shape) == shape:
                return lab
            self._targets.pop(id(image), None)
        for lab in layers:
            if lab is not self.preview_layer and lab.name == f"{image.name} objects" \
                    and tuple(lab.data.shape) == shape:
                self._targets[id(image)] = (image, lab)
                return lab
        return None

    def _on_labels_changed(self) -> None:
        """The user chose another target: it becomes this image's target."""
        if self._binding or self._closed or self.image_layer is None:
            return
        value = self.labels_combo.value
        self.labels_layer = value
        self._remember_target(self.image_layer, value)
        self._update_target_label()

    def _update_target_label(self) -> None:
        img, lab = self.image_layer, self.labels_combo.value
        if img is None:
            text = ""
        elif lab is None:
            text = f"commits go to: a new labels layer {img.name + ' objects'!r} (created at the first commit)"
        else:
            text = f"commits go to: {lab.name!r}"
        try:
            self.target_label.setText(text)
        except RuntimeError:
            pass

    @property
    def target_text(self) -> str:
        """What the target line says (which labels layer commits go to)."""
        return self.target_label.text()

    @staticmethod
    def _labels_writer(layer):
        def write(indices, label_id):
            layer.data_setitem(indices, label_id)  # recorded in the layer's undo history

        return write

    # ================================================================= slices
    def _slice_key(self):
        """The data index of the displayed slice of the bound image, or None if not shown."""
        s, img = self.session, self.image_layer
        if s is None or img is None:
            return None
        if not s.is_stack:
            return ()
        world = np.asarray(self.viewer.dims.point, dtype=float)[-img.ndim:]
        data = np.asarray(img.world_to_data(world), dtype=float)
        n = len(s.leading_shape)
        key = []
        for v, size in zip(data[:n], s.leading_shape):
            i = int(round(float(v)))
            if not 0 <= i < size:
                return None
            key.append(i)
        return tuple(key)

    def _view_problem(self) -> Optional[str]:
        d = self.viewer.dims
        if d.ndisplay != 2:
            return "switch the viewer to 2D display to click (OIS segments 2D slices)"
        s = self.session
        if s is not None and s.is_stack:
            nd = d.ndim
            if tuple(d.displayed) != (nd - 2, nd - 1):
                return "show the image's last two axes (rows, columns) to click; roll the axes back"
        return None

    def _on_dims_changed(self, event=None) -> None:
        if self._closed:
            return
        self._sync_slice()
        self._render_proposals()
        self._schedule_pump()

    def _sync_slice(self) -> None:
        s = self.session
        if s is None:
            return
        key = self._slice_key()
        if key is not None and key != s.current_key:
            s.set_slice(key)

    # ================================================================= clicks
    def _on_points_press(self, layer, event) -> None:
        mods = getattr(event, "modifiers", ()) or ()
        once = ("Shift" in mods) or getattr(event, "button", 1) == 2
        self._click_negative_once = once
        if once and not self.negative_mode:
            self._style_next_click(True)  # the point napari adds on release looks negative

    def _on_points_data(self, event) -> None:
        if self._syncing or self._closed:
            return
        action = str(getattr(event, "action", ""))
        if action == "added":
            layer = self.points_layer
            new = np.asarray(layer.data)[self._n_rendered:]
            negative = self.negative_mode or self._click_negative_once
            if self._click_negative_once and not self.negative_mode:
                self._style_next_click(False)  # back to positive (nothing is selected yet)
            self._click_negative_once = False
            self._n_rendered = len(layer.data)
            for coord in new:
                self._handle_click(coord, not negative)
            self._schedule_points_render()
        elif action in ("removed", "changed"):
            QTimer.singleShot(0, self._resync_from_points)

    def _handle_click(self, coord, positive: bool) -> None:
        s = self.session
        if s is None:
            self._status("choose an image layer first: the click was ignored", "error")
            return
        problem = self._view_problem()
        if problem:
            self._status(problem, "error")
            return
        if self.predictor is None and self._model_request is None and self._job is None \
                and self._load_failed is not None:
            self._status(f"no model loaded ({self._load_failed.get('error', 'load failed')}): "
                         "choose another model", "error")
            return
        try:
            key, click = s.push_click(coord, positive)
        except ValueError as exc:
            self._status(f"{exc}: ignored", "error")
            return
        shown = self._slice_key()
        if shown is not None and shown != s.current_key:
            s.set_slice(shown)  # the displayed slice stays the current one
        n = len(s.clicks(key))
        self._status(f"{'positive' if positive else 'negative'} click {n} at "
                     f"({click.row:.0f}, {click.col:.0f}){'' if not key else f' on slice {key}'}")
        self._schedule_pump()

    def _resync_from_points(self) -> None:
        """The user moved or deleted clicks by hand: take the layer's points as the truth."""
        s, layer = self.session, self.points_layer
        if s is None or layer is None or self._closed:
            return
        data = np.asarray(layer.data)
        pos = np.asarray(layer.features["positive"], bool) if "positive" in layer.features and \
            len(layer.features) == len(data) else np.ones(len(data), bool)
        per_key: dict = {}
        for coord, p in zip(data, pos):
            try:
                k, r, c = s.split_point(coord)
            except ValueError:
                continue
            per_key.setdefault(k, []).append(Click(r, c, bool(p)))
        refused = None
        for k in set(per_key) | set(s.active_keys()):
            try:
                s.replace_clicks(per_key.get(k, []), key=k)
            except ValueError as exc:  # e.g. a negative click would become the first one
                refused = exc
            self._render_preview(k)
        if refused is not None:
            self._status(f"{refused}: the edit was undone", "error")
        self._render_points()
        self._render_proposals()
        self._schedule_pump()

    def _style_next_click(self, negative: bool) -> None:
        """Colour, symbol and feature of the next point napari adds (nothing stays selected,
        so no existing point is restyled)."""
        layer = self.points_layer
        if layer is None:
            return
        try:
            with self._sync():
                if layer.selected_data:
                    layer.selected_data = set()
                layer.current_face_color = NEGATIVE_COLOR if negative else POSITIVE_COLOR
                layer.current_symbol = "cross" if negative else "disc"
                layer.feature_defaults["positive"] = not negative
        except Exception:  # noqa: BLE001 - cosmetic only
            pass

    def _schedule_points_render(self) -> None:
        if not self._points_render_scheduled:
            self._points_render_scheduled = True
            QTimer.singleShot(0, self._render_points)

    def _set_negative_mode(self, value: bool) -> None:
        self.negative_mode = value
        self._style_next_click(value)
        self._status("next clicks are NEGATIVE (N to switch back)" if value else "next clicks are positive")

    def _cycle(self, step: int) -> None:
        s = self.session
        if s is None or s.proposals() is None:
            return self._status("no proposals yet: click on an object first")
        n = min(len(s.proposals().masks), int(self.k_spin.value))
        cur = s.state().selected
        self.select_proposal((cur + step) % n)

    def _on_proposal_row(self, row: int) -> None:
        if self._syncing or row < 0 or self.session is None:
            return
        if self.session.proposals() is None or row == self.session.state().selected:
            return
        self.select_proposal(row)

    def _after_edit(self) -> None:
        s = self.session
        if s is None:
            return
        self._render_preview(s.current_key)
        self._render_points()
        self._render_proposals()
        self._schedule_pump()

    # ================================================================= rendering
    class _SyncGuard:
        def __init__(self, owner):
            self.owner = owner

        def __enter__(self):
            self.owner._syncing += 1

        def __exit__(self, *exc):
            self.owner._syncing -= 1

    def _sync(self):
        return self._SyncGuard(self)

    def _render_all(self) -> None:
        s = self.session
        if s is None:
            return
        if self.preview_layer is not None:
            self.preview_layer.data[...] = 0
            for k in s.active_keys():
                self._render_preview(k, refresh=False)
            self.preview_layer.refresh()
        self._render_points()
        self._render_proposals()

    def _render_preview(self, key, refresh: bool = True) -> None:
        layer, s = self.preview_layer, self.session
        if layer is None or s is None or layer not in self.viewer.layers:
            return
        mask = s.mask(key)
        plane = layer.data[key] if key else layer.data
        if mask is None:
            plane[...] = 0
        else:
            plane[...] = mask
        if refresh:
            layer.refresh()

    def _render_points(self, force: bool = False) -> None:
        """Show the session's clicks in the points layer (skipped when it already does: every
        change repaints the canvas, which is the GUI thread's main cost per click)."""
        self._points_render_scheduled = False
        layer, s = self.points_layer, self.session
        if layer is None or self._closed:
            return
        try:
            if layer not in self.viewer.layers:
                return
        except RuntimeError:
            return
        clicks = [] if s is None else s.all_clicks()
        nd = layer.ndim
        coords = np.array([(*k, c.row, c.col) for k, c in clicks], float).reshape(-1, nd)
        pos = np.array([c.positive for _, c in clicks], bool)
        colors = np.where(pos[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
        if not force and self._points_match(layer, coords, pos, colors):
            self._n_rendered = len(coords)
            return
        with self._sync():
            layer.selected_data = set()
            layer.data = coords
            layer.features = {"positive": pos}
            if len(coords):
                layer.face_color = colors
                layer.symbol = ["disc" if p else "cross" for p in pos]
        self._style_next_click(self.negative_mode)
        self._n_rendered = len(coords)

    @staticmethod
    def _points_match(layer, coords, pos, colors) -> bool:
        try:
            data = np.asarray(layer.data)
            if data.shape != coords.shape or not np.allclose(data, coords):
                return False
            if len(coords) == 0:
                return True
            feats = np.asarray(layer.features["positive"], bool)
            symbols = [getattr(v, "value", str(v)) for v in layer.symbol]
            return (np.array_equal(feats, pos) and np.allclose(layer.face_color, colors)
                    and symbols == ["disc" if p else "cross" for p in pos])
        except Exception:  # noqa: BLE001 - anything odd: render again
            return False

    def _thumb_base(self, key):
        base = self._thumb_cache.get(key)
        if base is None:
            from .imaging import to_unit_rgb

            s = self.session
            h, w = s.plane_shape
            step = max(1, int(np.ceil(max(h, w) / 64)))
            img = s.image_slice(key)[::step, ::step]
            base = (to_unit_rgb(img, s.contrast_limits) * 255).astype(np.uint8)
            self._thumb_cache[key] = base
        return base

    def _render_proposals(self) -> None:
        lst, s = self.proposal_list, self.session
        with self._sync():
            lst.clear()
            if s is None:
                return
            prop = s.proposals()
            if prop is None:
                return
            obj = s.state()
            n = min(len(prop.masks), int(self.k_spin.value))
            try:
                base = self._thumb_base(s.current_key)
            except Exception:  # noqa: BLE001 - thumbnails are optional
                base = None
            for i in range(n):
                item = QListWidgetItem(f"{i + 1}: IoU {float(prop.scores[i]):.2f}")
                if base is not None:
                    step = max(1, int(np.ceil(max(s.plane_shape) / 64)))
                    m = np.asarray(prop.masks[i])[::step, ::step]
                    rgb = base.copy()
                    rgb[m] = (0.45 * rgb[m] + 0.55 * np.array([255, 204, 0])).astype(np.uint8)
                    rgb = np.ascontiguousarray(rgb)
                    qimg = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1],
                                  QImage.Format_RGB888).copy()
                    item.setIcon(QIcon(QPixmap.fromImage(qimg)))
                item.setToolTip(f"proposal {i + 1}: predicted IoU {float(prop.scores[i]):.3f}")
                lst.addItem(item)
            if obj.selected < n:
                lst.setCurrentRow(obj.selected)

    def _status(self, text: str, kind: str = "info") -> None:
        self.messages.append((kind, text))
        del self.messages[:-200]
        if self._closed:
            return
        try:
            color = {"error": "#ff6060", "busy": "#80b0ff"}.get(kind)
            self.status_label.setStyleSheet(f"color: {color};" if color else "")
            self.status_label.setText(text)
        except RuntimeError:
            pass

    @property
    def status(self) -> str:
        """The text of the status line."""
        return self.messages[-1][1] if self.messages else ""

    # ================================================================= scheduler
    def _schedule_pump(self) -> None:
        if self._pump_scheduled or self._closed:
            return
        self._pump_scheduled = True
        QTimer.singleShot(0, self._pump)

    def _alive(self) -> bool:
        try:
            self.objectName()  # raises once the Qt object is deleted
        except RuntimeError:
            self._closed = True
        return not self._closed

    def _pump(self) -> None:
        """Start the next background job, chosen from the current state (GUI thread)."""
        self._pump_scheduled = False
        if not self._alive() or self._job is not None:
            return
        if self._model_request is not None:
            spec, self._model_request = self._model_request, None
            return self._start_load(spec)
        s = self.session
        if s is None:
            return
        if self.predictor is None:
            wants = bool(s.active_keys()) or self.prefetch
            if wants and self._load_failed is None:
                self._request_model()
                if self._model_request is not None:
                    spec, self._model_request = self._model_request, None
                    return self._start_load(spec)
            return
        req = self._propagate_request
        if req is not None:
            self._propagate_request = None
            if req["gen"] == self._gen:
                return self._start_propagate(req)
            self._close_undo_group()
        keys = [s.current_key] + [k for k in sorted(s.active_keys()) if k != s.current_key]
        for k in keys:
            r = s.request(k)
            if r is None:
                continue
            sig = (r.key, r.epoch, len(r.clicks), r.multimask)
            if sig == self._blocked_request:
                continue
            return self._start_predict(r)
        key = s.current_key
        if self.prefetch and not s.is_embedded(key) and self._blocked_embed != (key, self._gen) \
                and self._slice_key() is not None:
            return self._start_embed(key)

    def _start_worker(self, kind: str, func, *args, progress: Optional[dict] = None, **info):
        """Run ``func`` in napari's thread pool; ``progress`` = {"total": n, "desc": ...} shows a
        napari progress bar (determinate: an animated busy bar makes Qt recompose the OpenGL
        window continuously, which slowed a CPU embedding about 5x under software OpenGL)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress as napari_progress

        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        job = {"kind": kind, "worker": worker, "gen": self._gen, "model_gen": self._model_gen,
               "t0": time.perf_counter(), "pbar": None, **info}
        self._job = job  # first: showing a progress bar may process events (and pump again)
        if progress and self._progress_wanted():
            try:
                job["pbar"] = napari_progress(total=max(1, int(progress.get("total") or 1)),
                                              desc=progress.get("desc"))
            except Exception:  # noqa: BLE001 - the indicator is optional
                job["pbar"] = None
        worker.returned.connect(lambda result, job=job: self._on_returned(job, result))
        worker.errored.connect(lambda exc, job=job: self._on_errored(job, exc))
        if kind == "propagate":
            worker.yielded.connect(lambda step, job=job: self._on_propagated(job, step))
        worker.finished.connect(lambda job=job: self._on_finished(job))
        worker.start()
        return worker

    def _progress_wanted(self) -> bool:
        """Whether to show napari progress bars (``show_progress``; default: yes, except
        under software OpenGL, where napari's animated activity indicator makes Qt recompose
        the OpenGL window all the time and slowed a CPU embedding about 5x in our measurements;
        the status line still says what runs). ``NAPARI_OIS_PROGRESS=1`` or ``0`` forces it."""
        if self.show_progress is None:
            env = os.environ.get("NAPARI_OIS_PROGRESS", "").strip().lower()
            if env in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                self.show_progress = env in ("1", "true", "yes", "on")
            else:
                renderer = self._gl_renderer().lower()
                software = any(w in renderer for w in ("llvmpipe", "softpipe", "swrast", "software"))
                self.show_progress = not software
                if software:
                    self._gl_note = ("Software OpenGL: progress bars are off (their animation "
                                     "slows the model down); the status line shows what runs.")
                    self._update_device_notice()
        return bool(self.show_progress)

    def _gl_renderer(self) -> str:
        if self._renderer is None:
            self._renderer = ""
            try:
                from vispy.gloo import gl
                from vispy.gloo.context import get_current_canvas

                canvas = get_current_canvas()  # napari's canvas, once it has drawn
                if canvas is not None:
                    canvas.set_current()
                    self._renderer = str(gl.glGetParameter(gl.GL_RENDERER) or "")
            except Exception:  # noqa: BLE001 - unknown renderer: assume hardware
                self._renderer = ""
        return self._renderer

    def _start_load(self, spec: dict) -> None:
        from .registry import resolve_device

        _avoid_triton_llvm_clash()  # OpenGL is up by now: see the function's docstring

        extra = ""
        try:
            device = resolve_device(spec["device"])
        except RuntimeError as exc:
            device = resolve_device("cpu")
            extra = f"{exc}. Using the CPU instead. "
        name = spec["model"]
        self._status(f"{extra}loading model {Path(name).name if Path(name).suffix else name} on {device.type}...",
                     "busy")
        self._start_worker("load", _load_job, name, device, spec["depth"],
                           progress={"total": 1, "desc": f"OIS: loading {Path(name).name}"},
                           spec=spec, extra=extra)

    def _start_predict(self, request) -> None:
        s = self.session
        embedding = not s.is_embedded(request.key)
        if embedding:
            self._status(f"embedding {'the image' if not request.key else f'slice {request.key}'}...", "busy")
        self._start_worker("predict", _predict_job, s, request,
                           progress={"total": 1, "desc": "OIS: embedding"} if embedding else None,
                           session=s, request=request)

    def _start_embed(self, key) -> None:
        s = self.session
        prev = self.messages[-1] if self.messages else None
        text = f"embedding {'the image' if not key else f'slice {key}'} in the background..."
        self._status(text, "busy")
        self._start_worker("embed", _embed_job, s, key, progress={"total": 1, "desc": "OIS: embedding"},
                           session=s, key=key, prev=prev, text=text)

    def _start_propagate(self, req: dict) -> None:
        s = self.session
        total = int(s.leading_shape[-1]) - 1
        self._status(f"propagating object {req['label_id']} through the stack...", "busy")
        self._start_worker("propagate", _propagate_job, s, req["key"], req["mask"], req["options"],
                           progress={"total": max(1, total), "desc": "OIS: propagating"},
                           session=s, label_id=req["label_id"], slices=[])

    def _current(self, job: dict) -> bool:
        return (not self._closed and job["gen"] == self._gen and job.get("session", self.session) is self.session)

    def _on_returned(self, job: dict, result) -> None:
        kind = job["kind"]
        if kind == "load":
            if job["model_gen"] != self._model_gen or self._closed:
                return  # another model was asked for meanwhile
            pred, notes, secs = result
            spec = job["spec"]
            name = spec["model"]
            label = Path(name).name if Path(name).suffix else name
            self._model_in_use = dict(spec)
            self._install_predictor(pred, label, notes=[*([job["extra"]] if job["extra"] else []), *notes])
            return
        if not self._current(job):
            return  # image, model or objects changed meanwhile: drop it
        s = self.session
        if kind == "predict":
            if result.embedded:
                self._embed_seconds = result.seconds
                self._update_device_notice()
            if s.apply(result):
                QTimer.singleShot(0, self._finish_pending_commit)
                self._render_preview(result.request.key)
                if result.request.key == s.current_key:
                    self._render_proposals()
                obj = s.state(result.request.key)
                what = "proposals" if result.request.multimask else "mask"
                mask = obj.mask
                if mask is not None and not mask.any():
                    hint = ("try another proposal (K) or click elsewhere" if result.request.multimask
                            else "undo (U) or add a positive click")
                    self._status(f"the predicted {what} is empty ({len(obj.clicks)} click(s)): {hint}",
                                 "error")
                else:
                    self._status(f"{what} ready ({len(obj.clicks)} click(s), IoU {obj.score:.2f}, "
                                 f"{result.seconds * 1000:.0f} ms){' — more pending' if obj.pending else ''}")
        elif kind == "embed":
            self._embed_seconds = float(result)
            self._update_device_notice()
            if self.status != job["text"]:
                return  # something else was said meanwhile: keep it
            prev = job["prev"]
            if prev is not None and not prev[1].startswith(("embedding", "ready: embedding")):
                self._status(prev[1], prev[0])  # a background embedding does not hide a result
            else:
                self._status(f"ready: embedding took {result:.2f} s; click on an object")

    def _on_errored(self, job: dict, exc: Exception) -> None:
        kind = job["kind"]
        text = f"{type(exc).__name__}: {exc}"
        if kind == "load":
            if job["model_gen"] != self._model_gen:
                return
            spec = job["spec"]
            self._load_failed = {**spec, "error": text}
            self._pending_commit = None
            keep = f"still using {self.model_label}" if self.predictor is not None else "no model is loaded"
            self._revert_model_fields()
            self._status(f"could not load model {spec['model']!r}: {text}. {keep}", "error")
            return
        if not self._current(job):
            return
        if kind == "predict":
            r = job["request"]
            self._blocked_request = (r.key, r.epoch, len(r.clicks), r.multimask)
            self._pending_commit = None
            self._status(f"prediction failed: {text} (the clicks are kept; undo or reset the object)", "error")
        elif kind == "embed":
            self._blocked_embed = (job["key"], self._gen)
            self._status(f"embedding failed: {text}", "error")
        elif kind == "propagate":
            self._status(f"propagation stopped by an error: {text} (slices written so far are kept)", "error")

    def _on_propagated(self, job: dict, step) -> None:
        if not self._current(job):
            job["worker"].quit()
            return
        target = self._target_labels(create=False)
        if target is None:
            job["worker"].quit()
            self._status("the labels layer is gone: propagation stopped", "error")
            return
        try:
            self.session.write_mask(target.data, step.key, step.mask, label_id=job["label_id"],
                                    overwrite=bool(self.overwrite.value), writer=self._labels_writer(target))
        except ValueError as exc:
            job["worker"].quit()
            self._status(f"propagation stopped: {exc}", "error")
            return
        job["slices"].append(step.key)
        if job.get("pbar") is not None:
            try:
                job["pbar"].increment_with_overflow()
            except Exception:  # noqa: BLE001
                pass

    def _on_finished(self, job: dict) -> None:
        if self._job is job:
            self._job = None
        pbar = job.get("pbar")
        if pbar is not None:
            try:
                pbar.close()
            except Exception:  # noqa: BLE001
                pass
        if job["kind"] == "propagate":
            self._close_undo_group()  # every slice written: one undo step
        if job["kind"] == "propagate" and self._current(job):
            stops = self.session.propagation_stops
            why = "; ".join(f"{'up' if d > 0 else 'down'}: {w}" for d, w in sorted(stops.items(), reverse=True))
            n = len(job["slices"])
            self._status(f"propagated object {job['label_id']} to {n} more slice(s)" + (f" ({why})" if why else ""))
        if not self._closed:
            self._schedule_pump()

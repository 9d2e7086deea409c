"""The napari dock widget: click, choose a proposal, commit; on 2D images and 3D stacks.

The widget is the view: its fields, the proposal chooser, the status line, the napari layers
(``napari_ois._layers``) and one background worker at a time. What runs in that worker and
what its result changes is decided by a Qt-free ``napari_ois.controller.InteractionController``
(model loading, embedding, prediction, propagation; staleness and deferred commits): the
widget asks it for the next job whenever the previous one has ended, runs ``job.run`` in
napari's ``thread_worker`` pool and shows the events it returns. See ``docs/plugin.md`` for
the user guide and the shortcuts. The box prompts live in the *OIS box* Shapes layer; the
"Fine-tune on my labels" section is ``_panels.FinetunePanel``, the autosave ``AutosavePanel``.

Hooks for scripts and tests: ``OISWidget(viewer, predictor=...)`` or
``widget.set_predictor(predictor)`` inject a ready predictor instead of loading a named
model; ``widget.load_model()`` loads the one the fields name; ``widget.session`` is the
``InteractionSession`` of the bound image and ``widget.controller`` its scheduler
(``controller.running``: the job that runs now); ``widget.is_idle`` tells whether background
work is finished and ``widget.schedule_work()`` looks for more (after a script changed the
session).
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import QWidget

from ._layers import (  # noqa: F401 - the click colours are part of this module's API
    DEPTH_LAYER_PREFIX,
    NEGATIVE_COLOR,
    NEW_LABELS,
    POSITIVE_COLOR,
    LabelTargets,
    Overlays,
    ProposalList,
    default_image,
    depth_layer_choices,
    depth_map,
    disconnect,
    displayed_key,
    gl_renderer,
    image_problem,
    labels_writer,
    layer_contrast_limits,
    layers_of,
    progress_bars_default,
    view_problem,
)
from ._panels import (HELP, AutosavePanel, EditLabelPanel, FinetunePanel, FolderPanel, SegmentAllPanel, button,
                      lay_out_dock, paint_status, show_path_start, start_worker, text_line)
from ._propagation_panel import PropagationPanel
from .propagation import STOP_RULES
from ._triton_guard import avoid_triton_llvm_clash as _avoid_triton_llvm_clash
from .controller import (
    CommitNow,
    InteractionController,
    Job,
    ModelLoadFailed,
    ModelReady,
    ModelSpec,
    Propagate,
    Redraw,
    Status,
)

_avoid_triton_llvm_clash()

if TYPE_CHECKING:  # pragma: no cover
    import napari

CHECKPOINT = "checkpoint file"
DEPTH_CHOICES = ("none", "depth-anything-v2-small", "depth-anything-v2-base", "depth-anything-v2-large")
DEVICES = ("auto", "cuda", "mps", "cpu")

#: viewer-wide shortcuts: (napari key, method, what it does). None of these keys is bound
#: by napari itself (viewer or any layer type); see docs/plugin.md.
SHORTCUTS = (
    ("N", "toggle_polarity", "toggle positive / negative for the next clicks"),
    ("K", "next_proposal", "next proposal (after the first click)"),
    ("Shift-K", "previous_proposal", "previous proposal"),
    ("U", "undo", "undo the last click (or proposal choice); with none on the slice, the last 3D correction"),
    ("Shift-U", "reset_object", "reset the current object (drop its clicks)"),
    ("Shift-Enter", "commit", "commit the current object as a new label"),
    ("G", "propagate", "propagate the object through the stack (3D)"),
)


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
        self.controller = InteractionController()
        self.image_layer = None
        self.labels_layer = None
        self.overlays = Overlays(napari_viewer, self._on_clicks, self._on_points_edited,
                                 lambda drawn: self._edit(self.controller.edit_boxes(drawn)))
        self.targets = LabelTargets(napari_viewer)
        #: napari progress bars for loading/embedding/propagation: True, False or None (auto)
        self.show_progress: Optional[bool] = None
        self._renderer: Optional[str] = None
        self._worker = None  # the worker of controller.running
        self._pbar = None  # its napari progress bar
        self._pump_scheduled = self._points_render_scheduled = False
        self._docked = self._closed = self._binding = False
        self._gl_note = ""

        self._build_ui()
        self._connect_viewer()
        if predictor is not None:
            self.set_predictor(predictor)
        self._reset_choices()
        self._on_image_changed()
        self._schedule_pump()

    # ----------------------------------------------------------------- state (read-only)
    session = property(lambda self: self.controller.session, doc="The bound image's InteractionSession.")
    predictor = property(lambda self: self.controller.predictor, doc="The predictor in use (or None).")
    model_label = property(lambda self: self.controller.model_label, doc="The name of the model in use.")
    messages = property(lambda self: self.controller.messages, doc="Status lines (kind, text), newest last.")
    status = property(lambda self: self.controller.status, doc="The text of the status line.")
    negative_mode = property(lambda self: self.overlays.negative, doc="The next clicks are negative (N).")
    points_layer = property(lambda self: self.overlays.points, doc="The clicks (a Points layer).")
    preview_layer = property(lambda self: self.overlays.preview, doc="The current objects (a Labels layer).")
    box_layer = property(lambda self: self.overlays.boxes, doc="The box prompts (a Shapes layer).")

    is_closed = property(lambda self: self._closed, doc="Disconnected from the viewer (close_widget).")
    progress_bar = property(lambda self: self._pbar, doc="The napari progress bar of the running job.")

    @property
    def is_idle(self) -> bool:
        """True when no interactive job runs or is about to start (``controller.finetuning``
        tells whether a fine-tuning runs beside them)."""
        return self.controller.running is None and not self._pump_scheduled

    # ================================================================= UI
    def _build_ui(self) -> None:
        from .registry import registry

        self.image_combo = ComboBox(label="image", choices=self._image_choices,
                                    tooltip="the image (2D, RGB or a 3D/4D stack) to segment")
        self._model_names = names = list(registry())
        self.model_combo = ComboBox(label="model", choices=self._model_choices, value=names[0],
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
        self.zoom_box = CheckBox(text="zoom in on the object", value=True,
                                 tooltip="from an object's second click, predict on a crop around it "
                                         "(finer boundaries; off: always the whole image)")
        self.negative_box = CheckBox(text="negative clicks [N]", value=False,
                                     tooltip="clicks remove from the object (Shift+click does it for one click)")
        self.min_quality = FloatSpinBox(label="stop below IoU", min=-1.0, max=1.0, step=0.05,
                                        value=STOP_RULES["min_score"],
                                        tooltip="propagation stops on a slice whose predicted IoU is lower")
        self.max_area_change = FloatSpinBox(
            label="stop on area change x", min=1.0, max=100.0, step=0.25, value=STOP_RULES["area_ratio"][1],
            tooltip="propagation stops where the object's area changes by more than this factor "
                    "from one slice to the next (a leak, or a lost object); 100: practically off")
        self.min_overlap = FloatSpinBox(
            label="stop below overlap", min=0.0, max=1.0, step=0.05, value=STOP_RULES["min_overlap"],
            tooltip="propagation stops where the mask's IoU with the previous slice's mask is lower "
                    "(0: only where they do not overlap at all)")
        show_path_start(self.checkpoint)
        self._form = Container(widgets=[
            self.image_combo, self.model_combo, self.checkpoint, self.depth_combo,
            self.device_combo, self.k_spin, self.zoom_box, self.labels_combo, self.overwrite,
            self.negative_box, self.min_quality, self.max_area_change, self.min_overlap,
        ])

        self.proposal_list = ProposalList()
        self.commit_button = button("Commit [Shift+Enter]", self.commit, "write the object with a new label id")
        self.undo_button = button("Undo [U]", self.undo, "remove the last click")
        self.reset_button = button("Reset object", self.reset_object, "drop the current object's clicks [Shift+U]")
        self.clear_button = button("Clear", self.clear, "drop all uncommitted clicks (committed labels stay)")
        self.propagate_button = button("Propagate [G]", self.propagate,
                                       "extend the object through neighbouring slices of a stack")
        self.box_button = button("Box", self.draw_box, "draw a rectangle around the object (the 'OIS box' "
                                 "layer); it starts the object again from the box and its clicks")
        self.finetune_panel, self.autosave_panel = FinetunePanel(self), AutosavePanel(self)
        self.propagation_panel = PropagationPanel(self)  # Z range, Stop, the slices reached; Propagate
        self.folder_panel = FolderPanel(self)  # after autosave_panel: it listens to its saves
        self.edit_panel = EditLabelPanel(self)  # a label id + "Edit label"; Alt+click picks one
        self.segment_all_panel = SegmentAllPanel(self)  # every object into a new labels layer, in the background
        self.device_notice = text_line(style="color: #f0a030;")
        self.device_notice.setVisible(False)
        self.target_label = text_line(tip="the Labels layer that Commit and Propagate write into")
        self.status_label = text_line()
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay_out_dock(self, self._form.native, self.proposal_list,
                     ((self.commit_button, self.undo_button, self.reset_button),
                      (self.box_button, self.propagate_button, self.clear_button), (self.propagation_panel,)),
                     (self.segment_all_panel, self.edit_panel, self.target_label, self.autosave_panel,
                      self.device_notice, self.status_label, text_line(HELP, style="color: gray;"), self.folder_panel,
                      self.finetune_panel))

        for field, slot in ((self.image_combo, self._on_image_changed),
                            (self.model_combo, self._on_model_changed),
                            (self.checkpoint, self._on_checkpoint_changed),
                            (self.depth_combo, self._on_depth_changed), (self.device_combo, self.load_model),
                            (self.k_spin, self._on_k_changed), (self.labels_combo, self._on_labels_changed)):
            field.changed.connect(lambda *_, slot=slot: slot())
        self.negative_box.changed.connect(lambda v: self._set_negative_mode(bool(v)))
        self.zoom_box.changed.connect(lambda v: self._apply(self.controller.set_zoom_in(bool(v))))
        self.proposal_list.currentRowChanged.connect(self._on_proposal_row)

        self._contrast_timer = QTimer(self)  # debounces contrast-limit drags
        self._contrast_timer.setSingleShot(True)
        self._contrast_timer.setInterval(300)
        self._contrast_timer.timeout.connect(self._apply_contrast_limits)

    # ----------------------------------------------------------------- choices
    def _model_choices(self, *_):
        extra = [(Path(m).name, m) for m in self.controller.added_models]  # e.g. fine-tuned ones
        return [(n, n) for n in self._model_names] + extra + [(CHECKPOINT, CHECKPOINT)]

    def _image_choices(self, *_):
        return [(ly.name, ly) for ly in layers_of(self.viewer, "image")]

    def _labels_candidates(self) -> list:
        return [ly for ly in layers_of(self.viewer, "labels") if ly is not self.preview_layer]

    def _labels_choices(self, *_):
        return [(NEW_LABELS, None)] + [(ly.name, ly) for ly in self._labels_candidates()]

    def _depth_choices(self, *_):
        return list(DEPTH_CHOICES) + depth_layer_choices(self.viewer, self.image_layer)

    def _reset_choices(self, *_):
        if self._closed:
            return
        self._binding = True
        try:
            self._form.reset_choices()
            pick = default_image(self.viewer, self.image_combo.value)
            if pick is not None and pick is not self.image_combo.value:
                self.image_combo.value = pick
        finally:
            self._binding = False

    # ================================================================= viewer wiring
    def _viewer_callbacks(self) -> tuple:
        ev, dims = self.viewer.layers.events, self.viewer.dims.events
        return ((ev.inserted, self._on_layers_changed), (ev.inserted, self.overlays.on_inserted),
                (ev.removed, self._on_layer_removed),
                (ev.reordered, self._on_layers_changed),
                *(((ev.renamed, self._on_layers_changed),) if hasattr(ev, "renamed") else ()),
                (dims.current_step, self._on_dims_changed), (dims.ndisplay, self._on_dims_changed))

    def _connect_viewer(self) -> None:
        for emitter, callback in self._viewer_callbacks():
            emitter.connect(callback)
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
            self.overlays.forget(layer)
            self.targets.forget(layer)
            if layer is self.labels_layer:
                self.labels_layer = None
            if layer is self.image_layer:
                self._unbind_image()
                self._status(f"image layer {layer.name!r} was removed: choose another image "
                             "(committed labels are kept)", "error")
        self._on_layers_changed()

    # ================================================================= public actions
    def set_predictor(self, predictor: Any, name: str = "injected predictor") -> None:
        """Use ``predictor`` (an ``OISPredictor`` or compatible) instead of loading a model.

        Pending or running model loads are discarded; clicks are kept and predicted again."""
        self._apply(self.controller.set_predictor(predictor, name))

    def load_model(self) -> None:
        """Load the model, device and depth the fields name (the latest request wins)."""
        if self._binding or self._closed:
            return
        self._apply(self.controller.request_model(self._model_spec()))
        if self.controller.loading:
            self._schedule_pump()

    def schedule_work(self) -> None:
        """Look for background work (after changing the session from a script)."""
        self._schedule_pump()

    def toggle_polarity(self) -> None:
        self.negative_box.value = not self.negative_box.value

    def next_proposal(self) -> None:
        self._edit(self.controller.cycle_proposal(1, int(self.k_spin.value)))

    def previous_proposal(self) -> None:
        self._edit(self.controller.cycle_proposal(-1, int(self.k_spin.value)))

    def select_proposal(self, index: int) -> None:
        self._edit(self.controller.select_proposal(index))

    def undo(self) -> None:
        """Undo the last click on the slice; with none there, the latest correction (3D)."""
        if not self.propagation_panel.undo_correction():
            self._edit(self.controller.undo())

    def reset_object(self) -> None:
        self._edit(self.controller.reset_object())

    def draw_box(self) -> None:
        """Select the box layer in rectangle mode: the next rectangle drawn is the object's box."""
        self.overlays.start_box()

    def clear(self) -> None:
        """Drop all uncommitted clicks and objects on every slice (labels stay)."""
        self._apply(self.controller.clear())

    def commit(self) -> Optional[int]:
        """Write the current object into the labels layer with a new id. Returns the id (None:
        not now; the status line says why, or that it follows the last click's prediction)."""
        not_now = self.controller.prepare_commit()
        if not_now is not None:
            return self._edit(not_now)
        target = self._target_labels(create=True)
        if target is None:
            return None
        label_id, events = self.controller.commit(target.data, name=target.name, writer=labels_writer(target),
                                                  overwrite=bool(self.overwrite.value))
        self._apply(events)
        self.autosave_panel.save(target)
        return label_id

    def propagate(self) -> None:
        """Commit the current object (if any) and extend it through the stack, slice by slice,
        within the Z range (``propagation_panel``; its Stop ends it)."""
        self.propagation_panel.propagate()

    def propagation_options(self) -> dict:
        """The stop rules and Z range of ``InteractionSession.iter_propagate`` set in the dock."""
        return self.propagation_panel.options()

    def stop_propagation(self) -> None:
        """Stop the running propagation after the current slice; what it wrote is kept."""
        self.propagation_panel.stop()

    def cancel(self) -> None:
        """Stop a running propagation (other jobs are short and simply dropped)."""
        self.controller.cancel()
        if self.controller.propagation_running:
            self._worker.quit()  # its end closes the undo group
        else:
            self.propagation_panel.close_undo_group()

    def close_widget(self) -> None:
        """Disconnect from the viewer and stop background work (the viewer stays)."""
        if self._closed:
            return
        self.cancel()
        self.segment_all_panel.cancel()
        self._closed = self.overlays.closed = True
        self.controller.close()
        try:
            disconnect(self._viewer_callbacks())
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

    # ================================================================= model fields
    def _model_spec(self) -> ModelSpec:
        model = self.model_combo.value
        if model == CHECKPOINT:
            path = self.checkpoint.value
            model = str(path) if path and Path(path).is_file() else ""
        depth = self.depth_combo.value or "none"
        if depth.startswith(DEPTH_LAYER_PREFIX):
            depth = "none"  # the depth map comes from a layer, through the session
        return ModelSpec(model, self.device_combo.value, depth)

    def _on_model_changed(self) -> None:
        if self.model_combo.value == CHECKPOINT:
            p = self.checkpoint.value
            if not p or not Path(p).is_file():
                return self._status("choose a checkpoint file (.safetensors or .pt)")
        self.load_model()

    def _on_checkpoint_changed(self) -> None:
        p = self.checkpoint.value
        if not p or str(p) in ("", ".") or Path(p).is_dir():
            return
        if not Path(p).is_file():
            return self._status(f"checkpoint not found: {p}", "error")
        if self.model_combo.value != CHECKPOINT:
            with self.model_combo.changed.blocked():
                self.model_combo.value = CHECKPOINT
        self.load_model()

    def _on_depth_changed(self) -> None:
        if self._binding:
            return
        if self.session is not None:
            depth, problem = depth_map(self.viewer, self.depth_combo.value or "none")
            try:
                if problem:
                    raise ValueError(problem)
                self.session.set_depth(depth)
            except ValueError as exc:
                return self._status(str(exc), "error")
        self._edit(self.controller.depth_changed(self._model_spec()))

    def _on_model_ready(self, event: ModelReady) -> None:
        with self.k_spin.changed.blocked():
            self.k_spin.max = self.k_spin.value = event.num_proposals
        if self.session is not None:
            self.session.max_proposals = int(self.k_spin.value)
        self.proposal_list.thumbnails.clear()
        self._schedule_pump()

    def _revert_model_fields(self, spec: Optional[ModelSpec]) -> None:
        """After a failed load: the model / checkpoint fields show the model in use again."""
        with self.model_combo.changed.blocked(), self.checkpoint.changed.blocked():
            if spec is None:  # an injected predictor (or none): no field can name it
                self.checkpoint.value = ""
                return
            named = spec.model in [c for c in self.model_combo.choices if c != CHECKPOINT]
            self.model_combo.value = spec.model if named else CHECKPOINT
            self.checkpoint.value = "" if named else spec.model
            if spec.device in DEVICES:
                with self.device_combo.changed.blocked():
                    self.device_combo.value = spec.device

    def _update_device_notice(self) -> None:
        """The persistent notice line: running on the CPU, GPU fallback, depth problems."""
        text = self.controller.notice(self._gl_note)
        with suppress(RuntimeError):
            self.device_notice.setText(text)
            self.device_notice.setVisible(bool(text))

    def _on_k_changed(self) -> None:
        if self.session is not None:
            self.session.max_proposals = int(self.k_spin.value)
        self._render_proposals()

    # ================================================================= image binding
    def _on_image_changed(self) -> None:
        if self._binding or self._closed:
            return
        layer = self.image_combo.value
        if layer is not self.image_layer:
            self._unbind_image() if layer is None else self._bind_image(layer)

    def _bind_image(self, layer) -> None:
        self._unbind_image()
        problem = image_problem(layer)
        if problem:
            return self._status(problem, "error")
        try:
            session = self.controller.open_image(
                layer.data, rgb=bool(layer.rgb), contrast_limits=layer_contrast_limits(layer),
                max_proposals=int(self.k_spin.value))
        except ValueError as exc:
            return self._status(f"cannot use {layer.name!r}: {exc}", "error")
        self.image_layer = layer
        layer.events.contrast_limits.connect(self._on_contrast_limits)
        layer.events.data.connect(self._on_image_data)
        self.overlays.ensure(layer, session)
        self.propagation_panel.set_stack(session)
        self._reset_choices()
        self.labels_layer = self.targets.remembered(layer, session.spatial_shape, self._labels_candidates())
        with self.labels_combo.changed.blocked():
            self.labels_combo.value = self.labels_layer  # None: a new layer at the first commit
        self._update_target_label()
        if (self.depth_combo.value or "none").startswith(DEPTH_LAYER_PREFIX):
            with self.depth_combo.changed.blocked():
                self.depth_combo.value = "none"  # that depth map belonged to the last image
        self._sync_slice()
        self._redraw(Redraw(everything=True))
        kind = "stack " + " x ".join(map(str, session.spatial_shape)) if session.is_stack else \
            " x ".join(map(str, session.plane_shape))
        self._status(f"image {layer.name!r} ({kind}{', RGB' if session.rgb else ''}): click on an object")
        self._schedule_pump()

    def _unbind_image(self) -> None:
        layer = self.image_layer
        if layer is not None:
            disconnect(((layer.events.contrast_limits, self._on_contrast_limits),
                        (layer.events.data, self._on_image_data)))
        self.cancel()
        self.finetune_panel.forget_outcome()  # an old fine-tune error is not about the next image
        self.controller.close_image()
        self.image_layer = None
        self.proposal_list.thumbnails.clear()
        if not self._closed:
            self.overlays.clear()
            self._render_proposals()

    def _on_contrast_limits(self, event=None) -> None:
        self._contrast_timer.start()

    def _apply_contrast_limits(self) -> None:
        if self.session is not None and self.image_layer is not None:
            self.session.set_contrast_limits(layer_contrast_limits(self.image_layer))
            self.proposal_list.thumbnails.clear()
            self._schedule_pump()

    def _on_image_data(self, event=None) -> None:
        if self.image_layer is not None:
            self._bind_image(self.image_layer)

    # ----------------------------------------------------------------- the labels target
    def _target_labels(self, create: bool):
        """The labels layer commits go to (creating one if asked). None (+ message) if unusable."""
        layer, created, problem = self.targets.resolve(
            self.labels_combo.value, self.image_layer, self.session.spatial_shape, create,
            below=self.preview_layer)
        if problem:
            self._status(problem, "error")
        if layer is None:
            return None
        self.labels_layer = layer
        if created:
            self._reset_choices()
            with self.labels_combo.changed.blocked():
                self.labels_combo.value = layer
            if self.overlays.shown(self.points_layer):
                self.viewer.layers.selection.active = self.points_layer
        self._update_target_label()
        return layer

    def _on_labels_changed(self) -> None:
        """The user chose another target: it becomes this image's target."""
        if self._binding or self._closed or self.image_layer is None:
            return
        self.labels_layer = self.labels_combo.value
        self.targets.remember(self.image_layer, self.labels_layer)
        self._update_target_label()

    def _update_target_label(self) -> None:
        with suppress(RuntimeError):
            self.target_label.setText(self.targets.describe(self.image_layer, self.labels_combo.value))
        self.autosave_panel.show_target()

    @property
    def target_text(self) -> str:
        """What the target line says (which labels layer commits go to)."""
        return self.target_label.text()

    # ================================================================= slices and clicks
    def _slice_key(self):
        """The data index of the displayed slice of the bound image, or None if not shown."""
        return displayed_key(self.viewer, self.image_layer, self.session)

    def _on_dims_changed(self, event=None) -> None:
        if not self._closed:
            self._sync_slice()
            self._render_proposals()
            self._schedule_pump()

    def _sync_slice(self) -> None:
        key = self._slice_key()
        if self.session is not None and key is not None and key != self.session.current_key:
            self.session.set_slice(key)

    def _on_clicks(self, clicks: list) -> None:
        """Points the user added: clicks for the controller (refused ones vanish again)."""
        if self._closed:
            return
        for coord, positive in clicks:
            problem = view_problem(self.viewer, self.session) if self.session is not None else None
            if problem:
                self._status(problem, "error")
            else:
                self.propagation_panel.start_correction(coord)  # inside a propagated object: corrects it
                self._edit(self.controller.add_click(coord, positive, shown_key=self._slice_key()))
        self._schedule_points_render()

    def _on_points_edited(self) -> None:
        """The user moved or deleted clicks by hand: the layer's points are the truth."""
        if self.session is not None and self.points_layer is not None and not self._closed:
            self._edit(self.controller.replace_clicks(self.overlays.clicks_by_slice(self.session)))

    def _schedule_points_render(self) -> None:
        if not self._points_render_scheduled:
            self._points_render_scheduled = True
            QTimer.singleShot(0, self._render_points)

    def _set_negative_mode(self, value: bool) -> None:
        self.overlays.negative = value
        self.overlays.style_next_click(value)
        self._status("next clicks are negative (key N in the viewer or 'negative clicks' switches back)"
                     if value else "next clicks are positive")

    def _on_proposal_row(self, row: int) -> None:
        s = self.session
        if row >= 0 and s is not None and s.proposals() is not None and row != s.state().selected:
            self.select_proposal(row)

    # ================================================================= drawing
    def _apply(self, events) -> None:
        """Show what the controller's events say."""
        for ev in events:
            if isinstance(ev, Status):
                self._paint(ev)
            elif isinstance(ev, Redraw):
                self._redraw(ev)
            elif isinstance(ev, ModelReady):
                self._on_model_ready(ev)
            elif isinstance(ev, ModelLoadFailed):
                self._revert_model_fields(ev.in_use)
            elif isinstance(ev, CommitNow):
                self.propagate() if ev.propagate else self.commit()

    def _edit(self, events) -> None:
        """Show an edit's events and look for the work it makes."""
        self._apply(events)
        self._schedule_pump()

    def _redraw(self, what: Redraw) -> None:
        s = self.session
        if what.everything and s is None:
            what = Redraw(notice=what.notice)  # nothing is shown
        if what.everything:
            self.overlays.render_previews(s)
        for key in what.masks:
            self.overlays.render_preview(s, key)
        if what.everything or what.points:
            self._render_points()
        if what.everything or what.proposals:
            self._render_proposals()
        if what.notice:
            self._update_device_notice()

    def _render_points(self, force: bool = False) -> None:
        self._points_render_scheduled = False
        if not self._closed:
            self.overlays.render_points(self.session, force)

    def _render_proposals(self) -> None:
        self.proposal_list.show_session(self.session, int(self.k_spin.value))

    def _status(self, text: str, kind: str = "info") -> None:
        self._paint(self.controller.report(text, kind))

    def _paint(self, status: Status) -> None:
        if not self._closed:
            paint_status(self.status_label, status)

    # ================================================================= worker runner
    def _schedule_pump(self) -> None:
        if not (self._pump_scheduled or self._closed):
            self._pump_scheduled = True
            QTimer.singleShot(0, self._pump)

    def _alive(self) -> bool:
        try:
            self.objectName()  # raises once the Qt object is deleted
        except RuntimeError:
            self._closed = True
            self.controller.close()
        return not self._closed

    def _pump(self) -> None:
        """Start the next background job the controller chooses (GUI thread)."""
        self._pump_scheduled = False
        c = self.controller
        if not self._alive() or c.running is not None:
            return
        if c.wants_model:
            self.load_model()  # the model the fields name
        had_propagation = c.propagating
        job = c.next_job(slice_shown=self._slice_key() is not None)
        if had_propagation and not c.propagating:
            self.propagation_panel.close_undo_group()  # its request was stale: nothing will write
        if job is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        """Run ``job.run`` in napari's thread pool, with a napari progress bar where it has
        one (determinate: an animated busy bar makes Qt recompose the OpenGL window
        continuously, which slowed a CPU embedding about 5x under software OpenGL)."""
        from napari.utils import progress

        self._pbar = None
        if job.status is not None:
            self._paint(job.status)
        if job.progress is not None and self.shows_progress_bars():
            with suppress(Exception):  # optional; showing it may process events (and pump: it waits)
                self._pbar = progress(total=max(1, job.progress.total), desc=job.progress.desc)
        pbar, c = self._pbar, self.controller  # no finished job stays alive: see start_worker
        self._worker = start_worker(
            job, lambda result: self._apply(c.job_returned(job, result)),
            lambda exc: self._apply(c.job_failed(job, exc)), lambda: self._on_finished(job, pbar),
            self.propagation_panel.started(job, pbar) if isinstance(job, Propagate) else None)

    def shows_progress_bars(self) -> bool:
        """Whether napari progress bars are shown: ``show_progress``, or when that is None
        ``_layers.progress_bars_default`` (off under software OpenGL; the status line still
        says what runs)."""
        if self.show_progress is None:
            self.show_progress, self._gl_note = progress_bars_default(self._gl_renderer)
            if self._gl_note:
                self._update_device_notice()
        return bool(self.show_progress)

    def _gl_renderer(self) -> str:
        if self._renderer is None:
            self._renderer = gl_renderer()
        return self._renderer

    def _on_finished(self, job: Job, pbar) -> None:
        if self.controller.running is job:
            self._worker = self._pbar = None
        if pbar is not None:
            with suppress(Exception):
                pbar.close()
        self._apply(self.controller.job_finished(job))
        if isinstance(job, Propagate):
            self.propagation_panel.finished(job)  # every slice written: one undo step, saved
        if not self._closed:
            self._schedule_pump()

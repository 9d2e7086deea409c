"""Parts of the OIS dock: its layout (a scroll area: napari's default window is shorter than
the dock), small Qt helpers, the "autosave labels to" field and the "Fine-tune on my labels"
section.

``AutosavePanel`` keeps a TIFF copy of each labels layer the widget writes into
(``napari_ois.autosave``: atomic writes), saved after every commit and propagation; a file
that exists is loaded into an empty or new labels layer when it is picked.

``SegmentAllPanel`` is *Segment all*: ``napari_ois.segment_all`` on the displayed image (or
slice) in a napari worker of its own, with its progress and a cancel; the result is a new
labels layer (existing labels are never touched).

``FinetunePanel`` holds the fine-tune fields (minutes, the folder models are saved in), the
button (it turns into "Cancel fine-tuning" while a run goes on) and a progress line. What
runs and what its outcome means is ``napari_ois.finetune_job`` (through the widget's
``InteractionController``); the panel runs that job in a napari worker of its own, beside the
widget's interactive jobs, and shows its progress every half second.
"""

from __future__ import annotations

import threading
from contextlib import suppress
from typing import Any, Callable

import time
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, FloatSpinBox, SpinBox
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ._layers import layer_contrast_limits
from .autosave import AutosaveError, load_labels, save_labels
from .events import FinetuneDone
from .finetune_job import default_models_dir, new_model_dir

#: the dock's line of mouse and keyboard help (the shortcuts: ``_widget.SHORTCUTS``)
HELP = ("click: positive · Shift+click or right-click: negative · N: toggle · K / Shift+K: proposals · "
        "U: undo · Shift+Enter: commit · G: propagate · Box: draw a rectangle · Alt+click: edit that label")
#: colours of the status line by ``Status.kind`` (info: the theme's)
STATUS_COLORS = {"error": "#ff6060", "busy": "#80b0ff"}
FINETUNE = "Fine-tune on my labels"
CANCEL_FINETUNE = "Cancel fine-tuning"
SEGMENT_ALL = "Segment all"
CANCEL_SEGMENT_ALL = "Cancel segment all"


def button(text: str, slot: Callable[[], Any], tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    b.clicked.connect(lambda *_: slot())
    return b


def text_line(text: str = "", style: str = "", tip: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setStyleSheet(style)
    lab.setToolTip(tip)
    return lab


def paint_status(label: QLabel, status: Any) -> None:
    """Show a ``Status`` event in the status line ``label``, coloured by its kind."""
    with suppress(RuntimeError):  # the Qt label is already deleted
        color = STATUS_COLORS.get(status.kind)
        label.setStyleSheet(f"color: {color};" if color else "")
        label.setText(status.text)


def lay_out_dock(owner: QWidget, form: QWidget, proposals: QWidget, button_rows, lines) -> None:
    """The dock's content, top to bottom, in a ``DockScroll``: the form, the proposal chooser
    under its title, the rows of buttons, then the text lines and sections of ``lines``."""
    layout = scrolling(owner)
    layout.addWidget(form)
    layout.addWidget(QLabel("proposals (first click)"))
    layout.addWidget(proposals)
    for buttons in button_rows:
        row = QHBoxLayout()
        for b in buttons:
            row.addWidget(b)
        layout.addLayout(row)
    for w in lines:
        layout.addWidget(w)
    layout.addStretch(1)


class DockScroll(QScrollArea):
    """A vertical scroll area for the dock's content: where the dock is shorter than the
    content (napari's default window is about 1089 x 847), it scrolls instead of squashing
    the rows. It is as wide as the content needs (no horizontal scrolling) and asks for the
    content's full height."""

    def __init__(self, content: QWidget):
        super().__init__()
        # no ShrinkFlag: the area never gives the content less than its size hint's height
        content.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

    def _bar(self) -> int:  # the scroll bar and the frame (a style sheet may draw one)
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name; QScrollArea caps it at 24 lines
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self._bar(), hint.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt name
        return QSize(self.widget().minimumSizeHint().width() + self._bar(), 4 * self.fontMetrics().height())


def scrolling(owner: QWidget) -> QVBoxLayout:
    """Give ``owner`` a ``DockScroll`` and return the layout to fill its content with."""
    content = QWidget()
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(DockScroll(content))
    return QVBoxLayout(content)


def start_worker(job, returned: Callable, errored: Callable, finished: Callable,
                 yielded: Callable = None):
    """Run ``job.run`` in napari's thread pool and return the started worker; ``returned``,
    ``errored``, ``yielded`` (a generator job's steps) and then ``finished`` are called on
    the GUI thread.

    No finished job stays alive (each may hold full-resolution arrays): napari keeps every
    worker it made (its task list holds ``worker.quit``, and the worker its function), so the
    worker gets a small function that lets go of the job as it runs it, and the slots
    connected here, the callers' closures over the job, are disconnected when it finishes."""
    import inspect

    from napari.qt.threading import create_worker

    holder = [job]
    if inspect.isgeneratorfunction(type(job).run):
        def call():
            yield from holder.pop().run()
    else:
        def call():
            return holder.pop().run()
    worker = create_worker(call, _start_thread=False, _ignore_errors=True)
    slots = [(worker.returned, returned), (worker.errored, errored)]
    if yielded is not None:
        slots.append((worker.yielded, yielded))

    def done():
        try:
            finished()
        finally:
            for signal, slot in slots:
                with suppress(TypeError, RuntimeError):  # already gone
                    signal.disconnect(slot)
            slots.clear()

    slots.append((worker.finished, done))
    for signal, slot in slots:
        signal.connect(slot)
    worker.start()
    return worker


def show_path_start(edit, min_chars: int = 24) -> None:
    """Let a magicgui ``FileEdit`` show the start of its path (a QLineEdit scrolls to the end
    of a text set in it), with the whole path as its tooltip and room for ``min_chars``."""
    line = edit.line_edit.native
    line.setMinimumWidth(line.fontMetrics().averageCharWidth() * min_chars)

    def show(*_):
        line.setToolTip(str(edit.value or ""))
        if not line.hasFocus():  # never move the cursor under the user's typing
            line.setCursorPosition(0)

    edit.changed.connect(show)
    line.editingFinished.connect(show)
    show()


class FinetunePanel(QWidget):
    """The fine-tune section of ``OISWidget`` (``widget.finetune_panel``).

    ``options`` are passed on to ``finetuning.run_finetune`` (``batch_size``, ``seed``, ...)."""

    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        self.options: dict = {}
        self.minutes = FloatSpinBox(label="fine-tune minutes", min=0.01, max=600.0, step=1.0, value=10.0,
                                    tooltip="time budget of a fine-tuning (it ends when it is spent)")
        self.folder = FileEdit(label="save models in", mode="d", value=str(default_models_dir()),
                               tooltip="each fine-tuning writes a new folder finetuned-<date>-<time> here")
        self.button = button(FINETUNE, self.toggle,
                             "fine-tune the model in use on the committed objects of this image, in the "
                             "background; the new model is added to the model list")
        show_path_start(self.folder)
        self.line = text_line(style="color: gray;")
        self.line.setVisible(False)
        self._timer = QTimer(self)
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._show_progress)
        self._pbar = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(Container(widgets=[self.minutes, self.folder]).native)
        layout.addWidget(self.button)
        layout.addWidget(self.line)

    def forget_outcome(self) -> None:
        """Another image was chosen: the last run's outcome (an error too) no longer applies;
        a running fine-tuning keeps its progress line."""
        if self.job is None:
            with suppress(RuntimeError):  # the Qt label is already deleted
                self.line.setText("")
                self.line.setVisible(False)

    @property
    def job(self):
        """The running ``Finetune`` job, or None."""
        return self.widget.controller.finetune_job

    def toggle(self) -> None:
        self.cancel() if self.job is not None else self.start()

    def start(self) -> None:
        """Fine-tune the model in use on the committed objects of the bound image."""
        w = self.widget
        if w.session is None or w.image_layer is None:
            return w._status("fine-tuning needs an image with committed objects: choose an image layer", "error")
        target = w._target_labels(create=False)
        if target is None and w.labels_combo.value is not None:
            return  # an unusable labels layer: the status line says why
        labels = np.zeros(w.session.spatial_shape, np.int32) if target is None else target.data
        job, events = w.controller.request_finetune(
            w.image_layer.data, labels, contrast_limits=layer_contrast_limits(w.image_layer),
            out=new_model_dir(self.folder.value), minutes=float(self.minutes.value), options=self.options)
        w._apply(events)
        if job is not None:
            self._run(job)

    def cancel(self) -> None:
        """Stop the running fine-tuning: nothing is written, the model in use stays."""
        self.widget._apply(self.widget.controller.cancel_finetune())
        self.button.setEnabled(False)
        self._show_progress()

    def _run(self, job) -> None:
        c = self.widget.controller
        self.button.setText(CANCEL_FINETUNE)
        self.line.setVisible(True)
        if self.widget.shows_progress_bars():
            with suppress(Exception):  # optional
                from napari.utils import progress

                self._pbar = progress(total=max(1, round(job.minutes * 60)), desc="OIS: fine-tuning (s)")
        self._show_progress()
        self._timer.start()
        start_worker(job, lambda result: self._apply(c.job_returned(job, result)),
                     lambda exc: self._apply(c.job_failed(job, exc)), lambda: self._finished(job))

    def _show_progress(self) -> None:
        job = self.job
        if job is None:
            return
        with suppress(RuntimeError):  # the Qt label is already deleted
            self.line.setText(job.progress_line())
        if self._pbar is not None and job.latest is not None:
            with suppress(Exception):
                p = job.latest[1]
                self._pbar.total = max(1, round(p["total_s"]))  # the steps may end first
                self._pbar.update(max(0, int(p["elapsed_s"]) - self._pbar.n))

    def _apply(self, events) -> None:
        if any(isinstance(ev, FinetuneDone) for ev in events):
            self.widget._reset_choices()  # the new model joins the model list
        self.widget._apply(events)

    def _finished(self, job) -> None:
        self._timer.stop()
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            with suppress(Exception):
                pbar.close()
        self.widget._apply(self.widget.controller.job_finished(job))
        with suppress(RuntimeError):
            self.button.setText(FINETUNE)
            self.button.setEnabled(True)
            self.line.setText(job.outcome)


class SegmentAllJob:
    """One *Segment all* run: ``segment_all`` on one image plane (``run``, on a worker
    thread), with the predictor's model, its progress (``done`` of ``total`` prompts) and its
    cancel (``stop``: the run ends after the current batch, returning nothing)."""

    def __init__(self, image: np.ndarray, predictor: Any, contrast_limits: Any = None, **options: Any):
        self.image, self.predictor, self.contrast_limits, self.options = image, predictor, contrast_limits, options
        self.stop = threading.Event()
        self.done = self.total = 0

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)

    def run(self) -> np.ndarray:
        from .segment_all import segment_all

        return segment_all(self.image, predictor=self.predictor, contrast_limits=self.contrast_limits,
                           progress=self._progress, should_stop=self.stop.is_set, **self.options)


class SegmentAllPanel(QWidget):
    """*Segment all* (``widget.segment_all_panel``): every object of the displayed image (or
    the displayed slice of a stack) found by ``napari_ois.segment_all`` with the model in use,
    in a napari worker of its own beside the interactive jobs (the GUI stays responsive). The
    button turns into *Cancel segment all* while it runs and a line shows the prompts done.
    The result is a NEW labels layer ``<image> all objects`` with the image's geometry, which
    becomes the commit target (correct it with clicks and *Edit label*); a cancelled run adds
    nothing, and existing labels are never touched. ``options`` go to ``segment_all``."""

    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        self.options: dict = {}
        self.button = button(SEGMENT_ALL, self.toggle, "find every object of the displayed image (or slice) in "
                             "the background and put them in a new labels layer, to correct with clicks")
        self.line = text_line(style="color: gray;")
        self.line.setVisible(False)
        self._timer = QTimer(self)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._show_progress)
        self.job = None  # the running SegmentAllJob
        self._pbar = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        layout.addWidget(self.line)

    def toggle(self) -> None:
        self.cancel() if self.job is not None else self.start()

    def start(self) -> bool:
        """Segment all the objects of the displayed image or slice. Returns whether it started."""
        w = self.widget
        if self.job is not None:
            return False
        if w.session is None or w.image_layer is None:
            return w._status("Segment all needs an image: choose an image layer", "error") or False
        if w.predictor is None:
            w.load_model()
            return w._status("the model is not loaded yet: press Segment all again once it is ready", "error") or False
        key = w._slice_key()
        if key is None:
            return w._status("the image's slice is not displayed: show it (2D) to segment it all", "error") or False
        layer, shape = w.image_layer, tuple(w.session.spatial_shape)
        job = self.job = SegmentAllJob(w.session.plane_to_read(key), w.predictor, w.session.contrast_limits,
                                       **self.options)
        where = f" (slice {key[-1]})" if key else ""
        w._status(f"segmenting all the objects of {layer.name!r}{where} in the background...", "busy")
        self.button.setText(CANCEL_SEGMENT_ALL)
        self.line.setVisible(True)
        if w.shows_progress_bars():
            with suppress(Exception):  # optional
                from napari.utils import progress

                self._pbar = progress(total=1, desc="OIS: segment all (prompts)")
        self._show_progress()
        self._timer.start()
        start_worker(job, lambda labels: self._add(layer, shape, key, labels), self._failed,
                     lambda: self._finished(job))
        return True

    def cancel(self) -> None:
        """Stop the run after the current batch: nothing is added."""
        if self.job is not None:
            self.job.stop.set()
            self.button.setEnabled(False)
            self.widget._status("cancelling segment all (it stops after the current batch)...", "busy")

    def _show_progress(self) -> None:
        job = self.job
        if job is None:
            return
        with suppress(RuntimeError):  # the Qt label is already deleted
            self.line.setText(f"segment all: {job.done} of {job.total} prompts" if job.total else
                              "segment all: looking at the image...")
        if self._pbar is not None:
            with suppress(Exception):
                self._pbar.total = max(1, job.total)
                self._pbar.update(max(0, job.done - self._pbar.n))

    def _add(self, image, shape: tuple, key: tuple, labels: np.ndarray) -> None:
        """The result: a new labels layer with the image's geometry, the commit target now."""
        w = self.widget
        if w.is_closed or image not in w.viewer.layers:
            return w._status("segment all finished, but its image is gone: nothing added", "error")
        data = np.zeros(shape, np.int32)
        data[key] = labels
        new = w.viewer.add_labels(data, name=f"{image.name} all objects", scale=np.asarray(image.scale),
                                  translate=np.asarray(image.translate))
        layers = w.viewer.layers
        if w.preview_layer is not None and w.preview_layer in layers:
            layers.move(layers.index(new), layers.index(w.preview_layer))
        if image is w.image_layer:
            w._reset_choices()
            w.labels_combo.value = new  # commits and Edit label go there
        n = int(labels.max())
        w._status(f"segment all: {n} object(s) in a new labels layer {new.name!r}" +
                  (" (the commit target: click to correct them, Alt+click a label to edit it)"
                   if image is w.image_layer else ""))

    def _failed(self, exc: BaseException) -> None:
        from .segment_all import SegmentAllCancelled

        if isinstance(exc, SegmentAllCancelled):
            return self.widget._status("segment all cancelled: nothing was added (existing labels are untouched)")
        self.widget._status(f"segment all failed: {type(exc).__name__}: {exc} (nothing was added)", "error")

    def _finished(self, job) -> None:
        self._timer.stop()
        self.job = None
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            with suppress(Exception):
                pbar.close()
        with suppress(RuntimeError):
            self.button.setText(SEGMENT_ALL)
            self.button.setEnabled(True)
            self.line.setVisible(False)


class AutosavePanel(QWidget):
    """The "autosave labels to" field and its switch (``widget.autosave_panel``).

    The file belongs to a labels layer (kept in its ``metadata[AUTOSAVE_KEY]``), so each
    layer the widget writes into has its own file, and the field shows the one of the layer
    commits go to now. Turning it on (a path and the switch) binds the file to that layer,
    creating the layer if it is still to come: a file that exists is loaded into it if the
    layer is empty (labels of another shape: a message, and the file is left alone), a new
    file is written at once (so a folder that cannot be written is known before any work)."""

    AUTOSAVE_KEY = "napari_ois_autosave"
    #: during a propagation a layer is saved at most every this many seconds (and at its end)
    MIN_INTERVAL_S = 2.0

    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        self.path = FileEdit(label="autosave labels to", mode="w", filter="*.tif *.tiff", value="",
                             tooltip="a TIFF file that holds a copy of the labels layer, saved after every "
                                     "commit and propagation; an existing file is loaded into an empty layer")
        self.enabled = CheckBox(text="autosave labels", value=False,
                                tooltip="save the labels layer commits go to after every commit (crash-safe)")
        show_path_start(self.path)
        self._last: dict = {}  # id(layer) -> (time of its last save, how long that took)
        #: called with ``(layer, path)`` after every save (e.g. the folder section's count)
        self.listeners: list = []
        self._attaching = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(Container(widgets=[self.path, self.enabled]).native)
        self.path.changed.connect(lambda *_: self.attach())
        self.enabled.changed.connect(lambda *_: self.attach())

    @classmethod
    def file_of(cls, layer):
        """The autosave file of a labels ``layer``, or None."""
        path = getattr(layer, "metadata", {}).get(cls.AUTOSAVE_KEY) if layer is not None else None
        return Path(path) if path else None

    def _chosen(self):
        path = self.path.value
        return Path(path) if path and str(path) not in ("", ".") and not Path(path).is_dir() else None

    def show_target(self) -> None:
        """Commits go to another layer now: the field shows that layer's file (or none)."""
        if self._attaching:
            return
        path = self.file_of(self.widget.labels_combo.value)
        with self.path.changed.blocked(), self.enabled.changed.blocked():
            if path is not None or self.enabled.value:  # a path typed but not turned on stays
                self.path.value = str(path or "")
            self.enabled.value = path is not None

    def attach(self) -> None:
        """Bind the field's file to the layer commits go to (see the class docstring)."""
        w = self.widget
        path, layer = self._chosen(), w.labels_combo.value
        if not (self.enabled.value and path):
            if layer is not None:
                layer.metadata.pop(self.AUTOSAVE_KEY, None)
            return
        if w.session is None:
            return self._refuse("autosave needs an image: choose an image layer first")
        data = None
        if path.exists():
            try:
                data = load_labels(path, shape=w.session.spatial_shape)
            except AutosaveError as exc:
                return self._refuse(str(exc))
        self._attaching = True
        try:
            layer = w._target_labels(create=True)
        finally:
            self._attaching = False
        if layer is None:
            return self._refuse(None)  # the status line says why the target is unusable
        if data is not None and layer.data.any():
            w._status(f"autosave: {str(layer.name)!r} already has labels, so {path.name} was not "
                      "loaded; the next commit replaces the file")
        elif data is not None:
            layer.data = data.astype(layer.data.dtype, copy=False) \
                if np.can_cast(data.dtype, layer.data.dtype) else data
            w._status(f"autosave: loaded {len(np.unique(data)) - int((data == 0).any())} objects "
                      f"from {path.name} into {str(layer.name)!r}")
        layer.metadata[self.AUTOSAVE_KEY] = str(path)
        if not path.exists():
            if not self.save(layer):  # e.g. a folder that cannot be written: its message stands
                layer.metadata.pop(self.AUTOSAVE_KEY, None)
                return self._refuse(None)
            w._status(f"autosave: {str(layer.name)!r} is saved to {path} after every commit")

    def _refuse(self, message) -> None:
        with self.enabled.changed.blocked():
            self.enabled.value = False
        if message:
            self.widget._status(message, "error")

    def save(self, layer, throttle: bool = False) -> bool:
        """Save ``layer`` to its autosave file, if it has one. ``throttle``: not if it was
        saved less than ``MIN_INTERVAL_S`` ago (or ten times its last save's time). Returns
        whether it was written; a failure is a status message (the old file stays)."""
        path = self.file_of(layer)
        if path is None:
            return False
        last, took = self._last.get(id(layer), (0.0, 0.0))
        if throttle and time.monotonic() - last < max(self.MIN_INTERVAL_S, 10 * took):
            return False
        start = time.monotonic()
        try:
            save_labels(path, layer.data)
        except AutosaveError as exc:
            self.widget._status(f"{exc} (the labels are still in the layer)", "error")
            return False
        self._last[id(layer)] = (time.monotonic(), time.monotonic() - start)
        for listener in list(self.listeners):
            listener(layer, path)
        return True


class EditLabelPanel(QWidget):
    """The "edit a label" row (``widget.edit_panel``): a label id and *Edit label*, or
    Alt+click on a label in the image. The label (of the labels layer in the *labels* field,
    or for Alt+click of the top visible labels layer with a label there) becomes the current
    object on the displayed slice (``InteractionController.edit_label``): clicks refine it and
    a commit writes it back under its id, into that layer (it becomes the commit target)."""

    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        self.label_id = SpinBox(label="label id", min=1, max=2**31 - 1, value=1,
                                tooltip="the id of an existing label to correct (Alt+click on it picks it)")
        self.button = button("Edit label", lambda: self.edit(int(self.label_id.value)),
                             "take this label of the 'labels' layer (on the displayed slice) as the current "
                             "object: clicks refine it, Commit writes it back under its id")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(Container(widgets=[self.label_id]).native)
        row.addWidget(self.button)
        widget.overlays.on_pick = self.pick

    def edit(self, label_id: int, layer=None) -> bool:
        """Edit label ``label_id`` of ``layer`` (default: the *labels* field's layer) on the
        displayed slice. Returns whether it is the current object now (else a message)."""
        w = self.widget
        if w.session is None:
            return w._status("choose an image layer first", "error") or False
        layer = w.labels_combo.value if layer is None else layer
        if layer is None:  # "(new labels layer)": the top labels layer of the image's shape that has it
            shape = tuple(w.session.spatial_shape)
            layer = next((ly for ly in reversed(list(w.viewer.layers)) if ly in w._labels_candidates()
                          and tuple(ly.data.shape) == shape and (np.asarray(ly.data) == int(label_id)).any()), None)
        if layer is None:
            return w._status(f"no labels layer holds label {int(label_id)}: choose its layer in 'labels'",
                             "error") or False
        problem = w.targets.problem(layer, w.session.spatial_shape)
        key = w._slice_key()
        if problem or key is None:
            return w._status(problem or "the image's slice is not displayed: show it to edit a label",
                             "error") or False
        if w.labels_combo.value is not layer:
            w.labels_combo.value = layer  # the commit writes the label back there
        with self.label_id.changed.blocked():
            self.label_id.value = int(label_id)
        w._edit(w.controller.edit_label(int(label_id), layer.data, key=key, name=str(layer.name)))
        edit = w.session.state().edit
        return edit is not None and edit.label_id == int(label_id)

    def pick(self, coord) -> bool:
        """Alt+click at ``coord`` (the image's data coordinates): edit the label there, of
        the *labels* layer if it has one there, else of the top visible labels layer."""
        w = self.widget
        if w.session is None:
            return False
        shape = tuple(w.session.spatial_shape)
        index = tuple(int(round(float(v))) for v in coord[-len(shape):])
        if not all(0 <= i < n for i, n in zip(index, shape)):
            return False
        target = w.labels_combo.value
        layers = [target] if target is not None else []
        layers += [ly for ly in reversed(list(w.viewer.layers)) if ly in w._labels_candidates()
                   and ly is not target and ly.visible]
        for layer in layers:
            if tuple(layer.data.shape) == shape and int(np.asarray(layer.data[index])) != 0:
                return self.edit(int(np.asarray(layer.data[index])), layer)
        w._status("Alt+click: no label there (Alt+click on a label to edit it)", "error")
        return False


class FolderPanel(QWidget):
    """The "folder of images" section (``widget.folder_panel``): a folder of images, one at a
    time, each with its labels file (``napari_ois.annotate.AnnotationFolder``, which holds the
    rules: the files, where to resume, the count).

    Each image is shown as an image layer named by its stem with a labels layer
    ``<stem> objects`` (its saved labels, or empty) that commits go to; that layer's autosave
    file is ``LABELS_DIR/<stem>.tif``, so every commit is saved at once (``AutosavePanel``).
    Previous / Next save the labels layer once more (hand edits too), drop the image's
    uncommitted clicks and show the other image in place of this one."""

    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        self.folder = None  # the AnnotationFolder, once one is open
        self.image_layer = self.labels_layer = None
        self.images_dir = FileEdit(label="image folder", mode="d", value="",
                                   tooltip="a folder of images to annotate one after the other")
        self.labels_dir = FileEdit(label="labels folder", mode="d", value="",
                                   tooltip="where each image's labels are saved as <stem>.tif after every "
                                           "commit (empty: <image folder>/labels)")
        show_path_start(self.images_dir)
        show_path_start(self.labels_dir)
        self.open_button = button("Open folder", self.open_fields,
                                  "show the image to work on (the one opened last, else the first without labels)")
        self.previous_button = button("< Previous image", self.previous, "save the labels and show the previous image")
        self.next_button = button("Next image >", self.next, "save the labels and show the next image")
        self.line = text_line(tip="the image shown and how many images of the folder have a labels file")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("folder of images"))
        layout.addWidget(Container(widgets=[self.images_dir, self.labels_dir]).native)
        row = QHBoxLayout()
        for b in (self.open_button, self.previous_button, self.next_button):
            row.addWidget(b)
        layout.addLayout(row)
        layout.addWidget(self.line)
        widget.autosave_panel.listeners.append(self._saved)
        self._show_progress()

    @staticmethod
    def _path(edit):
        value = edit.value
        return None if not value or str(value) in ("", ".") else Path(value)

    def open_fields(self) -> None:
        """Open the folder the fields name."""
        folder = self._path(self.images_dir)
        if folder is None:
            return self.widget._status("choose the image folder first", "error")
        self.open(folder, self._path(self.labels_dir))

    def open(self, folder, out=None) -> bool:
        """Open ``folder`` (a path, with the labels folder ``out``, or an ``AnnotationFolder``)
        at its resume point. Returns whether an image is shown (else the status line says why)."""
        from .annotate import AnnotateError, AnnotationFolder

        try:
            folder = folder if isinstance(folder, AnnotationFolder) else AnnotationFolder(folder, out)
        except AnnotateError as exc:
            self.widget._status(str(exc), "error")
            return False
        self.folder = folder
        with self.images_dir.changed.blocked(), self.labels_dir.changed.blocked():
            self.images_dir.value, self.labels_dir.value = str(folder.folder), str(folder.out)
        return self.show(folder.index, again=True)

    def next(self) -> bool:
        return self.folder is not None and self.show(self.folder.index + 1)

    def previous(self) -> bool:
        return self.folder is not None and self.show(self.folder.index - 1)

    def _leave(self) -> None:
        """Save the shown image's labels once more (hand edits); a layer without labels and
        without a file stays unsaved (the image is not counted as annotated)."""
        layer, w = self.labels_layer, self.widget
        if layer is None or layer not in w.viewer.layers:
            return
        path = AutosavePanel.file_of(layer)
        if path is not None and (path.is_file() or np.asarray(layer.data).any()):
            w.autosave_panel.save(layer)

    def show(self, index: int, again: bool = False) -> bool:
        """Show image ``index`` of the folder (clamped) with its labels, in place of the
        shown one (``again``: even if it is the one shown). Returns whether it is shown."""
        from .annotate import AnnotateError, is_rgb, spatial_shape

        f, w = self.folder, self.widget
        if f is None:
            return False
        index = max(0, min(len(f) - 1, int(index)))
        if not again and index == f.index and self.image_layer is not None and self.image_layer in w.viewer.layers:
            self._show_progress()
            return True
        self._leave()
        s = w.session
        dropped = s is not None and self.image_layer is not None and w.image_layer is self.image_layer \
            and any(s.clicks(k) for k in s.active_keys())
        try:
            image, labels = f.load(index)
        except (AnnotateError, OSError, ValueError) as exc:
            w._status(f"cannot open {f.images[index].name}: {exc}", "error")
            return False
        f.go(index)
        old = [ly for ly in (self.image_layer, self.labels_layer) if ly is not None]
        viewer = w.viewer
        self.image_layer = viewer.add_image(image, name=f.name, rgb=is_rgb(image))
        if labels is None:
            labels = np.zeros(spatial_shape(image), np.int32)
        self.labels_layer = viewer.add_labels(labels, name=f"{f.name} objects")
        self.labels_layer.metadata[AutosavePanel.AUTOSAVE_KEY] = str(f.labels_path())
        w.targets.remember(self.image_layer, self.labels_layer)
        if w.image_layer is not self.image_layer:
            w.image_combo.value = self.image_layer  # binds it
        if w.labels_combo.value is not self.labels_layer:
            w.labels_combo.value = self.labels_layer  # commits go there (and so to its file)
        for layer in old:
            if layer in viewer.layers:
                viewer.layers.remove(layer)
        self._show_progress()
        if dropped:
            w._status(f"{f.progress()}; the uncommitted clicks of the last image were dropped")
        return True

    def _saved(self, layer, path) -> None:
        if layer is self.labels_layer:
            self._show_progress()

    def _show_progress(self) -> None:
        f = self.folder
        with suppress(RuntimeError):  # Qt objects already deleted
            self.line.setText("" if f is None else f.progress())
            self.line.setVisible(f is not None)
            self.previous_button.setEnabled(f is not None and f.index > 0)
            self.next_button.setEnabled(f is not None and f.index < len(f) - 1)

    @property
    def progress(self) -> str:
        """What the section's line says (``AnnotationFolder.progress``)."""
        return self.line.text()

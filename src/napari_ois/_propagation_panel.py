"""The propagation row of the OIS dock (``widget.propagation_panel``): the Z range a
propagation stays within (*Z from* / *to*), *Stop*, the line of the slices it has reached, and
the Propagate action itself (commit, then the controller's ``Propagate`` job, written slice by
slice on the GUI thread as one undo step of the labels layer).

A click inside a propagated object (a label this image propagated) on a slice without a
current object corrects it there (issue 33, item 3; the rules are the Qt-free
``napari_ois.corrections.VolumeObjects`` of the controller): that label becomes the slice's
object, the click refines it, and it is committed and re-propagated up to its anchor slices or
a stop rule, as one undo step (U, or Ctrl+Z on the labels layer).

The propagation runs in napari's thread pool (``_panels.start_worker``, as every job of the
widget); each slice it reaches comes back to the GUI thread, is written and moves the progress
line on. *Stop* asks the job to end after the slice it predicts now
(``InteractionController.stop_propagation``): the slices written so far are kept, and the
status line says where it stopped. What the controller decides stays Qt-free; this module only
shows it.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Callable, Optional

from magicgui.widgets import CheckBox, Container, SpinBox
from qtpy.QtWidgets import QHBoxLayout, QVBoxLayout, QWidget

from ._layers import UndoGroup, labels_writer
from ._panels import button, text_line
from .events import Redraw

__all__ = ["PropagationPanel"]


class PropagationPanel(QWidget):
    """*Z from* / *to* (inclusive slice indices along the stack's last leading axis, the one
    Propagate walks; the whole stack by default), *Stop* (enabled while a propagation runs)
    and a line that shows the slices a propagation has reached.

    Args:
        widget: the ``OISWidget`` it belongs to (its controller, fields and labels target).
    """

    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        tip = "propagation stays within slices {} (inclusive, along the stack's last leading axis)"
        self.z_from = SpinBox(label="Z from", min=0, max=0, value=0, tooltip=tip.format("from here"))
        self.z_to = SpinBox(label="to", min=0, max=0, value=0, tooltip=tip.format("up to here"))
        self.stop_button = button("Stop", self.stop, "stop the running propagation after the slice it "
                                  "predicts now; the slices written so far are kept")
        self.stop_button.setEnabled(False)
        self.progress = text_line(tip="the slices the running (or last) propagation reached")
        self.progress.setVisible(False)
        self.correct_box = CheckBox(text="clicks correct propagated objects", value=True,
                                    tooltip="a click inside an object propagated here corrects it on that slice and "
                                            "re-propagates it up to its clicked slices (off: it starts a new object)")
        #: the labels layer's open undo group of the propagation being requested or run
        self._undo_group: Optional[UndoGroup] = None
        self._n_slices = 0
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(Container(widgets=[self.z_from, self.z_to], layout="horizontal", labels=True).native)
        row.addWidget(self.stop_button)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(row)
        box.addWidget(self.correct_box.native)
        box.addWidget(self.progress)

    # ----------------------------------------------------------------- the Z range
    def set_stack(self, session: Any) -> None:
        """A new image: the range is its whole stack (disabled for a 2D image)."""
        n = int(session.leading_shape[-1]) if session is not None and session.is_stack else 0
        self._n_slices = n
        for spin, value in ((self.z_from, 0), (self.z_to, max(0, n - 1))):
            with spin.changed.blocked():
                spin.max = max(0, n - 1)
                spin.value = value
            spin.enabled = n > 1

    @property
    def z_range(self) -> Optional[tuple]:
        """``(first, last)`` slice the propagation may reach (inclusive), or None (the whole
        stack)."""
        lo, hi = int(self.z_from.value), int(self.z_to.value)
        return None if (lo, hi) == (0, self._n_slices - 1) else (lo, hi)

    def options(self) -> dict:
        """The keyword arguments of ``InteractionSession.iter_propagate`` set in the dock: the
        stop rules of the form and the Z range."""
        w = self.widget
        change = max(1.0, float(w.max_area_change.value))
        options = {"min_score": float(w.min_quality.value), "area_ratio": (1.0 / change, change),
                   "min_overlap": float(w.min_overlap.value)}
        if self.z_range is not None:
            options["z_range"] = self.z_range
        return options

    def range_problem(self) -> Optional[str]:
        """Why the propagation cannot start in the Z range (None: it can): an empty range, or
        a start slice (the current object's, else the last commit's) outside it."""
        s, z_range = self.widget.session, self.z_range
        if z_range is None:
            return None
        lo, hi = z_range
        if lo > hi:
            return f"the Z range is empty (from {lo} to {hi}): set 'Z from' at or below 'to'"
        mask = s.mask()
        key = s.current_key if mask is not None and mask.any() else getattr(s.last_commit, "key", None)
        if key and not lo <= key[-1] <= hi:
            return (f"the object is on slice {key[-1]}, outside the Z range {lo}-{hi}: widen the range "
                    "or go to a slice inside it")
        return None

    # ----------------------------------------------------------------- Propagate
    def propagate(self) -> None:
        """Commit the current object (if any) and extend it through the stack, slice by slice,
        within the Z range (the widget's Propagate, key G)."""
        w = self.widget
        not_now = w.controller.prepare_propagation()
        if not_now is not None:
            return w._edit(not_now)
        problem = self.range_problem()
        if problem:
            return w._status(problem, "error")
        mask = w.session.mask()
        if mask is not None and mask.any():
            target = w._target_labels(create=True)
            if target is None:
                return
            self.open_undo_group(target)  # the commit and the propagated slices: one undo step
            w.controller.volume.start(w.session)  # an edited propagated object: a correction
            if w.commit() is None:
                return self.close_undo_group()
        else:  # from the last commit
            target = w._target_labels(create=False)
            if target is not None:
                self.open_undo_group(target)
        w.controller.request_propagation(self.options())
        w._schedule_pump()

    def open_undo_group(self, layer) -> None:
        self.close_undo_group()
        self._undo_group = UndoGroup(layer)

    def close_undo_group(self) -> None:
        self.widget.controller.volume.close()  # a correction is one undo step too
        group, self._undo_group = self._undo_group, None
        if group is not None:
            group.close()

    # ----------------------------------------------------------------- a running propagation
    def started(self, job, pbar) -> Callable:
        """A propagation job starts: *Stop* is enabled; returns the slot of its steps."""
        self.stop_button.setEnabled(True)
        self._show_progress(job)
        return lambda step: self.step(job, pbar, step)

    def step(self, job, pbar, step) -> None:
        """One slice of a propagation: write it into the target layer (one undo group), show
        the slices reached."""
        w = self.widget
        c = w.controller
        target = w._target_labels(create=False) if c.is_current(job) else None
        stop = c.write_step(job, step, None if target is None else target.data,
                            overwrite=bool(w.overwrite.value), writer=None if target is None else labels_writer(target))
        w.autosave_panel.save(target, throttle=True)  # None: nothing written, nothing saved
        if stop is not None:
            if c.running is job and w._worker is not None:
                w._worker.quit()
            return w._apply(stop)
        self._show_progress(job)
        if pbar is not None:
            with suppress(Exception):  # the indicator is optional
                pbar.increment_with_overflow()

    def _show_progress(self, job) -> None:
        w = self.widget
        if w.controller.is_current(job) and not job.stop.is_set():
            status = w.controller.propagation_progress(job)
            w._paint(status)
            with suppress(RuntimeError):
                self.progress.setText(status.text.split(" (")[0])
                self.progress.setVisible(True)

    def finished(self, job) -> None:
        """The propagation's worker ended: a correction clears its object past a stop rule and
        stays the slice's current object; its writes are one undo step, saved; *Stop* off."""
        w, c = self.widget, self.widget.controller
        target = w._target_labels(create=False) if c.volume.open is not None and c.is_current(job) else None
        if target is not None and not job.failed:
            corr = c.volume.finish(target.data, job.record, w.session.propagation_stops, job.reached()[:2],
                                   w.session.leading_shape[-1], job.options.get("z_range"), labels_writer(target))
            self._edit_again(corr, target)
            w._status(corr.describe())
        self.close_undo_group()
        w.autosave_panel.save(w.labels_layer)
        lo, hi, _ = job.reached()
        with suppress(RuntimeError):
            self.stop_button.setEnabled(False)
            self.progress.setText(f"last propagation: object {job.record.label_id} on slices {lo}-{hi}")

    # ----------------------------------------------------------------- corrections
    def start_correction(self, coord) -> None:
        """Before a click at ``coord`` is added: on a slice without a current object, inside an
        object propagated here (of the labels target), that object on that slice becomes the
        current object (``InteractionController.edit_label``), so the click corrects it."""
        w, c = self.widget, self.widget.controller
        s, layer = w.session, w.labels_layer
        if s is None or layer is None or not c.volume.anchors or not self.correct_box.value:
            return
        try:
            key, r, col = s.split_point(coord)
        except ValueError:
            return
        if s.state(key).has_prompt or tuple(layer.data.shape) != tuple(s.spatial_shape):
            return
        lid = int(layer.data[key + (int(round(r)), int(round(col)))])
        if c.volume.is_propagated(lid):
            w._apply(c.edit_label(lid, layer.data, key=key, name=str(layer.name)))

    def _edit_again(self, corr, target) -> None:
        """The corrected object stays the current object of its slice (taken from the labels
        as they are now), so the next click there corrects it again; Reset object lets go."""
        s = self.widget.session
        current = s.current_key
        with suppress(ValueError):
            s.edit_label(corr.label_id, target.data, key=corr.key)
        s.set_slice(current)
        self.widget._redraw(Redraw(masks=(corr.key,), points=True, proposals=True))

    def undo_correction(self) -> bool:
        """U with nothing to undo on the current slice: take the latest correction back (the
        pixels it wrote, its object's anchors). Returns whether it did."""
        w, c = self.widget, self.widget.controller
        s = w.session
        if s is None or s.can_undo() or not c.volume.history or c.propagating:
            return False
        target = w._target_labels(create=False)
        if target is None:
            return False
        corr = c.volume.undo(target.data, labels_writer(target))
        edit = s.state(corr.key).edit
        if edit is not None and edit.label_id == corr.label_id:
            self._edit_again(corr, target)
        w.autosave_panel.save(target)
        w._status(f"undone: the correction of object {corr.label_id} on slice {corr.key[-1]} (the labels and "
                  "its anchor slices are as before it)")
        return True

    def stop(self) -> None:
        """*Stop*: the running propagation ends after the current slice, keeping what it wrote."""
        self.widget._apply(self.widget.controller.stop_propagation())

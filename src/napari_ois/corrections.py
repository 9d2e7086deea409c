"""Corrections anywhere in 3D (issue 33, item 3): the anchor slices of propagated objects, a
correction re-propagated up to them, and its undo. No Qt.

A propagated object (a committed label extended through a stack) keeps its **anchors**: the
slice it was propagated from and every slice corrected since, each with the clicks made there.
A correction is a click on any slice of it: that slice's label becomes the current object
(``InteractionSession.edit_label``), the click refines it, and then it is committed (the label
replaced on that slice) and propagated again from there in both directions, up to the next
anchor (``stop_at``: never entered) or a stop rule. Where a stop rule ended a direction, the
object's old slices are cleared from there up to the next anchor, the end of the Z range or of
the stack, or the first slice where it is already absent (``propagation.clear_past_stops``,
the volumetric protocol's rule). Slices beyond the anchors are never changed.

One correction is one undo step: every pixel it writes goes through a recording writer
(``Correction.recorder``) that keeps the value it had, and ``VolumeObjects.undo`` writes them
back in one write (one napari undo step when the writer is the layer's) and puts the anchors
back as they were.

``VolumeObjects`` is the bookkeeping of one stack. It never imports the session (it is given
one): the widget's controller holds one per image and calls it around its commit and
``Propagate`` job; ``VolumeObjects.propagate(session, labels)`` is the same, synchronous, for
a script or the console.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .label_writes import write_indices
from .propagation import clear_past_stops, slice_name
from .session_records import CommitRecord, Key

__all__ = ["Correction", "VolumeObjects"]


@dataclass
class Correction:
    """One correction of object ``label_id`` on slice ``key``: the object's anchors before it
    and the old values of every pixel it wrote (``writes``: ``(indices, values)`` in order)."""

    label_id: int
    key: Key
    anchors_before: dict
    writes: list = field(default_factory=list)
    reached: tuple = ()  # (first, last) slice the re-propagation reached (the corrected one included)
    cleared: list = field(default_factory=list)  # slices cleared past a stop rule

    def recorder(self, labels: Any, writer: Optional[Callable] = None) -> Callable:
        """A writer (``writer(indices, values)``) that keeps the old values, then writes
        through ``writer`` (default ``labels[indices] = values``)."""

        def write(indices, values):
            self.writes.append((tuple(np.asarray(i) for i in indices), np.array(labels[indices], copy=True)))
            if writer is None:
                labels[indices] = values
            else:
                writer(indices, values)

        return write

    def restore(self, shape: tuple) -> tuple:
        """``(indices, values)`` that put back every pixel written, each to its value before
        the correction (a pixel written twice gets its first old value)."""
        if not self.writes:
            return tuple(np.zeros(0, np.intp) for _ in shape), np.zeros(0)
        idx = [np.concatenate([w[0][a] for w in self.writes]) for a in range(len(shape))]
        old = np.concatenate([w[1] for w in self.writes])
        _, first = np.unique(np.ravel_multi_index(idx, shape), return_index=True)
        return tuple(a[first] for a in idx), old[first]

    def describe(self) -> str:
        where = slice_name(self.key)
        text = f"corrected object {self.label_id} on {where}"
        if self.reached and self.reached[0] != self.reached[1]:
            text += f": re-propagated over slices {self.reached[0]}-{self.reached[1]}"
        if self.cleared:
            text += f", cleared on slice(s) {min(self.cleared)}-{max(self.cleared)} past the stop"
        return text + " (one undo step: U, or Ctrl+Z on the labels layer)"


class VolumeObjects:
    """The propagated objects of one stack: their anchors and the corrections made.

    ``anchors[label_id]`` is ``{slice key: clicks}``; ``history`` the corrections made, the
    latest last (``undo`` takes them back one by one); ``open`` the correction being made."""

    def __init__(self) -> None:
        self.anchors: dict = {}
        self.history: list = []
        self.open: Optional[Correction] = None

    def is_propagated(self, label_id: Any) -> bool:
        return label_id is not None and int(label_id) in self.anchors

    def correcting(self, session: Any, key: Any = None) -> Optional[int]:
        """The id of the propagated object that slice ``key``'s current object (default the
        current slice's) edits, or None: a commit of it is a correction."""
        edit = session.state(key).edit
        return edit.label_id if edit is not None and self.is_propagated(edit.label_id) else None

    # ----------------------------------------------------------------- a correction
    def start(self, session: Any) -> Optional[Correction]:
        """Before the commit: open a correction when the current object edits a propagated
        object and has a mask (None otherwise: a plain commit and propagation)."""
        self.close()
        lid, mask = self.correcting(session), session.mask()
        if lid is None or mask is None or not mask.any():
            return None
        self.open = Correction(lid, tuple(session.current_key), dict(self.anchors[lid]))
        return self.open

    def recorder(self, labels: Any, writer: Optional[Callable] = None) -> Optional[Callable]:
        """``writer`` as it is, or recording the old values while a correction is open."""
        return writer if self.open is None or labels is None else self.open.recorder(labels, writer)

    def plan(self, record: CommitRecord) -> dict:
        """The committed slice becomes an anchor of its object (with its clicks); returns the
        options its propagation adds: ``stop_at`` (the object's other anchors on the walked
        axis) and ``clicks`` (all the clicks made on that slice)."""
        anchors = self.anchors.setdefault(int(record.label_id), {})
        key = tuple(record.key)
        old = anchors.get(key, ())
        anchors[key] = old + tuple(c for c in record.clicks if c not in old)
        stop_at = {k[-1] for k in anchors if k[:-1] == key[:-1] and k != key}
        return {"stop_at": stop_at, "clicks": anchors[key]}

    def finish(self, labels: Any, record: CommitRecord, stops: dict, reached: tuple, n_slices: int,
               z_range: Any = None, writer: Optional[Callable] = None) -> Optional[Correction]:
        """After the re-propagation of the open correction (``stops``: why each direction
        ended; ``reached``: ``(lo, hi)``): clear the object past a stop rule (up to the next
        anchor, the Z range's end or the first slice without it) and close the correction.
        Returns it (None when none was open)."""
        corr = self.open
        if corr is None or labels is None:
            return self.close()
        lid, lead = int(record.label_id), tuple(record.key)[:-1]
        anchors = {k[-1] for k in self.anchors.get(lid, {}) if k[:-1] == lead}
        plane = np.zeros(np.asarray(labels[lead + (0,)]).shape, bool)
        write = self.recorder(labels, writer)
        corr.cleared = clear_past_stops(stops, reached, n_slices, lambda z: bool(np.any(labels[lead + (z,)] == lid)),
                                        anchors, z_range)
        for z in corr.cleared:
            write(*write_indices(labels, lead + (z,), plane, lid, replace=True))
        corr.reached = tuple(int(v) for v in reached)
        return self.close()

    def close(self) -> Optional[Correction]:
        """End the open correction: kept in ``history`` when it wrote anything. Returns it."""
        corr, self.open = self.open, None
        if corr is not None and corr.writes:
            self.history.append(corr)
        return corr

    def undo(self, labels: Any, writer: Optional[Callable] = None) -> Optional[Correction]:
        """Take the latest correction back: every pixel it wrote gets its old value again (one
        ``writer`` call) and its object's anchors are those before it. Returns it (None: no
        correction to undo)."""
        if not self.history:
            return None
        corr = self.history.pop()
        idx, values = corr.restore(np.shape(labels))
        if writer is None:
            labels[idx] = values
        elif len(idx[0]):
            writer(idx, values)
        self.anchors[corr.label_id] = dict(corr.anchors_before)
        return corr

    # ----------------------------------------------------------------- synchronous
    def propagate(self, session: Any, labels: Optional[np.ndarray] = None, *, overwrite: bool = False,
                  writer: Optional[Callable] = None, **options: Any) -> list:
        """``InteractionSession.propagate`` that keeps the anchors: commit the current object
        (if any) and propagate it; when it edits a propagated object (``edit_label`` on a slice
        of it, then clicks), that is a correction (re-propagated up to the anchors, cleared
        past a stop rule, one ``undo`` step). ``options`` go to ``iter_propagate``. Returns the
        slices written by the propagation."""
        labels = session.labels if labels is None else labels
        corr = self.start(session)
        try:
            mask = session.mask()
            if mask is not None and mask.any():
                session.commit(labels, overwrite=overwrite, writer=self.recorder(labels, writer))
                labels = session.labels if labels is None else labels
            elif session.last_commit is None:
                raise ValueError("nothing to propagate: segment (or commit) an object first")
            rec = session.last_commit
            written = session.propagate(labels, overwrite=overwrite, writer=self.recorder(labels, writer),
                                        **{**self.plan(rec), **options})
            if corr is not None:
                zs = [rec.key[-1]] + [k[-1] for k in written]
                self.finish(labels, rec, session.propagation_stops, (min(zs), max(zs)),
                            session.leading_shape[-1], options.get("z_range"), writer)
        finally:
            self.close()
        return written

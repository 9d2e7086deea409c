"""Corrections anywhere in 3D (issue 33, item 3): a click on any slice of a propagated object
corrects that slice and re-propagates from it up to the slices clicked before (anchors) or a
stop rule (cleared past it); one correction is one undo step. The Qt-free
``napari_ois.corrections.VolumeObjects`` with a session, then the dock with a real viewer
(napari's own undo of the labels layer, and U). The deterministic ``FakePredictor``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ois.corrections import VolumeObjects
from napari_ois.propagation import clear_past_stops
from napari_ois.session import InteractionSession

from test_session import FakePredictor

LOOSE = {"min_score": -1.0, "area_ratio": None, "min_overlap": None}  # only a vanished object stops


def leak_volume():
    """21 slices of 40 x 40: a disc (the structure) on slices 0-16; a square touching it on
    slices 12-16 and alone on 17-20 (where the disc has ended). Propagated from slice 5 with
    loose rules the object leaks into the square and follows it to the end of the stack."""
    rr, cc = np.mgrid[:40, :40]
    disc = (rr - 20) ** 2 + (cc - 12) ** 2 <= 36
    square = np.zeros((40, 40), bool)
    square[16:24, 19:27] = True
    vol = np.zeros((21, 40, 40), np.float32)
    vol[:17] += disc
    vol[12:] = np.maximum(vol[12:], square)
    # a negative click at (20, 23) cuts a disk of radius 6: the square and 2 px of the disc
    cut = disc & ~(((rr - 20) ** 2 + (cc - 23) ** 2) <= 36)
    return vol, disc, square, cut


def propagated(vol):
    s = InteractionSession(FakePredictor(), vol)
    labels = np.zeros(vol.shape, np.int32)
    vo = VolumeObjects()
    s.add_click((5, 20, 12))
    vo.propagate(s, labels, **LOOSE)
    return s, labels, vo


def test_clear_past_stops_is_the_protocols_rule():
    present = {z: True for z in range(10)}
    up = {1: "object vanished at slice 7 (0 px)", -1: "end of the stack"}
    # a stop rule up at 7 (reached 3-6), towards the anchor 9 where the object is: the
    # structure runs on to it, nothing is cleared
    assert clear_past_stops(up, (3, 6), 12, lambda z: present.get(z, False), anchors={9}) == []
    # ... towards an anchor where it is absent (a negative click ended it there): 7, 8 cleared
    present[9] = False
    assert clear_past_stops(up, (3, 6), 12, lambda z: present.get(z, False), anchors={9}) == [7, 8]
    # with no anchor ahead: up to the first slice where the object is absent, or a Z range end
    present = {0: True, 2: True, 3: True}
    assert clear_past_stops({-1: "quality 0.10 < 0.50 at slice 3"}, (4, 6), 12, present.get) == [3, 2]
    assert clear_past_stops({-1: "lost"}, (4, 6), 12, lambda z: True, anchors={1}) == []
    assert clear_past_stops({-1: "lost"}, (4, 6), 12, lambda z: z != 1, anchors={1}) == [3, 2]
    assert clear_past_stops({-1: "lost"}, (4, 6), 12, lambda z: True, z_range=(3, 8)) == [3]
    assert clear_past_stops({-1: "lost"}, (4, 6), 12, lambda z: True, anchors={1}, z_range=(3, 8)) == [3]
    # where the walk was allowed to go (anchor, Z range, stack end, cancel): nothing cleared
    for why in ("anchor at slice 2 (it has clicks of its own)", "end of the Z range (0-5)", "cancelled",
                "end of the stack", "4 slices done"):
        assert clear_past_stops({1: why, -1: why}, (4, 6), 12, lambda z: True) == []


def test_a_correction_re_propagates_between_anchors_clears_past_a_stop_and_undoes():
    vol, disc, square, cut = leak_volume()
    s, labels, vo = propagated(vol)
    before = labels.copy()
    assert all(np.array_equal(labels[z] == 1, disc) for z in range(12))
    assert all(np.array_equal(labels[z] == 1, disc | square) for z in range(12, 17))
    assert all(np.array_equal(labels[z] == 1, square) for z in range(17, 21))  # the leak
    assert set(vo.anchors[1]) == {(5,)} and vo.history == []  # a first propagation is no correction

    # correction 1: a negative click on the square on slice 14
    s.edit_label(1, labels, key=(14,))
    s.add_click((14, 20, 23), positive=False)
    vo.propagate(s, labels, **LOOSE)
    after1 = labels.copy()
    assert np.array_equal(labels[:6], before[:6])  # the anchor (5) and beyond: untouched
    assert all(np.array_equal(labels[z] == 1, cut) for z in range(6, 17)), "re-propagated from 14 down to 6"
    assert not labels[17:].any(), "the leak past the stop rule is cleared"
    assert "vanished at slice 17" in s.propagation_stops[1] and "anchor at slice 5" in s.propagation_stops[-1]
    corr = vo.history[-1]
    assert (corr.label_id, corr.key, corr.reached, corr.cleared) == (1, (14,), (6, 16), [17, 18, 19, 20])
    assert set(vo.anchors[1]) == {(5,), (14,)}

    # correction 2 on slice 10 (a positive click brings the disc's 2 px back): only 6-13 change
    s.edit_label(1, labels, key=(10,))
    s.add_click((10, 20, 17))
    vo.propagate(s, labels, **LOOSE)
    assert np.array_equal(labels[:6], after1[:6]) and np.array_equal(labels[14:], after1[14:])
    assert all(np.array_equal(labels[z] == 1, disc) for z in range(6, 12))
    assert all(np.array_equal(labels[z] == 1, disc | square) for z in (12, 13))
    assert "anchor at slice 14" in s.propagation_stops[1] and "anchor at slice 5" in s.propagation_stops[-1]
    assert set(vo.anchors[1]) == {(5,), (10,), (14,)}

    # each correction is one undo step: the labels and the anchors as before it
    assert vo.undo(labels).key == (10,)
    assert np.array_equal(labels, after1) and set(vo.anchors[1]) == {(5,), (14,)}
    assert vo.undo(labels).key == (14,)
    assert np.array_equal(labels, before) and set(vo.anchors[1]) == {(5,)}
    assert vo.undo(labels) is None


def test_other_labels_and_a_writer_are_respected():
    vol, disc, square, cut = leak_volume()
    s, labels, vo = propagated(vol)
    labels[:, 0:3, 0:3] = 7  # another object everywhere
    before = labels.copy()
    calls = []

    def writer(idx, values):
        calls.append(idx)
        labels[idx] = values

    s.edit_label(1, labels, key=(14,))
    s.add_click((14, 20, 23), positive=False)
    vo.propagate(s, labels, writer=writer, **LOOSE)
    assert (labels[:, 0:3, 0:3] == 7).all() and calls
    n = len(calls)
    vo.undo(labels, writer)
    assert len(calls) == n + 1 and np.array_equal(labels, before)  # the undo is one write


# --------------------------------------------------------------------------- the dock
def test_a_click_on_a_propagated_object_corrects_it_in_the_viewer_and_undo_restores(make_napari_viewer, qtbot):
    pytest.importorskip("napari")
    from test_widget import T, click, make, settle
    from test_widget_propagation import start_on

    vol, disc, square, cut = leak_volume()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FakePredictor())
    w.min_quality.value, w.max_area_change.value, w.min_overlap.value = -1.0, 100.0, 0.0
    start_on(viewer, qtbot, w, 5, (20, 12))
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    lab = w.labels_layer
    before = lab.data.copy()
    assert np.array_equal(before[18] == 1, square)  # the leak

    # a negative click on the leak, on slice 14: corrected there and re-propagated
    viewer.dims.set_current_step(0, 14)
    qtbot.waitUntil(lambda: w.session.current_key == (14,), timeout=T)
    click(w, (14, 20, 23), positive=False)
    qtbot.waitUntil(lambda: w.is_idle and "corrected object 1" in w.status, timeout=T)
    settle(qtbot, w)
    assert "on slice 14: re-propagated over slices 6-16, cleared on slice(s) 17-20" in w.status
    after = lab.data.copy()
    assert np.array_equal(after[:6], before[:6]) and not after[17:].any()
    assert all(np.array_equal(after[z] == 1, cut) for z in range(6, 17))
    edit = w.session.state((14,)).edit  # it stays the slice's object: the next click corrects it again
    assert edit is not None and edit.label_id == 1
    assert np.array_equal(w.preview_layer.data[14] > 0, cut)

    # napari's undo of the labels layer: the whole correction is one step
    lab.undo()
    assert np.array_equal(lab.data, before)
    lab.redo()
    assert np.array_equal(lab.data, after)
    # U (nothing to undo on slice 14): the correction, through the session
    w.undo()
    assert np.array_equal(lab.data, before) and "undone: the correction of object 1 on slice 14" in w.status
    assert set(w.controller.volume.anchors[1]) == {(5,)}
    assert np.array_equal(w.session.mask((14,)), disc | square)  # the slice's object: the label as it is again

    # with 'clicks correct propagated objects' off, a click inside it starts a new object
    w.session.clear()
    w.propagation_panel.correct_box.value = False
    viewer.dims.set_current_step(0, 8)
    qtbot.waitUntil(lambda: w.session.current_key == (8,), timeout=T)
    click(w, (8, 20, 12))
    settle(qtbot, w)
    assert w.session.state((8,)).edit is None and w.session.proposals() is not None

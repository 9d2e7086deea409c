"""Propagation in the dock (issue 33, item 5): its progress (the slices reached), Stop (keeps
what was written), the Z range, a responsive GUI. A real viewer (under Xvfb), the widget's own
worker; the deterministic ``FakePredictor`` (slowed down where a test needs time to act) and
the real tiny OIS network."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_ois import OISPredictor  # noqa: E402

from test_session import FakePredictor, ball_stack  # noqa: E402
from test_widget import T, SlowPredictor, click, make, settle  # noqa: E402


def start_on(viewer, qtbot, w, z, coord):
    viewer.dims.set_current_step(0, z)
    qtbot.waitUntil(lambda: w.session.current_key == (z,), timeout=T)
    click(w, (z, *coord))
    settle(qtbot, w)


def written_slices(labels) -> list:
    return [z for z in range(labels.shape[0]) if labels[z].any()]


def test_progress_shows_the_slices_reached_and_the_gui_stays_responsive(make_napari_viewer, qtbot):
    from napari_ois._demo import StallMeter

    vol, ball = ball_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol,
                            predictor=SlowPredictor(FakePredictor(), predict_delay=0.1))
    start_on(viewer, qtbot, w, 10, (20, 20))
    panel = w.propagation_panel
    assert not panel.stop_button.isEnabled() and panel.stop_button.isVisibleTo(w)
    seen, enabled = [], []

    def watch():
        text = panel.progress.text()
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        enabled.append(panel.stop_button.isEnabled())
        assert w.is_idle and "propagated" in w.status

    w.propagate()  # commits (a new labels layer) and starts the worker
    meter = StallMeter(5).start()
    qtbot.waitUntil(watch, timeout=T)
    stats = meter.stop()
    # the line grew slice by slice: up first (10-11, 10-12, ...), then down
    reached = [t for t in seen if t.startswith("propagating object 1: slices")]
    assert len(reached) >= 5, seen
    assert "propagating object 1: slices 10-11 reached" in reached
    assert reached[-1] == "propagating object 1: slices 4-16 reached", seen
    assert any(enabled) and not panel.stop_button.isEnabled()  # Stop only while it runs
    assert panel.progress.text() == "last propagation: object 1 on slices 4-16"
    # one progress line in the messages (each step replaces the last), then the result
    assert sum(m[1].startswith("propagating object 1: slices") for m in w.messages) == 1
    assert written_slices(w.labels_layer.data) == list(range(4, 17))
    # 13 slices at >= 0.1 s each; the GUI thread kept ticking (generous for a shared CI box)
    assert stats["ticks"] > 50, (stats, sorted(meter.gaps)[-5:])  # the event loop ran (no timed bound)


def test_stop_keeps_the_slices_written_and_says_where(make_napari_viewer, qtbot):
    vol, ball = ball_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol,
                            predictor=SlowPredictor(FakePredictor(), predict_delay=0.3))
    start_on(viewer, qtbot, w, 10, (20, 20))
    panel = w.propagation_panel
    w.propagate()
    qtbot.waitUntil(lambda: "slices 10-12 reached" in panel.progress.text(), timeout=T)
    assert panel.stop_button.isEnabled()
    panel.stop_button.click()  # the visible button
    qtbot.waitUntil(lambda: w.is_idle, timeout=T)
    status = w.status
    assert status.startswith("propagation stopped at slice "), status
    last = int(status.split("slice ")[1].split(":")[0])
    assert 12 <= last <= 14 and "written, kept" in status
    assert "cleared" not in status
    labels = w.labels_layer.data
    assert written_slices(labels) == list(range(10, last + 1))  # up first; down never started
    for z in range(10, last + 1):
        assert np.array_equal(labels[z] == 1, ball[z]), z
    assert not panel.stop_button.isEnabled()
    # the commit and the slices written before Stop: one napari undo step
    kept = labels.copy()
    w.labels_layer.undo()
    assert w.labels_layer.data.max() == 0
    w.labels_layer.redo()
    assert np.array_equal(w.labels_layer.data, kept)
    # the widget goes on: propagating again from the last commit reaches the rest
    w.stop_propagation()
    assert w.status == "no propagation is running"
    w.propagation_panel.propagate()
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    assert written_slices(w.labels_layer.data) == list(range(4, 17))


def test_the_z_range_is_respected(make_napari_viewer, qtbot):
    vol, ball = ball_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FakePredictor())
    panel = w.propagation_panel
    qtbot.waitUntil(lambda: w.session is not None, timeout=T)
    # the whole stack by default: no z_range option
    assert (panel.z_from.value, panel.z_to.value, panel.z_to.max) == (0, 20, 20)
    assert "z_range" not in w.propagation_options()
    panel.z_from.value, panel.z_to.value = 8, 12
    assert w.propagation_options()["z_range"] == (8, 12)
    start_on(viewer, qtbot, w, 10, (20, 20))
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    assert written_slices(w.labels_layer.data) == [8, 9, 10, 11, 12]
    assert "end of the Z range (8-12)" in w.status
    # an object outside the range: a message, nothing committed
    start_on(viewer, qtbot, w, 15, (20, 20))
    w.propagate()
    assert "outside the Z range 8-12" in w.status and w.messages[-1][0] == "error"
    assert not w.labels_layer.data[15].any() and w.session.mask((15,)).any()
    panel.z_from.value, panel.z_to.value = 12, 11
    w.propagate()
    assert "the Z range is empty" in w.status


def test_the_z_range_with_the_real_tiny_network(make_napari_viewer, qtbot, tiny_model):
    rng = np.random.default_rng(0)
    vol = (rng.random((9, 40, 48)) * 3000 + 500).astype(np.uint16)
    vol[:, 12:28, 14:34] += 4000
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=OISPredictor(tiny_model, device="cpu"))
    qtbot.waitUntil(lambda: w.session is not None, timeout=T)
    assert w.propagation_panel.z_to.value == 8
    w.propagation_panel.z_from.value, w.propagation_panel.z_to.value = 3, 5
    w.min_quality.value, w.max_area_change.value, w.min_overlap.value = -1.0, 100.0, 0.0
    start_on(viewer, qtbot, w, 4, (20, 24))
    w.select_proposal(int(np.argmax(w.session.proposals().masks.sum(axis=(1, 2)))))
    settle(qtbot, w)
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle and ("propagated" in w.status or "stopped" in w.status), timeout=T)
    labels = w.labels_layer.data
    assert labels[4].any() and not labels[:3].any() and not labels[6:].any()

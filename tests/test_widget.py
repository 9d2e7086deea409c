"""The napari widget with a real viewer (run under Xvfb) and the real tiny OIS network.

The model is the ``tiny_model`` fixture saved with ``registry.save_model`` and chosen in the
widget as a checkpoint file, or injected with ``OISWidget.set_predictor`` (the documented
hook) where a test needs a slowed-down or deterministic predictor.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_ois import OISPredictor  # noqa: E402
from napari_ois._widget import NEGATIVE_COLOR, POSITIVE_COLOR, SHORTCUTS, OISWidget  # noqa: E402
from napari_ois.controller import Predict  # noqa: E402
from napari_ois.registry import save_model  # noqa: E402

from test_session import FakePredictor, ball_stack, leak_stack  # noqa: E402

T = 60_000  # generous waitUntil timeout (ms): the CI machine is small and shared


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    return save_model(tiny_model, tmp_path / "tiny.safetensors")


@pytest.fixture
def tiny_predictor(tiny_model):
    return OISPredictor(tiny_model, device="cpu")


class SlowPredictor:
    """Wraps a predictor: optional delays, and records which thread ran what."""

    def __init__(self, inner, embed_delay=0.0, predict_delay=0.0):
        self.inner = inner
        self.embed_delay = embed_delay
        self.predict_delay = predict_delay
        self.threads = []
        self.set_image_kwargs = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def set_image(self, image, **kw):
        self.threads.append(threading.current_thread())
        self.set_image_kwargs.append(kw)
        time.sleep(self.embed_delay)
        return self.inner.set_image(image, **kw)

    def predict(self, *a, **kw):
        self.threads.append(threading.current_thread())
        time.sleep(self.predict_delay)
        return self.inner.predict(*a, **kw)

    def set_state(self, state):
        return self.inner.set_state(state)

    @property
    def state(self):
        return self.inner.state


def rgb_image():
    img = np.full((48, 64, 3), 30, np.uint8)
    img[8:36, 10:40] = (230, 190, 60)
    return img


def make(make_napari_viewer, qtbot, image=None, predictor=None, **layer_kw):
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb_image() if image is None else image, name="img", **layer_kw)
    widget = OISWidget(viewer, predictor=predictor)
    qtbot.addWidget(widget)
    return viewer, layer, widget


def settle(qtbot, widget, timeout=T):
    def done():
        s = widget.session
        assert widget.is_idle
        assert s is None or not any(s.needs_prediction(k) for k in s.active_keys())

    qtbot.waitUntil(done, timeout=timeout)


def click(widget, coord, positive=True):
    widget.negative_box.value = not positive
    widget.points_layer.add(np.asarray(coord, dtype=float))


# --------------------------------------------------------------------------- manifest
def test_widget_from_the_manifest(make_napari_viewer, qtbot, tiny_predictor):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-ois", "OIS segmentation")
    assert isinstance(widget, OISWidget)
    widget.set_predictor(tiny_predictor, "tiny")
    viewer.add_image(rgb_image(), name="img")
    qtbot.waitUntil(lambda: widget.session is not None, timeout=T)
    assert widget.image_layer.name == "img"
    assert {"OIS clicks", "OIS current object"} <= {ly.name for ly in viewer.layers}
    settle(qtbot, widget)
    assert widget.session.is_embedded()  # the slice was embedded in the background


def test_shortcuts_do_not_clash_with_napari():
    from app_model.types import KeyBinding
    from napari.layers import Image, Labels, Points, Shapes
    from napari.settings import get_settings

    ours = {str(KeyBinding.from_str(k)) for k, _, _ in SHORTCUTS}
    taken = {str(kb) for kbs in get_settings().shortcuts.shortcuts.values() for kb in kbs}
    for cls in (Image, Labels, Points, Shapes):
        taken |= {str(k) for k in cls.class_keymap}
    assert not ours & taken


def test_the_dock_is_not_squashed_at_napari_default_window_size(make_napari_viewer, qtbot):
    """At napari's default window size (about 1089 x 847) the dock is shorter than its
    content: it scrolls, and every form row, button and field keeps its full height."""
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.add_image(rgb_image(), name="img")
    dock, w = viewer.window.add_plugin_dock_widget("napari-ois", "OIS segmentation")
    w.set_predictor(FakePredictor(), "fake")
    window = viewer.window._qt_window
    window.resize(1089, 847)
    qtbot.waitUntil(lambda: window.height() == 847 and dock.height() < 847, timeout=T)
    qtbot.wait(200)
    rows = [f.native for f in w._form]
    fields = [x for kind in (QComboBox, QLineEdit, QAbstractButton) for x in w.findChildren(kind)]
    for x in rows + [x for x in fields if x.isVisibleTo(w)]:
        need = max(x.minimumSizeHint().height(), x.sizeHint().height())
        assert x.height() >= need, (type(x).__name__, getattr(x, "text", lambda: "")(), x.height(), need)
    for x in fields:  # no text clipped sideways
        if x.isVisibleTo(w) and isinstance(x, QAbstractButton):
            assert x.width() >= x.sizeHint().width(), (x.text(), x.width(), x.sizeHint().width())
    area = w.findChild(QScrollArea)
    content = area.widget()
    assert content.height() >= content.sizeHint().height() > area.viewport().height()  # it scrolls
    assert area.verticalScrollBar().maximum() > 0
    assert area.viewport().width() >= content.minimumSizeHint().width()


# --------------------------------------------------------------------------- clicking
def test_checkpoint_click_proposals_and_chooser(make_napari_viewer, qtbot, checkpoint):
    viewer, layer, w = make(make_napari_viewer, qtbot)
    w.checkpoint.value = str(checkpoint)  # select the saved tiny model in the widget
    qtbot.waitUntil(lambda: w.predictor is not None and w.model_label == "tiny.safetensors", timeout=T)
    assert w.model_combo.value == "checkpoint file" and w.k_spin.max == 3
    assert w.device_notice.isVisibleTo(w) and "CPU" in w.device_notice.text()
    click(w, (20, 25))
    settle(qtbot, w)
    s = w.session
    prop = s.proposals()
    assert prop is not None and len(prop.masks) == 3
    assert np.array_equal(w.preview_layer.data.astype(bool), prop.masks[0])
    assert w.proposal_list.count() == 3 and "IoU" in w.proposal_list.item(0).text()
    w.proposal_list.setCurrentRow(2)  # the chooser switches the mask
    assert s.state().selected == 2
    assert np.array_equal(w.preview_layer.data.astype(bool), prop.masks[2])
    w.next_proposal()  # K: cycles and wraps
    assert s.state().selected == 0 and w.proposal_list.currentRow() == 0
    assert np.array_equal(w.preview_layer.data.astype(bool), prop.masks[0])
    w.previous_proposal()
    assert s.state().selected == 2
    w.k_spin.value = 2  # show only 2 proposals
    assert w.proposal_list.count() == 2


def test_undo_removes_the_last_click_and_restores_the_mask(make_napari_viewer, qtbot, tiny_predictor):
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor)
    click(w, (20, 25))
    settle(qtbot, w)
    first = w.preview_layer.data.copy()
    click(w, (40, 60), positive=False)
    settle(qtbot, w)
    assert len(w.points_layer.data) == 2
    assert list(w.points_layer.features["positive"]) == [True, False]
    np.testing.assert_allclose(w.points_layer.face_color[1], NEGATIVE_COLOR)
    np.testing.assert_allclose(w.points_layer.face_color[0], POSITIVE_COLOR)
    w.undo()
    settle(qtbot, w)
    assert len(w.points_layer.data) == 1 and len(w.session.clicks()) == 1
    assert np.array_equal(w.preview_layer.data, first)
    w.reset_object()
    assert len(w.points_layer.data) == 0 and w.preview_layer.data.max() == 0
    w.undo()  # a reset is undoable
    assert len(w.points_layer.data) == 1 and np.array_equal(w.preview_layer.data, first)


def test_the_zoom_box_switches_zoom_in_without_losing_the_object(make_napari_viewer, qtbot, tiny_model):
    predictor = OISPredictor(tiny_model, device="cpu")
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=predictor)
    assert w.zoom_box.value and predictor.zoom_in is not None  # on by default
    click(w, (20, 25))
    settle(qtbot, w)
    w.zoom_box.value = False
    assert predictor.zoom_in is None and "zoom-in off" in w.status_label.text()
    click(w, (40, 60), positive=False)
    settle(qtbot, w)
    assert len(w.session.clicks()) == 2  # the object and its clicks are kept
    assert predictor.state.crop_box is None  # predicted on the whole image
    w.zoom_box.value = True
    assert predictor.zoom_in is not None
    other = OISPredictor(tiny_model, device="cpu")  # zoom-in on, as built
    w.zoom_box.value = False
    w.set_predictor(other, "other")  # a model loaded later gets the box's setting
    assert other.zoom_in is None and w.controller.zoom_in is False


def test_deleting_a_click_by_hand_predicts_the_object_again(make_napari_viewer, qtbot, tiny_predictor):
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor)
    click(w, (20, 25))
    settle(qtbot, w)
    click(w, (30, 40), positive=False)
    settle(qtbot, w)
    pts = w.points_layer
    pts.selected_data = {1}
    pts.remove_selected()  # napari's own delete (select mode + Delete)
    qtbot.waitUntil(lambda: len(w.session.clicks()) == 1, timeout=T)
    settle(qtbot, w)
    obj = w.session.state()
    assert obj.clicks[0].positive and obj.mask is not None and not obj.pending
    w.undo()  # the manual edit is undoable too
    assert len(w.session.clicks()) == 2


def test_shift_click_and_the_toggle_key_place_negative_clicks(make_napari_viewer, qtbot, tiny_predictor):
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    @dataclass
    class Event:
        type: str
        is_dragging: bool = False
        modifiers: list = field(default_factory=list)
        position: tuple = (0, 0)
        pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
        view_direction: object = None
        up_direction: object = None
        dims_displayed: list = field(default_factory=lambda: [0, 1])
        button: int = 1

    def mouse(layer, position, modifiers=()):
        for kind, fn in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
            ev = ReadOnlyWrapper(Event(kind, modifiers=list(modifiers), position=position), exceptions=("handled",))
            fn(layer, ev)

    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor, scale=(2.0, 2.0))
    pts = w.points_layer
    assert pts.mode == "add"
    mouse(pts, (40.0, 50.0))  # world coordinates: pixel (20, 25)
    mouse(pts, (10.0, 10.0), modifiers=["Shift"])
    settle(qtbot, w)
    clicks = w.session.clicks()
    assert [c.positive for c in clicks] == [True, False]
    assert (clicks[0].row, clicks[0].col) == (20.0, 25.0)
    w.toggle_polarity()  # N
    assert w.negative_mode and w.negative_box.value
    assert "key N in the viewer" in w.status and "switches back" in w.status  # the shortcut, named
    mouse(pts, (60.0, 60.0))
    w.toggle_polarity()
    mouse(pts, (62.0, 62.0))
    settle(qtbot, w)
    assert [c.positive for c in w.session.clicks()] == [True, False, False, True]
    assert [getattr(v, "value", str(v)) for v in pts.symbol] == ["disc", "cross", "cross", "disc"]
    np.testing.assert_allclose(pts.face_color[1], NEGATIVE_COLOR)


def test_burst_of_clicks_is_coalesced(make_napari_viewer, qtbot, tiny_predictor):
    slow = SlowPredictor(tiny_predictor, predict_delay=0.15)
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=slow)
    settle(qtbot, w)
    n0 = sum(1 for t in slow.threads if t is not threading.main_thread())
    for i in range(6):
        click(w, (10 + 4 * i, 12 + 5 * i), positive=i % 2 == 0)
    settle(qtbot, w)
    obj = w.session.state()
    assert len(obj.clicks) == 6 and obj.n_applied == 6
    predictions = len(slow.threads) - n0
    assert predictions < 6  # no pile-up: the latest state only
    assert all(t is not threading.main_thread() for t in slow.threads)  # never on the GUI thread


# --------------------------------------------------------------------------- commit
def test_commit_writes_a_new_id_into_an_existing_labels_layer(make_napari_viewer, qtbot, tiny_predictor):
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor,
                            scale=(0.5, 0.5), translate=(3.0, 4.0))
    existing = np.zeros((48, 64), np.int32)
    existing[:, :20] = 5  # the user's labels
    user = viewer.add_labels(existing.copy(), name="mine", scale=(0.5, 0.5), translate=(3.0, 4.0))
    w.labels_combo.value = user
    click(w, (20, 25))
    settle(qtbot, w)
    s = w.session
    mask = s.mask().copy()
    big = int(np.argmax(s.proposals().masks.sum(axis=(1, 2))))
    w.select_proposal(big)
    mask = s.mask().copy()
    assert mask.any()
    lid = w.commit()
    assert lid == 6
    data = user.data
    assert np.all(data[:, :20] == 5)  # never overwritten by default
    assert np.array_equal(data == 6, mask & (existing == 0))
    assert s.clicks() == () and w.preview_layer.data.max() == 0 and len(w.points_layer.data) == 0
    assert "committed object 6" in w.status
    # output layers copy the image's scale and translate
    for ly in (w.points_layer, w.preview_layer):
        np.testing.assert_allclose(ly.scale, layer.scale)
        np.testing.assert_allclose(ly.translate, layer.translate)
    # a second object gets the next id; overwrite on request
    click(w, (20, 10))
    settle(qtbot, w)
    w.select_proposal(int(np.argmax(s.proposals().masks.sum(axis=(1, 2)))))
    w.overwrite.value = True
    assert w.commit() == 7
    assert np.any(data[:, :20] == 7) or not np.any(s.last_commit.mask[:, :20])
    # nothing to commit: a message, no exception
    assert w.commit() is None and "nothing to commit" in w.status


def test_commit_creates_a_labels_layer_with_the_images_geometry(make_napari_viewer, qtbot, tiny_predictor):
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor,
                            scale=(2.0, 3.0), translate=(-5.0, 7.0))
    click(w, (20, 25))
    settle(qtbot, w)
    w.select_proposal(int(np.argmax(w.session.proposals().masks.sum(axis=(1, 2)))))
    assert w.commit() == 1
    out = w.labels_layer
    assert out.name == "img objects" and out.data.shape == (48, 64) and out.data.max() == 1
    np.testing.assert_allclose(out.scale, (2.0, 3.0))
    np.testing.assert_allclose(out.translate, (-5.0, 7.0))
    names = [ly.name for ly in viewer.layers]
    assert names.index("img objects") < names.index("OIS current object") < names.index("OIS clicks")


def test_commit_during_a_prediction_waits_for_the_last_click(make_napari_viewer, qtbot, tiny_predictor):
    slow = SlowPredictor(tiny_predictor, predict_delay=0.4)
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=slow)
    settle(qtbot, w)
    click(w, (20, 25))
    assert w.commit() is None and "as soon as" in w.status  # deferred, not lost
    qtbot.waitUntil(lambda: w.is_idle and w.labels_layer is not None, timeout=T)
    s = w.session
    assert s.last_commit is not None and s.last_commit.label_id == 1
    assert len(s.last_commit.mask.shape) == 2 and s.clicks() == ()


def test_removing_the_dock_widget_disconnects_it(make_napari_viewer, qtbot, tiny_predictor):
    viewer = make_napari_viewer()
    viewer.add_image(rgb_image(), name="img")
    dock, w = viewer.window.add_plugin_dock_widget("napari-ois", "OIS segmentation")
    w.set_predictor(tiny_predictor, "tiny")
    settle(qtbot, w)
    assert any("ois_" in getattr(f, "__name__", "") for f in viewer.keymap.values())
    viewer.window.remove_dock_widget(dock)
    assert w.is_closed
    assert not any("ois_" in getattr(f, "__name__", "") for f in viewer.keymap.values())
    viewer.add_image(rgb_image(), name="other")  # no error from a dead widget


# --------------------------------------------------------------------------- 3D
def test_3d_stack_segments_the_displayed_slice_and_propagates(make_napari_viewer, qtbot, tiny_predictor):
    rng = np.random.default_rng(0)
    vol = (rng.random((7, 40, 48)) * 3000 + 500).astype(np.uint16)
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=tiny_predictor,
                            scale=(2.5, 1.0, 1.0), contrast_limits=(600, 3000))
    viewer.dims.set_current_step(0, 4)  # world step index of slice 4
    qtbot.waitUntil(lambda: w.session.current_key == (4,), timeout=T)
    settle(qtbot, w)
    assert w.session.is_embedded(4)
    click(w, (4, 20, 24))
    settle(qtbot, w)
    s = w.session
    assert s.active_keys() == [(4,)]
    prev = w.preview_layer.data
    assert prev.shape == (7, 40, 48) and prev[[0, 1, 2, 3, 5, 6]].max() == 0
    assert np.array_equal(prev[4].astype(bool), s.mask(4))
    np.testing.assert_allclose(w.preview_layer.scale, (2.5, 1.0, 1.0))
    # 16-bit grey: the layer's contrast limits are the intensity window
    assert layer.contrast_limits == [600, 3000] or tuple(layer.contrast_limits) == (600, 3000)
    assert s.contrast_limits == (600.0, 3000.0)
    w.select_proposal(int(np.argmax(s.proposals().masks.sum(axis=(1, 2)))))
    w.min_quality.value = -1.0
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    labels = w.labels_layer.data
    assert labels.shape == (7, 40, 48) and labels[4].max() == 1
    assert set(np.unique(labels)) <= {0, 1}
    assert s.is_embedded(5) or s.is_embedded(3)  # neighbours were visited
    np.testing.assert_allclose(w.labels_layer.scale, (2.5, 1.0, 1.0))


def test_propagation_through_the_widget_follows_the_object(make_napari_viewer, qtbot):
    vol, ball = ball_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FakePredictor())
    viewer.dims.set_current_step(0, 10)
    qtbot.waitUntil(lambda: w.session.current_key == (10,), timeout=T)
    click(w, (10, 20, 20))
    settle(qtbot, w)
    w.propagate()  # commits the object, then walks up and down
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    labels = w.labels_layer.data
    for z in range(21):
        if ball[z].sum() >= 4:
            assert np.array_equal(labels[z] == 1, ball[z]), z
    assert "vanished" in w.status
    # propagating again from the last commit (no current object) is allowed
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle, timeout=T)


def test_one_napari_undo_takes_back_the_whole_propagation(make_napari_viewer, qtbot):
    vol, ball = ball_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FakePredictor())
    viewer.dims.set_current_step(0, 10)
    qtbot.waitUntil(lambda: w.session.current_key == (10,), timeout=T)
    click(w, (10, 20, 20))
    settle(qtbot, w)
    w.propagate()  # commits slice 10, then writes 12 more slices
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    lab = w.labels_layer
    after = lab.data.copy()
    assert len({z for z in range(21) if after[z].any()}) == 13
    lab.undo()  # napari's own undo (Ctrl+Z on the layer)
    assert lab.data.max() == 0, "one undo must remove the commit and every propagated slice"
    lab.redo()
    assert np.array_equal(lab.data, after)
    # the group is closed: a later edit (a brush stroke here) is a step of its own
    lab.paint((10, 3, 3), 5)
    assert not np.array_equal(lab.data, after)
    lab.undo()
    assert np.array_equal(lab.data, after)


def test_propagation_in_the_widget_stops_at_a_leak(make_napari_viewer, qtbot):
    vol = leak_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FakePredictor())
    viewer.dims.set_current_step(0, 5)
    qtbot.waitUntil(lambda: w.session.current_key == (5,), timeout=T)
    assert w.propagation_options()["area_ratio"] == (0.5, 2.0)
    assert w.propagation_options()["min_overlap"] == pytest.approx(0.3)
    w.min_quality.value = -1.0  # quality off: the area rule stops the leak
    click(w, (5, 13, 13))
    settle(qtbot, w)
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    assert "grew suddenly at slice 14" in w.status
    assert w.labels_layer.data[14:].max() == 0 and w.labels_layer.data[:14].all(axis=(1, 2)).sum() == 0
    assert all((w.labels_layer.data[z] > 0).sum() == 64 for z in range(14))


@pytest.mark.parametrize("rgb", [True, False])
def test_the_layers_rgb_flag_decides_colour_or_a_stack(make_napari_viewer, qtbot, rgb):
    """A (Z, H, W, 3) layer is a colour stack when napari shows it as RGB, and a 4D grey
    image (planes of W x 3) when the user added it with rgb=False."""
    stack = np.stack([rgb_image()] * 4)
    fake = FakePredictor()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=stack, predictor=fake, rgb=rgb)
    qtbot.waitUntil(lambda: w.session is not None, timeout=T)
    assert layer.rgb is rgb and w.session.rgb is rgb
    assert w.session.plane_shape == ((48, 64) if rgb else (64, 3))
    if rgb:
        viewer.dims.set_current_step(0, 2)
        qtbot.waitUntil(lambda: w.session.current_key == (2,), timeout=T)
        click(w, (2, 20, 25))
        settle(qtbot, w)
        assert fake.embedded[-1].shape == (48, 64)  # one colour plane went to the model
        assert w.session.mask((2,))[8:36, 10:40].all()


class FailingOnSlice(FakePredictor):
    """FakePredictor whose embedding of one slice fails with a RuntimeError (what torch
    raises, e.g. when memory runs out)."""

    def __init__(self, bad_value):
        super().__init__()
        self.bad_value = bad_value

    def set_image(self, image, **kw):
        if np.asarray(image).max() == self.bad_value:
            raise RuntimeError("out of memory (test)")
        return super().set_image(image, **kw)


def test_a_runtime_error_mid_propagation_is_a_message_and_the_widget_goes_on(make_napari_viewer, qtbot):
    vol, ball = ball_stack()
    vol = vol.astype(np.float32)
    vol[13] *= 0.999  # slice 13 is the one the model fails on
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FailingOnSlice(vol[13].max()))
    viewer.dims.set_current_step(0, 10)
    qtbot.waitUntil(lambda: w.session.current_key == (10,), timeout=T)
    click(w, (10, 20, 20))
    settle(qtbot, w)
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle and w.controller.running is None, timeout=T)
    assert "propagation stopped by an error" in w.status and "2 slice(s) written so far are kept" in w.status
    assert "RuntimeError: out of memory (test)" in w.status
    assert w.controller.running is None
    labels = w.labels_layer.data
    assert np.array_equal(labels[10] == 1, ball[10]) and labels[11:13].any() and not labels[13:].any()
    kept = labels.copy()
    w.labels_layer.undo()  # the undo group was closed by the error: one step, recorded
    assert w.labels_layer.data.max() == 0
    w.labels_layer.redo()
    assert np.array_equal(w.labels_layer.data, kept)
    # the widget still works: a new object on another slice is predicted
    viewer.dims.set_current_step(0, 8)
    qtbot.waitUntil(lambda: w.session.current_key == (8,), timeout=T)
    click(w, (8, 20, 20))
    settle(qtbot, w)
    assert w.session.mask((8,)).any()


# --------------------------------------------------------------------------- robustness
def test_closing_the_image_mid_prediction_keeps_committed_labels(make_napari_viewer, qtbot, tiny_predictor):
    slow = SlowPredictor(tiny_predictor, predict_delay=0.5)
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=slow)
    settle(qtbot, w)
    click(w, (20, 25))
    settle(qtbot, w)
    w.select_proposal(int(np.argmax(w.session.proposals().masks.sum(axis=(1, 2)))))
    w.commit()
    committed = w.labels_layer.data.copy()
    click(w, (10, 10))
    qtbot.waitUntil(lambda: isinstance(w.controller.running, Predict), timeout=T)
    viewer.layers.remove(layer)  # mid-prediction
    settle(qtbot, w)
    assert w.session is None and w.image_layer is None
    assert "was removed" in " ".join(t for _, t in w.messages)
    assert np.array_equal(w.labels_layer.data, committed)
    w.commit()  # no image: a message, no exception
    w.undo()
    w.propagate()
    assert w.messages[-1][0] == "error"


def test_switching_models_mid_prediction(make_napari_viewer, qtbot, tiny_predictor, checkpoint):
    slow = SlowPredictor(tiny_predictor, predict_delay=0.5)
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=slow)
    click(w, (20, 25))
    settle(qtbot, w)
    w.select_proposal(int(np.argmax(w.session.proposals().masks.sum(axis=(1, 2)))))
    w.commit()
    committed = w.labels_layer.data.copy()
    click(w, (12, 30))
    qtbot.waitUntil(lambda: isinstance(w.controller.running, Predict), timeout=T)
    w.checkpoint.value = str(checkpoint)  # another model while predicting
    qtbot.waitUntil(lambda: w.model_label == "tiny.safetensors", timeout=T)
    settle(qtbot, w)
    assert w.predictor is not slow and w.session.predictor is w.predictor
    assert len(w.session.clicks()) == 1 and w.session.mask() is not None  # re-predicted
    assert np.array_equal(w.labels_layer.data, committed)


def test_bad_inputs_give_messages(make_napari_viewer, qtbot, tiny_predictor, tmp_path, checkpoint):
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor)
    settle(qtbot, w)
    click(w, (200, 10))  # outside the image
    qtbot.waitUntil(lambda: len(w.points_layer.data) == 0, timeout=T)
    assert "outside the image" in w.status and w.messages[-1][0] == "error"
    assert w.session.clicks() == ()
    viewer.dims.ndisplay = 3  # clicks need the 2D view
    click(w, (20, 20))
    qtbot.waitUntil(lambda: len(w.points_layer.data) == 0, timeout=T)
    assert "2D display" in w.status and w.session.clicks() == ()
    viewer.dims.ndisplay = 2
    # a broken checkpoint: clear message, the previous model stays
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a model")
    w.checkpoint.value = str(bad)
    qtbot.waitUntil(lambda: w.is_idle and "could not load" in w.status, timeout=T)
    assert w.predictor is tiny_predictor and "still using" in w.status
    # asking for a GPU that is not there: fall back to the CPU, with a notice
    import torch

    if not torch.cuda.is_available():
        w.device_combo.value = "cuda"
        w.checkpoint.value = str(checkpoint)
        qtbot.waitUntil(lambda: w.is_idle and w.model_label == "tiny.safetensors", timeout=T)
        assert "no CUDA GPU" in " ".join(t for _, t in w.messages[-4:])
        assert w.device_notice.isVisibleTo(w) and "CPU" in w.device_notice.text()


def test_depth_model_failure_is_a_message(make_napari_viewer, qtbot, tiny_predictor, monkeypatch, checkpoint):
    import napari_ois.depth as depth

    def broken(spec, device="cpu", **kw):
        raise RuntimeError("no network")

    monkeypatch.setattr(depth, "make_depth_provider", broken)
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor)
    w.checkpoint.value = str(checkpoint)
    w.depth_combo.value = "depth-anything-v2-small"
    qtbot.waitUntil(lambda: w.is_idle and any("without depth" in t for k, t in w.messages if k == "error"),
                    timeout=T)
    assert w.model_label == "tiny.safetensors"
    assert "without depth" in w.device_notice.text()  # stays visible
    # a layer holding a depth map
    viewer.add_image(np.random.default_rng(0).random((48, 64)), name="depthmap")  # offered at once
    w.depth_combo.value = "layer: depthmap"
    assert w.session.depth is not None and w.session.depth.shape == (48, 64)


def test_progress_bars_default_follows_the_opengl_renderer(monkeypatch):
    from napari_ois._layers import progress_bars_default

    monkeypatch.delenv("NAPARI_OIS_PROGRESS", raising=False)
    shown, note = progress_bars_default(lambda: "llvmpipe (LLVM 15.0.6, 256 bits)")
    assert not shown and "Software OpenGL" in note
    assert progress_bars_default(lambda: "NVIDIA GeForce RTX 4090/PCIe/SSE2") == (True, "")
    assert progress_bars_default(lambda: "") == (True, "")  # unknown: assume hardware
    for value, shown in (("0", False), ("off", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("NAPARI_OIS_PROGRESS", value)  # the user's word wins either way
        assert progress_bars_default(lambda: "llvmpipe") == (shown, "")
        assert progress_bars_default(lambda: "NVIDIA") == (shown, "")


def test_progress_bars_during_embedding(make_napari_viewer, qtbot, tiny_predictor, monkeypatch):
    from napari.utils import progress

    from napari_ois._layers import gl_renderer, progress_bars_default

    slow = SlowPredictor(tiny_predictor, embed_delay=0.6)
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=slow)
    settle(qtbot, w)
    w.show_progress = True
    w.session.clear_cache()
    w.schedule_work()
    qtbot.waitUntil(lambda: w.progress_bar is not None, timeout=T)
    pbar = w.progress_bar
    assert pbar in progress._all_instances and "embedding" in pbar.desc
    settle(qtbot, w)
    assert pbar not in progress._all_instances  # closed when done
    # automatic choice, from the canvas's real OpenGL renderer (off under software OpenGL:
    # the busy animation costs a CPU core), and the user's NAPARI_OIS_PROGRESS over it
    monkeypatch.delenv("NAPARI_OIS_PROGRESS", raising=False)
    expected, note = progress_bars_default(gl_renderer)
    w.show_progress = None
    assert w.shows_progress_bars() == expected
    assert ("Software OpenGL" in w.device_notice.text()) == bool(note)
    for value, shown in (("1", True), ("0", False)):
        monkeypatch.setenv("NAPARI_OIS_PROGRESS", value)
        w.show_progress = None
        assert w.shows_progress_bars() is shown


def test_gui_thread_is_not_blocked_during_embedding(make_napari_viewer, qtbot, tiny_predictor):
    from napari_ois._demo import StallMeter

    slow = SlowPredictor(tiny_predictor, embed_delay=1.0)
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=slow)
    settle(qtbot, w)
    w.session.clear_cache()
    meter = StallMeter(5).start()
    w.schedule_work()
    qtbot.waitUntil(lambda: w.controller.running is not None, timeout=T)
    settle(qtbot, w)
    stats = meter.stop()
    assert w.session.is_embedded()
    assert slow.threads and all(t is not threading.main_thread() for t in slow.threads)
    # the embedding took >= 1 s off the GUI thread, and the GUI's timer kept firing meanwhile
    # (how smoothly is a benchmark's figure, not an assertion: the demo's stall meter)
    assert stats["ticks"] > 1, stats


# --------------------------------------------------------------------------- issue #10
def _labels_layers(viewer, w):
    from napari.layers import Labels

    return [ly for ly in viewer.layers if isinstance(ly, Labels) and ly is not w.preview_layer]


def test_negative_first_click_is_a_message_and_no_prediction(make_napari_viewer, qtbot, tiny_predictor):
    calls = []
    inner = tiny_predictor.predict
    tiny_predictor.predict = lambda *a, **kw: (calls.append(a), inner(*a, **kw))[1]
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor)
    settle(qtbot, w)
    click(w, (20, 25), positive=False)
    qtbot.waitUntil(lambda: len(w.points_layer.data) == 0, timeout=T)  # the point is taken back
    settle(qtbot, w)
    assert "first click of an object must be positive" in w.status and w.messages[-1][0] == "error"
    assert w.session.clicks() == () and w.session.mask() is None and calls == []
    assert "ready" not in w.status
    click(w, (20, 25))  # a positive click then works as usual
    settle(qtbot, w)
    assert len(calls) == 1 and len(w.session.clicks()) == 1


def test_commit_onto_existing_labels_only_keeps_the_object(make_napari_viewer, qtbot):
    from test_session import blob_image

    viewer, layer, w = make(make_napari_viewer, qtbot, image=blob_image(), predictor=FakePredictor())
    existing = np.zeros((40, 60), np.int32)
    existing[0:32, 0:40] = 5  # covers the whole rectangle object
    user = viewer.add_labels(existing.copy(), name="mine")
    w.labels_combo.value = user
    click(w, (20, 20))
    settle(qtbot, w)
    mask = w.session.mask().copy()
    assert mask.sum() == 25 * 30
    assert w.commit() is None
    assert "existing labels" in w.status and w.messages[-1][0] == "error"
    assert np.array_equal(user.data, existing)  # nothing written
    assert len(w.session.clicks()) == 1 and np.array_equal(w.session.mask(), mask)  # kept
    assert len(w.points_layer.data) == 1 and np.array_equal(w.preview_layer.data.astype(bool), mask)
    w.overwrite.value = True
    assert w.commit() == 6 and np.array_equal(user.data == 6, mask)


def test_each_image_keeps_its_own_labels_layer(make_napari_viewer, qtbot):
    from test_session import blob_image

    viewer = make_napari_viewer()
    a = viewer.add_image(blob_image(), name="a")
    b = viewer.add_image(blob_image()[::-1].copy(), name="b")  # same shape, object elsewhere
    w = OISWidget(viewer, predictor=FakePredictor())
    qtbot.addWidget(w)
    w.image_combo.value = a
    qtbot.waitUntil(lambda: w.image_layer is a, timeout=T)
    assert "new labels layer 'a objects'" in w.target_text
    click(w, (20, 20))
    settle(qtbot, w)
    assert w.commit() == 1
    a_labels = w.labels_layer
    assert a_labels.name == "a objects" and "'a objects'" in w.target_text
    a_data = a_labels.data.copy()
    # another image of the same shape: its commits must not go into a's layer
    w.image_combo.value = b
    qtbot.waitUntil(lambda: w.image_layer is b, timeout=T)
    assert w.labels_combo.value is None and "new labels layer 'b objects'" in w.target_text
    click(w, (15, 20))
    settle(qtbot, w)
    assert w.commit() == 1
    b_labels = w.labels_layer
    assert b_labels is not a_labels and b_labels.name == "b objects"
    assert np.array_equal(a_labels.data, a_data)  # untouched
    # back to a: its own layer is found again, no second layer, the next id follows on
    w.image_combo.value = a
    qtbot.waitUntil(lambda: w.image_layer is a, timeout=T)
    assert w.labels_combo.value is a_labels and "'a objects'" in w.target_text
    click(w, (34, 50))
    settle(qtbot, w)
    assert w.commit() == 2
    assert w.labels_layer is a_labels and a_labels.data.max() == 2
    assert set(np.unique(b_labels.data)) == {0, 1}
    assert sorted(ly.name for ly in _labels_layers(viewer, w)) == ["a objects", "b objects"]
    # and b's again
    w.image_combo.value = b
    qtbot.waitUntil(lambda: w.image_layer is b, timeout=T)
    assert w.labels_combo.value is b_labels


def test_a_new_image_or_labels_layer_does_not_hide_the_prompts(make_napari_viewer, qtbot):
    """Layers added while the widget is open go under the current-object, box and clicks
    layers; a layer the user moves up by hand stays where it was put."""
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=FakePredictor())
    qtbot.waitUntil(lambda: w.session is not None, timeout=T)
    ours = ["OIS current object", "OIS box", "OIS clicks"]

    def names():
        return [ly.name for ly in viewer.layers]

    assert names()[-3:] == ours
    viewer.add_image(rgb_image(), name="second")
    qtbot.waitUntil(lambda: names()[-3:] == ours, timeout=T)
    assert names().index("second") < names().index("OIS current object")
    viewer.add_labels(np.zeros((48, 64), np.int32), name="more labels")
    qtbot.waitUntil(lambda: names()[-3:] == ours, timeout=T)
    assert w.image_layer is layer and w.session is not None  # still bound to the first image
    viewer.layers.move(names().index("second"), len(viewer.layers))  # the user's own order
    qtbot.wait(100)
    assert names()[-1] == "second"


def test_failed_checkpoint_load_reverts_the_model_field(make_napari_viewer, qtbot, tmp_path, checkpoint):
    from napari_ois._widget import CHECKPOINT

    viewer, layer, w = make(make_napari_viewer, qtbot)
    w.checkpoint.value = str(checkpoint)
    qtbot.waitUntil(lambda: w.is_idle and w.model_label == "tiny.safetensors", timeout=T)
    good = w.predictor
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a model")
    w.checkpoint.value = str(bad)
    qtbot.waitUntil(lambda: w.is_idle and "could not load" in w.status, timeout=T)
    assert w.predictor is good and w.messages[-1][0] == "error"
    assert "broken.safetensors" in w.status and "still using tiny.safetensors" in w.status
    # the fields show the model that is in use, not the file that failed
    assert w.model_combo.value == CHECKPOINT
    assert str(w.checkpoint.value) == str(checkpoint)
    settle(qtbot, w)
    assert w.predictor is good  # reverting the field did not trigger another load


# --------------------------------------------------------------------------- box prompts (#11)
@pytest.fixture
def box_checkpoint(tmp_path):
    import torch

    from conftest import tiny_config
    from napari_ois.model import OISModel

    torch.manual_seed(0)
    return save_model(OISModel(tiny_config(fusion="early", box_prompts=True)).eval(), tmp_path / "box.safetensors")


def draw(w, *corners):
    """A rectangle added to the box layer, as a user's drawing ends (napari's "added")."""
    w.box_layer.add_rectangles(np.asarray(corners, dtype=float))


def test_a_rectangle_on_the_box_layer_is_a_prompt_with_the_real_box_model(make_napari_viewer, qtbot,
                                                                           box_checkpoint):
    viewer, layer, w = make(make_napari_viewer, qtbot)
    w.checkpoint.value = str(box_checkpoint)
    qtbot.waitUntil(lambda: w.predictor is not None and w.model_label == "box.safetensors", timeout=T)
    settle(qtbot, w)
    assert w.predictor.accepts_boxes
    bx = w.box_layer
    names = [ly.name for ly in viewer.layers]
    assert names.index("OIS current object") < names.index("OIS box") < names.index("OIS clicks")
    assert bx.mode == "add_rectangle" and viewer.layers.selection.active is w.points_layer
    w.draw_box()  # the Box button: the box layer, ready to draw
    assert viewer.layers.selection.active is bx and bx.mode == "add_rectangle"
    draw(w, (6, 8), (34, 42))
    qtbot.waitUntil(lambda: w.session.box() is not None, timeout=T)
    assert viewer.layers.selection.active is w.points_layer  # back to clicking
    assert w.session.box().as_tuple() == (6.0, 8.0, 34.0, 42.0)
    assert any(t.startswith("box (6, 8)-(34, 42): predicting the object from the box") for _, t in w.messages)
    settle(qtbot, w)
    s = w.session
    first = s.state()
    assert first.mask is not None and first.box_applied and s.proposals() is None
    assert np.array_equal(w.preview_layer.data.astype(bool), first.mask)
    assert w.status.startswith("mask ready (box + 0 click(s)")
    draw(w, (20, 30), (46, 62))  # a new rectangle wins; the old one goes
    qtbot.waitUntil(lambda: s.box() is not None and s.box().r0 == 20, timeout=T)
    settle(qtbot, w)
    assert len(bx.data) == 1 and np.allclose(np.asarray(bx.data[0]).min(0), (20, 30))
    assert not np.array_equal(s.state().logits, first.logits)  # the box reached the network
    before = s.state().logits.copy()
    click(w, (30, 40))  # a later click refines the boxed object
    settle(qtbot, w)
    obj = s.state()
    assert len(obj.clicks) == 1 and obj.box is not None and not obj.pending
    assert not np.array_equal(obj.logits, before) and "box + 1 click(s)" in w.status
    w.undo()  # the click goes, the box stays
    assert s.box() is not None and len(bx.data) == 1
    assert w.commit() == 1  # commit writes the labels and empties the box layer
    assert w.labels_layer.data.max() == 1 and len(bx.data) == 0 and s.box() is None


def test_box_then_click_with_a_box_model_stays_inside_and_delete_removes_the_box(make_napari_viewer, qtbot):
    from test_session import FakeBoxPredictor, blob_image

    viewer, layer, w = make(make_napari_viewer, qtbot, image=blob_image(), predictor=FakeBoxPredictor())
    settle(qtbot, w)
    draw(w, (4, 4), (20, 36))  # the upper part of the first rectangle
    qtbot.waitUntil(lambda: w.session.box() is not None, timeout=T)
    settle(qtbot, w)
    mask = w.session.mask()
    rr, cc = np.nonzero(mask)
    assert mask.any() and rr.min() >= 4 and rr.max() <= 20 and cc.min() >= 4 and cc.max() <= 36
    click(w, (33, 50))  # adds the second object to the box's mask
    settle(qtbot, w)
    assert w.session.mask()[33, 50] and w.session.mask()[10, 10]
    w.box_layer.selected_data = {0}
    w.box_layer.remove_selected()  # the user deletes the rectangle: the box goes
    qtbot.waitUntil(lambda: w.session.box() is None, timeout=T)
    settle(qtbot, w)
    assert len(w.session.clicks()) == 1 and "box removed" in " ".join(t for _, t in w.messages[-3:])
    w.reset_object()
    assert len(w.box_layer.data) == 0
    w.undo()  # the reset is undone: the object without its box
    assert w.session.box() is None and len(w.session.clicks()) == 1


def test_a_box_on_a_model_without_boxes_is_a_message_and_keeps_the_object(make_napari_viewer, qtbot,
                                                                          tiny_predictor):
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=tiny_predictor)
    click(w, (20, 25))
    settle(qtbot, w)
    s = w.session
    mask, clicks = s.mask().copy(), s.clicks()
    draw(w, (4, 4), (30, 40))
    qtbot.waitUntil(lambda: "box not used" in w.status, timeout=T)
    assert "takes no box prompts" in w.status and w.messages[-1][0] == "error"
    assert len(w.box_layer.data) == 0  # the rectangle is removed
    settle(qtbot, w)
    assert s.clicks() == clicks and np.array_equal(s.mask(), mask) and s.box() is None
    assert len(w.points_layer.data) == 1


def test_a_box_on_a_stack_applies_to_the_displayed_slice(make_napari_viewer, qtbot):
    from test_session import FakeBoxPredictor

    vol, ball = ball_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FakeBoxPredictor())
    viewer.dims.set_current_step(0, 10)
    qtbot.waitUntil(lambda: w.session.current_key == (10,), timeout=T)
    assert w.box_layer.ndim == 3
    draw(w, (10, 8, 8), (10, 8, 32), (10, 32, 32), (10, 32, 8))  # napari's 3D rectangle vertices
    qtbot.waitUntil(lambda: w.session.box(10) is not None, timeout=T)
    settle(qtbot, w)
    s = w.session
    assert s.box(10).as_tuple() == (8.0, 8.0, 32.0, 32.0) and s.active_keys() == [(10,)]
    assert np.array_equal(s.mask(10), ball[10])
    assert w.preview_layer.data[10].any() and w.preview_layer.data[9].max() == 0
    w.commit()
    assert len(w.box_layer.data) == 0 and np.array_equal(w.labels_layer.data[10] == 1, ball[10])


# --------------------------------------------------------------------------- fine-tuning (#12)
def finetune_setup(make_napari_viewer, qtbot, tmp_path, n_objects=4, predictor=None):
    from test_finetune import _scene

    image, labels = _scene(3, n=n_objects)
    viewer, layer, w = make(make_napari_viewer, qtbot, image=image, predictor=predictor)
    committed = viewer.add_labels(labels.astype(np.int32), name="img objects")  # this image's objects
    viewer.layers.selection.active = layer  # adding the labels selected them
    w.labels_combo.value = committed  # as a user picks the layer the objects are in
    assert w.labels_layer is committed
    panel = w.finetune_panel
    panel.folder.value = str(tmp_path / "models")
    panel.options = {"batch_size": 2}
    return viewer, w, panel, committed


def test_finetune_on_my_labels_adds_the_model_to_the_list(make_napari_viewer, qtbot, tmp_path, checkpoint):
    viewer, w, panel, committed = finetune_setup(make_napari_viewer, qtbot, tmp_path)
    w.checkpoint.value = str(checkpoint)
    qtbot.waitUntil(lambda: w.predictor is not None and w.model_label == "tiny.safetensors", timeout=T)
    settle(qtbot, w)
    in_use, before = w.predictor, committed.data.copy()
    choices = list(w.model_combo.choices)
    panel.minutes.value = 0.05
    panel.button.click()
    assert w.controller.finetuning and panel.button.text() == "Cancel fine-tuning"
    assert "fine-tuning tiny.safetensors" in w.status and panel.line.isVisibleTo(panel)
    qtbot.waitUntil(lambda: not w.controller.finetuning, timeout=4 * T)
    assert panel.button.text() == "Fine-tune on my labels", w.status
    assert w.status.startswith("fine-tuned model saved to"), w.status
    folder = w.controller.added_models[-1]
    assert folder.startswith(str(tmp_path / "models" / "finetuned-")) and folder in w.status
    assert (tmp_path / "models").joinpath(folder.rsplit("/", 1)[-1], "model.safetensors").is_file()
    assert "held-back IoU" in w.status and "steps" in w.status
    assert list(w.model_combo.choices) == choices + [folder]  # listed with the other models
    assert w.predictor is in_use and np.array_equal(committed.data, before)  # nothing else changed
    w.model_combo.value = folder  # the new model loads from the list
    qtbot.waitUntil(lambda: w.is_idle and w.model_label == folder.rsplit("/", 1)[-1], timeout=T)
    assert w.predictor is not in_use


def test_a_cancelled_finetune_changes_nothing_and_clicking_goes_on(make_napari_viewer, qtbot, tmp_path,
                                                                   tiny_predictor):
    viewer, w, panel, committed = finetune_setup(make_napari_viewer, qtbot, tmp_path, predictor=tiny_predictor)
    settle(qtbot, w)
    choices = list(w.model_combo.choices)
    panel.minutes.value = 2.0
    panel.button.click()  # an injected predictor: its network is the base
    assert w.controller.finetuning
    click(w, (30, 36))  # the interactive jobs run beside the fine-tuning
    settle(qtbot, w)
    assert w.session.mask() is not None and w.controller.finetuning
    qtbot.waitUntil(lambda: w.controller.finetune_job.latest is not None, timeout=2 * T)
    qtbot.waitUntil(lambda: " left · " in panel.line.text(), timeout=T)  # progress with the time left
    panel.button.click()  # "Cancel fine-tuning"
    assert not panel.button.isEnabled()
    qtbot.waitUntil(lambda: not w.controller.finetuning, timeout=2 * T)
    assert "fine-tuning cancelled: no model was written" in w.status
    assert list(w.model_combo.choices) == choices and w.controller.added_models == []
    assert w.predictor is tiny_predictor and not (tmp_path / "models").exists()
    assert panel.button.isEnabled() and panel.button.text() == "Fine-tune on my labels"


def test_finetune_guard_rails_are_status_messages(make_napari_viewer, qtbot, tmp_path, tiny_predictor):
    viewer, w, panel, committed = finetune_setup(make_napari_viewer, qtbot, tmp_path, n_objects=2,
                                                 predictor=tiny_predictor)
    panel.minutes.value = 0.05
    panel.start()
    qtbot.waitUntil(lambda: not w.controller.finetuning, timeout=2 * T)
    assert "cannot fine-tune: too few objects: 2 usable" in w.status and w.messages[-1][0] == "error"
    assert panel.line.text() == w.status and w.controller.added_models == []
    viewer.layers.remove(committed)  # no labels layer at all: the labels are empty
    panel.start()
    qtbot.waitUntil(lambda: not w.controller.finetuning, timeout=2 * T)
    assert "cannot fine-tune: the labels are empty" in w.status


def test_a_fine_tune_error_is_cleared_when_another_image_is_chosen(make_napari_viewer, qtbot, tmp_path,
                                                                   tiny_predictor):
    viewer, w, panel, committed = finetune_setup(make_napari_viewer, qtbot, tmp_path, n_objects=2,
                                                 predictor=tiny_predictor)
    panel.minutes.value = 0.05
    panel.start()
    qtbot.waitUntil(lambda: not w.controller.finetuning, timeout=2 * T)
    assert "cannot fine-tune" in panel.line.text() and panel.line.isVisibleTo(panel)
    other = viewer.add_image(rgb_image(), name="other")
    w.image_combo.value = other
    qtbot.waitUntil(lambda: w.image_layer is other, timeout=T)
    assert panel.line.text() == "" and not panel.line.isVisibleTo(panel)


def test_path_fields_show_the_start_of_the_path_and_the_whole_path_as_a_tooltip(make_napari_viewer, qtbot,
                                                                                 tmp_path):
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=FakePredictor())
    folder = w.finetune_panel.folder
    line = folder.line_edit.native
    assert line.cursorPosition() == 0 and line.toolTip() == str(folder.value)  # the default folder
    deep = tmp_path / "a-rather-long-folder-name" / "and-another-one" / "napari-ois-models"
    folder.value = str(deep)
    assert line.cursorPosition() == 0 and line.toolTip() == str(deep)
    assert line.minimumWidth() >= 20 * line.fontMetrics().averageCharWidth()
    ckpt = tmp_path / "somewhere" / "deep" / "weights.safetensors"
    w.checkpoint.value = str(ckpt)  # not a file: only the field's display is checked
    assert w.checkpoint.line_edit.native.cursorPosition() == 0
    assert w.checkpoint.line_edit.native.toolTip() == str(ckpt)

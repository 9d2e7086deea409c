"""Editing an existing label (issue 34, item 4): ``InteractionSession.edit_label`` takes a
label as the current object, clicks refine it, ``commit`` writes it back under its own id
(removed pixels become 0, other ids untouched unless overwrite); on a slice of a volume, then
propagated. The session with the shipped ``default`` model and the protocol's clicks, the
rules with the deterministic ``FakePredictor``, then the dock with a real viewer (2D and a
slice of a 3D volume; the id field, Alt+click)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ois.data.clicks import next_click
from napari_ois.session import InteractionSession

from test_session import FakePredictor, ball_stack

H = W = 160


def iou(a, b) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def disc_scene(seed=0):
    """A textured RGB image with an orange disc (the object) and a blue disc (label 2)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:H, :W]
    img = rng.normal(60, 12, (H, W, 3)).clip(0, 255)
    disc = (rr - 80) ** 2 + (cc - 70) ** 2 < 30 ** 2
    other = (rr - 40) ** 2 + (cc - 135) ** 2 < 15 ** 2
    img[disc] = (200, 150, 60)
    img[other] = (80, 180, 220)
    return img.astype(np.uint8), disc, other


ROUGH = {
    "dilated": lambda d: ndi.binary_dilation(d, iterations=9),
    "eroded": lambda d: ndi.binary_erosion(d, iterations=8),
    "shifted": lambda d: np.roll(d, 12, axis=1),
}


@pytest.fixture(scope="module")
def default_predictor():
    from napari_ois import load_predictor

    return load_predictor("default", device="cpu")


def correct_with_protocol_clicks(s, gt, mask, n=2):
    clicked = np.zeros(gt.shape, bool)
    for _ in range(n):
        c = next_click(gt, mask, clicked=clicked)
        clicked[c.row, c.col] = True
        mask = s.add_click((c.row, c.col), c.positive)
    return mask


# --------------------------------------------------------------------------- the session
@pytest.mark.parametrize("rough", sorted(ROUGH))
def test_a_rough_label_corrected_with_two_protocol_clicks_keeps_its_id(default_predictor, rough):
    img, disc, other = disc_scene()
    labels = np.zeros((H, W), np.int32)
    labels[ROUGH[rough](disc)] = 5
    labels[other] = 2
    before = labels.copy()
    s = InteractionSession(default_predictor, img)
    mask = s.edit_label(5, labels)
    assert np.array_equal(mask, before == 5) and s.proposals() is None
    start = iou(mask, disc)
    mask = correct_with_protocol_clicks(s, disc, mask)
    assert s.proposals() is None  # refined from the label, never a fresh first click
    assert iou(mask, disc) >= 0.85 and iou(mask, disc) > start + 0.2
    s.commit(labels)
    assert s.last_commit.label_id == 5 and s.state().edit is None
    assert iou(labels == 5, disc) >= 0.85  # under its own id: one object, one id
    removed = (before == 5) & ~mask
    assert removed.any() == (rough != "eroded") and not labels[removed].any()  # removed pixels: 0
    assert np.array_equal(labels == 2, before == 2)  # the other id is untouched
    assert set(np.unique(labels)) == {0, 2, 5}


def test_the_next_click_refines_the_label_and_undo_reset_replace_keep_it():
    img = np.zeros((40, 60), np.float32)
    img[5:30, 5:35] = 1.0
    labels = np.zeros((40, 60), np.int32)
    labels[8:34, 8:40] = 3  # rough: leaks into the background below and right
    fp = FakePredictor()
    s = InteractionSession(fp, img)
    s.edit_label(3, labels)
    assert s.active_keys() == [()] and not s.needs_prediction()
    key, _ = s.push_click((31, 38), positive=False)  # a first click may be negative: it removes
    req = s.request()
    assert req.prev_mask is not None and not req.multimask and req.prev_mask.shape == (40, 60)
    assert np.array_equal(req.prev_mask > 0, labels == 3)
    mask = s.predict_pending()
    assert fp.calls[-1][2:] == (True, False)  # with prev_mask, no proposals
    assert np.array_equal(mask, (labels == 3) & (img > 0.5) & ~_disk(31, 38, 6))
    s.add_click((10, 10))
    s.undo()
    s.undo()
    assert np.array_equal(s.mask(), labels == 3) and s.state().edit.label_id == 3
    s.add_click((10, 10))
    s.reset_object()  # back to the label as it was
    assert np.array_equal(s.mask(), labels == 3) and s.state().edit is not None
    s.reset_object()  # and then the edit is dropped
    assert s.mask() is None and s.state().edit is None and s.active_keys() == []
    s.undo()
    from napari_ois.data.clicks import Click

    s.replace_clicks([Click(20, 20, True)])  # clicks edited by hand: from the label again
    assert s.request().prev_mask is not None and s.state().edit.label_id == 3
    with pytest.raises(ValueError, match="label 7 is not in the labels"):
        s.edit_label(7, labels)
    with pytest.raises(ValueError, match="0 is background"):
        s.edit_label(0, labels)
    with pytest.raises(ValueError, match="committed under that id"):
        s.commit(labels, label_id=9)


def _disk(r, c, radius, shape=(40, 60)):
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    return (rr - r) ** 2 + (cc - c) ** 2 <= radius ** 2


def test_overwrite_off_keeps_other_ids_on_overwrite_takes_them_and_one_write():
    img = np.zeros((40, 60), np.float32)
    img[5:30, 5:35] = 1.0
    base = np.zeros((40, 60), np.int32)
    base[5:20, 5:35] = 4  # half of the object
    base[20:30, 5:35] = 6  # the other half belongs to another label
    for overwrite in (False, True):
        labels = base.copy()
        s = InteractionSession(FakePredictor(), img)
        s.edit_label(4, labels)
        s.add_click((25, 20))  # adds the whole rectangle
        calls = []
        s.commit(labels, overwrite=overwrite,
                 writer=lambda idx, v: (calls.append(v), labels.__setitem__(idx, v)))
        assert len(calls) == 1  # one write: one napari undo step
        assert (labels[20:30, 5:35] == (4 if overwrite else 6)).all()
        assert (labels[5:20, 5:35] == 4).all()


def test_edit_on_a_slice_of_a_volume_then_propagate_replaces_the_label_there():
    vol, ball = ball_stack()
    labels = np.zeros(vol.shape, np.int32)
    rough = np.stack([ndi.binary_dilation(b, iterations=3) if b.any() else b for b in ball])
    labels[rough] = 9
    labels[:, 0:3, 0:3] = 1  # another object
    before = labels.copy()
    s = InteractionSession(FakePredictor(), vol)
    s.set_slice((10,))
    mask = s.edit_label(9, labels)
    assert np.array_equal(mask, rough[10]) and s.current_key == (10,)
    s.add_click((20, 20))  # FakePredictor keeps prev_mask & foreground: the ball's slice
    assert np.array_equal(s.mask(), ball[10])
    written = s.propagate(labels, min_score=-1, area_ratio=None, min_overlap=None)
    assert s.last_commit.label_id == 9 and s.last_commit.replace
    assert written and all(np.array_equal(labels[k] == 9, ball[k]) for k in [(10,)] + written)
    untouched = [z for z in range(vol.shape[0]) if (z,) not in written and z != 10]
    assert all(np.array_equal(labels[z], before[z]) for z in untouched)
    assert (labels[:, 0:3, 0:3] == 1).all()


def test_a_big_plane_keeps_the_label_as_a_window(default_predictor):
    """Over 1 Mpx an edited label is kept as a crop with its window, as big images' masks are."""
    side = 1100
    img = np.zeros((side, side, 3), np.uint8)
    img[500:600, 400:520] = (220, 180, 60)
    labels = np.zeros((side, side), np.int32)
    labels[490:600, 400:540] = 2
    s = InteractionSession(default_predictor, img)
    mask = s.edit_label(2, labels)
    crop, window = s.mask_window()
    assert window is not None and crop.shape == (window[1] - window[0], window[3] - window[2])
    assert crop.size < 0.1 * side * side and np.array_equal(mask, labels == 2)
    s.add_click((495, 450), positive=False)
    s.commit(labels)
    assert labels[492, 450] == 0 and labels[550, 450] == 2
    assert set(np.unique(labels)) == {0, 2}


# --------------------------------------------------------------------------- a real viewer
def edit_viewer(make_napari_viewer, qtbot, image, labels, predictor, **image_kw):
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_ois._widget import OISWidget

    viewer = make_napari_viewer()
    viewer.add_image(image, name="img", **image_kw)
    lab = viewer.add_labels(labels, name="from another tool")
    w = OISWidget(viewer, predictor=predictor)
    qtbot.addWidget(w)
    viewer.layers.selection.active = w.points_layer
    return viewer, lab, w


def test_the_dock_edits_a_label_with_clicks_and_commits_it_under_its_id(make_napari_viewer, qtbot,
                                                                        default_predictor):
    from test_widget import click, settle

    img, disc, other = disc_scene()
    labels = np.zeros((H, W), np.int32)
    labels[ROUGH["dilated"](disc)] = 5
    labels[other] = 2
    before = labels.copy()
    viewer, lab, w = edit_viewer(make_napari_viewer, qtbot, img, labels.copy(), default_predictor)
    settle(qtbot, w)
    w.edit_panel.label_id.value = 5
    w.edit_panel.button.click()
    assert w.labels_combo.value is lab  # the commit goes back into that layer
    assert w.session.state().edit.label_id == 5 and "editing object 5" in w.status
    assert np.array_equal(w.preview_layer.data > 0, before == 5)  # shown as the current object
    mask = w.session.mask()
    clicked = np.zeros(disc.shape, bool)
    for _ in range(2):  # the protocol's clicks, through the clicks layer
        c = next_click(disc, mask, clicked=clicked)
        clicked[c.row, c.col] = True
        click(w, (c.row, c.col), positive=c.positive)
        settle(qtbot, w)
        mask = w.session.mask()
    assert w.session.proposals() is None and iou(mask, disc) >= 0.85
    assert w.commit() == 5 and "committed object 5" in w.status
    assert iou(lab.data == 5, disc) >= 0.85
    assert not lab.data[(before == 5) & ~mask].any()  # removed pixels: 0
    assert np.array_equal(lab.data == 2, before == 2)
    lab.undo()  # one napari undo step takes the whole commit back
    assert np.array_equal(lab.data, before)
    w.edit_panel.label_id.value = 8
    w.edit_panel.button.click()
    assert "cannot edit: label 8 is not in the labels" in w.status


def test_alt_click_picks_the_label_under_the_mouse(make_napari_viewer, qtbot):
    from test_widget import settle

    img = np.zeros((40, 60), np.float32)
    img[5:30, 5:35] = 1.0
    labels = np.zeros((40, 60), np.int32)
    labels[8:34, 8:40] = 3
    viewer, lab, w = edit_viewer(make_napari_viewer, qtbot, img, labels, FakePredictor())
    settle(qtbot, w)

    class Press:  # what napari's mouse press gives the clicks layer's callbacks
        modifiers = ("Alt",)
        button = 1

    w.overlays._on_points_press(w.points_layer, Press())
    w.points_layer.add(np.array([20.0, 20.0]))  # napari adds the point on release
    assert len(w.points_layer.data) == 0 and w.session.clicks() == ()  # not a click
    assert w.session.state().edit.label_id == 3 and w.labels_combo.value is lab
    assert int(w.edit_panel.label_id.value) == 3
    w.overlays._on_points_press(w.points_layer, Press())
    w.points_layer.add(np.array([2.0, 50.0]))  # no label there
    assert "no label there" in w.status and w.session.state().edit.label_id == 3
    w.points_layer.add(np.array([31.0, 37.0]))  # a plain click now refines the label
    settle(qtbot, w)
    assert len(w.session.clicks()) == 1 and not w.session.mask()[33, 39]


def test_the_dock_edits_a_label_on_a_slice_of_a_volume_then_propagates(make_napari_viewer, qtbot):
    from test_widget import click, settle

    vol, ball = ball_stack()
    rough = np.stack([ndi.binary_dilation(b, iterations=3) if b.any() else b for b in ball])
    labels = np.zeros(vol.shape, np.int32)
    labels[rough] = 9
    labels[:, 0:3, 0:3] = 1
    viewer, lab, w = edit_viewer(make_napari_viewer, qtbot, vol, labels.copy(), FakePredictor())
    viewer.dims.set_current_step(0, 10)
    settle(qtbot, w)
    w.labels_combo.value = lab
    assert w.edit_panel.edit(9)
    assert w.session.current_key == (10,) and np.array_equal(w.session.mask(), rough[10])
    assert np.array_equal(w.preview_layer.data[10] > 0, rough[10]) and not w.preview_layer.data[9].any()
    click(w, (10, 20, 20))
    settle(qtbot, w)
    assert np.array_equal(w.session.mask(), ball[10])
    w.min_quality.value, w.max_area_change.value, w.min_overlap.value = -1.0, 100.0, 0.0
    w.propagate()
    qtbot.waitUntil(lambda: w.is_idle and "propagated object 9" in w.status, timeout=60_000)
    assert "to 12 more slice(s)" in w.status  # 4..16; it stops where the ball is 1 px (3, 17)
    assert all(np.array_equal(lab.data[z] == 9, ball[z]) for z in range(4, 17))  # replaced, slice by slice
    assert all(np.array_equal(lab.data[z] == 9, rough[z]) for z in (0, 1, 2, 3, 17, 18, 19, 20))  # not reached
    assert (lab.data[:, 0:3, 0:3] == 1).all()

"""Autosave of the labels layers (issue 37: nothing committed is lost to a crash).

``napari_ois.autosave`` alone (atomic writes, round trips, clear messages), then the dock's
"autosave labels to" field with a real viewer: a commit and a propagation are on disk as
soon as they are in the layer, and a new viewer on the same image gets them back.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_ois.autosave import AutosaveError, load_labels, save_labels


# --------------------------------------------------------------------------- the module
@pytest.mark.parametrize("shape,dtype", [((48, 64), np.int32), ((5, 20, 30), np.uint16), ((3, 4, 9, 9), np.int64)])
def test_round_trip_keeps_values_shape_and_dtype(tmp_path, shape, dtype):
    labels = np.zeros(shape, dtype)
    labels[..., 2:6, 3:8] = 7
    labels[..., 0, 0] = 300 if dtype != np.uint8 else 3
    path = save_labels(tmp_path / "labels.tif", labels)
    back = load_labels(path, shape=shape)
    assert back.dtype == dtype and np.array_equal(back, labels)
    assert load_labels(str(path)).shape == shape  # no shape asked: any shape


def test_a_boolean_mask_is_saved_as_labels(tmp_path):
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    back = load_labels(save_labels(tmp_path / "m.tif", mask))
    assert back.dtype == np.uint8 and np.array_equal(back, mask.astype(np.uint8))


def test_the_write_is_atomic_through_a_temporary_file_in_the_same_folder(tmp_path, monkeypatch):
    path = tmp_path / "labels.tif"
    old = np.full((8, 8), 3, np.int32)
    save_labels(path, old)
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((os.path.dirname(os.path.abspath(src)), os.path.basename(src), os.fspath(dst)))
        assert load_labels(src).max() == 9  # the new data is complete before it replaces the old
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_labels(path, np.full((8, 8), 9, np.int32))
    (folder, name, dst), = seen
    assert folder == str(tmp_path) and name != "labels.tif" and dst == str(path)
    assert load_labels(path).max() == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    import tifffile

    path = tmp_path / "labels.tif"
    old = np.full((8, 8), 3, np.int32)
    save_labels(path, old)
    mode = path.stat().st_mode

    def crash(file, *a, **kw):  # a crash half-way through the write
        with open(file, "wb") as fh:
            fh.write(b"II*\x00 half a tiff")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", crash)
    with pytest.raises(AutosaveError, match="labels.tif: cannot write it .No space left on device"):
        save_labels(path, np.full((8, 8), 9, np.int32))
    assert np.array_equal(load_labels(path), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]
    assert path.stat().st_mode == mode


def test_messages_name_the_file_and_say_what_is_wrong(tmp_path):
    path = save_labels(tmp_path / "other.tif", np.ones((30, 40), np.int32))
    with pytest.raises(AutosaveError) as err:
        load_labels(path, shape=(48, 64))
    msg = str(err.value)
    assert "other.tif" in msg and "(30, 40)" in msg and "(48, 64)" in msg and "another image" in msg
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    with pytest.raises(AutosaveError, match="notes.tif: not a readable TIFF"):
        load_labels(bad)
    with pytest.raises(AutosaveError, match="missing.tif: no such file"):
        load_labels(tmp_path / "missing.tif")
    with pytest.raises(AutosaveError, match="whole numbers"):
        save_labels(tmp_path / "f.tif", np.zeros((4, 4), np.float32))
    import tifffile

    tifffile.imwrite(tmp_path / "float.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(AutosaveError, match="float.tif: holds float32 values"):
        load_labels(tmp_path / "float.tif")
    with pytest.raises(AutosaveError, match="does not exist"):
        save_labels(tmp_path / "no" / "such" / "folder.tif", np.zeros((4, 4), np.int32))


# --------------------------------------------------------------------------- the dock
pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_ois import OISPredictor  # noqa: E402

from test_session import FakePredictor, ball_stack  # noqa: E402
from test_widget import T, click, make, settle  # noqa: E402


def turn_on(widget, path):
    panel = widget.autosave_panel
    panel.path.value = str(path)
    panel.enabled.value = True
    return panel


def test_a_commit_is_on_disk_at_once_and_comes_back_in_a_new_viewer(make_napari_viewer, qtbot, tiny_model,
                                                                     tmp_path):
    path = tmp_path / "img-labels.tif"
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=OISPredictor(tiny_model, device="cpu"))
    turn_on(w, path)
    target = w.labels_layer
    assert target is not None and target.name == "img objects"  # made now, for the file
    assert path.is_file() and load_labels(path).max() == 0 and "saved to" in w.status
    click(w, (20, 25))
    settle(qtbot, w)
    w.select_proposal(int(np.argmax(w.session.proposals().masks.sum(axis=(1, 2)))))
    assert w.commit() == 1
    saved = load_labels(path, shape=(48, 64))
    assert saved.max() == 1 and np.array_equal(saved, target.data)  # no wait, no other step

    # "the program crashed": a new viewer on the same image, the same file picked again
    viewer2, layer2, w2 = make(make_napari_viewer, qtbot, predictor=OISPredictor(tiny_model, device="cpu"))
    assert w2.labels_layer is None and not w2.autosave_panel.enabled.value
    turn_on(w2, path)
    back = w2.labels_layer
    assert back is not None and back in viewer2.layers
    assert np.array_equal(back.data, saved) and "loaded 1 objects" in w2.status
    click(w2, (20, 52))  # the next object gets the next id and joins the file
    settle(qtbot, w2)
    w2.select_proposal(int(np.argmax(w2.session.proposals().masks.sum(axis=(1, 2)))))
    assert w2.commit() == 2
    assert np.array_equal(load_labels(path), back.data) and load_labels(path).max() == 2


def test_a_propagation_is_saved_and_each_layer_keeps_its_own_file(make_napari_viewer, qtbot, tmp_path):
    vol, ball = ball_stack()
    viewer, layer, w = make(make_napari_viewer, qtbot, image=vol, predictor=FakePredictor())
    panel = turn_on(w, tmp_path / "ball.tif")
    viewer.dims.set_current_step(0, 10)
    qtbot.waitUntil(lambda: w.session.current_key == (10,), timeout=T)
    click(w, (10, 20, 20))
    settle(qtbot, w)
    w.propagate()  # commits slice 10, then writes the slices above and below
    qtbot.waitUntil(lambda: w.is_idle and "propagated" in w.status, timeout=T)
    saved = load_labels(tmp_path / "ball.tif", shape=vol.shape)
    assert len({z for z in range(21) if saved[z].any()}) == 13
    assert np.array_equal(saved, w.labels_layer.data)

    # another image: its labels layer has no file yet, the field says so; back: the file again
    first_labels = w.labels_layer
    viewer.add_image(np.zeros((21, 40, 40), np.float32), name="other")
    w.image_combo.value = viewer.layers["other"]
    qtbot.waitUntil(lambda: w.image_layer is viewer.layers["other"], timeout=T)
    assert not panel.enabled.value and panel.file_of(w.labels_combo.value) is None
    w.image_combo.value = layer
    qtbot.waitUntil(lambda: w.image_layer is layer, timeout=T)
    assert w.labels_layer is first_labels and panel.enabled.value
    assert str(panel.path.value) == str(tmp_path / "ball.tif")


def test_a_file_of_another_shape_is_a_message_and_is_left_alone(make_napari_viewer, qtbot, tmp_path):
    other = save_labels(tmp_path / "other.tif", np.full((30, 40), 4, np.int32))
    before = other.read_bytes()
    viewer, layer, w = make(make_napari_viewer, qtbot, predictor=FakePredictor())
    turn_on(w, other)
    assert not w.autosave_panel.enabled.value  # switched off again: nothing will overwrite it
    assert "(30, 40)" in w.status and "(48, 64)" in w.status and w.messages[-1][0] == "error"
    assert w.labels_layer is None or w.labels_layer.data.max() == 0
    assert other.read_bytes() == before

    # a layer that already has labels is not overwritten by a file picked for it
    mine = np.zeros((48, 64), np.int32)
    mine[5:9, 5:9] = 3
    user = viewer.add_labels(mine.copy(), name="mine")
    w.labels_combo.value = user
    kept = save_labels(tmp_path / "kept.tif", np.full((48, 64), 8, np.int32))
    turn_on(w, kept)
    assert np.array_equal(user.data, mine) and "was not loaded" in w.status
    assert load_labels(kept).max() == 8  # until the next commit replaces it

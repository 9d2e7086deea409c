"""A folder of images (issue 34, item 5): ``napari_ois.annotate`` alone (the files, save,
reopen, resume, the count, the command), then the dock's folder section with a real viewer
(next / previous, every commit on disk at once, a new viewer resumes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_ois.annotate import STATE_FILE, AnnotateError, AnnotationFolder, list_images
from napari_ois.autosave import load_labels, save_labels
from napari_ois.cli import main as cli_main


def write_folder(folder, n=3):
    """``n`` RGB PNGs of 40 x 60 px, a bright rectangle in each, and files that are not images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.zeros((40, 60, 3), np.uint8)
        img[8:30, 10 + 5 * i:40 + 5 * i] = (230, 200, 80)
        Image.fromarray(img).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "sub").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "sub" / "deep.png")
    return folder


# --------------------------------------------------------------------------- the module
def test_the_folder_lists_its_images_and_names_their_labels_files(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    np.save(folder / "stack.npy", np.zeros((3, 10, 12), np.float32))
    f = AnnotationFolder(folder, tmp_path / "labels")
    assert [p.name for p in f.images] == ["img0.png", "img1.png", "img2.png", "stack.npy"]
    assert f.labels_path(1) == tmp_path / "labels" / "img1.tif"
    assert (tmp_path / "labels").is_dir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "img1.tif")  # the same stem twice
    f = AnnotationFolder(folder, tmp_path / "labels")
    assert f.label_names[1:3] == ["img1.png.tif", "img1.tif.tif"]
    assert AnnotationFolder(folder).out == folder / "labels"  # the default labels folder
    assert "labels" not in [p.name for p in list_images(folder)]


def test_bad_folders_are_clear_messages(tmp_path):
    with pytest.raises(AnnotateError, match="no images"):
        AnnotationFolder(tmp_path)
    folder = write_folder(tmp_path / "imgs")
    with pytest.raises(AnnotateError, match="another folder than the images"):
        AnnotationFolder(folder, folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AnnotateError, match="is a file"):
        AnnotationFolder(folder, tmp_path / "file")
    with pytest.raises(AnnotateError, match="not a folder"):
        AnnotationFolder(tmp_path / "missing")


def test_save_reopen_resume_and_count(tmp_path):
    folder, out = write_folder(tmp_path / "imgs"), tmp_path / "labels"
    f = AnnotationFolder(folder, out)
    assert f.index == 0 and f.n_annotated == 0
    assert f.progress() == "image 1 of 3 (img0.png) · 0 of 3 annotated"
    image, labels = f.load()
    assert image.shape == (40, 60, 3) and labels is None
    lab = np.zeros((40, 60), np.int32)
    lab[10:20, 12:30] = 1
    f.save(lab)
    assert f.is_annotated(0) and f.n_annotated == 1
    # reopened without a record of the last image: the first image without labels
    assert AnnotationFolder(folder, out).index == 1
    f.go(2)
    f.previous()
    assert f.index == 1
    f.next(), f.next(), f.next()
    assert f.index == 2  # clamped at the end
    assert json.loads((out / STATE_FILE).read_text()) == {"last": "img2.png"}
    g = AnnotationFolder(folder, out)  # reopened: the image opened last
    assert g.index == 2 and g.n_annotated == 1
    image, back = g.load(0)
    assert np.array_equal(back, lab)
    save_labels(out / "img1.tif", np.zeros((7, 7), np.int32))  # labels of another image
    with pytest.raises(AnnotateError, match="belongs to another image"):
        g.load(1)
    (out / STATE_FILE).write_text("{not json")  # a broken record: the first without labels
    assert AnnotationFolder(folder, out).index == 2
    assert AnnotationFolder(folder, out, start="img1.png").index == 1


def test_the_command_lists_the_progress_and_needs_a_display(tmp_path, monkeypatch, capsys):
    folder, out = write_folder(tmp_path / "imgs"), tmp_path / "labels"
    assert cli_main(["annotate", str(folder), "--out", str(out), "--list"]) == 0
    text = capsys.readouterr().out
    assert "0 of 3 images annotated" in text and "img0.png  <- resumes here" in text
    assert not out.exists()  # listing creates nothing
    out.mkdir()
    save_labels(out / "img0.tif", np.ones((40, 60), np.uint8))
    assert cli_main(["annotate", str(folder), "--out", str(out), "--list"]) == 0
    text = capsys.readouterr().out
    assert "1 of 3 images annotated" in text and "img1.png  <- resumes here" in text
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert cli_main(["annotate", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "napari-ois annotate: error: no display" in err and "--list" in err
    assert cli_main(["annotate", str(tmp_path / "nope"), "--list"]) == 2
    assert "not a folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real viewer
def folder_widget(make_napari_viewer, qtbot, folder, out):
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_ois._widget import OISWidget
    from test_session import FakePredictor

    viewer = make_napari_viewer()
    w = OISWidget(viewer, predictor=FakePredictor())
    qtbot.addWidget(w)
    assert w.folder_panel.open(folder, out)
    return viewer, w


def test_the_folder_section_saves_every_commit_and_a_new_viewer_resumes(make_napari_viewer, qtbot, tmp_path):
    from test_widget import click, settle

    folder, out = write_folder(tmp_path / "imgs"), tmp_path / "labels"
    viewer, w = folder_widget(make_napari_viewer, qtbot, folder, out)
    panel = w.folder_panel
    assert w.image_layer.name == "img0" and w.labels_layer is panel.labels_layer
    assert w.labels_combo.value is panel.labels_layer  # commits go to the image's labels layer
    assert "0 of 3 annotated" in panel.progress and not panel.previous_button.isEnabled()
    settle(qtbot, w)
    click(w, (15, 20))
    settle(qtbot, w)
    assert w.commit() == 1
    on_disk = load_labels(out / "img0.tif")  # saved at once
    assert on_disk.shape == (40, 60) and on_disk[15, 20] == 1 and on_disk[2, 2] == 0
    assert "1 of 3 annotated" in panel.progress
    assert panel.next()
    assert w.image_layer.name == "img1" and not panel.labels_layer.data.any()
    assert [ly.name for ly in viewer.layers if ly.name.startswith("img")] == ["img1", "img1 objects"]
    settle(qtbot, w)
    click(w, (20, 30))  # clicked, not committed: dropped by Previous
    settle(qtbot, w)
    assert panel.previous()
    assert w.image_layer.name == "img0" and np.array_equal(panel.labels_layer.data, on_disk)
    assert "uncommitted clicks" in w.status
    assert not (out / "img1.tif").exists()  # nothing committed there: not annotated
    panel.labels_layer.data[30:35, 50:55] = 2  # a hand edit is saved when the image is left
    assert panel.next() and load_labels(out / "img0.tif")[32, 52] == 2
    settle(qtbot, w)
    w.close_widget()
    viewer.close()

    viewer2, w2 = folder_widget(make_napari_viewer, qtbot, folder, out)  # "reopening napari"
    assert w2.image_layer.name == "img1"  # the image opened last
    assert "1 of 3 annotated" in w2.folder_panel.progress
    assert w2.folder_panel.previous()
    assert w2.folder_panel.labels_layer.data[15, 20] == 1 and w2.folder_panel.labels_layer.data[32, 52] == 2
    settle(qtbot, w2)


def test_the_command_opens_napari_on_the_folder(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    napari = pytest.importorskip("napari")
    from napari_ois.annotate import open_in_napari
    from test_session import FakePredictor
    from test_widget import settle

    folder, out = write_folder(tmp_path / "imgs"), tmp_path / "labels"
    save_labels(out.mkdir() or out / "img0.tif", np.ones((40, 60), np.uint8))
    monkeypatch.setattr(napari, "Viewer", lambda **kw: make_napari_viewer(**kw))
    viewer, w = open_in_napari(AnnotationFolder(folder, out), run=False)
    w.set_predictor(FakePredictor(), "fake")
    assert w.image_layer.name == "img1"  # the first image without labels
    assert w.folder_panel.progress == "image 2 of 3 (img1.png) · 1 of 3 annotated"
    settle(qtbot, w)

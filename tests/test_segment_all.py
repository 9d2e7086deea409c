"""segment_all (the engine), its instance scores and baseline, and the segment-all command
with its Dask folder runner (a real LocalCluster)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_ois.evaluation.instances import (
    annotated_recall, instance_scores, iou_matrix, otsu_watershed, summarize_scores,
)
from napari_ois.segment_all import (
    AutoSegmenter, Candidate, SegmentAllCancelled, blob_seeds, mask_nms, paint_labels,
)


def discs(shape=(160, 192), centres=((40, 40), (40, 120), (110, 60), (115, 150), (80, 100)),
          radius=11, bright=True, dtype=np.uint8, seed=0):
    """Separated discs (objects) on a plain background with a little noise; (image, labels)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (r, c) in enumerate(centres, start=1):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius ** 2] = k
    fg, bg = (210.0, 30.0) if bright else (40.0, 200.0)
    img = np.where(labels > 0, fg, bg) + rng.normal(0, 6, shape)
    if dtype == np.uint16:
        img = img * 40 + 500
    info = np.iinfo(dtype)
    return np.clip(img, info.min, info.max).astype(dtype), labels


@pytest.fixture(scope="module")
def segmenter():
    return AutoSegmenter(model="default", device="cpu")


# --------------------------------------------------------------------------- the engine
def test_segment_all_finds_each_disc_once(segmenter):
    img, gt = discs()
    labels, info = segmenter(img, return_info=True)
    assert labels.shape == gt.shape and labels.dtype == np.int32
    assert sorted(np.unique(labels)) == list(range(labels.max() + 1))  # 0, 1..N
    s = instance_scores(gt, labels)
    assert s["f1"] == 1.0, s  # each disc found once, nothing else
    assert s["mean_matched_iou"] > 0.8
    assert info.polarity == "bright" and 12 <= info.object_size <= 40
    iou, _, _ = iou_matrix(gt, labels)
    assert ((iou > 0.5).sum(1) == 1).all()


def test_segment_all_dark_16bit_discs_with_a_given_size():
    import napari_ois

    img, gt = discs(bright=False, dtype=np.uint16, centres=((30, 30), (30, 100), (100, 40), (110, 130)))
    labels = napari_ois.segment_all(img, object_size=22)
    assert instance_scores(gt, labels)["f1"] == 1.0


def test_segment_all_on_an_empty_image_and_a_tiny_one(segmenter):
    assert segmenter(np.zeros((40, 50), np.uint8)).max() == 0
    img, gt = discs(shape=(30, 30), centres=((15, 15),), radius=6)
    labels = segmenter(img)
    assert labels.shape == (30, 30)
    assert instance_scores(gt, labels)["recall"] == 1.0


def test_segment_all_cancel_and_progress(segmenter):
    img, _ = discs()
    calls = []
    with pytest.raises(SegmentAllCancelled):
        segmenter(img, progress=lambda d, t: calls.append((d, t)), should_stop=lambda: len(calls) >= 1)
    seen = []
    segmenter(img, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(d <= t for d, t in seen)


class _Recorder:
    """A lazy 2D array (neither numpy nor dask) that records the size of each read."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads = []

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(int(np.prod(out.shape[:2])))
        return out


def test_lazy_inputs_give_the_numpy_labels(segmenter):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    img, gt = discs()
    ref = segmenter(img)
    assert instance_scores(gt, ref)["f1"] == 1.0
    np.testing.assert_array_equal(segmenter(da.from_array(img, chunks=64)), ref)
    z = zarr.zeros(img.shape, chunks=(64, 64), dtype=img.dtype)
    z[:] = img
    np.testing.assert_array_equal(segmenter(z), ref)


def test_a_lazy_image_is_read_tile_by_tile_never_whole(segmenter):
    """4 x 4 tiles: the largest single read is one tile with its halo, and the labels are the
    numpy image's (the same windows, the same intensities)."""
    centres = [(r, c) for r in range(64, 512, 128) for c in range(64, 512, 128)]
    img, gt = discs(shape=(512, 512), centres=centres, radius=8, seed=1)
    seg = AutoSegmenter(model=segmenter.base_model, object_size=16, polarity="bright", tile_size=128,
                        min_contrast=3.0)
    ref = seg(img)
    assert instance_scores(gt, ref)["f1"] == 1.0
    lazy = _Recorder(img)
    labels, info = seg(lazy, return_info=True)
    np.testing.assert_array_equal(labels, ref)
    assert info.tiles == 16 and len(lazy.reads) > 16
    # a tile (128 px) and its halo (a 47 px window + 2 object sizes) on each side: 31 %
    assert max(lazy.reads) <= (128 + 2 * (47 + 32)) ** 2 < img.size / 3, max(lazy.reads)


def test_a_pyramid_is_segmented_at_its_largest_level(segmenter):
    img, gt = discs(bright=False, dtype=np.uint16, centres=((30, 30), (30, 100), (100, 40), (110, 130)))
    seg = AutoSegmenter(model=segmenter.base_model, object_size=22)
    ref = seg(img)
    pyramid = [_Recorder(img), _Recorder(img[::2, ::2]), _Recorder(img[::4, ::4])]
    labels = seg(pyramid)
    assert labels.shape == img.shape
    np.testing.assert_array_equal(labels, ref)
    assert instance_scores(gt, labels)["f1"] == 1.0
    assert pyramid[0].reads and not pyramid[1].reads and not pyramid[2].reads


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="object_size"):
        AutoSegmenter(model="default", object_size=-3)
    with pytest.raises(ValueError, match="polarity"):
        AutoSegmenter(model="default", polarity="purple")


def test_blob_seeds_polarity():
    img, _ = discs()
    grey = img.astype(np.float32) / 255
    bright = blob_seeds(grey, 22, polarity="bright")
    assert len(bright) >= 5 and (bright[:, 2] == 1).all()
    near = [np.hypot(*(bright[:, :2] - c).T).min() for c in ((40, 40), (40, 120), (110, 60))]
    assert max(near) <= 3


def _cand(r0, c0, mask, q=0.8):
    return Candidate(r0, c0, np.asarray(mask, bool), q, 1.0, (r0, c0))


def test_nms_keeps_the_best_duplicate_and_nested_objects():
    big = np.ones((20, 20), bool)
    small = np.ones((6, 6), bool)
    dup = np.ones((19, 20), bool)
    kept = mask_nms([_cand(0, 0, big, 0.7), _cand(0, 0, dup, 0.9), _cand(5, 5, small, 0.6)], 0.5)
    assert [c.score for c in kept] == [0.9, 0.6]  # the duplicate 'big' went, the nested one stays
    labels = paint_labels(kept, (30, 30))
    assert labels.max() == 2 and (labels[5:11, 5:11] > 0).all()
    assert len(np.unique(labels[5:11, 5:11])) == 1 and labels[0, 0] != labels[5, 5]


def test_paint_drops_a_group_mask_covered_by_its_members():
    group = np.zeros((10, 20), bool)
    group[1:9, 1:19] = True
    a = np.ones((8, 8), bool)
    kept = [_cand(0, 0, group), _cand(1, 1, a), _cand(1, 11, a)]
    labels = paint_labels(kept, (10, 20), min_visible=0.5)
    assert labels.max() == 2  # the group mask kept too little of itself


# --------------------------------------------------------------------------- scoring
def test_instance_scores_on_hand_made_maps():
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1  # 16 px
    gt[0:4, 6:10] = 2  # 16 px
    gt[6:10, 0:4] = 7  # ids need not be 1..N
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:3] = 5  # IoU 12/16 = 0.75 with 1: a match
    pred[0:2, 6:10] = 3  # IoU 8/16 = 0.5 with 2: not above 0.5
    pred[8:10, 8:10] = 9  # nothing there
    s = instance_scores(gt, pred)
    assert (s["tp"], s["fp"], s["fn"], s["n_gt"], s["n_pred"]) == (1, 2, 2, 3, 3)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(1 / 3) and s["mean_matched_iou"] == pytest.approx(0.75)
    assert instance_scores(gt, pred, iou_threshold=0.4)["tp"] == 2
    perfect = instance_scores(gt, gt)
    assert perfect["f1"] == perfect["precision"] == perfect["recall"] == 1.0
    empty = instance_scores(np.zeros((4, 4), int), np.zeros((4, 4), int))
    assert empty["f1"] == 1.0 and empty["tp"] == 0
    only_pred = instance_scores(np.zeros((4, 4), int), np.ones((4, 4), int))
    assert (only_pred["precision"], only_pred["recall"], only_pred["f1"]) == (0.0, 1.0, 0.0)


def test_matching_is_one_to_one():
    gt = np.zeros((4, 8), int)
    gt[:, 0:4] = 1
    gt[:, 4:8] = 2
    pred = np.ones((4, 8), int)  # one mask over both: IoU 0.5 with each, matches neither
    s = instance_scores(gt, pred, iou_threshold=0.3)
    assert s["tp"] == 1 and s["fn"] == 1  # at a low threshold still one pair only


def test_annotated_recall_and_summary():
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:4] = 1
    pred[6:10, 6:10] = 2
    a = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True
    b = np.zeros((10, 10), bool)
    b[5:7, 0:2] = True
    r = annotated_recall([a, b], pred)
    assert (r["tp"], r["n_gt"], r["recall"]) == (1, 2, 0.5) and r["best_ious"] == [1.0, 0.0]
    s1 = {"tp": 2, "n_gt": 4, "n_pred": 2, "f1": 2 / 3}
    s2 = {"tp": 1, "n_gt": 1, "n_pred": 3, "f1": 0.5}
    tot = summarize_scores([s1, s2])
    assert tot["precision"] == 0.6 and tot["recall"] == 0.6 and tot["f1"] == pytest.approx(0.6)


def test_otsu_watershed_baseline_on_discs():
    img, gt = discs()
    assert instance_scores(gt, otsu_watershed(img))["f1"] == 1.0
    dark, gt2 = discs(bright=False, dtype=np.uint16)
    assert instance_scores(gt2, otsu_watershed(dark, polarity="dark"))["f1"] == 1.0
    touching = np.zeros((60, 100), np.uint8)
    rr, cc = np.mgrid[:60, :100]
    truth = np.zeros((60, 100), int)
    for k, c in enumerate((35, 62), start=1):
        truth[(rr - 30) ** 2 + (cc - c) ** 2 <= 15 ** 2] = k
    touching[truth > 0] = 200
    assert otsu_watershed(touching).max() == 2  # the watershed splits two touching discs


# --------------------------------------------------------------------------- command line
OPTIONS = {"object_size": 20.0, "polarity": "bright"}


def _folder(tmp_path: Path, n: int = 4) -> Path:
    import imageio.v3 as iio

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        img, _ = discs(shape=(80, 90), centres=((25, 25), (50, 60)), radius=9, seed=i)
        iio.imwrite(folder / f"img{i}.png", img)
    return folder


def test_folder_mode_resumes_on_a_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    from napari_ois.segment_all_cli import output_path, run_folder, write_labels

    folder = _folder(tmp_path, 4)
    (folder / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "labels"
    images = sorted(folder.glob("img*.png"))
    # a run stopped halfway: two images already have their labels
    for p in images[:2]:
        write_labels(np.full((80, 90), 7, np.int32), output_path(p, out))
    old = {p: output_path(p, out).stat().st_mtime_ns for p in images[:2]}
    time.sleep(0.05)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        summary = run_folder(folder, out, options=OPTIONS, client=client, progress=False)
    assert sorted(summary["skipped"]) == [str(p) for p in images[:2]]
    assert sorted(r["image"] for r in summary["written"]) == [str(p) for p in images[2:]]
    assert [Path(r["image"]).name for r in summary["failed"]] == ["broken.png"]
    assert "could not be read" in summary["failed"][0]["message"]
    for p in images[:2]:  # not rewritten
        assert output_path(p, out).stat().st_mtime_ns == old[p]
        assert (tifffile.imread(output_path(p, out)) == 7).all()
    for p in images[2:]:
        labels = tifffile.imread(output_path(p, out))
        assert labels.shape == (80, 90) and labels.max() == 2 and labels.dtype == np.uint16
    assert not output_path(folder / "broken.png", out).exists()
    assert not [p for p in out.iterdir() if "partial" in p.name]


class _GATED:
    """The state of ``_gated_segment_file`` (module level: Dask pickles tasks by reference)."""
    gate = threading.Event()
    started: list = []
    finished: list = []
    segment_file = None  # the real one, set by the test


def _gated_segment_file(*args, **kwargs):
    _GATED.started.append(args[0])
    if len(_GATED.started) > 1:
        _GATED.gate.wait(60)
    try:
        return _GATED.segment_file(*args, **kwargs)
    finally:
        _GATED.finished.append(args[0])


def test_folder_mode_stopped_by_an_interrupt_then_resumed(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    import napari_ois.segment_all_cli as cli_mod
    from napari_ois.segment_all_cli import output_path, run_folder

    folder = _folder(tmp_path, 4)
    out = tmp_path / "labels"
    images = sorted(folder.glob("*.png"))
    # images after the first wait for the interrupt (the worker is in this process), so the
    # run cannot finish them all before Ctrl-C lands
    gate, started, finished = threading.Event(), [], []
    monkeypatch.setattr(_GATED, "gate", gate)
    monkeypatch.setattr(_GATED, "started", started)
    monkeypatch.setattr(_GATED, "finished", finished)
    monkeypatch.setattr(_GATED, "segment_file", cli_mod.segment_file)
    monkeypatch.setattr(cli_mod, "segment_file", _gated_segment_file)

    def stop(result):
        raise KeyboardInterrupt  # Ctrl-C after the first image

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with pytest.raises(KeyboardInterrupt):
            run_folder(folder, out, options=OPTIONS, client=client, progress=False, on_result=stop)
        gate.set()  # a task already running may still finish (and write a whole file)
        deadline = time.monotonic() + 60
        while len(finished) < len(started) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = {p: output_path(p, out).stat().st_mtime_ns for p in images if output_path(p, out).exists()}
        assert 1 <= len(first) < len(images)
        summary = run_folder(folder, out, options=OPTIONS, client=client, progress=False)
    assert len(summary["skipped"]) == len(first)
    assert len(summary["written"]) == len(images) - len(first)
    for p in images:
        assert tifffile.imread(output_path(p, out)).max() == 2
    for p, mtime in first.items():
        assert output_path(p, out).stat().st_mtime_ns == mtime


def test_cli_segment_all_one_image_end_to_end(tmp_path, capsys):
    import imageio.v3 as iio

    from napari_ois.cli import main

    img, gt = discs(shape=(70, 80), centres=((25, 25), (45, 55)), radius=9)
    iio.imwrite(tmp_path / "cells.png", img)
    out = tmp_path / "res" / "cells_labels.tif"
    rc = main(["segment-all", str(tmp_path / "cells.png"), "--out", str(out), "--object-size", "20"])
    assert rc == 0
    labels = tifffile.imread(out)
    assert instance_scores(gt, labels)["f1"] == 1.0
    assert "2 objects" in capsys.readouterr().out
    # a folder as --out receives <stem>.tif
    assert main(["segment-all", str(tmp_path / "cells.png"), "--out", str(tmp_path / "dir"),
                 "--object-size", "20", "--polarity", "bright"]) == 0
    assert (tmp_path / "dir" / "cells.tif").exists()


def test_cli_segment_all_reads_a_zarr_store_lazily(tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    from napari_ois.cli import main
    from napari_ois.segment_all_cli import is_zarr, read_zarr

    img, gt = discs(shape=(70, 80), centres=((25, 25), (45, 55)), radius=9)
    z = zarr.open_array(str(tmp_path / "cells.zarr"), mode="w", shape=(1,) + img.shape, chunks=(1, 32, 32),
                        dtype=img.dtype)
    z[0] = img
    assert is_zarr(tmp_path / "cells.zarr") and not isinstance(read_zarr(tmp_path / "cells.zarr"), np.ndarray)
    assert main(["segment-all", str(tmp_path / "cells.zarr"), "--out", str(tmp_path / "res"),
                 "--object-size", "20"]) == 0
    assert instance_scores(gt, tifffile.imread(tmp_path / "res" / "cells.tif"))["f1"] == 1.0
    assert "2 objects" in capsys.readouterr().out
    # an OME-Zarr style pyramid: the largest level is segmented
    group = zarr.open_group(str(tmp_path / "pyr.zarr"), mode="w")
    for k, level in enumerate((img, img[::2, ::2])):
        group.create_array(str(k), shape=level.shape, chunks=(32, 32), dtype=level.dtype)[:] = level
    group.attrs["multiscales"] = [{"datasets": [{"path": "0"}, {"path": "1"}]}]
    assert len(read_zarr(tmp_path / "pyr.zarr")) == 2
    assert main(["segment-all", str(tmp_path / "pyr.zarr"), "--out", str(tmp_path / "pyr.tif"),
                 "--object-size", "20"]) == 0
    labels = tifffile.imread(tmp_path / "pyr.tif")
    assert labels.shape == img.shape and instance_scores(gt, labels)["f1"] == 1.0


def test_cli_segment_all_errors_are_clear(tmp_path, capsys):
    from napari_ois.cli import main

    assert main(["segment-all", str(tmp_path / "nothing.png"), "--out", str(tmp_path / "o.tif")]) == 2
    assert "no such image or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["segment-all", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    img, _ = discs(shape=(40, 40), centres=((20, 20),), radius=8)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", img)
    assert main(["segment-all", str(tmp_path / "a.png"), "--out", str(tmp_path / "a.png")]) == 2
    assert "TIFF" in capsys.readouterr().err
    assert main(["segment-all", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "input folder" in capsys.readouterr().err

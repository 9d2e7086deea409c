"""Tests of the evaluation: the click simulator and the dataset readers (``napari_ois.data``),
metrics, baselines, runner, CLI (``napari_ois.evaluation``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from napari_ois.data.clicks import (LOGIT_THRESHOLD, Click, Clicker, binarize, first_click,
                                    next_click, padded_distance)
from napari_ois.evaluation.metrics import (iou, k_miou, miou_curve, noc, nof, pad_ious,
                                           summarize)
from napari_ois.evaluation.runner import evaluate, load_results, sat_latency, save_json

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _logits(mask, value=6.0):
    return np.where(mask, value, -value).astype(np.float32)


def _square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0:r0 + size, c0:c0 + size] = True
    return m


def _brute_padded_dt(mask):
    """Distance of each True pixel to the nearest False pixel of the 1-px padded mask."""
    p = np.pad(mask, 1)
    bg = np.argwhere(~p)
    out = np.zeros(mask.shape)
    for r, c in np.argwhere(mask):
        d = np.sqrt(((bg - (r + 1, c + 1)) ** 2).sum(1)).min()
        out[r, c] = d
    return out


# ------------------------------------------------------------------------ click simulator


def test_first_click_square_centre():
    gt = _square((40, 50), 10, 20, 21)
    click = first_click(gt)
    assert click == Click(20, 30, True)


def test_first_click_is_first_argmax_of_padded_dt():
    rng = np.random.default_rng(0)
    gt = np.zeros((24, 30), bool)
    gt[3:19, 4:27] = True
    gt[rng.random(gt.shape) < 0.08] = False  # holes make the maximum non-trivial
    dt = _brute_padded_dt(gt)
    np.testing.assert_allclose(padded_distance(gt), dt)
    click = first_click(gt)
    r, c = np.unravel_index(np.argmax(dt), dt.shape)  # first maximum, row-major
    assert (click.row, click.col, click.positive) == (r, c, True)


def test_rectangle_tie_breaking_is_first_row_major_maximum():
    gt = np.zeros((40, 50), bool)
    gt[10:30, 5:45] = True  # 20 x 40: the maximum (10) is a plateau
    click = first_click(gt)
    assert (click.row, click.col) == (19, 14)
    assert padded_distance(gt)[19, 14] == padded_distance(gt).max() == 10


def test_image_border_counts_as_boundary():
    gt = np.ones((21, 21), bool)  # the whole image is the object
    click = first_click(gt)
    assert (click.row, click.col) == (10, 10)
    assert padded_distance(gt)[10, 10] == 11
    # object touching the left border: without padding the max would sit on column 0
    gt2 = np.zeros((30, 40), bool)
    gt2[:, :20] = True
    c2 = first_click(gt2)
    assert c2.col in (9, 10) and c2.row not in (0, 29)
    unpadded = distance_transform_edt(gt2)
    assert np.unravel_index(np.argmax(unpadded), gt2.shape)[1] == 0  # what padding avoids


def test_missed_region_gives_positive_click_at_its_dt_max():
    shape = (60, 80)
    a = _square(shape, 5, 5, 15)
    b = _square(shape, 30, 40, 21)
    gt = a | b
    click = next_click(gt, _logits(a))
    assert click == Click(40, 50, True)


def test_false_region_gives_negative_click():
    shape = (60, 80)
    gt = _square(shape, 5, 5, 15)
    extra = _square(shape, 30, 40, 11)
    click = next_click(gt, _logits(gt | extra))
    assert click == Click(35, 45, False)


def test_larger_error_region_wins_and_tie_goes_negative():
    shape = (60, 80)
    gt = _square(shape, 2, 2, 9) | _square(shape, 30, 2, 9)
    pred = _square(shape, 30, 2, 9) | _square(shape, 30, 40, 15)  # FN 9x9, FP 15x15
    assert next_click(gt, pred) == Click(37, 47, False)
    pred2 = _square(shape, 30, 2, 9) | _square(shape, 30, 40, 5)  # FN 9x9 beats FP 5x5
    assert next_click(gt, pred2) == Click(6, 6, True)
    pred3 = _square(shape, 30, 2, 9) | _square(shape, 30, 40, 9)  # equal maxima -> negative
    assert next_click(gt, pred3).positive is False


def test_ignore_pixels_never_clicked():
    gt = _square((41, 41), 5, 5, 31)
    ignore = np.zeros_like(gt)
    ignore[15:26, 15:26] = True  # the centre of the object is "ignore"
    c = first_click(gt, ignore)
    assert not ignore[c.row, c.col] and gt[c.row, c.col]
    # the ignore square counts as boundary: the click is as far as possible from it too
    dt = padded_distance(gt & ~ignore)
    assert dt[c.row, c.col] == dt.max()
    # an error only inside the ignore band is no error
    pred = gt & ~ignore
    assert next_click(gt, pred, ignore) is None
    # GrabCut-like band: ignore ring around the object, false positives only in the band
    band = np.zeros_like(gt)
    band[3:38, 3:38] = True
    band &= ~_square((41, 41), 7, 7, 27)
    pred_band = gt | band
    assert next_click(gt & ~band, pred_band, band) is None


def test_probability_threshold_049():
    assert binarize(np.array([np.log(0.495 / 0.505)]))[0]
    assert not binarize(np.array([np.log(0.485 / 0.515)]))[0]
    assert binarize(np.array([0.0]))[0]  # p = 0.5 counts as object
    assert LOGIT_THRESHOLD == pytest.approx(np.log(0.49 / 0.51))


def test_clicker_never_repeats_a_pixel():
    gt = _square((30, 30), 5, 5, 21)
    clicker = Clicker(gt)
    first = clicker.make_next_click(None)
    second = clicker.make_next_click(np.zeros_like(gt))  # a model that ignores clicks
    assert first.coords == (15, 15) and second.positive
    assert second.coords != first.coords
    assert clicker.points == [[15, 15], list(second.coords)] and clicker.labels == [1, 1]


def test_empty_object_gives_no_click():
    gt = np.zeros((10, 10), bool)
    assert first_click(gt) is None


# --------------------------------------------------------------------------------- metrics


def test_iou_with_ignore():
    gt = np.zeros((10, 10), bool)
    gt[:, :5] = True
    pred = np.zeros_like(gt)
    pred[:, :6] = True
    assert iou(pred, gt) == pytest.approx(50 / 60)
    ignore = np.zeros_like(gt)
    ignore[:, 5] = True
    assert iou(pred, gt, ignore) == 1.0
    assert iou(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_noc_nof_miou():
    seqs = [
        [0.5, 0.86, 0.91, 0.96],     # NoC85 2, NoC90 3, NoC95 4
        [0.92, 0.93],                # stops early; padded with 0.93 -> never 0.95
        [0.1] * 20,                  # never
    ]
    assert noc(seqs[0], 0.85) == 2 and noc(seqs[0], 0.90) == 3 and noc(seqs[0], 0.95) == 4
    assert noc(seqs[1], 0.95) == 20 and noc(seqs[2], 0.85, max_clicks=20) == 20
    assert noc([0.5] * 19 + [0.95], 0.95) == 20  # reached at the last click ...
    assert nof([[0.5] * 19 + [0.95]], 0.95) == 0  # ... is not a failure
    assert nof(seqs, 0.90) == 1 and nof(seqs, 0.95) == 2
    np.testing.assert_allclose(pad_ious([0.2, 0.4], 4), [0.2, 0.4, 0.4, 0.4])
    curve = miou_curve(seqs, 20)
    assert curve[0] == pytest.approx((0.5 + 0.92 + 0.1) / 3)
    assert curve[4] == pytest.approx((0.96 + 0.93 + 0.1) / 3)
    assert k_miou(seqs, 5) == pytest.approx(curve[4])
    s = summarize(seqs, 20)
    assert s["NoC@85"] == pytest.approx((2 + 1 + 20) / 3)
    assert s["NoC@90"] == pytest.approx((3 + 1 + 20) / 3)
    assert s["NoC@95"] == pytest.approx((4 + 20 + 20) / 3)
    assert s["NoF@90"] == 1 and s["NoF@95"] == 2
    assert s["1-mIoU"] == pytest.approx(curve[0]) and len(s["mIoU"]) == 20


# ----------------------------------------------------------------- fake models and runner


class _Out(SimpleNamespace):
    pass


class ScriptedModel:
    """IoU after click k is ``targets[k-1]`` exactly: predicts the first columns of a
    rectangular object (a subset of it, so IoU = predicted width / object width)."""

    name = "scripted"

    def __init__(self, gt, targets, first_alt=None):
        self.gt = gt
        cols = np.flatnonzero(gt.any(0))
        self.c0, self.width = cols[0], cols.size
        self.targets = list(targets)
        self.first_alt = first_alt  # (iou, score) of a second, lower-scored proposal
        self.calls = []

    def set_image(self, image, depth=None, contrast_limits=None):
        self.image_set = True

    def _mask(self, t):
        m = self.gt.copy()
        m[:, self.c0 + int(round(t * self.width)):] = False
        return m

    def predict(self, points, labels, prev_mask=None, multimask=True):
        self.calls.append((len(points), prev_mask is not None, multimask))
        k = len(points)
        t = self.targets[min(k, len(self.targets)) - 1]
        masks = [self._mask(t)]
        scores = [0.9]
        if multimask and self.first_alt is not None:
            masks.append(self._mask(self.first_alt[0]))
            scores.append(self.first_alt[1])
        masks = np.stack(masks)
        return _Out(masks=masks, scores=np.array(scores), logits=_logits(masks))


class OracleModel:
    """Reads the ground truth from the image (the test encodes it as 255/0)."""

    name = "oracle"

    def set_image(self, image, depth=None, contrast_limits=None):
        self.gt = np.asarray(image) > 127

    def predict(self, points, labels, prev_mask=None, multimask=True):
        m = self.gt[None]
        return _Out(masks=m, scores=np.ones(1), logits=_logits(m))


def test_runner_known_iou_sequence():
    gt = np.zeros((14, 104), bool)
    gt[2:12, 2:102] = True
    targets = [0.5, 0.8, 0.86, 0.91, 0.96] + [0.97] * 15
    model = ScriptedModel(gt, targets, first_alt=(0.7, 0.2))
    res = evaluate(model, [(np.zeros(gt.shape, np.uint8), gt, None, "obj")], max_clicks=20,
                   progress=False)
    obj = res["objects"][0]
    np.testing.assert_allclose(obj["ious"], targets)
    assert obj["NoC@85"] == 3 and obj["NoC@90"] == 4 and obj["NoC@95"] == 5
    s = res["summary"]
    assert s["NoC@90"] == 4 and s["NoF@95"] == 0 and s["1-mIoU"] == pytest.approx(0.5)
    assert s["5-mIoU"] == pytest.approx(0.96)
    # first click: multimask, top-scored taken; best-of-K recorded
    assert obj["first_click"]["top_iou"] == pytest.approx(0.5)
    assert obj["first_click"]["best_iou"] == pytest.approx(0.7)
    assert obj["first_click"]["pixels"] == [500, 700]  # each proposal's size (10 rows x 50, x 70)
    assert s["first_click_best_of_k_mIoU"] == pytest.approx(0.7)
    # call pattern: 1 warm-up, then clicks 1..20; multimask only on the first, prev_mask after
    calls = model.calls[1:]
    assert calls[0] == (1, False, True)
    assert all(c == (k + 1, True, False) for k, c in enumerate(calls) if k > 0)
    assert len(calls) == 20 and len(obj["click_seconds"]) == 20
    assert res["timing"]["num_embeddings"] == 1 and res["timing"]["spc_mean"] >= 0
    # every click is where the simulator puts it (positive: the missed right part)
    assert all(c[2] == 1 for c in obj["clicks"])


def test_runner_stop_iou_and_padding():
    gt = np.zeros((14, 104), bool)
    gt[2:12, 2:102] = True
    model = ScriptedModel(gt, [0.5, 0.96, 0.99])
    res = evaluate(model, [(np.zeros(gt.shape), gt, None, "o")], max_clicks=10,
                   progress=False, stop_iou=0.95)
    assert res["objects"][0]["ious"] == pytest.approx([0.5, 0.96])
    assert res["summary"]["mIoU"][-1] == pytest.approx(0.96)  # carried forward
    assert res["summary"]["NoC@95"] == 2


def test_oracle_gives_noc_one():
    rng = np.random.default_rng(1)
    samples = []
    for i in range(4):
        gt = np.zeros((40, 50), bool)
        r, c = rng.integers(5, 20, 2)
        gt[r:r + 15, c:c + 20] = True
        ignore = np.zeros_like(gt)
        ignore[r + 14, :] = True
        samples.append((gt.astype(np.uint8) * 255, gt, ignore, f"o{i}"))
    res = evaluate(OracleModel(), samples, max_clicks=20, progress=False)
    s = res["summary"]
    assert s["NoC@85"] == s["NoC@90"] == s["NoC@95"] == 1
    assert s["NoF@90"] == s["NoF@95"] == 0 and s["1-mIoU"] == 1.0 and s["5-mIoU"] == 1.0
    assert all(len(o["ious"]) == 1 for o in res["objects"])  # nothing left to click


def test_limit_and_json_roundtrip(tmp_path):
    gt = _square((20, 20), 5, 5, 9)
    samples = [(gt.astype(np.uint8) * 255, gt, None, f"o{i}") for i in range(5)]
    res = evaluate(OracleModel(), samples, max_clicks=5, limit=2, progress=False,
                   dataset_name="toy")
    assert res["summary"]["num_objects"] == 2 and res["dataset"] == "toy"
    path = save_json(res, tmp_path / "r.json")
    back = load_results(path)
    assert back[0]["summary"]["NoC@90"] == 1 and back[0]["model"] == "oracle"


def test_sat_latency():
    img = np.zeros((32, 48), np.uint8)
    out = sat_latency(OracleModel(), img, grid=4)
    assert out["num_clicks"] == 16 and out["total_s"] >= out["embed_s"]


# ----------------------------------------------------------------------------- datasets


def _write_png(path, arr):
    iio = pytest.importorskip("imageio.v3")
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr)


def _make_eval_folder(root: Path):
    """img_a: one object with a 128 band; img_b: two objects in masks/img_b/{0,1}.png."""
    rng = np.random.default_rng(0)
    a = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    ma = np.zeros((40, 60), np.uint8)
    ma[10:30, 15:45] = 255
    ma[9, 15:45] = 128
    ma[30, 15:45] = 128
    _write_png(root / "images" / "img_a.png", a)
    _write_png(root / "masks" / "img_a.png", ma)
    b = (rng.random((50, 50)) * 65535).astype(np.uint16)
    b[5:20, 5:20] = 60000
    b[28:45, 25:45] = 50000
    _write_png(root / "images" / "img_b.png", b)
    m0 = np.zeros((50, 50), np.uint8)
    m0[5:20, 5:20] = 255
    m1 = np.zeros((50, 50), np.uint8)
    m1[28:45, 25:45] = 200
    _write_png(root / "masks" / "img_b" / "0.png", m0)
    _write_png(root / "masks" / "img_b" / "1.png", m1)
    return ma, m0, m1


def test_folder_reader_ignore_and_multi_object(tmp_path):
    from napari_ois.data.datasets import FolderDataset

    ma, m0, m1 = _make_eval_folder(tmp_path / "toy")
    ds = FolderDataset(tmp_path / "toy" / "images", tmp_path / "toy" / "masks")
    assert len(ds) == 3 and ds.num_images == 2 and ds.name == "toy"
    samples = list(ds)
    assert [s.name for s in samples] == ["img_a", "img_b/0", "img_b/1"]
    a, b0, b1 = samples
    assert a.image.dtype == np.uint8 and a.image.shape == (40, 60, 3)
    assert a.gt.sum() == 20 * 30 and a.ignore.sum() == 60
    assert not (a.gt & a.ignore).any()
    assert b0.image.dtype == np.uint16 and b0.image.shape == (50, 50)
    assert b0.image is b1.image and b0.image_key == b1.image_key
    np.testing.assert_array_equal(b0.gt, m0 > 128)
    np.testing.assert_array_equal(b1.gt, m1 > 128)
    assert not b0.ignore.any()
    image, gt, ignore, name = a  # tuple unpacking
    assert name == "img_a"


def test_decode_mask_rules():
    from napari_ois.data.masks import decode_mask

    gt, ign = decode_mask(np.array([[0, 127, 128, 129, 255]], np.uint8))
    assert gt.tolist() == [[False, False, False, True, True]]
    assert ign.tolist() == [[False, False, True, False, False]]
    gt, ign = decode_mask(np.array([[0, 1, 1]], np.uint8))  # 0/1 masks are read as such
    assert gt.tolist() == [[False, True, True]] and not ign.any()


def test_tiff_float_image_and_training_layout(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from napari_ois.data.datasets import FolderDataset, InstanceFolderDataset, load_dataset

    root = tmp_path / "mri"
    (root / "images").mkdir(parents=True)
    img = np.random.default_rng(0).normal(size=(30, 30)).astype(np.float32)
    tifffile.imwrite(root / "images" / "s1.tif", img)
    m = np.zeros((30, 30), np.uint8)
    m[5:15, 5:15] = 255
    _write_png(root / "masks" / "s1.png", m)
    (s,) = list(FolderDataset(root / "images", root / "masks"))
    assert s.image.dtype == np.float32 and np.allclose(s.image, img)

    tr = tmp_path / "train_set"
    lab = np.zeros((20, 30), np.uint16)
    lab[2:8, 2:8] = 1
    lab[10:18, 10:28] = 300  # 16-bit instance ids
    _write_png(tr / "images" / "x.png", np.zeros((20, 30, 3), np.uint8))
    _write_png(tr / "labels" / "x.png", lab)
    items = list(InstanceFolderDataset(tr))
    assert [i.name for i in items] == ["x/1", "x/300"]
    assert items[1].gt.sum() == 8 * 18 and not items[1].ignore.any()
    assert isinstance(load_dataset(tr), InstanceFolderDataset)


def test_resolve_dataset_env(tmp_path, monkeypatch):
    from napari_ois.data.datasets import FolderDataset, load_dataset, resolve_dataset

    _make_eval_folder(tmp_path / "data" / "eval" / "Toy_dev")
    monkeypatch.setenv("NAPARI_OIS_DATA", str(tmp_path / "data"))
    assert resolve_dataset("Toy_dev") == tmp_path / "data" / "eval" / "Toy_dev"
    assert resolve_dataset("Toy") == tmp_path / "data" / "eval" / "Toy_dev"
    ds = load_dataset("toy_dev")
    assert isinstance(ds, FolderDataset) and len(ds) == 3
    with pytest.raises(FileNotFoundError, match="NAPARI_OIS_DATA"):
        resolve_dataset("NoSuchSet")


@pytest.mark.shared_data
def test_grabcut_from_shared_data(monkeypatch):
    if not (SHARED_DATA / "eval" / "GrabCut").is_dir():
        pytest.skip(f"shared data not available: {SHARED_DATA / 'eval' / 'GrabCut'} is absent")
    pytest.importorskip("imageio")
    from napari_ois.data.datasets import load_dataset

    monkeypatch.setenv("NAPARI_OIS_DATA", str(SHARED_DATA))
    ds = load_dataset("GrabCut")
    assert len(ds) == 50
    s = next(iter(ds))
    assert s.gt.shape == s.image.shape[:2] and s.gt.any() and s.ignore.any()
    assert first_click(s.gt, s.ignore) is not None


# ---------------------------------------------------------------------------- baselines


def _two_disk_image(seed=0):
    """Two touching bright disks on a dark background; the object is the left one."""
    rng = np.random.default_rng(seed)
    h, w = 80, 120
    yy, xx = np.mgrid[:h, :w]
    left = (yy - 40) ** 2 + (xx - 40) ** 2 <= 22 ** 2
    right = (yy - 40) ** 2 + (xx - 82) ** 2 <= 22 ** 2
    img = np.full((h, w), 40.0)
    img[left] = 200
    img[right] = 180
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), left


@pytest.mark.parametrize("name", ["random-walker", "geodesic"])
def test_baseline_improves_with_clicks(name):
    pytest.importorskip("skimage")
    from napari_ois.evaluation.baselines import get_model

    img, gt = _two_disk_image()
    model = get_model(name)
    res = evaluate(model, [(img, gt, None, "disks")], max_clicks=5, progress=False)
    ious = res["objects"][0]["ious"]
    assert ious[-1] > ious[0] + 0.05, ious
    assert max(ious) >= 0.9, ious
    out = model.predict(points=[[40, 40]], labels=[1], multimask=True)
    assert out.masks.shape == (1, 80, 120) and out.masks.dtype == bool
    assert out.logits.dtype == np.float32 and out.scores.shape == (1,)


def test_random_walker_on_disk_image_rgb_and_downscale():
    pytest.importorskip("skimage")
    from napari_ois.evaluation.baselines import RandomWalkerPredictor

    h, w = 300, 400  # larger than max_side: exercises downscale + upsample
    yy, xx = np.mgrid[:h, :w]
    gt = (yy - 150) ** 2 + (xx - 200) ** 2 <= 80 ** 2
    img = np.zeros((h, w, 3), np.uint8)
    img[gt] = (200, 60, 60)
    img[~gt] = (30, 90, 30)
    rw = RandomWalkerPredictor(max_side=128)
    rw.set_image(img)
    out = rw.predict(points=[[150, 200]], labels=[1])
    assert out.logits.shape == (1, h, w)
    assert iou(binarize(out.logits[0]), gt) > 0.9


def test_get_model_falls_back_to_load_predictor(monkeypatch):
    import napari_ois
    from napari_ois.evaluation import baselines

    seen = {}

    def fake_load(name, device="cpu", zoom_in=False, flip_tta=True, precision="bf16"):
        seen["args"] = (name, device, zoom_in, flip_tta, precision)
        return "PRED"

    monkeypatch.setattr(napari_ois, "load_predictor", fake_load, raising=False)
    assert baselines.get_model("my.ckpt", device="cpu") == "PRED"
    assert seen["args"] == ("my.ckpt", "cpu", True, False, "fp32")  # zoom-in on, flip off, fp32 by default
    assert baselines.get_model("my.ckpt", device="cpu", zoom_in=False, flip_tta=True, precision="bf16") == "PRED"
    assert seen["args"] == ("my.ckpt", "cpu", False, True, "bf16")
    assert isinstance(baselines.get_model("Random-Walker"), baselines.RandomWalkerPredictor)


# ------------------------------------------------------------------------------------ CLI


def _cli(argv):
    import argparse

    from napari_ois.evaluation.cli import add_parsers

    parser = argparse.ArgumentParser(prog="napari-ois")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_eval_and_plot_end_to_end(tmp_path, capsys):
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    _make_eval_folder(tmp_path / "toy")
    out_json = tmp_path / "out" / "rw.json"
    out_png = tmp_path / "out" / "rw.png"
    rc = _cli(["eval", "--images", str(tmp_path / "toy" / "images"),
               "--masks", str(tmp_path / "toy" / "masks"), "--model", "random-walker",
               "--json", str(out_json), "--plot", str(out_png), "--max-clicks", "3",
               "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    for col in ("NoC85", "NoC90", "NoC95", "NoF90", "NoF95", "1-mIoU", "5-mIoU", "SPC",
                "embed"):
        assert col in text
    data = json.loads(out_json.read_text())
    assert data["model"] == "random-walker" and data["dataset"] == "toy"
    assert data["summary"]["num_objects"] == 3 and len(data["objects"]) == 3
    assert len(data["summary"]["mIoU"]) == 3
    assert all(1 <= len(o["ious"]) <= 3 for o in data["objects"])
    assert out_png.stat().st_size > 1000

    # plot: two results in one figure
    data2 = dict(data, model="other")
    (tmp_path / "b.json").write_text(json.dumps(data2))
    fig = tmp_path / "both.png"
    assert _cli(["plot", str(out_json), str(tmp_path / "b.json"), "--out", str(fig)]) == 0
    assert fig.stat().st_size > 1000
    assert _cli(["plot", str(tmp_path / "missing.json"), "--out", str(fig)]) == 2


def test_cli_eval_errors(tmp_path, capsys):
    assert _cli(["eval", "--model", "random-walker"]) == 2
    assert _cli(["eval", "--images", str(tmp_path), "--model", "random-walker"]) == 2
    assert _cli(["eval", "--dataset", str(tmp_path / "nope"), "--model", "x"]) == 2
    assert "error" in capsys.readouterr().err
    _make_eval_folder(tmp_path / "toy")
    assert _cli(["eval", "--images", str(tmp_path / "toy" / "images"), "--masks",
                 str(tmp_path / "toy" / "masks"), "--model", "random-walker", "--first-prompt",
                 "box", "--quiet"]) == 2
    assert "takes no box prompts" in capsys.readouterr().err
    assert _cli(["eval", "--images", str(tmp_path / "toy" / "images"), "--masks",
                 str(tmp_path / "toy" / "masks"), "--model", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("napari-ois eval: error: cannot load model 'nope': unknown model 'nope'")


class BoxThenOracleModel:
    """Takes boxes: a box alone predicts the whole box; any click then gives the object."""

    name = "box-then-oracle"
    accepts_boxes = True

    def __init__(self):
        self.calls = []

    def set_image(self, image, depth=None, contrast_limits=None):
        self.gt = np.asarray(image) > 127

    def predict(self, points, labels, prev_mask=None, multimask=True, box=None):
        self.calls.append((len(points), prev_mask is not None, multimask, box))
        if box is not None and not len(points):
            rr, cc = np.mgrid[: self.gt.shape[0], : self.gt.shape[1]]
            m = (rr >= box.r0) & (rr <= box.r1) & (cc >= box.c0) & (cc <= box.c1)
        else:
            m = self.gt
        return _Out(masks=m[None], scores=np.ones(1), logits=_logits(m[None]))


def test_box_first_protocol_counts_the_box_as_the_first_interaction():
    rr, cc = np.mgrid[:40, :50]
    gt = (rr - 20) ** 2 + (cc - 25) ** 2 <= 10**2  # a disk: its box has false corners
    model = BoxThenOracleModel()
    res = evaluate(model, [(gt.astype(np.uint8) * 255, gt, None, "disk")], max_clicks=5,
                   progress=False, first_prompt="box")
    obj = res["objects"][0]
    box_iou = gt.sum() / 21**2
    assert obj["ious"] == pytest.approx([box_iou, 1.0])
    assert obj["first_click"]["prompt"] == "box" and obj["first_click"]["box"] == [9.5, 14.5, 30.5, 35.5]
    assert len(obj["clicks"]) == 1 and obj["clicks"][0][2] == 0  # a negative click on a corner
    calls = model.calls[1:]  # after the warm-up
    assert calls[0][:3] == (0, False, False) and calls[0][3] is not None
    assert calls[1][:3] == (1, True, False) and calls[1][3] == calls[0][3]  # the box stays
    s = res["summary"]
    assert s["first_box_mIoU"] == pytest.approx(box_iou) and "first_click_top_mIoU" not in s
    assert s["NoC@90"] == 2 and res["protocol"]["first_prompt"] == "box"
    with pytest.raises(ValueError, match="takes no box prompts"):
        evaluate(OracleModel(), [(gt.astype(np.uint8) * 255, gt, None, "disk")], progress=False,
                 first_prompt="box")


def test_cli_eval_flip_tta_and_zoom_in_reach_the_predictor_and_the_json(tmp_path):
    """``--flip-tta`` / ``--zoom-in off`` are the predictor's options, recorded in the protocol."""
    import torch

    from napari_ois.model import OISModel
    from napari_ois.registry import save_model

    from conftest import tiny_config

    _make_eval_folder(tmp_path / "toy")
    torch.manual_seed(0)
    ckpt = save_model(OISModel(tiny_config(fusion="early")), tmp_path / "tiny.safetensors")
    seen = {}
    for tag, extra in (("plain", []), ("flip", ["--flip-tta", "--zoom-in", "off"])):
        out = tmp_path / f"{tag}.json"
        rc = _cli(["eval", "--images", str(tmp_path / "toy" / "images"), "--masks",
                   str(tmp_path / "toy" / "masks"), "--model", str(ckpt), "--device", "cpu",
                   "--max-clicks", "2", "--json", str(out), "--quiet", *extra])
        assert rc == 0
        data = json.loads(out.read_text())
        seen[tag] = data["protocol"]
    assert seen["plain"]["flip_tta"] is False and seen["plain"]["zoom_in"] is True
    assert seen["flip"]["flip_tta"] is True and seen["flip"]["zoom_in"] is False


def test_the_runner_reads_window_mode_predictions_of_big_images(tiny_model):
    """A predictor in window mode (big, lazy images) returns masks for a window of the image
    (``Prediction.window``); the 2D protocol pastes them into the whole image."""
    from napari_ois.predictor import OISPredictor, WindowSearch

    img, gt = _two_disk_image()
    big = np.zeros((300, 360) + img.shape[2:], np.uint8)
    big[100:180, 120:240] = img
    gt_big = np.zeros((300, 360), bool)
    gt_big[100:180, 120:240] = gt
    model = OISPredictor(tiny_model, device="cpu", windows=WindowSearch(threshold=128))
    res = evaluate(model, [(big, gt_big, None, "disks")], max_clicks=3, progress=False)
    obj = res["objects"][0]
    assert len(obj["ious"]) == 3 and all(0.0 <= v <= 1.0 for v in obj["ious"])
    assert model.state.windowed  # it really ran in window mode
    first = obj["first_click"]
    assert first["num_proposals"] == len(first["ious"]) >= 1

"""Tests of the training data side: readers, synthetic scenes, proposal targets,
augmentation, samples and the torch dataset. Fast; only the tests marked ``shared_data``
read ``../shared/data`` (skipped when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_ois.data.scenes import SceneConfig, SceneGenerator
from napari_ois.data.sources import (
    EvalDataError,
    InMemorySource,
    Record,
    TrainIndex,
    load_record,
    refuse_eval,
    resolve_train_root,
    synthetic_source,
)
from napari_ois.model.transforms import ResizeTransform
from napari_ois.training.augment import (
    AugmentConfig,
    Geometry,
    augment_sample,
    color_augment,
    depth_augment,
    random_geometry,
)
from napari_ois.training.data import (
    OISTrainDataset,
    SampleBuilder,
    SampleConfig,
    proposal_targets,
    touching_pairs,
)


def _shared_root() -> Path:
    env = os.environ.get("NAPARI_OIS_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[1]  # project root
    return here.parent / "shared" / "data"


SHARED = _shared_root()
needs_shared = pytest.mark.skipif(
    not (SHARED / "train").is_dir(),
    reason=f"training data not found at {SHARED / 'train'} (../shared/data absent; set "
    "NAPARI_OIS_DATA to run these tests)",
)


@pytest.fixture(scope="module")
def source():
    return synthetic_source(seed=3, n=6, shape=(80, 96), max_objects=4)


# --------------------------------------------------------------------------- scenes


def _scenes(source, n=6, shape=(96, 112), **cfg):
    gen = SceneGenerator(source, SceneConfig(**cfg))
    return [gen.generate(np.random.default_rng(s), shape) for s in range(n)]


def test_scene_shapes_and_determinism(source):
    gen = SceneGenerator(source)
    a = gen.generate(np.random.default_rng(7), (90, 120))
    b = gen.generate(np.random.default_rng(7), (90, 120))
    assert a.image.shape == (90, 120, 3) and a.image.dtype == np.float32
    assert a.depth.shape == (90, 120) and a.depth.dtype == np.float32
    assert 0 <= a.image.min() and a.image.max() <= 1 and 0 <= a.depth.min() and a.depth.max() <= 1
    assert a.labels.dtype == np.int32 and a.keep.any()
    for k in ("image", "depth", "labels", "amodal", "keep", "bands"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.kinds == b.kinds
    c = gen.generate(np.random.default_rng(8), (90, 120))
    assert not np.array_equal(a.image, c.image)


def test_scene_depth_agrees_with_occlusion(source):
    n_overlaps = 0
    for sc in _scenes(source, n=8, n_objects=(3, 7), size_frac=(0.3, 0.8)):
        n = len(sc.keep)
        vis = [sc.visible(i) for i in range(n)]
        # background is farther than every object
        bg = sc.labels == 0
        if bg.any() and (~bg).any():
            assert sc.depth[bg].max() < sc.depth[~bg].min()
        for back in range(n):
            for front in range(back + 1, n):
                overlap = sc.amodal[back] & sc.amodal[front]
                if not overlap.any():
                    continue
                n_overlaps += 1
                # the object painted later is in front: nearer (larger depth) on its pixels
                assert sc.object_depth[front] > sc.object_depth[back]
                if vis[front].any() and vis[back].any():
                    assert sc.depth[vis[front]].min() > sc.depth[vis[back]].max()
                # the hidden pixels of the back object belong to the front object (or to
                # something even nearer), never to the back object
                assert not (overlap & vis[back]).any()
                assert (sc.labels[overlap] >= front + 1).all()
        # every hidden pixel of an object is covered by an object in front of it
        for i in range(n):
            hidden = sc.amodal[i] & ~vis[i]
            assert (sc.labels[hidden] > i + 1).all()
    assert n_overlaps > 0, "the test scenes should contain overlapping objects"


def test_visible_masks_disjoint_and_front_most(source):
    for sc in _scenes(source, n=6):
        masks = sc.masks
        assert masks.dtype == bool and masks.shape[1:] == sc.labels.shape
        assert (masks.sum(0) <= 1).all()
        # front-most object from the amodal masks (objects are ordered back to front)
        n = len(sc.keep)
        front = np.zeros(sc.labels.shape, np.int32)
        for i in range(n):
            front[sc.amodal[i]] = i + 1
        np.testing.assert_array_equal(front, sc.labels)
        for m, oid in zip(masks, sc.ids):
            np.testing.assert_array_equal(m, front == oid)
        # dropped objects are the ones whose visible area is too small
        areas = np.array([(sc.labels == i + 1).sum() for i in range(n)])
        min_area = max(SceneConfig().min_visible_px, SceneConfig().min_visible_frac * sc.labels.size)
        np.testing.assert_array_equal(sc.keep, areas >= min_area)


# --------------------------------------------------------------------------- proposals


def _hand_map():
    lab = np.zeros((12, 14), np.int32)
    lab[1:4, 1:4] = 1  # 1 and 2 share an edge
    lab[1:4, 4:6] = 2
    lab[4:6, 6:8] = 3  # touches 2 only diagonally (corner (3,5)-(4,6))
    lab[8:10, 1:3] = 4  # alone
    lab[1:3, 9:11] = 5  # one empty column (8) from 3's column 7? no: rows differ; alone
    lab[6:8, 9:11] = 6  # one empty column away from 3 (cols 6-7 vs 9-10): not touching
    return lab


def test_touching_rule_hand_made():
    lab = _hand_map()
    pairs = {tuple(p) for p in touching_pairs(lab).tolist()}
    assert pairs == {(1, 2), (2, 3)}
    m = {i: lab == i for i in range(1, 7)}
    p1 = proposal_targets(lab, 1)
    assert p1.shape == (3,) + lab.shape and p1.dtype == bool
    np.testing.assert_array_equal(p1[0], m[1])
    np.testing.assert_array_equal(p1[1], m[1] | m[2])
    np.testing.assert_array_equal(p1[2], m[1] | m[2] | m[3])  # transitive closure
    p2 = proposal_targets(lab, 2)
    np.testing.assert_array_equal(p2[1], m[1] | m[2] | m[3])
    np.testing.assert_array_equal(p2[2], p2[1])  # nothing beyond: repeated
    p4 = proposal_targets(lab, 4)
    for k in range(3):
        np.testing.assert_array_equal(p4[k], m[4])
    # a one-pixel gap is not touching; 8-connected diagonal contact is
    lab2 = np.zeros((5, 5), np.int32)
    lab2[0, 0], lab2[1, 1], lab2[3, 3] = 1, 2, 3
    assert {tuple(p) for p in touching_pairs(lab2).tolist()} == {(1, 2)}
    with pytest.raises(ValueError):
        proposal_targets(lab, 9)


def test_proposals_nest_on_scenes(source):
    for sc in _scenes(source, n=4):
        for oid in sc.ids:
            p = proposal_targets(sc.labels, int(oid))
            assert (p[0] <= p[1]).all() and (p[1] <= p[2]).all()
            assert p[0].sum() == (sc.labels == oid).sum()


# --------------------------------------------------------------------------- augment


def _l_shape(h=32, w=32):
    m = np.zeros((h, w), bool)
    m[4:28, 4:10] = True
    m[20:28, 4:24] = True  # an L: asymmetric left/right and up/down
    return m


def test_flip_keeps_alignment():
    m = _l_shape()
    image = np.repeat(m[..., None].astype(np.float32), 3, axis=-1)
    for hflip, vflip in [(True, False), (False, True), (True, True)]:
        geo = Geometry((32, 32), (0, 32, 0, 32), (32, 32), 32, hflip=hflip, vflip=vflip)
        out = augment_sample(np.random.default_rng(0), image, 32, masks=m[None],
                             cfg=AugmentConfig.none(), geometry=geo)
        want = m[:, ::-1] if hflip else m
        want = want[::-1] if vflip else want
        np.testing.assert_array_equal(out["masks"][0], want)
        np.testing.assert_array_equal(out["image"][0] > 0.5, want)
        assert not np.array_equal(want, m)


def test_random_geometry_alignment_and_padding():
    h, w = 60, 90
    m = np.zeros((h, w), bool)
    m[10:40, 20:35] = True
    m[30:40, 35:70] = True
    image = np.repeat(m[..., None].astype(np.float32), 3, axis=-1)
    depth = np.linspace(0, 1, w, dtype=np.float32)[None].repeat(h, 0)
    nested = np.stack([m, m | (np.arange(w) < 40)[None], np.ones((h, w), bool)])
    cfg = AugmentConfig(p_color=0, p_gray=0, p_medical=0, p_gamma=0, p_noise=0, p_blur=0,
                        p_depth_gamma=0, p_depth_blur=0, p_depth_noise=0)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out = augment_sample(rng, image, 64, masks=nested, depth=depth, cfg=cfg)
        img, masks, valid = out["image"], out["masks"], out["valid"]
        assert img.shape == (3, 64, 64) and masks.shape == (3, 64, 64) and valid.shape == (64, 64)
        np.testing.assert_array_equal(img[0] > 0.5, masks[0])  # image and mask aligned
        assert (masks[0] <= masks[1]).all() and (masks[1] <= masks[2]).all()
        # valid region is a top-left rectangle; padding is zero everywhere
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        assert rows[0] == 0 and cols[0] == 0 and valid[: rows[-1] + 1, : cols[-1] + 1].all()
        assert (img[:, ~valid] == 0).all() and not masks[:, ~valid].any()
        assert masks[0].any()  # the focus (target) stays in view
        assert out["depth"].shape == (64, 64) and (out["depth"][~valid] == 0).all()
        # depth was a left-to-right ramp: still monotone along columns (or reversed by flip)
        d = out["depth"][0, : cols[-1] + 1]
        dif = np.diff(d)
        assert (dif >= -1e-5).all() or (dif <= 1e-5).all()


def test_zoom_crop_lays_the_target_out_as_zoom_in_inference_does():
    """p_zoom_crop: the target's longest side fills 1/1.8 to 1/1.2 of the input (the
    predictor's ZoomIn crops 1.4x around the object), the whole target in view."""
    h, w = 300, 400
    m = np.zeros((h, w), bool)
    m[100:140, 200:220] = True  # 40 x 20 px: 0.7 % of the image
    cfg = AugmentConfig(p_zoom_crop=1.0, p_hflip=0, p_vflip=0)
    for seed in range(20):
        g = random_geometry(np.random.default_rng(seed), (h, w), 96, cfg, focus=m)
        out = g.apply(m[None].astype(np.float32))[0] > 0.5
        rows = np.flatnonzero(out.any(1))
        assert 96 / 1.8 - 2 <= rows[-1] - rows[0] + 1 <= 96 / 1.2 + 2
        assert out.sum() == pytest.approx(m.sum() * (g.out_shape[0] / (g.box[1] - g.box[0])) ** 2, rel=0.15)
    # a target under zoom_crop_min: the crop is at least that many input pixels
    tiny = np.zeros((h, w), bool)
    tiny[10:14, 10:14] = True
    g = random_geometry(np.random.default_rng(0), (h, w), 96, cfg, focus=tiny)
    assert g.box[1] - g.box[0] >= cfg.zoom_crop_min - 1


def test_fit_geometry_matches_resize_transform():
    import torch

    rng = np.random.default_rng(0)
    image = rng.random((50, 80, 3)).astype(np.float32)
    geo = Geometry.fit((50, 80), 64)
    tr = ResizeTransform(50, 80, 64)
    assert geo.out_shape == tr.new_shape
    ours = geo.apply(np.moveaxis(image, -1, 0))
    ref = tr.apply_image(torch.from_numpy(np.moveaxis(image, -1, 0))[None])[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    g = random_geometry(rng, (50, 80), 64, AugmentConfig.none())
    assert g == geo


def test_color_and_depth_augment_ranges():
    rng = np.random.default_rng(1)
    valid = np.zeros((40, 40), bool)
    valid[:30, :36] = True
    img = rng.random((3, 40, 40)).astype(np.float32) * valid
    cfg = AugmentConfig(p_color=1, p_medical=1, p_gamma=1, p_noise=1, p_blur=1)
    out = color_augment(rng, img, valid, cfg)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert (out[:, ~valid] == 0).all()
    np.testing.assert_array_equal(out[0], out[1])  # the medical variant is grey
    d = depth_augment(rng, np.linspace(0, 1, 1600, dtype=np.float32).reshape(40, 40), valid,
                      AugmentConfig(p_depth_gamma=1, p_depth_blur=1, p_depth_noise=0))
    assert d.min() >= 0 and d.max() <= 1 and (d[~valid] == 0).all()
    assert np.isclose(d[valid].max(), 1) and np.isclose(d[valid].min(), 0)


# --------------------------------------------------------------------------- samples


def _check_sample(s, size):
    assert s["image"].shape == (3, size, size) and s["image"].dtype == np.float32
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["depth"].shape == (1, size, size) and s["depth"].dtype == np.float32
    assert 0 <= s["depth"].min() and s["depth"].max() <= 1
    for k in ("target", "valid", "ignore"):
        assert s[k].shape == (size, size) and s[k].dtype == bool, k
    p = s["proposals"]
    assert p.shape == (3, size, size) and p.dtype == bool
    np.testing.assert_array_equal(p[0], s["target"])
    assert (p[0] <= p[1]).all() and (p[1] <= p[2]).all()
    assert s["target"].sum() >= 16
    assert not (s["target"] & ~s["valid"]).any()
    assert (s["ignore"] >= ~s["valid"]).all()
    if not s["has_depth"]:
        assert not s["depth"].any()
    assert isinstance(s["source"], str)


def test_make_sample_real_and_scene(source):
    b = SampleBuilder(source, SampleConfig(size=64))
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(12):
        s = b.make_sample(rng)
        _check_sample(s, 64)
        kinds.add(bool(s["is_scene"]))
        assert s["has_depth"] == s["is_scene"]
    assert kinds == {True, False}
    s = b.make_sample(rng, 48)
    _check_sample(s, 48)
    # deterministic given the generator
    a = b.make_sample(np.random.default_rng(5), 64)
    c = b.make_sample(np.random.default_rng(5), 64)
    for k in a:
        np.testing.assert_array_equal(a[k], c[k])
    batch = b.make_batch(rng, 3, 32)
    assert batch["image"].shape == (3, 3, 32, 32) and batch["proposals"].shape == (3, 3, 32, 32)
    assert len(batch["source"]) == 3


def test_small_objects_are_skipped():
    h = w = 100
    lab = np.zeros((h, w), np.int32)
    lab[0:3, 0:3] = 1  # 9 px < 0.2 % of 10000 = 20 px
    lab[40:80, 40:80] = 2
    img = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    b = SampleBuilder(InMemorySource([(img, lab)]), SampleConfig(size=32, scene_ratio=0.0))
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = b.make_sample(rng)
        assert s["target"].sum() > 100  # always object 2


def test_ignore_label_is_carried():
    lab = np.zeros((40, 40), np.int32)
    lab[10:30, 10:30] = 1
    lab[8:10, 10:30] = -1  # an annotated ignore band
    img = np.zeros((40, 40, 3), np.float32)
    cfg = SampleConfig(size=40, scene_ratio=0.0, augment=AugmentConfig.none())
    s = SampleBuilder(InMemorySource([(img, lab)]), cfg).make_sample(np.random.default_rng(0))
    np.testing.assert_array_equal(s["ignore"], lab == -1)


def test_dataloader_with_workers(source):
    import torch
    from torch.utils.data import DataLoader

    from napari_ois.training.data import worker_init

    ds = OISTrainDataset(SampleBuilder(source, SampleConfig(size=32)), length=8, seed=11)
    loader = DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=worker_init)
    batches = list(loader)
    assert len(batches) == 4
    b0 = batches[0]
    assert b0["image"].shape == (2, 3, 32, 32) and b0["image"].dtype == torch.float32
    assert b0["depth"].shape == (2, 1, 32, 32) and b0["depth"].dtype == torch.float32
    assert b0["target"].shape == (2, 32, 32) and b0["target"].dtype == torch.bool
    assert b0["proposals"].shape == (2, 3, 32, 32) and b0["proposals"].dtype == torch.bool
    assert b0["valid"].dtype == torch.bool and b0["ignore"].dtype == torch.bool
    assert b0["has_depth"].dtype == torch.bool and b0["has_depth"].shape == (2,)
    assert len(b0["source"]) == 2
    # worker-safe seeding: the same samples as in the main process, all different
    np.testing.assert_array_equal(b0["image"][1].numpy(), ds[1]["image"])
    np.testing.assert_array_equal(batches[3]["proposals"][0].numpy(), ds[6]["proposals"])
    imgs = torch.cat([b["image"] for b in batches])
    assert len({hash(x.numpy().tobytes()) for x in imgs}) == 8
    ds.set_epoch(1)
    assert not np.array_equal(ds[1]["image"], b0["image"][1].numpy())


def test_stream_with_workers(source):
    import itertools

    from torch.utils.data import DataLoader

    from napari_ois.training.data import OISTrainStream, worker_init

    stream = OISTrainStream(SampleBuilder(source, SampleConfig(size=32)), seed=2)
    loader = DataLoader(stream, batch_size=2, num_workers=2, worker_init_fn=worker_init)
    batches = list(itertools.islice(iter(loader), 4))
    imgs = [x.numpy().tobytes() for b in batches for x in b["image"]]
    assert len(set(imgs)) == 8  # the two workers do not repeat each other
    assert batches[0]["proposals"].shape == (2, 3, 32, 32)


# --------------------------------------------------------------------------- readers


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _fake_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    lab = np.zeros((20, 30), np.uint16)
    lab[2:10, 2:12] = 1
    lab[10:18, 12:28] = 300  # 16-bit labels
    _png(root / "train" / "A" / "images" / "a1.png", (rng.random((20, 30, 3)) * 255).astype(np.uint8))
    _png(root / "train" / "A" / "labels" / "a1.png", lab)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    mask[3, 4:12] = 128
    _png(root / "train" / "B" / "images" / "b1.png", (rng.random((16, 16)) * 255).astype(np.uint8))
    _png(root / "train" / "B" / "masks" / "b1.png", mask)
    _png(root / "eval" / "C" / "images" / "c1.png", np.zeros((8, 8), np.uint8))
    return root


def test_readers_on_a_small_tree(tmp_path, monkeypatch):
    root = _fake_tree(tmp_path / "data")
    idx = TrainIndex(root, cache="bytes")
    assert idx.sets == ["A", "B"] and len(idx) == 2
    image, labels = idx.load(0)
    assert image.shape == (20, 30, 3) and image.dtype == np.float32
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 300}
    image, labels = idx.load(1)
    assert image.shape == (16, 16, 3) and set(np.unique(labels)) == {-1, 0, 1}
    assert (labels[3, 4:12] == -1).all()
    # cache modes give the same arrays
    for mode in ("none", "decoded"):
        other = TrainIndex(root, cache=mode)
        for i in range(2):
            for a, b in zip(idx.load(i), other.load(i)):
                np.testing.assert_array_equal(a, b)
    # weights choose sets
    only_b = TrainIndex(root, weights={"A": 0.0, "B": 1.0})
    rng = np.random.default_rng(0)
    assert {only_b.set_name(only_b.sample_index(rng)) for _ in range(20)} == {"B"}
    # default root from the environment
    monkeypatch.setenv("NAPARI_OIS_DATA", str(root))
    assert resolve_train_root() == (root / "train").resolve()
    monkeypatch.setenv("NAPARI_OIS_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="NAPARI_OIS_DATA"):
        TrainIndex()
    with pytest.raises(ValueError, match="unknown training set"):
        TrainIndex(root, sets=["C"])


def test_eval_folder_is_refused(tmp_path):
    root = _fake_tree(tmp_path / "data")
    with pytest.raises(EvalDataError):
        TrainIndex(root / "eval")
    with pytest.raises(EvalDataError):
        TrainIndex(root / "eval" / "C")
    c1 = root / "eval" / "C" / "images" / "c1.png"
    with pytest.raises(EvalDataError):
        load_record(Record("C", "c1", c1, c1, "masks"))
    with pytest.raises(EvalDataError):
        refuse_eval("../shared/data/eval/GrabCut/images/x.jpg")
    with pytest.raises((EvalDataError, ValueError)):
        TrainIndex(root, sets=["../eval/C"])



def test_the_3d_evaluation_volumes_are_refused_too(tmp_path):
    """eval3d/ holds the 3D dev volumes: as closed to training as eval/ (issue 33)."""
    with pytest.raises(EvalDataError, match="eval3d"):
        refuse_eval("../shared/data/eval3d/SABS_CT_dev3d/images/sabs22.tif")
    vol = tmp_path / "data" / "eval3d" / "V" / "images"
    vol.mkdir(parents=True)
    with pytest.raises(EvalDataError):
        TrainIndex(tmp_path / "data" / "eval3d")
    refuse_eval("../shared/data/train/SABS_CT/images/sabs00_z061.jpg")  # train/ stays open


@pytest.mark.shared_data
@needs_shared
def test_real_training_files_load():
    idx = TrainIndex(SHARED)
    assert "MSRA10K" in idx.sets and "BraTS" in idx.sets
    for name in idx.sets:
        i = idx.indices_of(name)[0]
        image, labels = idx.load(i)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1
        assert labels.shape == image.shape[:2] and labels.dtype == np.int32
        assert labels.max() >= 1, name
        assert max(image.shape[:2]) <= 512
    rec = idx[idx.indices_of("BraTS")[0]]
    assert rec.layout == "masks" and rec.image_path.suffix == ".tif"
    assert all("eval" not in r.image_path.parts for r in idx.records)


@pytest.mark.shared_data
@needs_shared
def test_real_training_samples_and_eval_refused():
    with pytest.raises(EvalDataError):
        TrainIndex(SHARED / "eval")
    path = next((SHARED / "eval").glob("*/images/*"))
    with pytest.raises(EvalDataError):
        load_record(Record(path.parent.parent.name, path.stem, path, path, "masks"))
    idx = TrainIndex(SHARED, sets=["COCO128", "BraTS", "CCP_clothing"], max_per_set=10)
    b = SampleBuilder(idx, SampleConfig(size=64))
    rng = np.random.default_rng(0)
    for _ in range(6):
        _check_sample(b.make_sample(rng), 64)


def test_the_training_config_sets_the_small_object_floor(tmp_path):
    """``TrainConfig.min_object_frac`` reaches the sampler: a 36-px object of a 200x200 image
    (0.09 %) is skipped at the default floor (0.2 %) and sampled below it."""
    import imageio.v3 as iio

    from napari_ois.training.loop import TrainConfig, make_builder

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = np.full((200, 200, 3), 60, np.uint8)
    mask = np.zeros((200, 200), np.uint8)
    mask[90:96, 90:96] = 255
    image[mask > 0] = 220
    iio.imwrite(tmp_path / "images" / "a.png", image)
    iio.imwrite(tmp_path / "masks" / "a.png", mask)
    folders = [{"images": str(tmp_path / "images"), "masks": str(tmp_path / "masks")}]
    default = make_builder(TrainConfig(folders=folders, scene_ratio=0.0), 64, 3)
    assert default.cfg.min_object_frac == 0.002
    with pytest.raises(RuntimeError, match="no object large enough"):
        default.make_sample(np.random.default_rng(0))
    low = make_builder(TrainConfig(folders=folders, scene_ratio=0.0, min_object_frac=0.0005), 64, 3)
    s = low.make_sample(np.random.default_rng(0))
    assert s["target"].any() and not s["is_scene"]
    # TrainConfig.p_zoom_crop reaches the augmentation: the 6-px object fills the crop
    zoomed = make_builder(TrainConfig(folders=folders, scene_ratio=0.0, min_object_frac=0.0,
                                      p_zoom_crop=1.0), 64, 3)
    assert default.cfg.augment.p_zoom_crop == 0.0 and zoomed.cfg.augment.p_zoom_crop == 1.0
    s = zoomed.make_sample(np.random.default_rng(0))
    assert s["target"].sum() > 36 * (64 / 200) ** 2 * 10  # far larger than at the fit scale

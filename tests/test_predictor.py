"""The predictor API: shapes at image resolution, dtypes, proposals, bad input, weights files."""

import json

import numpy as np
import pytest
import torch

from napari_ois import OISPredictor, load_predictor
from napari_ois.model import OISModel
from napari_ois.registry import build_model, load_model_file, registry, resolve_device, save_model

from conftest import tiny_config


@pytest.fixture
def pred(tiny_model):
    return OISPredictor(tiny_model, device="cpu")


@pytest.mark.parametrize("shape", [(37, 101), (300, 7), (64, 64), (5, 3), (129, 77, 3)])
def test_masks_come_back_at_the_image_resolution(pred, shape):
    image = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    pred.set_image(image)
    h, w = shape[:2]
    out = pred.predict([[h // 2, w // 2]], [1])
    assert out.masks.shape == (3, h, w) and out.masks.dtype == bool
    assert out.logits.shape == (3, h, w) and out.logits.dtype == np.float32
    assert out.scores.shape == (3,)
    assert np.all(np.diff(out.scores) <= 0), "proposals must be sorted best first"
    single = pred.predict([[h // 2, w // 2], [0, 0]], [1, 0], prev_mask=out.logits[0], multimask=False)
    assert single.masks.shape == (1, h, w)


def test_undo_of_the_resize_is_exact():
    from napari_ois.model.transforms import ResizeTransform

    tf = ResizeTransform(37, 101, 64)
    x = torch.zeros(1, 1, 37, 101)
    x[..., 10:20, 30:60] = 1
    back = tf.undo_image(tf.apply_image(x, mode="nearest"), mode="nearest")
    assert back.shape == x.shape
    # a point maps to the centre of its pixel in model space
    assert np.allclose(tf.apply_points([[0, 0]]), [[0.5 * tf.scale, 0.5 * tf.scale]])


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(1).random((40, 50)).astype(np.float32),  # float grey
        (np.random.default_rng(2).random((40, 50)) * 60000).astype(np.uint16),  # 16-bit
        np.random.default_rng(3).integers(0, 255, (40, 50, 4)).astype(np.uint8),  # RGBA
        np.random.default_rng(4).random((40, 50, 5)),  # multichannel
        np.random.default_rng(5).random((40, 50, 1)),
    ],
)
def test_any_dtype_and_channel_count(pred, image):
    pred.set_image(image)
    out = pred.predict([[20, 25]], [1])
    assert out.masks.shape == (3, 40, 50)


def test_nan_and_inf_are_handled(pred):
    img = np.random.default_rng(0).random((30, 30)).astype(np.float32)
    img[0, :] = np.nan
    img[1, :] = np.inf
    pred.set_image(img)
    out = pred.predict([[15, 15]], [1])
    assert np.isfinite(out.logits).all()


def test_contrast_limits_change_what_the_model_sees():
    from napari_ois.data.images import to_unit_rgb

    img = np.linspace(0, 4000, 100, dtype=np.float32).reshape(10, 10).astype(np.uint16)
    a = to_unit_rgb(img, contrast_limits=(0, 4000))
    b = to_unit_rgb(img, contrast_limits=(1000, 2000))
    assert a.max() <= 1 and b.min() >= 0
    assert (b == 1).sum() > (a == 1).sum()


def test_user_depth_changes_the_prediction(tiny_model, disk_image):
    image, mask = disk_image
    pred = OISPredictor(tiny_model)
    pred.set_image(image)
    no_depth = pred.predict([[24, 30], [5, 5]], [1, 0], multimask=False).logits
    depth = mask.astype(np.float32) + 0.1 * np.random.default_rng(0).random(mask.shape)
    pred.set_image(image, depth=depth)
    assert pred.state.has_depth
    with_depth = pred.predict([[24, 30], [5, 5]], [1, 0], multimask=False).logits
    assert not np.allclose(no_depth, with_depth)


def test_bad_input_gets_a_clear_error(pred):
    with pytest.raises(RuntimeError, match="before set_image"):
        pred.predict([[1, 1]], [1])
    with pytest.raises(ValueError, match="3D stack"):
        pred.set_image(np.zeros((5, 40, 40)))
    with pytest.raises(ValueError, match="dimensions"):
        pred.set_image(np.zeros((2, 3, 40, 40)))
    pred.set_image(np.zeros((20, 30), np.uint8))
    with pytest.raises(ValueError, match="no points"):
        pred.predict([], [])
    with pytest.raises(ValueError, match="labels"):
        pred.predict([[1, 1], [2, 2]], [1])
    with pytest.raises(ValueError, match="outside the image"):
        pred.predict([[25, 5]], [1])
    with pytest.raises(ValueError, match="outside the image"):
        pred.predict([[-1, 5]], [1])
    with pytest.raises(ValueError, match="labels must be"):
        pred.predict([[1, 1]], [2])
    with pytest.raises(ValueError, match="NaN"):
        pred.predict([[np.nan, 1]], [1])
    with pytest.raises(ValueError, match="prev_mask"):
        pred.predict([[1, 1]], [1], prev_mask=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="depth"):
        pred.set_image(np.zeros((20, 30)), depth=np.zeros((10, 10)))


def test_save_load_round_trip_gives_identical_outputs(tiny_model, tmp_path, disk_image):
    path = save_model(tiny_model, tmp_path / "m.safetensors", notes={"summary": "test"})
    assert path.with_suffix(".json").is_file()
    assert json.loads(path.with_suffix(".json").read_text())["notes"]["summary"] == "test"
    loaded = load_model_file(path)
    a, b = OISPredictor(tiny_model), load_predictor(str(path), device="cpu")
    image = disk_image[0]
    for p in (a, b):
        p.set_image(image)
    oa, ob = a.predict([[24, 30]], [1]), b.predict([[24, 30]], [1])
    assert np.array_equal(oa.logits, ob.logits) and np.array_equal(oa.scores, ob.scores)
    # the config is also in the safetensors metadata: works without the sidecar
    path.with_suffix(".json").unlink()
    assert load_model_file(path).cfg == loaded.cfg


def test_training_checkpoint_loads(tiny_model, tmp_path):
    torch.save({"model": tiny_model.state_dict(), "config": tiny_model.cfg.to_dict(), "step": 3},
               tmp_path / "ckpt.pt")
    m = load_model_file(tmp_path / "ckpt.pt")
    assert all(torch.equal(m.state_dict()[k], v) for k, v in tiny_model.state_dict().items())


def test_missing_corrupt_and_mismatched_weights(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model_file(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a weights file")
    with pytest.raises(ValueError, match="not a readable"):
        load_model_file(bad)
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    other = tiny_config(embed_dim=48)
    with pytest.raises(ValueError, match="does not fit"):
        load_model_file(path, config=other)
    with pytest.raises(KeyError, match="unknown model"):
        build_model("no-such-model")


def test_registry_lists_default_and_base():
    reg = registry()
    assert {"default", "ois-tiny", "ois-base"} <= set(reg)
    from napari_ois.model.config import PRESETS

    assert reg["default"].arch in PRESETS  # the shipped file's own architecture
    assert reg["default"].available()
    assert build_model("default").cfg.name == reg["default"].arch


def test_missing_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_fetch_without_network_is_a_clear_error(tmp_path, monkeypatch):
    from napari_ois.registry import fetch

    monkeypatch.setenv("NAPARI_OIS_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="by hand"):
        fetch("http://127.0.0.1:9/weights.safetensors", "0" * 64)


def test_half_precision_weights_load_and_stay_close(tiny_model, tmp_path, disk_image):
    full = save_model(tiny_model, tmp_path / "full.safetensors")
    half = save_model(tiny_model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    a, b = OISPredictor(load_model_file(full)), OISPredictor(load_model_file(half))
    for p in (a, b):
        p.set_image(disk_image[0])
    la, lb = a.predict([[24, 30]], [1]).logits, b.predict([[24, 30]], [1]).logits
    assert next(b.model.parameters()).dtype == torch.float32
    assert np.abs(la - lb).max() < 0.05 * (np.abs(la).max() + 1)


# --------------------------------------------------------------------------- box prompts
@pytest.fixture
def box_pred():
    torch.manual_seed(0)
    return OISPredictor(OISModel(tiny_config(fusion="early", box_prompts=True)).eval(), device="cpu")


def test_a_box_alone_gives_one_refined_mask_and_clicks_can_follow(box_pred, disk_image):
    from napari_ois.data.prompts import Box

    image, mask = disk_image
    box_pred.set_image(image)
    assert box_pred.accepts_boxes
    box = Box.of_mask(mask)
    assert box.as_tuple() == (12.5, 18.5, 35.5, 41.5)  # rows 13..35, cols 19..41 (r < 12)
    out = box_pred.predict(box=box)
    assert out.masks.shape == (1, 48, 70) and out.scores.shape == (1,)
    again = box_pred.predict(box=box.as_tuple())  # a plain tuple is the same box
    assert np.array_equal(out.logits, again.logits)
    later = box_pred.predict([[24, 30]], [0], prev_mask=out.logits[0], box=box)
    assert later.masks.shape == (1, 48, 70) and not np.array_equal(later.logits, out.logits)
    clicks = box_pred.predict([[24, 30]], [1])  # without a box: the first click's proposals
    assert clicks.masks.shape[0] == box_pred.num_proposals


def test_the_box_reaches_the_network(box_pred, disk_image):
    box_pred.set_image(disk_image[0])
    a, b = box_pred.predict(box=(2, 2, 20, 20)), box_pred.predict(box=(20, 30, 45, 65))
    assert not np.array_equal(a.logits, b.logits)  # another box, another prediction


def test_box_edges_past_the_image_are_cut_and_bad_boxes_are_named(box_pred, disk_image, pred):
    box_pred.set_image(disk_image[0])
    inside = box_pred.predict(box=(-0.5, -0.5, 47.5, 69.5))
    over = box_pred.predict(box=(-40, -40, 100, 200))  # the same box once cut to the image
    assert np.array_equal(inside.logits, over.logits)
    for bad, match in [((5, 5, 5, 9), "r1 > r0"), ((100, 100, 120, 130), "outside the image"),
                       ((1, 2, 3), "r0, c0, r1, c1"), ((0, 0, float("nan"), 4), "finite")]:
        with pytest.raises(ValueError, match=match):
            box_pred.predict(box=bad)
    with pytest.raises(ValueError, match="single first click, not a box"):
        box_pred.predict(box=(1, 1, 9, 9), multimask=True)
    pred.set_image(disk_image[0])
    with pytest.raises(ValueError, match="not built for box prompts"):
        pred.predict([[24, 30]], [1], box=(1, 1, 9, 9))


# --------------------------------------------------------------------------- flip test-time augmentation
def test_flip_tta_averages_the_image_and_its_mirror_and_is_mirror_equivariant():
    """With ``flip_tta`` a prediction is the mean of the plain predictions on the image and
    on its mirror (clicks, box and previous mask mirrored, the result mirrored back), for the
    first-click proposals, a zoomed refinement and a box; so mirroring the input mirrors it."""
    from napari_ois.data.prompts import Box
    from napari_ois.model import OISModel
    from napari_ois.predictor import OISPredictor, ZoomIn

    torch.manual_seed(0)
    model = OISModel(tiny_config(fusion="early", box_prompts=True)).eval()
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)
    img[30:60, 50:95] = (230, 200, 40)
    mir = np.ascontiguousarray(img[:, ::-1])
    w = img.shape[1]
    zoom = ZoomIn(min_crop=10)
    tta, plain = OISPredictor(model, zoom_in=zoom, flip_tta=True), OISPredictor(model, zoom_in=zoom)
    tta_m = OISPredictor(model, zoom_in=zoom, flip_tta=True)
    tta.set_image(img)
    tta_m.set_image(mir)

    def mirrored(pts):
        return [[r, w - 1 - c] for r, c in pts]

    def plain_mean(pts, labels, prev=None, box=None, multimask=None):
        plain.set_image(img)
        a = plain.predict(pts, labels, prev_mask=prev, box=box, multimask=multimask)
        plain.set_image(mir)
        b = plain.predict(mirrored(pts), labels, multimask=multimask,
                          prev_mask=None if prev is None else prev[:, ::-1],
                          box=None if box is None else Box(box.r0, w - 1 - box.c1, box.r1, w - 1 - box.c0))
        return 0.5 * (a.logits + b.logits[..., ::-1]), 0.5 * (a.scores + b.scores)

    # the first click: K proposals, each averaged with its own token's mirror
    first = tta.predict([[45, 70]], [1])
    assert first.logits.shape[0] == model.cfg.num_proposals
    assert list(first.scores) == sorted(first.scores, reverse=True)
    first_m = tta_m.predict(mirrored([[45, 70]]), [1])
    np.testing.assert_allclose(first.logits, first_m.logits[..., ::-1], atol=1e-4)
    np.testing.assert_allclose(first.scores, first_m.scores, atol=1e-6)

    # a refinement on a zoom-in crop, the previous mask fed back
    prev = np.full(img.shape[:2], -3.0, np.float32)
    prev[30:60, 50:95] = 4.0
    pts, labels = [[45, 70], [35, 90]], [1, 0]
    ref = tta.predict(pts, labels, prev_mask=prev)
    assert tta.state.crop_box is not None and tta.state.flipped.crop_box is not None
    mean_logits, mean_scores = plain_mean(pts, labels, prev)
    np.testing.assert_allclose(ref.logits, mean_logits, atol=1e-4)
    np.testing.assert_allclose(ref.scores, mean_scores, atol=1e-6)
    np.testing.assert_array_equal(ref.masks, ref.logits > 0)
    ref_m = tta_m.predict(mirrored(pts), labels, prev_mask=prev[:, ::-1])
    np.testing.assert_allclose(ref.logits, ref_m.logits[..., ::-1], atol=1e-4)

    # a box, off-centre (a mirrored box lands elsewhere)
    box = Box(20.0, 10.5, 70.0, 60.5)
    boxed = tta.predict(box=box)
    mean_logits, _ = plain_mean([], [], box=box)
    np.testing.assert_allclose(boxed.logits, mean_logits, atol=1e-4)

    # switched off again: the plain prediction
    tta.flip_tta = False
    plain.set_image(img)
    np.testing.assert_array_equal(tta.predict([[45, 70]], [1]).logits, plain.predict([[45, 70]], [1]).logits)


def test_bf16_precision_runs_the_network_in_bfloat16_and_returns_float32(tiny_model, disk_image, monkeypatch):
    img, disk = disk_image
    fp32 = OISPredictor(tiny_model, device="cpu")
    bf16 = OISPredictor(tiny_model, device="cpu", precision="bf16")
    seen = []
    decode = tiny_model.decode

    def spy(*args, **kwargs):  # the dtype the decoder computes in
        out = decode(*args, **kwargs)
        seen.append(out[0].dtype)
        return out

    monkeypatch.setattr(tiny_model, "decode", spy)
    outs = []
    for p in (fp32, bf16):
        p.set_image(img)
        outs.append(p.predict([[24, 30]], [1], multimask=True))
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16
    a, b = outs
    assert b.logits.dtype == np.float32 and b.scores.dtype == np.float32
    assert a.logits.shape == b.logits.shape
    # the same network in bf16: logits agree to bf16's ~3 significant digits (relative)
    scale = np.abs(a.logits).max()
    assert np.abs(a.logits - b.logits).max() < 0.05 * scale
    with pytest.raises(ValueError, match="precision must be one of"):
        OISPredictor(tiny_model, device="cpu", precision="fp16")

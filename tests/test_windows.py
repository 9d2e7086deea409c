"""The window reader (data/windows.py) and the predictor's window mode (big, lazy and
multiscale images; channels)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ois.data.images import to_unit_rgb
from napari_ois.data.windows import WindowReader, is_lazy, is_pyramid

da = pytest.importorskip("dask.array")


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- the reader
@pytest.mark.parametrize("kind", ["u8rgb", "u16", "f32", "rgba", "two", "u16rgb", "bool", "one"])
@pytest.mark.parametrize("limits", [None, (10, 200)])
def test_reader_reads_a_small_numpy_image_exactly_as_to_unit_rgb(kind, limits):
    rng = _rng()
    img = {
        "u8rgb": rng.integers(0, 255, (50, 70, 3), dtype=np.uint8),
        "u16": rng.integers(0, 65535, (50, 70), dtype=np.uint16),
        "f32": rng.normal(size=(40, 30)).astype(np.float32),
        "rgba": rng.integers(0, 255, (50, 70, 4), dtype=np.uint8),
        "two": rng.integers(0, 255, (50, 70, 2), dtype=np.uint8),
        "u16rgb": rng.integers(0, 4000, (50, 70, 3), dtype=np.uint16),
        "bool": rng.random((20, 20)) > 0.5,
        "one": rng.integers(0, 255, (50, 70, 1), dtype=np.uint8),
    }[kind]
    ref = to_unit_rgb(img, limits)
    reader = WindowReader(img, contrast_limits=limits)
    h, w = img.shape[:2]
    np.testing.assert_array_equal(reader.read(0, h, 0, w), ref)
    np.testing.assert_array_equal(reader.read(5, 17, 3, 11), ref[5:17, 3:11])
    assert reader.pixels_read == h * w + 12 * 8 and reader.reads == 2
    # the same through dask, by windows (the limits from the same plane: it is small)
    lazy = WindowReader(da.from_array(img, chunks=16), contrast_limits=limits)
    assert lazy.lazy and not reader.lazy
    np.testing.assert_array_equal(lazy.read(5, 30, 7, 20), ref[5:30, 7:20])


def test_reader_on_zarr_reads_only_the_window(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = _rng(1)
    img = rng.integers(0, 4000, (300, 260), dtype=np.uint16)
    z = zarr.open_array(str(tmp_path / "plane.zarr"), mode="w", shape=img.shape, chunks=(64, 64),
                        dtype=img.dtype)
    z[:] = img
    reader = WindowReader(z, contrast_limits=(0, 4000))
    out = reader.read(100, 140, 30, 90)
    np.testing.assert_array_equal(out, to_unit_rgb(img[100:140, 30:90], (0, 4000)))
    assert reader.pixels_read == 40 * 60 and is_lazy(z)
    # in memory too, and a window with out_side is subsampled
    zm = zarr.zeros((1000, 1000), chunks=(128, 128), dtype="uint8")
    zm[400:600, 400:600] = 200
    r2 = WindowReader(zm)
    small = r2.read(0, 1000, 0, 1000, out_side=100)
    assert small.shape == (100, 100, 3) and r2.pixels_read == 100 * 100
    assert small[50, 50, 0] == pytest.approx(200 / 255) and small[5, 5, 0] == 0


def test_lazy_limits_come_from_a_sample_never_the_whole_plane():
    """Without contrast limits, a lazy plane's window comes from a small sample of it."""
    calls = []

    def block(block_info=None):
        info = block_info[None]
        (r0, r1), (c0, c1) = info["array-location"]
        calls.append((r1 - r0) * (c1 - c0))
        rr, cc = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None]
        return ((rr * 7 + cc * 13) % 1000).astype(np.uint16)

    side = 20000
    plane = da.map_blocks(block, dtype=np.uint16, chunks=((1000,) * (side // 1000),) * 2)
    reader = WindowReader(plane)
    assert sum(calls) <= 16 * 1000 * 1000  # 16 tiles, one chunk each: 4 % of the plane
    assert reader.sample_pixels_read == 16 * 128 * 128 and reader.pixels_read == 0
    lo, hi = reader.limits[0]
    assert 0 <= lo < 20 and 980 < hi <= 999  # the values 0..999 repeat
    # given limits: no sample at all
    calls.clear()
    WindowReader(plane, contrast_limits=(0, 999))
    assert not calls


def test_pyramid_level_is_the_smallest_with_enough_pixels_across_the_window():
    rng = _rng(2)
    base = rng.integers(0, 255, (1024, 768, 3), dtype=np.uint8)
    levels = [base, base[::2, ::2], base[::4, ::4], base[::8, ::8]]
    assert is_pyramid(levels) and not is_pyramid(base) and not is_pyramid([[1, 2], [3, 4]])
    reader = WindowReader(levels)
    assert reader.shape == (1024, 768) and reader.lazy
    # the whole plane for a 192 px input: level 2 (256 x 192) is the smallest with >= 192
    out = reader.read(0, 1024, 0, 768, out_side=192)
    assert reader.last_read[:2] == (2, 1) and out.shape == (256, 192, 3)
    np.testing.assert_array_equal(out, to_unit_rgb(levels[2]))
    # a 400 px window for 192 px: level 1 (200 px across)
    out = reader.read(100, 500, 200, 600, out_side=192)
    assert reader.last_read[:2] == (1, 1) and out.shape == (200, 200, 3)
    np.testing.assert_array_equal(out, to_unit_rgb(levels[1][50:250, 100:300]))
    # a small window: full resolution
    out = reader.read(10, 90, 20, 100, out_side=192)
    assert reader.last_read[:2] == (0, 1)
    np.testing.assert_array_equal(out, to_unit_rgb(base[10:90, 20:100]))
    # no out_side: level 0 at full resolution
    assert reader.read(0, 64, 0, 64).shape == (64, 64, 3) and reader.last_read[0] == 0
    # a single level much larger than out_side is read with a stride
    single = WindowReader(base)
    out = single.read(0, 1024, 0, 768, out_side=192)
    assert single.last_read[1] == 5 and min(out.shape[:2]) >= 153 and max(out.shape[:2]) >= 192


def test_channels_one_as_grey_three_as_rgb_with_an_explicit_channel_axis():
    rng = _rng(3)
    chw = rng.integers(0, 4095, (5, 40, 50), dtype=np.uint16)
    # (C, H, W) with channel_axis=0, channel 2 as grey
    r = WindowReader(chw, channel_axis=0, channels=2)
    assert r.shape == (40, 50) and r.channels == (2,)
    np.testing.assert_array_equal(r.read(0, 40, 0, 50), to_unit_rgb(chw[2]))
    # three channels as RGB, each windowed on its own (its own percentiles)
    r3 = WindowReader(chw, channel_axis=0, channels=(4, 0, 1))
    out = r3.read(0, 40, 0, 50)
    for i, c in enumerate((4, 0, 1)):
        np.testing.assert_array_equal(out[..., i], to_unit_rgb(chw[c])[..., 0])
    # one pair of limits per channel, or one pair for all
    r3l = WindowReader(chw, channel_axis=0, channels=(4, 0, 1), contrast_limits=[(0, 100), (0, 200), (0, 300)])
    np.testing.assert_array_equal(r3l.read(0, 40, 0, 50)[..., 1], to_unit_rgb(chw[0], (0, 200))[..., 0])
    # channels last, lazy, a channel choice reads only that channel
    hwc = np.moveaxis(chw, 0, -1)
    rl = WindowReader(da.from_array(hwc, chunks=(16, 16, 5)), channels=[3], contrast_limits=(0, 4095))
    np.testing.assert_array_equal(rl.read(3, 20, 4, 30), to_unit_rgb(hwc[3:20, 4:30, 3], (0, 4095)))
    # default rule for (H, W, 2): the channels averaged (to_unit_rgb's)
    two = hwc[..., :2]
    np.testing.assert_array_equal(WindowReader(two).read(0, 40, 0, 50), to_unit_rgb(two))


@pytest.mark.parametrize("bad, message", [
    (dict(channels=(0, 1)), "one channel index"),
    (dict(channels=7), "does not exist"),
    (dict(channel_axis=1), "channel_axis"),
])
def test_reader_refuses_bad_channel_choices(bad, message):
    with pytest.raises(ValueError, match=message):
        WindowReader(np.zeros((3, 20, 20), np.uint16), **({"channel_axis": 0} | bad))


def test_reader_refuses_a_stack_and_complex_and_empty_windows():
    with pytest.raises(ValueError, match="3D stack"):
        WindowReader(np.zeros((20, 30, 40), np.uint8))
    with pytest.raises(ValueError, match="complex"):
        WindowReader(np.zeros((20, 30), np.complex64))
    with pytest.raises(ValueError, match="empty or outside"):
        WindowReader(np.zeros((20, 30), np.uint8)).read(25, 40, 0, 10)


# --------------------------------------------------------------------------- window mode
import torch  # noqa: E402

from napari_ois import OISPredictor, load_predictor  # noqa: E402
from napari_ois.predictor import WindowSearch  # noqa: E402


@pytest.fixture(scope="module")
def default_pred():
    torch.manual_seed(0)
    return load_predictor("default", device="cpu")


def _scene(side=4000, obj=60, at=(2500, 1200), seed=0):
    """A cluttered ``side`` x ``side`` RGB image with one yellow disk of ``obj`` px."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 140, (side // 50 + 1, side // 50 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(small, 50, 0), 50, 1)[:side, :side].copy()  # 50 px blocks
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    rr, cc = np.mgrid[:obj, :obj]
    disk = (rr - obj / 2 + 0.5) ** 2 + (cc - obj / 2 + 0.5) ** 2 < (obj / 2 - 1) ** 2
    r0, c0 = at
    img[r0:r0 + obj, c0:c0 + obj][disk] = (235, 205, 40)
    gt_box = (r0, r0 + obj, c0, c0 + obj)
    return img, disk, gt_box


def _iou_in_window(pred, k, disk, gt_box):
    """IoU of proposal ``k`` (a windowed Prediction) with the disk at ``gt_box``."""
    h, w = pred.image_shape
    r0, r1, c0, c1 = pred.window
    g0, g1, h0, h1 = gt_box
    a0, a1, b0, b1 = min(r0, g0), max(r1, g1), min(c0, h0), max(c1, h1)
    m = np.zeros((a1 - a0, b1 - b0), bool)
    m[r0 - a0:r1 - a0, c0 - b0:c1 - b0] = pred.masks[k]
    g = np.zeros_like(m)
    g[g0 - a0:g1 - a0, h0 - b0:h1 - b0] = disk
    return (m & g).sum() / max(1, (m | g).sum())


def test_window_mode_finds_a_small_object_in_a_big_image(default_pred):
    img, disk, gt_box = _scene()
    st = default_pred.set_image(img)
    assert st.windowed and st.embedding is None and st.rgb8 is None  # nothing of the plane kept
    click = [[gt_box[0] + 30, gt_box[2] + 30]]
    out = default_pred.predict(click, [1])
    k = default_pred.num_proposals
    assert out.masks.shape[0] == k and out.window is not None and out.image_shape == img.shape[:2]
    r0, r1, c0, c1 = out.window
    assert out.masks.shape[1:] == (r1 - r0, c1 - c0) == out.logits.shape[1:]
    # the proposals' window (the object and the larger things around it), never the image
    assert max(r1 - r0, c1 - c0) <= WindowSearch().max_window
    assert np.all(np.diff(out.scores) <= 0)
    ious = [_iou_in_window(out, i, disk, gt_box) for i in range(k)]
    assert max(ious) > 0.85, ious
    # the mask within a few pixels of the object
    best = out.masks[int(np.argmax(ious))]
    rows, cols = np.nonzero(best)
    assert abs(rows.min() + r0 - gt_box[0]) <= 4 and abs(rows.max() + r0 - gt_box[1] + 1) <= 4
    assert abs(cols.min() + c0 - gt_box[2]) <= 4 and abs(cols.max() + c0 - gt_box[3] + 1) <= 4
    # a later click refines on a crop; its window holds the mask
    top = int(np.argmax(ious))
    nxt = default_pred.predict(click + [[gt_box[0] - 20, gt_box[2] - 20]], [1, 0],
                               prev_mask=out.logits[top], prev_window=out.window)
    assert nxt.masks.shape[0] == 1 and nxt.window is not None
    assert _iou_in_window(nxt, 0, disk, gt_box) > 0.85
    # full-size views on demand
    full = nxt.full_mask(0)
    assert full.shape == img.shape[:2] and full.sum() == nxt.masks[0].sum()
    # the same whole-image embedding loses it (the object is a few pixels at 192 px): the
    # reason for window mode (measured in benchmarks/big_images.py)
    default_pred.set_image(img, windows=False)
    whole = default_pred.predict(click, [1])
    assert whole.window is None and whole.masks.shape[1:] == img.shape[:2]


def test_a_lazily_read_40000_px_plane_is_read_under_2_percent_per_click(default_pred):
    side, chunk, obj = 40000, 1000, 80
    at = (23456, 17890)
    generated = []

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        generated.append((r1 - r0) * (c1 - c0))
        rr, cc = np.mgrid[r0:r1, c0:c1]
        out = (60 + ((rr // 40 + cc // 40) % 2) * 50).astype(np.uint8)  # a 40 px checkerboard
        disk = (rr - at[0]) ** 2 + (cc - at[1]) ** 2 < (obj / 2) ** 2
        out[disk] = 230
        return out

    plane = da.map_blocks(block, dtype=np.uint8, chunks=((chunk,) * (side // chunk),) * 2)
    st = default_pred.set_image(plane)  # uint8: no limits to estimate, nothing read
    assert st.windowed and sum(generated) == 0
    total = side * side
    clicks, labels, prev, win = [[at[0], at[1]]], [1], None, None
    for i in range(3):
        st.reader.pixels_read = 0
        generated.clear()
        out = default_pred.predict(clicks, labels, prev_mask=prev, prev_window=win)
        assert st.reader.pixels_read <= 0.02 * total
        assert sum(generated) <= 0.02 * total, f"click {i + 1}: {sum(generated) / total:.2%} generated"
        assert out.logits.size <= 3 * 3072 * 3072
        prev, win = out.logits[0], out.window
        clicks.append([at[0] + obj // 2 + 10 + i, at[1]])
        labels.append(0)
    r0, r1, c0, c1 = win
    assert r0 <= at[0] < r1 and c0 <= at[1] < c1


def test_small_images_are_unchanged_and_can_be_forced_into_windows(tiny_model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)
    on = OISPredictor(tiny_model, windows=True)
    off = OISPredictor(tiny_model, windows=False)
    on.set_image(img)
    off.set_image(img)
    assert not on.state.windowed
    a, b = on.predict([[60, 70]], [1]), off.predict([[60, 70]], [1])
    assert a.window is None and np.array_equal(a.logits, b.logits) and np.array_equal(a.scores, b.scores)
    # a windowed prev_mask on a whole-image state is pasted (outside: not the object)
    crop = a.logits[0][30:100, 40:120]
    pasted = np.full(img.shape[:2], -20.0, np.float32)
    pasted[30:100, 40:120] = crop
    x = on.predict([[60, 70], [35, 45]], [1, 0], prev_mask=crop, prev_window=(30, 100, 40, 120))
    y = on.predict([[60, 70], [35, 45]], [1, 0], prev_mask=pasted)
    np.testing.assert_array_equal(x.logits, y.logits)
    with pytest.raises(ValueError, match="must match its window"):
        on.predict([[60, 70]], [1], prev_mask=crop, prev_window=(0, 10, 0, 10))
    # forced window mode on a small image: masks for a window of it
    st = on.set_image(img, windows=True)
    assert st.windowed
    w = on.predict([[60, 70]], [1])
    assert w.window is not None and w.masks.shape[1:] == (w.window[1] - w.window[0], w.window[3] - w.window[2])


def test_threshold_pyramid_and_channels_choose_the_mode(tiny_model):
    pred = OISPredictor(tiny_model, windows=WindowSearch(threshold=100))
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (160, 90, 3), dtype=np.uint8)
    assert pred.set_image(img).windowed  # longest side over the threshold
    assert not pred.set_image(img[:100, :90]).windowed
    assert pred.set_image([img, img[::2, ::2]]).windowed  # a pyramid: always windows
    assert pred.set_image(da.from_array(img[:50, :50], chunks=32)).windowed  # lazy: windows
    out = pred.predict([[20, 20]], [1])
    assert out.window is not None
    # a pyramid with windows off is read whole from its first level
    st = pred.set_image([img, img[::2, ::2]], windows=False)
    assert not st.windowed and st.shape == (160, 90)


def test_channels_choose_what_the_model_sees(tiny_model):
    rng = np.random.default_rng(2)
    chw = rng.integers(0, 4000, (4, 60, 80), dtype=np.uint16)
    pred = OISPredictor(tiny_model)
    pred.set_image(chw, channel_axis=0, channels=2)
    a = pred.predict([[30, 40]], [1])
    pred.set_image(chw[2])
    b = pred.predict([[30, 40]], [1])
    np.testing.assert_array_equal(a.logits, b.logits)
    pred.set_image(np.moveaxis(chw, 0, -1), channels=(3, 1, 0), contrast_limits=(0, 4000))
    c = pred.predict([[30, 40]], [1])
    rgb = np.stack([chw[3], chw[1], chw[0]], -1)
    pred.set_image(rgb, contrast_limits=(0, 4000))
    np.testing.assert_array_equal(c.logits, pred.predict([[30, 40]], [1]).logits)
    with pytest.raises(ValueError, match="one channel index"):
        pred.set_image(chw, channel_axis=0, channels=(0, 1))


def test_prev_window_is_found_for_the_last_predictions_logits(default_pred):
    img, disk, gt_box = _scene(side=3000, at=(1200, 900))
    default_pred.set_image(img)
    click = [[gt_box[0] + 30, gt_box[2] + 30]]
    out = default_pred.predict(click, [1])
    # a caller that passes the logits back as before (no prev_window) still works
    a = default_pred.predict(click + [[gt_box[0] - 15, gt_box[2] - 15]], [1, 0], prev_mask=out.logits[0])
    b = default_pred.predict(click + [[gt_box[0] - 15, gt_box[2] - 15]], [1, 0], prev_mask=out.logits[0],
                             prev_window=out.window)
    assert a.window == b.window and np.array_equal(a.logits, b.logits)
    with pytest.raises(ValueError, match="prev_mask has shape"):
        default_pred.predict(click, [1], prev_mask=np.zeros((5, 5), np.float32))


def test_read_many_reads_a_lazy_source_once_per_level():
    rng = _rng(5)
    img = rng.integers(0, 255, (600, 500, 3), dtype=np.uint8)
    calls = []

    def block(x, block_info=None):
        (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
        calls.append((r1 - r0) * (c1 - c0))
        return img[r0:r1, c0:c1]

    lazy = da.zeros(img.shape, dtype=np.uint8, chunks=(100, 100, 3)).map_blocks(block, dtype=np.uint8)
    reader = WindowReader(lazy)
    boxes = [(250, 350, 200, 300), (200, 400, 150, 350), (100, 500, 50, 450)]
    many = reader.read_many(boxes, out_side=64)
    single = WindowReader(img)
    for box, got in zip(boxes, many):
        np.testing.assert_array_equal(got, single.read(*box, out_side=64))
    assert reader.pixels_read == 400 * 400  # the joint box, once
    assert sum(calls) == 4 * 5 * 100 * 100  # the 20 chunks it touches, each once
# --------------------------------------------------------------------------- the session
def test_session_on_a_big_image_keeps_crops_and_commits_in_place(default_pred):
    from napari_ois.session import InteractionSession

    img, disk, gt_box = _scene(side=3000, at=(1200, 900))
    s = InteractionSession(default_pred, img)
    click = (gt_box[0] + 30, gt_box[2] + 30)
    s.add_click(click)
    obj = s.state()
    assert obj.window is not None and obj.logits.shape == (obj.window[1] - obj.window[0], obj.window[3] - obj.window[2])
    assert s.proposals().window is not None
    crop, window = s.mask_window()
    assert window == obj.window and crop.shape == obj.logits.shape
    full = s.mask()
    assert full.shape == (3000, 3000) and full.sum() == crop.sum()
    # the proposal holding the disk, then a negative click refines it on a crop
    best = max(range(len(s.proposals().masks)),
               key=lambda i: _iou_in_window(s.proposals(), i, disk, gt_box))
    s.select_proposal(best)
    s.add_click((gt_box[0] - 10, gt_box[2] - 10), positive=False)
    obj = s.state()
    assert obj.window is not None and obj.logits.size < 0.01 * 3000 * 3000
    s.undo()
    assert s.state().window == s.proposals().window
    s.add_click((gt_box[0] - 10, gt_box[2] - 10), positive=False)
    mask = s.commit()
    assert mask.shape == (3000, 3000)
    g = np.zeros((3000, 3000), bool)
    g[gt_box[0]:gt_box[1], gt_box[2]:gt_box[3]] = disk
    written = s.labels == 1
    assert np.array_equal(written, mask) and (written & g).sum() / (written | g).sum() > 0.8


def test_session_takes_channels_pyramids_and_lazy_planes(tiny_model, default_pred):
    from napari_ois.session import InteractionSession

    rng = np.random.default_rng(4)
    chw = rng.integers(0, 4000, (3, 2, 80, 90), dtype=np.uint16)  # (C, Z, H, W)
    s = InteractionSession(OISPredictor(tiny_model), chw, channel_axis=0, channels=1)
    assert s.spatial_shape == (2, 80, 90) and s.is_stack
    m = s.add_click((1, 40, 45))
    pred = OISPredictor(tiny_model)
    pred.set_image(chw[1, 1])
    ref = pred.predict([[40, 45]], [1])
    np.testing.assert_array_equal(m, ref.masks[0])
    # a 2D pyramid (napari multiscale): window mode, the plane's shape from level 0
    img, disk, gt_box = _scene(side=800, at=(300, 500))
    sp = InteractionSession(default_pred, [img, img[::2, ::2], img[::4, ::4]])
    assert sp.plane_shape == (800, 800) and sp.rgb
    sp.add_click((gt_box[0] + 30, gt_box[2] + 30))
    assert sp.state().window is not None and sp.mask().shape == (800, 800)
    sp.commit()
    assert sp.labels.shape == (800, 800) and sp.labels.max() == 1
    # a dask stack: each slice read lazily
    lazy = da.from_array(rng.integers(0, 255, (3, 120, 100), dtype=np.uint8), chunks=(1, 64, 64))
    sl = InteractionSession(OISPredictor(tiny_model), lazy)
    sl.add_click((2, 60, 50))
    assert sl.state((2,)).window is not None and sl.mask((2,)).shape == (120, 100)



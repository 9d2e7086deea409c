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

"""Memory and click markers of the widget (issue 34), with a real viewer (under Xvfb)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_ois.controller import Predict  # noqa: E402

from test_session import FakePredictor  # noqa: E402
from test_widget import click, make, settle  # noqa: E402


def blocks_image(side=200):
    img = np.zeros((side, side), np.uint8)
    img[side // 4:side * 3 // 5, side // 5:side * 3 // 4] = 200
    return img


def record_jobs(widget) -> list:
    """Weak references to every job the widget's controller hands out."""
    jobs, next_job = [], widget.controller.next_job

    def recording(*a, **kw):
        job = next_job(*a, **kw)
        if job is not None:
            jobs.append(weakref.ref(job))
        return job

    widget.controller.next_job = recording
    return jobs


def test_finished_jobs_and_their_arrays_are_not_kept(make_napari_viewer, qtbot):
    """Every finished Predict job (and the previous mask it carried) is collected: napari
    keeps each worker it made, so neither the worker nor its slots may hold the job."""
    viewer, layer, w = make(make_napari_viewer, qtbot, image=blocks_image(), predictor=FakePredictor())
    settle(qtbot, w)
    jobs = record_jobs(w)
    for i in range(6):
        click(w, (60 + 3 * i, 60 + 2 * i), positive=True)
        settle(qtbot, w)
        assert w.session.request() is None  # predicted
    qtbot.wait(50)
    gc.collect()
    alive = [r() for r in jobs if r() is not None]
    assert len(jobs) >= 6
    assert alive == [], f"{len(alive)} of {len(jobs)} finished jobs are still alive: {alive[:1]}"
    assert w.controller.running is None
    # the widget goes on working after its workers were released
    w.commit()
    assert int(w.labels_layer.data.max()) == 1


def test_the_logits_of_earlier_clicks_are_released_on_a_large_image(make_napari_viewer, qtbot):
    """On an image over ``UNDO_FULL_PIXELS`` the undo keeps compact copies: of the logits
    every prediction returned, only the first click's proposals (kept for the chooser) and
    the latest mask may stay alive, however many clicks were made."""
    side = 1100  # 1.21 Mpx: undo snapshots are packed
    viewer, layer, w = make(make_napari_viewer, qtbot, image=blocks_image(side), predictor=FakePredictor())
    settle(qtbot, w)
    arrays, compute = [], w.session.compute

    def recording(request):
        result = compute(request)
        arrays.append(weakref.ref(np.asarray(result.prediction.logits)))
        return result

    w.session.compute = recording
    for i in range(5):
        click(w, (side // 3 + 5 * i, side // 3 + 4 * i), positive=i != 3)
        settle(qtbot, w)
    qtbot.wait(50)
    gc.collect()
    assert len(arrays) == 5
    alive = [i for i, r in enumerate(arrays) if r() is not None]
    assert alive in ([0, 4], [4]), alive


def on_screen_px(layer, zoom: float) -> float:
    """The drawn size, in canvas pixels, of the layer's next point at camera ``zoom``."""
    lo, hi = layer.canvas_size_limits
    return float(min(max(float(np.max(layer.current_size)) * zoom * float(layer.scale[-1]), lo), hi))


@pytest.mark.parametrize("side", [8000, 48])
def test_click_markers_have_a_bounded_size_on_screen(make_napari_viewer, qtbot, side):
    """On an 8000 x 8000 image the markers were 144 image pixels wide (they hid the mask when
    zoomed in): their size on screen is now clamped to ``CLICK_CANVAS_PX``, and still at least
    a few pixels on a small image or zoomed out."""
    from napari_ois._layers import CLICK_CANVAS_PX
    from napari_ois._widget import OISWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((side, side), np.uint8), name="big")
    w = OISWidget(viewer)
    w.controller.prefetch = False  # no model: only the layers are looked at
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.points_layer is not None, timeout=10_000)
    pts = w.points_layer
    lo, hi = CLICK_CANVAS_PX
    assert 4 <= lo <= hi <= 20
    assert pts.canvas_size_limits == (lo, hi)
    for zoom in (0.05, 1.0, 4.0, 40.0):  # whole image in view ... a few pixels in view
        assert lo <= on_screen_px(pts, zoom) <= hi
    # a click placed on the image is drawn within the limits
    with w.overlays.sync():  # drawn, not taken as a click (no model is loaded here)
        pts.add(np.array([[side / 2, side / 2]]))
    visual = viewer.window._qt_viewer.canvas.layer_to_visual[pts]
    assert tuple(visual.node.points_markers.canvas_size_limits) == (lo, hi)


def test_the_preview_of_a_big_image_is_painted_only_in_the_objects_window(make_napari_viewer, qtbot, tiny_model):
    """Window mode (a big image): the current object is kept for a window of the plane, and
    the preview layer is written (and later cleared) only there, never as a whole plane."""
    from napari_ois.predictor import OISPredictor, WindowSearch

    pred = OISPredictor(tiny_model, device="cpu", windows=WindowSearch(threshold=256, max_window=300))
    viewer, layer, w = make(make_napari_viewer, qtbot, image=blocks_image(600), predictor=pred)
    settle(qtbot, w)
    for i, at in enumerate([(150, 150), (150, 170), (450, 420)]):
        if i == 2:
            w.session.commit()  # a new object elsewhere: its window is somewhere else
        click(w, at)
        settle(qtbot, w)
        crop, window = w.session.mask_window()
        assert window is not None and crop.shape == (window[1] - window[0], window[3] - window[2])
        assert max(window[1] - window[0], window[3] - window[2]) < 600
        assert w.overlays.painted[()] == tuple(window)
        if i == 1:  # a whole-plane write would have reset a pixel far outside the window
            assert w.preview_layer.data[599, 0] == 9
            w.preview_layer.data[599, 0] = 0
        assert np.array_equal(np.asarray(w.preview_layer.data) > 0, w.session.mask())
        if i == 0:
            w.preview_layer.data[599, 0] = 9
            # the proposals' thumbnails show their window (read by window), one per proposal
            icons = [w.proposal_list.item(j).icon() for j in range(w.proposal_list.count())]
            assert icons and all(not ic.isNull() for ic in icons)

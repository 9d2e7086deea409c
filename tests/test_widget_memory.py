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

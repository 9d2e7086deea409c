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

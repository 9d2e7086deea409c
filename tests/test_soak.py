"""Soak test: 1,000 clicks through one ``InteractionSession`` with the real tiny network.

Several objects, each with a random number of clicks, proposal changes, undos, resets and
commits mixed in. After every step:

- no stale mask: the mask accounts for every click (``n_applied == len(clicks)``), and an
  undo brings back exactly the mask that was shown before the undone step;
- bounded memory: the undo history holds at most one snapshot per step of the *current*
  object (``InteractionSession.undo_nbytes()``), is empty after a commit, and the bytes the
  session holds (its arrays' ``nbytes``) and the Python heap (``tracemalloc``) do not grow
  with the number of clicks.

Slow (about 20 s on 2 CPU cores): ``bash scripts/test.sh -m slow tests/test_soak.py``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from napari_ois import OISPredictor
from napari_ois.session import InteractionSession

H, W = 60, 80
N_CLICKS = 1000


def soak_image() -> np.ndarray:
    img = np.full((H, W, 3), 40, np.uint8)
    img[5:25, 5:30] = (220, 60, 60)
    img[30:55, 10:35] = (60, 220, 60)
    img[10:50, 45:75] = (60, 60, 220)
    img[20:30, 55:65] = (230, 230, 230)
    return img


def session_nbytes(s: InteractionSession) -> int:
    """Bytes of the arrays the session holds for its objects (masks, proposals, undo)."""
    n = 0
    for st in s._slices.values():
        obj = st.obj
        if obj.logits is not None:
            n += np.asarray(obj.logits).nbytes
        if obj.proposals is not None:
            n += sum(np.asarray(getattr(obj.proposals, a)).nbytes for a in ("masks", "scores", "logits"))
    return n + sum(s.undo_nbytes())


@pytest.mark.slow
def test_a_thousand_clicks_keep_memory_bounded_and_masks_current(tiny_model):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    s = InteractionSession(OISPredictor(tiny_model, device="cpu"), soak_image())
    plane_bytes = H * W * 4  # one float32 logits array
    k = s.num_proposals
    # what one object can hold: its logits, its K proposals (masks + logits + scores) and one
    # undo snapshot per step (a snapshot's logits at most one plane)
    per_object_fixed = plane_bytes + k * (H * W + plane_bytes + 4)

    shown = []  # masks shown before each step of the current object (what undo must bring back)
    steps_in_object = 0
    clicks = commits = undos = failed_commits = 0
    heap_base = heap_peak_after_warmup = None
    largest_held = 0
    tracemalloc.start()
    try:
        while clicks < N_CLICKS:
            obj = s.state()
            action = rng.random()
            if obj.clicks and action < 0.12:  # undo
                assert s.undo()
                undos += 1
                steps_in_object -= 1
                before = shown.pop()
                now = s.mask()
                assert (before is None and now is None) or np.array_equal(before, now), \
                    f"undo after click {clicks} did not bring back the previous mask"
                st = s.state()
                assert st.n_applied == len(st.clicks) and not st.pending, "stale mask after an undo"
            elif obj.clicks and obj.proposals is not None and action < 0.17:  # another proposal
                shown.append(s.mask())
                s.cycle_proposal(1)
                s.predict_pending()  # later clicks are predicted again from the chosen proposal
                steps_in_object += 1
                st = s.state()
                assert st.n_applied == len(st.clicks) and not st.pending, "stale mask after a proposal change"
            elif obj.clicks and action < 0.27 and len(obj.clicks) >= 2:  # commit
                try:
                    s.commit()
                    commits += 1
                except ValueError as exc:  # the object lies on existing labels only
                    assert "existing labels" in str(exc) or "nothing to commit" in str(exc)
                    failed_commits += 1
                    s.reset_object()
                    s.clear()  # drop that object and its history
                shown, steps_in_object = [], 0
                assert s.undo_nbytes() == [], "a committed object must leave no undo history"
            else:  # a click
                positive = not obj.clicks or rng.random() < 0.7
                point = (float(rng.uniform(0, H - 1)), float(rng.uniform(0, W - 1)))
                shown.append(s.mask())
                mask = s.add_click(point, positive=positive)
                steps_in_object += 1
                clicks += 1
                st = s.state()
                assert st.n_applied == len(st.clicks) and not st.pending, "stale mask after a click"
                assert mask is not None and mask.shape == (H, W)
                assert np.array_equal(mask, st.mask)
            # the undo history holds one snapshot per step of the current object, no more
            nbytes = s.undo_nbytes()
            assert len(nbytes) == steps_in_object == len(shown)
            assert all(b <= plane_bytes for b in nbytes)
            held = session_nbytes(s)
            largest_held = max(largest_held, held)
            assert held <= per_object_fixed + steps_in_object * plane_bytes
            if clicks == 100 and heap_base is None:
                heap_base = tracemalloc.get_traced_memory()[0]
            if heap_base is not None:
                heap_peak_after_warmup = max(heap_peak_after_warmup or 0, tracemalloc.get_traced_memory()[0])
        # end on a committed (or dropped) object: nothing of the old objects may remain
        if s.state().clicks:
            s.reset_object()
            s.clear()
        heap_end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert commits >= 20 and undos >= 50, (commits, undos)
    assert s.labels is not None and s.labels.max() == commits
    assert session_nbytes(s) == 0
    # the heap after 1,000 clicks is where it was after 100 (plus the labels' growth: none,
    # the labels array is fixed size); allow 2 MB for allocator and cache noise
    assert heap_end - heap_base < 2 * 2**20, (heap_base, heap_end)
    # and in between it never held more than one object's worth (the largest object here
    # held `largest_held` bytes) plus noise
    assert heap_peak_after_warmup - heap_base < largest_held + 4 * 2**20, (heap_base, heap_peak_after_warmup)

"""The interaction session (no Qt): clicks, proposals, undo, commit, caching, propagation.

Semantics ("a negative click shrinks the mask", propagation along a ball) are tested with a
deterministic fake predictor; the wiring to the real network with the tiny model.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_ois import OISPredictor, Prediction
from napari_ois.data.clicks import Click
from napari_ois.session import InteractionSession, interior_point, next_label_id, paint_indices


class FakePredictor:
    """Deterministic stand-in for ``OISPredictor``.

    The object under a positive click is the connected component of ``image > 0.5`` that
    holds it (nothing on background). Later clicks refine ``prev_mask``: the part of it on
    the foreground is kept, positive clicks add their component, negative ones cut a disk of
    radius 6. The first click yields K proposals: component (0.9), disk r=3 (0.6), the
    whole foreground (0.3). The score is 0.9 when the mask lies on the foreground, else 0.1.
    """

    num_proposals = 3

    def __init__(self):
        self.embedded = []  # slice images set, in order
        self.calls = []  # (points, labels, had_prev, multimask)
        self.contrast_limits = []
        self.depths = []
        self._state = None

    # --- OISPredictor's image API
    def set_image(self, image, depth=None, contrast_limits=None):
        img = np.asarray(image, dtype=float)
        if img.ndim == 3:
            img = img.mean(-1)
        self.embedded.append(img)
        self.contrast_limits.append(contrast_limits)
        self.depths.append(depth)
        self._state = {"image": img}
        return self._state

    @property
    def state(self):
        return self._state

    def set_state(self, state):
        self._state = state

    # --- prediction
    def _disk(self, r, c, radius):
        h, w = self._state["image"].shape
        rr, cc = np.mgrid[:h, :w]
        return (rr - r) ** 2 + (cc - c) ** 2 <= radius**2

    def _component(self, r, c):
        fg = self._state["image"] > 0.5
        lab, _ = ndimage.label(fg)
        v = lab[int(round(r)), int(round(c))]
        return (lab == v) if v else np.zeros(fg.shape, bool)

    def predict(self, points, labels, prev_mask=None, multimask=True):
        self.calls.append((np.asarray(points).tolist(), list(labels), prev_mask is not None, multimask))
        pts = np.asarray(points, float)
        if multimask:
            r, c = pts[0]
            masks = np.stack([self._component(r, c), self._disk(r, c, 3), self._state["image"] > 0.5])
            scores = np.array([0.9, 0.6, 0.3], np.float32)
        else:
            fg = self._state["image"] > 0.5
            m = np.zeros(fg.shape, bool) if prev_mask is None else (np.asarray(prev_mask) > 0) & fg
            for (r, c), lab in zip(pts, labels):
                if lab == 1:
                    m |= self._component(r, c)
            for (r, c), lab in zip(pts, labels):
                if lab == 0:
                    m &= ~self._disk(r, c, 6)
            inside = self._state["image"][m]
            masks = m[None]
            scores = np.array([0.9 if inside.size and inside.mean() > 0.5 else 0.1], np.float32)
        logits = np.where(masks, 5.0, -5.0).astype(np.float32)
        return Prediction(masks, scores, logits)


def blob_image():
    img = np.zeros((40, 60), np.float32)
    img[5:30, 5:35] = 1.0  # a 25 x 30 rectangle
    img[30:38, 45:55] = 1.0  # a second object
    return img


def ball_stack(z=21, r=7, centre=(10, 20, 20)):
    zz, yy, xx = np.mgrid[:z, :40, :40]
    ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r**2
    return ball.astype(np.float32), ball


# --------------------------------------------------------------------------- clicks
def test_first_click_gives_sorted_proposals_and_selects_the_best():
    s = InteractionSession(FakePredictor(), blob_image())
    mask = s.add_click((10, 10))
    prop = s.proposals()
    assert prop.masks.shape == (3, 40, 60)
    assert np.all(np.diff(prop.scores) <= 0)
    assert s.state().selected == 0
    assert np.array_equal(mask, prop.masks[0]) and mask.sum() == 25 * 30
    assert s.state().score == pytest.approx(0.9)


def test_select_and_cycle_proposals():
    s = InteractionSession(FakePredictor(), blob_image())
    s.add_click((10, 10))
    m1 = s.select_proposal(1)
    assert np.array_equal(m1, s.proposals().masks[1]) and s.state().selected == 1
    s.cycle_proposal(1)
    assert s.state().selected == 2
    s.cycle_proposal(1)
    assert s.state().selected == 0  # wraps
    s.cycle_proposal(-1)
    assert s.state().selected == 2
    with pytest.raises(ValueError, match="does not exist"):
        s.select_proposal(7)


def test_max_proposals_trims_the_list():
    s = InteractionSession(FakePredictor(), blob_image(), max_proposals=2)
    s.add_click((10, 10))
    assert len(s.proposals().masks) == 2
    assert s.num_proposals == 2


def test_negative_click_shrinks_the_mask():
    fake = FakePredictor()
    s = InteractionSession(fake, blob_image())
    before = s.add_click((10, 10)).copy()
    after = s.add_click((20, 20), positive=False)
    assert after.sum() < before.sum()
    assert not after[20, 20] and before[20, 20]
    assert np.all(after <= before)  # only removed pixels
    # the second prediction got both clicks in order and the previous mask
    pts, labels, had_prev, multimask = fake.calls[-1]
    assert pts == [[10, 10], [20, 20]] and labels == [1, 0] and had_prev and not multimask


def test_positive_click_grows_the_mask_after_a_proposal_choice():
    s = InteractionSession(FakePredictor(), blob_image())
    s.add_click((10, 10))
    s.select_proposal(1)  # the small disk
    small = s.mask().sum()
    grown = s.add_click((34, 50))  # the second object
    assert grown.sum() > small and grown[34, 50]


def test_undo_restores_clicks_and_the_previous_mask():
    s = InteractionSession(FakePredictor(), blob_image())
    m1 = s.add_click((10, 10)).copy()
    s.add_click((20, 20), positive=False)
    assert len(s.clicks()) == 2
    assert s.undo()
    assert len(s.clicks()) == 1 and np.array_equal(s.mask(), m1)
    s.select_proposal(2)
    assert s.undo() and s.state().selected == 0  # a proposal choice is undoable too
    assert s.undo() and s.clicks() == () and s.mask() is None
    assert not s.undo()


def test_reset_object_is_undoable_and_clear_drops_everything():
    s = InteractionSession(FakePredictor(), blob_image())
    s.add_click((10, 10))
    s.reset_object()
    assert s.clicks() == () and s.mask() is None
    assert s.undo() and len(s.clicks()) == 1
    s.clear()
    assert s.active_keys() == []


def test_clicks_outside_the_image_are_refused_with_a_clear_message():
    s = InteractionSession(FakePredictor(), blob_image())
    with pytest.raises(ValueError, match="outside the image plane of 40 x 60"):
        s.add_click((45, 10))
    with pytest.raises(ValueError, match="outside"):
        s.push_click((-3, 10))
    with pytest.raises(ValueError, match="not finite"):
        s.push_click((np.nan, 1))
    assert s.clicks() == ()  # nothing was recorded
    # a click on the last pixel's far half still belongs to the image
    s.push_click((39.4, 59.4))
    assert s.clicks()[0] == Click(39.0, 59.0, True)


# --------------------------------------------------------------------------- commit
def test_commit_writes_new_ids_and_preserves_existing_labels():
    s = InteractionSession(FakePredictor(), blob_image())
    labels = np.zeros((40, 60), np.int32)
    labels[0:10, 0:10] = 7  # a label the user already has, overlapping the rectangle
    s.add_click((20, 20))
    mask = s.commit(labels)
    assert mask.sum() == 25 * 30
    assert s.last_commit.label_id == 8  # max + 1: never an existing id
    assert np.all(labels[0:10, 0:10] == 7)  # preserved
    assert np.all(labels[mask & (labels != 7)] == 8)
    assert s.clicks() == () and s.mask() is None  # the next object starts
    s.add_click((34, 50))
    s.commit(labels)
    assert s.last_commit.label_id == 9 and labels[34, 50] == 9


def test_commit_overwrite_and_errors():
    s = InteractionSession(FakePredictor(), blob_image())
    labels = np.zeros((40, 60), np.uint8)
    labels[0:10, 0:10] = 7
    with pytest.raises(ValueError, match="nothing to commit"):
        s.commit(labels)
    s.add_click((20, 20))
    s.commit(labels, overwrite=True)
    assert labels[6, 6] == 8
    full = np.full((40, 60), 255, np.uint8)
    s.add_click((20, 20))
    with pytest.raises(ValueError, match="does not fit"):
        s.commit(full)
    assert len(s.clicks()) == 1  # the object survives a failed commit
    with pytest.raises(ValueError, match="must match"):
        s.commit(np.zeros((3, 3), np.int32))


def test_commit_without_labels_uses_the_sessions_own_array():
    s = InteractionSession(FakePredictor(), blob_image())
    s.add_click((20, 20))
    s.commit()
    assert s.labels.dtype == np.int32 and s.labels.shape == (40, 60) and s.labels.max() == 1


def test_helpers():
    assert next_label_id(np.zeros((2, 2), int)) == 1
    assert next_label_id(np.array([[0, 4]])) == 5
    lab = np.zeros((3, 5, 5), int)
    lab[1, 0, 0] = 2
    m = np.zeros((5, 5), bool)
    m[0, :2] = True
    idx = paint_indices(lab, (1,), m)
    assert [a.tolist() for a in idx] == [[1], [0], [1]]
    assert len(paint_indices(lab, (1,), m, overwrite=True)[0]) == 2
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    assert interior_point(ring) == (4, 4)


# --------------------------------------------------------------------------- threading split
def test_burst_of_clicks_predicts_the_first_alone_then_the_latest_state():
    fake = FakePredictor()
    s = InteractionSession(fake, blob_image())
    for p in [(10, 10), (12, 12), (20, 20)]:
        s.push_click(p)
    req = s.request()
    assert req.multimask and len(req.clicks) == 1  # proposals of the first click
    s.push_click((22, 22), positive=False)  # arrives while it runs
    assert s.apply(s.compute(req))
    assert s.proposals() is not None and s.state().pending
    req2 = s.request()
    assert not req2.multimask and len(req2.clicks) == 4 and req2.prev_mask is not None
    assert s.apply(s.compute(req2)) and not s.needs_prediction()
    assert len(fake.calls) == 2  # 4 clicks, 2 predictions: no pile-up


def test_stale_results_are_refused():
    s = InteractionSession(FakePredictor(), blob_image())
    s.add_click((10, 10))
    s.push_click((20, 20), positive=False)
    req = s.request()
    result = s.compute(req)
    s.undo()  # the click the result was computed for is gone
    assert not s.apply(result)
    assert len(s.clicks()) == 1 and s.mask()[20, 20]
    s.push_click((20, 20), positive=False)
    req = s.request()
    result = s.compute(req)
    s.select_proposal(1)  # another base mask: the result is stale
    assert not s.apply(result)
    # an older result never replaces a newer one
    s2 = InteractionSession(FakePredictor(), blob_image())
    s2.push_click((10, 10))
    r1 = s2.compute(s2.request())
    assert s2.apply(r1) and not s2.apply(r1)


def test_undo_snapshots_taken_while_predicting_get_the_result():
    s = InteractionSession(FakePredictor(), blob_image())
    s.push_click((10, 10))
    req = s.request()
    s.push_click((20, 20), positive=False)  # snapshot of the 1-click state, not yet predicted
    assert s.apply(s.compute(req))
    s.predict_pending()
    assert s.undo()
    assert s.mask() is not None and not s.needs_prediction()  # no re-prediction needed


# --------------------------------------------------------------------------- stacks and caching
def test_embeddings_are_cached_per_slice():
    vol, _ = ball_stack()
    fake = FakePredictor()
    s = InteractionSession(fake, vol, cache_size=2)
    assert s.is_stack and s.leading_shape == (21,) and s.current_key == (0,)
    s.add_click((10, 20, 20))
    s.add_click((10, 22, 20))
    assert len(fake.embedded) == 1 and s.is_embedded((10,))
    s.add_click((11, 20, 20))
    s.add_click((10, 20, 22), positive=False)  # back to slice 10: cached
    assert len(fake.embedded) == 2
    assert len(s.clicks(10)) == 3 and len(s.clicks(11)) == 1  # one object per slice
    s.set_slice(12)
    s.add_click((20, 20))  # (row, col) goes to the current slice
    assert s.clicks((12,))[0] == Click(20.0, 20.0, True)
    assert len(fake.embedded) == 3 and not s.is_embedded(11) and s.is_embedded(10)  # LRU dropped
    with pytest.raises(ValueError, match="outside the stack"):
        s.push_click((30, 5, 5))


def test_contrast_limits_and_depth_reach_set_image():
    img = (np.random.default_rng(0).random((2, 20, 30)) * 4000).astype(np.uint16)
    depth = np.random.default_rng(1).random((2, 20, 30))
    fake = FakePredictor()
    s = InteractionSession(fake, img, contrast_limits=(100, 3000), depth=depth)
    s.add_click((1, 5, 5))
    assert fake.contrast_limits[-1] == (100.0, 3000.0)
    assert np.array_equal(fake.depths[-1], depth[1])
    s.set_contrast_limits((0, 4000))
    assert not s.is_embedded(1)
    s.add_click((1, 6, 6))
    assert fake.contrast_limits[-1] == (0.0, 4000.0)
    with pytest.raises(ValueError, match="depth map"):
        s.set_depth(np.zeros((3, 3)))


def test_rgb_and_4d_shapes():
    s = InteractionSession(FakePredictor(), np.zeros((10, 12, 3), np.uint8))
    assert s.rgb and s.spatial_shape == (10, 12) and not s.is_stack
    rgb_stack = InteractionSession(FakePredictor(), np.zeros((5, 10, 12, 3), np.uint8))
    assert rgb_stack.rgb and rgb_stack.spatial_shape == (5, 10, 12) and rgb_stack.plane_shape == (10, 12)
    grey = InteractionSession(FakePredictor(), np.zeros((5, 10, 12, 3), np.uint8), rgb=False)
    assert not grey.rgb and grey.plane_shape == (12, 3)  # the caller (napari's layer.rgb) decides
    s4 = InteractionSession(FakePredictor(), np.zeros((2, 3, 10, 12), np.float32))
    assert s4.leading_shape == (2, 3)
    s4.push_click((1, 2, 4, 4))
    assert s4.active_keys() == [(1, 2)]


def test_propagation_follows_the_ball_and_stops_where_it_vanishes():
    vol, ball = ball_stack()
    s = InteractionSession(FakePredictor(), vol)
    labels = np.zeros(vol.shape, np.int32)
    labels[:, 0:3, 0:3] = 4  # unrelated existing label
    s.add_click((10, 20, 20))
    written = s.propagate(labels, min_score=0.5)
    lid = s.last_commit.label_id
    assert lid == 5
    zs = sorted(k[0] for k in written)
    assert zs == [z for z in range(21) if z != 10 and ball[z].sum() >= max(4, int(0.02 * ball[10].sum()))]
    for z in range(21):
        assert np.array_equal(labels[z] == lid, ball[z]) or ball[z].sum() < 4
    assert np.all(labels[:, 0:3, 0:3] == 4)
    assert "vanished" in s.propagation_stops[1] and "vanished" in s.propagation_stops[-1]


def test_propagation_stops_on_low_quality_and_needs_a_stack():
    vol, _ = ball_stack()
    s = InteractionSession(FakePredictor(), vol)
    s.add_click((10, 20, 20))
    steps = list(s.iter_propagate(min_score=0.95))
    assert steps == [] and "quality" in s.propagation_stops[1]
    steps = list(s.iter_propagate(directions=(1,), max_slices=2, min_score=0))
    assert [st.key for st in steps] == [(11,), (12,)]
    with pytest.raises(ValueError, match="needs a stack"):
        list(InteractionSession(FakePredictor(), blob_image()).iter_propagate(mask=np.ones((40, 60), bool)))
    with pytest.raises(ValueError, match="nothing to propagate"):
        list(s.iter_propagate(key=3))


def leak_stack(z=20, leak_at=14):
    """A 8 x 8 square on every slice; from slice ``leak_at`` on it touches a 30 x 30 block
    (the predicted object grows suddenly there: a leak into a neighbouring structure)."""
    vol = np.zeros((z, 48, 48), np.float32)
    vol[:, 10:18, 10:18] = 1.0
    vol[leak_at:, 10:40, 18:48] = 1.0
    return vol


def test_propagation_stops_on_a_sudden_area_change_and_says_why():
    vol = leak_stack()
    s = InteractionSession(FakePredictor(), vol)
    s.add_click((5, 13, 13))
    labels = np.zeros(vol.shape, np.int32)
    # quality off (the leaked mask scores high): the area rule alone stops it
    written = s.propagate(labels, min_score=-np.inf)
    zs = sorted(k[0] for k in written)
    assert zs == [z for z in range(14) if z != 5]  # not slice 14, where it grew
    assert labels[14:].max() == 0 and (labels[13] > 0).sum() == 64
    why = s.propagation_stops[1]
    assert "grew suddenly at slice 14" in why and "64 -> 964 px" in why and "[0.5, 2]" in why
    assert s.propagation_stops[-1] == "end of the stack"
    # the rule is configurable: a wider ratio lets it through, None turns it off
    steps = list(s.iter_propagate(5, labels[5] > 0, directions=(1,), min_score=-np.inf,
                                  area_ratio=(0.5, 20.0), min_overlap=None))
    assert [st.key[0] for st in steps] == list(range(6, 20))
    assert steps[8].area_ratio == pytest.approx(964 / 64) and steps[0].iou_prev == pytest.approx(1.0)
    assert s.propagation_stops[1] == "end of the stack"


def test_propagation_stops_when_the_overlap_with_the_previous_slice_is_lost():
    vol = np.zeros((10, 40, 60), np.float32)
    for z in range(10):  # a 10 x 10 square moving 1 px per slice, then jumping 7 px at slice 6
        x = 10 + z + (7 if z >= 6 else 0)
        vol[z, 10:20, x:x + 10] = 1.0
    s = InteractionSession(FakePredictor(), vol)
    s.add_click((3, 15, 17))
    steps = list(s.iter_propagate(directions=(1,), min_score=-np.inf, area_ratio=None))
    assert [st.key[0] for st in steps] == [4, 5]
    assert all(st.iou_prev > 0.8 for st in steps)
    assert "overlap lost at slice 6" in s.propagation_stops[1] and "< 0.30" in s.propagation_stops[1]
    # min_overlap=None keeps only the "no overlap at all" rule
    steps = list(s.iter_propagate(directions=(1,), min_score=-np.inf, area_ratio=None, min_overlap=None))
    assert [st.key[0] for st in steps][:3] == [4, 5, 6]


def test_propagation_carries_the_objects_clicks_while_they_agree_with_the_mask():
    """Each next slice is prompted with the previous mask, its interior point and the
    object's own clicks that still agree with that mask (positive inside, negative outside)."""
    vol, ball = ball_stack()  # radius 7 at slice 10; (20, 26) is inside up to slice 13
    pred = FakePredictor()
    s = InteractionSession(pred, vol)
    s.add_click((10, 20, 20))
    s.add_click((10, 20, 26))
    s.add_click((10, 20, 36), positive=False)
    labels = np.zeros(vol.shape, np.int32)
    s.commit(labels)
    assert [c.coords for c in s.last_commit.clicks] == [(20, 20), (20, 26), (20, 36)]
    n0 = len(pred.calls)
    steps = list(s.iter_propagate(s.last_commit.key, s.last_commit.mask, directions=(1,),
                                  clicks=s.last_commit.clicks, min_score=-np.inf))
    calls = pred.calls[n0:]
    assert [st.key[0] for st in steps] == list(range(11, 17))  # slice 17 holds 1 px: vanished
    for st, prev_z, (points, lab, had_prev, multimask) in zip(steps, range(10, 16), calls):
        assert had_prev and not multimask and points[0] == list(st.click) and lab[0] == 1
        carried = set(zip(map(tuple, points[1:]), lab[1:]))
        assert ((20, 36), 0) in carried  # the negative click lies outside the ball throughout
        assert (((20, 20), 1) in carried) == bool(ball[prev_z][20, 20])
        assert (((20, 26), 1) in carried) == bool(ball[prev_z][20, 26])  # dropped once outside
    assert ball[13][20, 26] and not ball[14][20, 26]  # so both cases were checked
    # the commit-and-propagate call carries the committed clicks too
    s2 = InteractionSession(FakePredictor(), vol)
    s2.add_click((10, 20, 20))
    s2.add_click((10, 20, 36), positive=False)
    s2.propagate(np.zeros(vol.shape, np.int32), directions=(1,), max_slices=1)
    points, lab, _, _ = s2.predictor.calls[-1]
    assert [20, 36] in points and lab[points.index([20, 36])] == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"area_ratio": (2.0, 0.5)}, "0 <= low <= 1 <= high"),
    ({"area_ratio": 2.0}, "area_ratio must be"),
    ({"min_overlap": 1.5}, "min_overlap must lie in"),
    ({"axis": 3}, "not a leading axis"),
])
def test_propagation_rejects_bad_stop_rules(kwargs, match):
    vol, _ = ball_stack()
    s = InteractionSession(FakePredictor(), vol)
    s.add_click((10, 20, 20))
    with pytest.raises(ValueError, match=match):
        list(s.iter_propagate(**kwargs))


# --------------------------------------------------------------------------- real network
def test_real_tiny_model_through_the_session(tiny_model):
    pred = OISPredictor(tiny_model, device="cpu")
    vol = (np.random.default_rng(0).random((3, 30, 40)) * 60000).astype(np.uint16)
    s = InteractionSession(pred, vol, contrast_limits=(0, 60000))
    m = s.add_click((1, 15, 20))
    assert m.shape == (30, 40) and m.dtype == bool
    assert len(s.proposals().masks) == pred.num_proposals
    big = int(np.argmax(s.proposals().masks.sum(axis=(1, 2))))
    s.select_proposal(big)
    assert np.array_equal(s.mask(), s.proposals().masks[big]) and s.mask().any()
    s.add_click((1, 3, 3), positive=False)
    s.undo()
    assert np.array_equal(s.mask(), s.proposals().masks[big])
    s.commit()
    assert s.labels[1].max() == 1 and s.labels[0].max() == 0
    s.set_slice(1)
    s.add_click((15, 20))
    list(s.iter_propagate(min_score=-np.inf, max_slices=1))
    assert s.is_embedded(0) or s.is_embedded(2) or s.propagation_stops
    # a model switch keeps the clicks and predicts them again
    s.set_predictor(pred)
    assert s.needs_prediction() and len(s.clicks()) == 1
    s.predict_pending()
    assert s.mask() is not None and s.proposals() is not None


# --------------------------------------------------------------------------- issue #10
def test_commit_that_would_write_nothing_keeps_the_object():
    fake = FakePredictor()
    s = InteractionSession(fake, blob_image())
    labels = np.zeros((40, 60), np.int32)
    labels[0:32, 0:40] = 3  # covers the whole rectangle object
    mask = s.add_click((20, 20)).copy()
    s.add_click((30, 50))  # a second click on the same object's clicks list...
    s.undo()  # ...undone again: the object has one click and an undo step
    before = labels.copy()
    with pytest.raises(ValueError, match="nothing to commit.*existing labels"):
        s.commit(labels)
    assert np.array_equal(labels, before)  # nothing written, no new id used
    assert s.last_commit is None
    assert len(s.clicks()) == 1 and np.array_equal(s.mask(), mask)  # object and clicks kept
    assert s.can_undo()  # its history too
    s.commit(labels, overwrite=True)  # with overwrite it goes in
    assert s.last_commit.label_id == 4 and np.array_equal(labels == 4, mask)


def test_negative_first_click_is_refused_without_a_prediction():
    fake = FakePredictor()
    s = InteractionSession(fake, blob_image())
    with pytest.raises(ValueError, match="first click of an object must be positive"):
        s.add_click((20, 20), positive=False)
    assert s.clicks() == () and s.mask() is None and not s.can_undo()
    assert fake.calls == [] and s.request() is None  # nothing predicted
    s.add_click((20, 20))
    s.add_click((22, 22), positive=False)  # later negative clicks are fine
    assert [c.positive for c in s.clicks()] == [True, False]
    # a hand edit that leaves a negative click first is refused too; the object is unchanged
    with pytest.raises(ValueError, match="must be positive"):
        s.replace_clicks([Click(22.0, 22.0, False)])
    assert [c.positive for c in s.clicks()] == [True, False] and not s.needs_prediction()


class BoxPredictor:
    """A cheap predictor for large images: the mask is the box spanned by the positive clicks
    (grown by 100 px) minus 40 px boxes around the negative ones; full-resolution float32
    logits like ``OISPredictor``."""

    num_proposals = 2

    def __init__(self, shape):
        self.shape = shape
        self._state = None

    def set_image(self, image, depth=None, contrast_limits=None):
        self._state = {"shape": np.shape(image)[:2]}
        return self._state

    @property
    def state(self):
        return self._state

    def set_state(self, state):
        self._state = state

    def predict(self, points, labels, prev_mask=None, multimask=True):
        h, w = self.shape
        pts = np.asarray(points, float)
        pos = pts[np.asarray(labels) == 1]
        r0, c0 = np.maximum(pos.min(0) - 100, 0).astype(int)
        r1, c1 = (pos.max(0) + 100).astype(int)
        logits = np.full((h, w), -4.0, np.float32)
        logits[r0:r1, c0:c1] = 4.0
        for r, c in pts[np.asarray(labels) == 0]:
            logits[max(0, int(r) - 40):int(r) + 40, max(0, int(c) - 40):int(c) + 40] = -3.0
        if multimask:
            logits = np.stack([logits, np.where(logits > 0, -1.0, 1.0).astype(np.float32)])
            scores = np.array([0.9, 0.2], np.float32)
        else:
            logits, scores = logits[None], np.array([0.8], np.float32)
        return Prediction(logits > 0, scores, logits)


def test_undo_memory_per_click_is_bounded_on_a_large_image():
    h = w = 4000
    image = np.zeros((h, w), np.uint8)  # 16 MB; the session never copies it
    s = InteractionSession(BoxPredictor((h, w)), image)
    s.add_click((2000, 2000))
    masks = [s.mask().copy()]
    for i in range(5):
        s.add_click((1000 + 300 * i, 1200 + 250 * i), positive=i % 2 == 0)
        masks.append(s.mask().copy())
    hist = s._slices[()].history
    assert len(hist) == 6
    full = h * w * 4  # one float32 logits array at image resolution: 64 MB
    for _, snap in hist:
        held = 0  # arrays this undo step holds, beyond the proposals (kept once per object)
        if snap.logits is not None and not np.may_share_memory(snap.logits, s.proposals().logits):
            held += np.asarray(snap.logits).nbytes
        packed = getattr(snap, "packed", None)
        if packed is not None:
            held += packed.bits.nbytes + packed.coarse.nbytes
        assert held <= h * w, held  # at most 1 byte per pixel (was 4: the full logits)
    assert max(s.undo_nbytes()) < full / 4
    # undo still brings back each mask exactly, and the object can be refined after it
    for i in range(4, -1, -1):
        assert s.undo()
        assert np.array_equal(s.mask(), masks[i]), i
        assert s.state().logits.shape == (h, w) and np.array_equal(s.state().logits > 0, masks[i])
    s.add_click((3000, 3000))
    assert s.mask()[3000, 3000] and len(s.clicks()) == 2


# --------------------------------------------------------------------------- box prompts
class FakeBoxPredictor(FakePredictor):
    """``FakePredictor`` that also takes a box: the foreground inside the box (or the previous
    mask), then the clicks as usual; a box prediction is always the single refined mask."""

    accepts_boxes = True

    def predict(self, points, labels, prev_mask=None, multimask=True, box=None):
        if box is None:
            return super().predict(points, labels, prev_mask, multimask)
        assert not multimask, "a box never asks for proposals"
        self.calls.append((np.asarray(points).tolist(), list(labels), prev_mask is not None, box))
        fg = self._state["image"] > 0.5
        rr, cc = np.mgrid[: fg.shape[0], : fg.shape[1]]
        inside = (rr >= box.r0) & (rr <= box.r1) & (cc >= box.c0) & (cc <= box.c1)
        m = fg & inside if prev_mask is None else np.asarray(prev_mask) > 0
        for (r, c), lab in zip(points, labels):
            m = m | self._component(r, c) if lab == 1 else m & ~self._disk(r, c, 6)
        return Prediction(m[None], np.array([0.9], np.float32),
                          np.where(m, 5.0, -5.0).astype(np.float32)[None])


def test_a_box_starts_an_object_and_later_clicks_refine_it_with_the_box():
    fake = FakeBoxPredictor()
    s = InteractionSession(fake, blob_image())
    s.set_box((4, 4, 20, 36))  # the upper part of the first rectangle
    req = s.request()
    assert req.box is not None and not req.multimask and req.clicks == () and req.prev_mask is None
    assert s.apply(s.compute(req)) and not s.needs_prediction()
    m = s.mask()
    assert m[10, 10] and not m[25, 10] and not m[33, 50] and s.proposals() is None
    s.add_click((15, 15), positive=False)  # a negative first click is fine after a box
    assert not s.mask()[15, 15] and s.mask()[10, 30]
    assert fake.calls[-1][3] == s.box() and fake.calls[-1][2]  # with the box and prev_mask
    assert s.undo() and s.mask()[15, 15]  # back to the box's mask
    mask = s.commit()
    assert mask[10, 10] and s.last_commit.label_id == 1 and s.labels[10, 10] == 1
    assert s.box() is None and s.clicks() == ()  # the next object starts fresh


def test_a_new_box_predicts_again_from_box_and_clicks_and_is_undoable():
    s = InteractionSession(FakeBoxPredictor(), blob_image())
    s.add_click((10, 10))
    assert s.proposals() is not None
    s.set_box((29, 44, 38, 56))  # now around the second object: predicted from scratch
    assert s.state().pending and s.request().prev_mask is None
    s.predict_pending()
    assert s.mask()[33, 50] and len(s.clicks()) == 1
    s.set_box((29, 44, 38, 56))  # the same box again changes nothing
    assert not s.state().pending
    assert s.undo() and s.box() is None and s.proposals() is not None  # the click's object again


def test_a_result_for_an_old_box_is_refused():
    s = InteractionSession(FakeBoxPredictor(), blob_image())
    s.set_box((4, 4, 20, 36))
    result = s.compute(s.request())
    s.set_box((29, 44, 38, 56))
    assert not s.apply(result)
    assert s.state().pending and s.mask() is None


def test_boxes_need_a_model_that_takes_them_and_a_box_on_the_image():
    s = InteractionSession(FakePredictor(), blob_image())
    with pytest.raises(ValueError, match="no box prompts"):
        s.set_box((4, 4, 20, 36))
    s = InteractionSession(FakeBoxPredictor(), blob_image())
    with pytest.raises(ValueError, match="outside the image"):
        s.set_box((100, 100, 120, 130))
    with pytest.raises(ValueError, match="r1 > r0"):
        s.set_box((20, 4, 4, 36))
    s.set_box([[20, 36], [4, 4], [4, 36], [20, 4]])  # napari rectangle vertices, any order
    assert s.box().as_tuple() == (4.0, 4.0, 20.0, 36.0)
    s.set_box((-10, -10, 20, 200))  # overshooting edges are cut to the image
    assert s.box().as_tuple() == (-0.5, -0.5, 20.0, 59.5)
    s.add_click((10, 10), positive=False)
    s.set_predictor(FakePredictor())  # no boxes: the box goes, and a negative first click too
    assert s.box() is None and s.clicks() == ()


def test_real_box_model_through_the_session():
    import torch

    from conftest import tiny_config
    from napari_ois.model import OISModel

    torch.manual_seed(0)
    pred = OISPredictor(OISModel(tiny_config(fusion="early", box_prompts=True)).eval())
    assert pred.accepts_boxes
    s = InteractionSession(pred, (blob_image() * 255).astype(np.uint8))
    s.set_box((4, 4, 30, 36))
    m = s.predict_pending()
    assert m.shape == (40, 60) and s.proposals() is None
    s.add_click((33, 50))
    assert len(s.clicks()) == 1 and not s.needs_prediction()

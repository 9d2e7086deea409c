"""Zoom-in inference: the crop box, and clicks and masks mapped to the crop and back exactly."""

import numpy as np
import pytest
import torch

from napari_ois.model import OISModel
from napari_ois.predictor import OISPredictor, ZoomIn

from conftest import tiny_config


def _image(h=200, w=300, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[60:110, 120:190] = (230, 200, 40)
    return img


def test_box_covers_the_mask_and_positive_clicks_grown_and_clipped():
    z = ZoomIn(expansion=1.4, min_crop=20, max_fraction=0.85)
    mask = np.zeros((200, 300), bool)
    mask[60:110, 120:190] = True  # 50 x 70
    pts = np.array([[100.0, 200.0], [10.0, 10.0]])
    r0, r1, c0, c1 = z.box(mask, pts, np.array([1, 0]))  # the negative click does not count
    assert r0 <= 60 and r1 >= 110 and c0 <= 120 and c1 >= 201
    assert (r1 - r0) == pytest.approx(50 * 1.4, abs=2) and (c1 - c0) == pytest.approx(82 * 1.4, abs=2)
    assert 0 <= r0 and r1 <= 200 and 0 <= c0 and c1 <= 300
    # near the border: clipped to the image
    edge = np.zeros((200, 300), bool)
    edge[:30, :30] = True
    assert z.box(edge, pts[:1] * 0 + 5, np.array([1]))[::2] == (0, 0)
    # nearly the whole image, or nothing: no zoom
    assert z.box(np.ones((200, 300), bool), pts, np.array([1, 0])) is None
    assert z.box(np.zeros((200, 300), bool), pts, np.array([1, 0])) is None


def test_zoomed_prediction_is_the_crop_prediction_pasted_into_the_previous_logits():
    torch.manual_seed(0)
    model = OISModel(tiny_config()).eval()
    img = _image()
    zoom = OISPredictor(model, zoom_in=ZoomIn(min_crop=20))
    zoom.set_image(img)
    prev = np.full(img.shape[:2], -3.0, np.float32)
    prev[60:110, 120:190] = 4.0
    pts = np.array([[80.0, 150.0], [70.0, 130.0]])
    lab = np.array([1, 0])
    out = zoom.predict(pts, lab, prev_mask=prev, multimask=False)
    box = zoom.zoom_in.box(prev > 0, pts, lab)
    assert box is not None and zoom.state.crop_box == box
    r0, r1, c0, c1 = box
    # outside the crop the previous logits are kept exactly
    outside = np.ones(img.shape[:2], bool)
    outside[r0:r1, c0:c1] = False
    assert np.array_equal(out.logits[0][outside], prev[outside])
    # inside: exactly what the same model predicts on the cropped image with shifted clicks
    plain = OISPredictor(model, zoom_in=False)
    plain.set_image(img[r0:r1, c0:c1])
    ref = plain.predict(pts - [r0, c0], lab, prev_mask=prev[r0:r1, c0:c1], multimask=False)
    np.testing.assert_allclose(out.logits[0][r0:r1, c0:c1], ref.logits[0], atol=1e-5)
    assert out.masks.shape == (1, *img.shape[:2])


def test_zoom_in_leaves_the_first_click_and_disabled_predictors_alone():
    torch.manual_seed(0)
    model = OISModel(tiny_config()).eval()
    img = _image()
    a, b = OISPredictor(model), OISPredictor(model, zoom_in=False)  # on by default
    a.set_image(img)
    b.set_image(img)
    first_a = a.predict([[80, 150]], [1])
    first_b = b.predict([[80, 150]], [1])
    np.testing.assert_array_equal(first_a.logits, first_b.logits)  # proposals: whole image
    assert a.state.crop_box is None
    # zoom-in turned on later (as the widget does) applies to the next refinement
    b.zoom_in = ZoomIn(min_crop=20)
    prev = np.full(img.shape[:2], -3.0, np.float32)
    prev[60:110, 120:190] = 4.0
    b.predict([[80, 150], [70, 130]], [1, 0], prev_mask=prev, multimask=False)
    assert b.state.crop_box is not None


def test_a_negative_click_outside_the_crop_is_left_out_and_first_click_is_honoured():
    torch.manual_seed(0)
    model = OISModel(tiny_config()).eval()
    img = _image()
    prev = np.full(img.shape[:2], -3.0, np.float32)
    prev[60:110, 120:190] = 4.0
    pts = np.array([[80.0, 150.0], [70.0, 130.0], [190.0, 10.0]])  # the last: far outside
    lab = np.array([1, 0, 0])
    zoom = OISPredictor(model, zoom_in=ZoomIn(min_crop=20))
    zoom.set_image(img)
    out = zoom.predict(pts, lab, prev_mask=prev, multimask=False)
    r0, r1, c0, c1 = zoom.state.crop_box
    assert not (r0 <= 190 < r1 and c0 <= 10 < c1)
    plain = OISPredictor(model, zoom_in=False)
    plain.set_image(img[r0:r1, c0:c1])
    ref = plain.predict(pts[:2] - [r0, c0], lab[:2], prev_mask=prev[r0:r1, c0:c1], multimask=False)
    np.testing.assert_allclose(out.logits[0][r0:r1, c0:c1], ref.logits[0], atol=1e-5)
    # zooming from the third click on: the second is predicted on the whole image
    late = OISPredictor(model, zoom_in=ZoomIn(min_crop=20, first_click=3))
    late.set_image(img)
    whole = OISPredictor(model, zoom_in=False)
    whole.set_image(img)
    np.testing.assert_array_equal(late.predict(pts[:2], lab[:2], prev_mask=prev, multimask=False).logits,
                                  whole.predict(pts[:2], lab[:2], prev_mask=prev, multimask=False).logits)
    assert late.state.crop_box is None
    late.predict(pts, lab, prev_mask=prev, multimask=False)
    assert late.state.crop_box is not None

"""The OIS network: shapes, proposals, ablation switches, order maps, object-aware masking."""

import numpy as np
import pytest
import torch

from napari_ois.model import OISModel, click_disks, object_aware_mask, order_maps
from napari_ois.model.config import PRESETS, get_config

from conftest import tiny_config


def _inputs(b=2, s=64, with_depth=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, s, s, generator=g)
    depth = torch.rand(b, 1, s, s, generator=g) if with_depth else None
    coords = torch.tensor([[[20.5, 30.5], [40.5, 10.5], [0.0, 0.0]]] * b)
    labels = torch.tensor([[1, 0, -1]] * b)
    prev = torch.zeros(b, 1, s, s)
    prev[:, :, 10:40, 15:50] = 1.0
    return image, depth, coords, labels, prev


def _run(cfg, state=None, with_depth=True, prev=True):
    torch.manual_seed(0)
    model = OISModel(cfg).eval()
    if state is not None:
        model.load_state_dict(state)
    image, depth, coords, labels, p = _inputs(with_depth=with_depth)
    with torch.no_grad():
        return model(image, depth, coords, labels, p if prev else None), model


def test_output_shapes_and_proposals():
    cfg = tiny_config(num_proposals=4)
    (logits, iou), _ = _run(cfg)
    assert logits.shape == (2, 5, 16, 16)  # K + 1 masks at stride 4
    assert iou.shape == (2, 5)


@pytest.mark.parametrize("switch", ["use_order_aware", "use_object_aware", "use_dense", "use_sparse"])
def test_each_ablation_switch_changes_the_computation(switch):
    (on, _), model = _run(tiny_config())
    (off, _), _ = _run(tiny_config(**{switch: False}), state=model.state_dict())
    assert on.shape == off.shape
    assert not torch.allclose(on, off, atol=1e-6), f"{switch}=False gave the same logits"


def test_without_depth_order_aware_is_plain_cross_attention():
    (on, _), model = _run(tiny_config(), with_depth=False)
    (off, _), _ = _run(tiny_config(use_order_aware=False), state=model.state_dict(), with_depth=False)
    assert torch.allclose(on, off, atol=1e-6)


def test_object_aware_is_unmasked_on_the_first_click():
    (on, _), model = _run(tiny_config(), prev=False)
    (off, _), _ = _run(tiny_config(use_object_aware=False), state=model.state_dict(), prev=False)
    assert torch.allclose(on, off, atol=1e-6)


def test_order_maps_equal_the_formula_on_a_hand_made_depth_map():
    # 32 x 32 depth made of four 16 x 16 quadrants -> 2 x 2 token grid
    depth = torch.zeros(1, 1, 32, 32)
    depth[..., :16, :16] = 0.1
    depth[..., :16, 16:] = 0.4
    depth[..., 16:, :16] = 0.7
    depth[..., 16:, 16:] = 1.0
    tokens = torch.nn.functional.avg_pool2d(depth, 16).flatten(1)  # [0.1, 0.4, 0.7, 1.0]
    coords = torch.tensor([[[4.5, 4.5], [4.5, 20.5], [20.5, 4.5], [30.5, 30.5]]])
    labels = torch.tensor([[1, 1, 0, -1]])
    maps = order_maps(depth, tokens, coords, labels)
    d = torch.tensor([0.1, 0.4, 0.7, 1.0])
    pos_ref = (0.1 + 0.4) / 2  # mean depth at the positive clicks
    expected = torch.stack([(d - pos_ref).abs(), (d - pos_ref).abs(), (d - 0.7).abs(), torch.zeros(4)])
    assert torch.allclose(maps[0], expected, atol=1e-5)


def test_object_aware_mask_follows_the_previous_mask():
    fg = torch.tensor([[True, True, False, False]])  # previous mask covers tokens 0 and 1
    labels = torch.tensor([[1, 0, -1]])
    m = object_aware_mask(fg, torch.tensor([True]), labels, n_out=2)
    assert m.shape == (1, 5, 4)
    assert m[0, :2].all()  # output tokens see everything
    assert m[0, 2].tolist() == [True, True, False, False]  # positive -> foreground only
    assert m[0, 3].tolist() == [False, False, True, True]  # negative -> background only
    assert m[0, 4].all()  # padding unmasked
    # no previous mask (first click): nothing masked
    assert object_aware_mask(fg, torch.tensor([False]), labels, 2).all()
    # a positive row with no foreground at all is unmasked
    empty = object_aware_mask(torch.zeros(1, 4, dtype=torch.bool), torch.tensor([True]), labels, 2)
    assert empty[0, 2].all() and empty[0, 3].all()


def test_click_disks_radius():
    coords = torch.tensor([[[10.5, 10.5], [50.5, 50.5]]])
    maps = click_disks(coords, torch.tensor([[1, 0]]), 64, radius=5)
    assert maps.shape == (1, 2, 64, 64)
    assert maps[0, 0, 10, 10] == 1 and maps[0, 0, 10, 15] == 1 and maps[0, 0, 10, 16] == 0
    assert maps[0, 1, 50, 50] == 1 and maps[0, 0, 50, 50] == 0
    assert maps[0, 0].sum() == maps[0, 1].sum()  # same disk size


def test_presets_exist_and_vit_backbone_builds():
    assert {"ois-tiny", "ois-base"} <= set(PRESETS)
    assert get_config("ois-base").backbone.startswith("vit_base_patch16")
    assert get_config("ois-base").img_size == 1024
    cfg = tiny_config(backbone="vit_tiny_patch16_224", img_size=64)
    (logits, iou), model = _run(cfg)
    assert model.encoder.is_vit and logits.shape == (2, 4, 16, 16)


def test_gradients_reach_every_trainable_part():
    torch.manual_seed(0)
    model = OISModel(tiny_config()).train()
    image, depth, coords, labels, prev = _inputs()
    logits, iou = model(image, depth, coords, labels, prev)
    (logits.mean() + iou.mean()).backward()
    assert model.order_scale_raw.grad is not None and model.order_scale_raw.grad.abs().sum() > 0
    assert model.dense16[0].weight.grad.abs().sum() > 0
    assert model.type_embed.weight.grad.abs().sum() > 0

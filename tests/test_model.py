"""The OIS network: shapes, proposals, ablation switches, order maps, object-aware masking."""

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


# --------------------------------------------------------------------------- early fusion
def _ef_config(**changes):
    return tiny_config(backbone="vit_tiny_patch16_224", img_size=64, fusion="early", **changes)


def test_early_fusion_clicks_change_the_encoder_features():
    torch.manual_seed(0)
    model = OISModel(_ef_config()).eval()
    torch.nn.init.normal_(model.encoder.click_embed.weight, std=0.1)  # as after training
    image, depth, coords, labels, prev = _inputs(b=1)
    with torch.no_grad():
        emb = model.encode(image, depth)
        assert emb.feat16 is None and emb.patches.shape == (1, 16, 192)  # 4 x 4 patches
        a, no4 = model.encoder.fuse_clicks(emb.patches, torch.zeros(1, 3, 64, 64))
        maps = torch.cat([click_disks(coords, labels, 64, 5.0), prev], 1)
        b, _ = model.encoder.fuse_clicks(emb.patches, maps)
    assert a.shape == b.shape == (1, 32, 4, 4)
    assert no4 is None  # a ViT's stride-4 features come from embed_patches, once per image
    assert not torch.allclose(a, b, atol=1e-5)


def test_early_fusion_warm_started_from_late_fusion_begins_with_the_same_outputs():
    torch.manual_seed(0)
    late = OISModel(tiny_config(backbone="vit_tiny_patch16_224", img_size=64)).eval()
    early = OISModel(_ef_config()).eval()
    missing = early.load_state_dict(late.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["encoder.click_embed.bias", "encoder.click_embed.weight"]
    image, depth, coords, labels, prev = _inputs()
    with torch.no_grad():
        la, li = late(image, depth, coords, labels, prev)
        ea, ei = early(image, depth, coords, labels, prev)
    assert torch.allclose(la, ea, atol=1e-5) and torch.allclose(li, ei, atol=1e-5)


def test_early_fusion_gradients_reach_the_click_embedding_and_it_round_trips(tmp_path):
    from napari_ois.registry import load_model_file, save_model

    torch.manual_seed(0)
    model = OISModel(_ef_config()).train()
    image, depth, coords, labels, prev = _inputs()
    logits, iou = model(image, depth, coords, labels, prev)
    (logits.mean() + iou.mean()).backward()
    assert model.encoder.click_embed.weight.grad.abs().sum() > 0
    path = save_model(model.eval(), tmp_path / "ef.safetensors", half=False)
    loaded = load_model_file(path).eval()
    assert loaded.cfg.fusion == "early"
    with torch.no_grad():
        a = model(image, depth, coords, labels, prev)[0]
        b = loaded(image, depth, coords, labels, prev)[0]
    assert torch.allclose(a, b, atol=1e-6)


def test_fusion_is_validated():
    with pytest.raises(ValueError, match="fusion"):
        type(tiny_config()).from_dict({**tiny_config().to_dict(), "fusion": "middle"})


# --------------------------------------------------------------------------- conv early fusion
def test_conv_early_fusion_runs_the_backbone_on_the_clicks():
    """ois-tiny-cef's layout: the maps are 3 more input channels; encode keeps only the image."""
    torch.manual_seed(0)
    model = OISModel(tiny_config(fusion="early")).eval()  # resnet10t
    image, depth, coords, labels, prev = _inputs(b=1)
    with torch.no_grad():
        emb = model.encode(image, depth)
        assert emb.feat16 is None and emb.feat4 is None and emb.patches.shape == (1, 3, 64, 64)
        a16, a4 = model.encoder.fuse_clicks(emb.patches, torch.zeros(1, 3, 64, 64))
        maps = torch.cat([click_disks(coords, labels, 64, 5.0), prev], 1)
        b16, b4 = model.encoder.fuse_clicks(emb.patches, maps)
        logits, iou = model.decode(emb, coords, labels, prev)
    assert a16.shape == b16.shape == (1, 32, 4, 4) and a4.shape == b4.shape == (1, 8, 16, 16)
    assert not torch.allclose(a16, b16, atol=1e-5) and not torch.allclose(a4, b4, atol=1e-5)
    assert logits.shape == (1, 4, 16, 16) and iou.shape == (1, 4)


def test_conv_early_fusion_gradients_reach_the_click_input_channels():
    torch.manual_seed(0)
    model = OISModel(tiny_config(fusion="early")).train()
    image, depth, coords, labels, prev = _inputs()
    logits, iou = model(image, depth, coords, labels, prev)
    (logits.mean() + iou.mean()).backward()
    stem = next(p for n, p in model.encoder.body.named_parameters() if p.ndim == 4)
    assert stem.shape[1] == 6 and stem.grad[:, 3:].abs().sum() > 0  # RGB + pos, neg, prev


# --------------------------------------------------------------------------- box prompts
def test_box_map_covers_the_cells_whose_centres_are_inside():
    from napari_ois.model.ois import box_map

    boxes = torch.tensor([[8.0, 4.0, 24.0, 40.0], [5.0, 5.0, 5.5, 5.5], [3.0, 3.0, 3.0, 9.0]])
    full = box_map(boxes, 64)
    assert full[0, 0, 8:24, 4:40].all() and full[0].sum() == 16 * 36
    assert full[1].sum() == 1  # a tiny box still covers the cell of its centre
    assert full[2].sum() == 0  # zero height: no box
    coarse = box_map(boxes, 64, stride=4)  # cell centres 2, 6, 10, ...
    assert coarse[0, 0].nonzero()[:, 0].unique().tolist() == [2, 3, 4, 5]


def test_a_box_changes_only_the_samples_that_have_one():
    torch.manual_seed(0)
    model = OISModel(tiny_config(fusion="early", box_prompts=True)).eval()
    image, depth, coords, labels, prev = _inputs()
    no_box = torch.zeros(2, 4)
    boxes = torch.tensor([[10.0, 12.0, 40.0, 50.0], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        emb = model.encode(image, depth)
        base, _ = model.decode(emb, coords, labels, prev, boxes=no_box)
        same, _ = model.decode(emb, coords, labels, prev)  # None = no box anywhere
        boxed, _ = model.decode(emb, coords, labels, prev, boxes=boxes)
        only, _ = model.decode(emb, coords[:, :0], labels[:, :0], None, boxes=boxes)  # box alone
    assert torch.equal(base, same)
    assert not torch.allclose(boxed[0], base[0], atol=1e-5)
    assert torch.allclose(boxed[1], base[1], atol=1e-6)
    assert only.shape == (2, 4, 16, 16)


def test_box_prompts_are_refused_by_a_model_without_them():
    model = OISModel(tiny_config()).eval()
    image, depth, coords, labels, prev = _inputs(b=1)
    with pytest.raises(ValueError, match="no box prompts"):
        model(image, depth, coords, labels, prev, boxes=torch.tensor([[1.0, 1.0, 9.0, 9.0]]))


@pytest.mark.parametrize("early", [False, True])
def test_the_model_owns_its_input_normalisation(early):
    """``pixel_mean`` / ``pixel_std`` are non-persistent buffers: weight files do not change
    (and load strictly), and ``encode`` is exactly ImageNet-normalise-then-encoder."""
    torch.manual_seed(0)
    cfg = _ef_config() if early else tiny_config()
    model = OISModel(cfg).eval()
    assert not any(k.startswith("pixel_") for k in model.state_dict())
    OISModel(cfg).load_state_dict(model.state_dict(), strict=True)
    image = _inputs()[0]
    mean = image.new_tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = image.new_tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = (image - mean) / std
    with torch.no_grad():
        emb = model.encode(image)
        want = model.encoder.embed_patches(x) if early else model.encoder(x)
    got = (emb.patches, emb.feat4) if early else (emb.feat16, emb.feat4)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert model.preprocess(image.to(torch.bfloat16)).dtype == torch.bfloat16  # the input's dtype


# --------------------------------------------------------------------------- click propagation (design d)
def _warm_started_head(cfg, prefix: str):
    """A model of ``cfg`` (early fusion with boxes plus one added head) warm-started from one
    without the head: the tensors it lacks are exactly the head's (``prefix``). Returns the
    warm-started model (eval mode), the base's outputs on ``_inputs()`` and its own."""
    torch.manual_seed(0)
    base = OISModel(tiny_config(fusion="early", box_prompts=True)).eval()
    model = OISModel(cfg).eval()
    missing = model.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith(prefix) for k in missing)
    with torch.no_grad():
        return model, base(*_inputs()), model(*_inputs())


def _sp_config(**changes):
    return tiny_config(fusion="early", box_prompts=True, click_propagation=True, **changes)


def test_click_propagation_starts_as_the_identity_and_learns(tmp_path):
    """A warm start from a model without the head begins with its outputs exactly; the
    head's projection gets a gradient, and once it is non-zero the clicks' messages change
    the masks; the head round-trips through a weights file."""
    from napari_ois.registry import load_model_file, save_model

    sp, (a, ai), (b, bi) = _warm_started_head(_sp_config(), "click_propagation.")
    image, depth, coords, labels, prev = _inputs()
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(ai, bi, atol=1e-6)

    sp.train()
    logits, iou = sp(image, depth, coords, labels, prev)
    (logits.mean() + iou.mean()).backward()
    assert sp.click_propagation.out.weight.grad.abs().sum() > 0
    torch.nn.init.normal_(sp.click_propagation.out.weight, std=0.5)  # as after training
    sp.eval()
    with torch.no_grad():
        c = sp(image, depth, coords, labels, prev)[0]
        # a click's label matters: flip the negative click to positive
        flipped = labels.clone()
        flipped[:, 1] = 1
        e = sp(image, depth, coords, flipped, prev)[0]
    assert not torch.allclose(a, c, atol=1e-4)
    assert not torch.allclose(c, e, atol=1e-4)
    loaded = load_model_file(save_model(sp, tmp_path / "sp.safetensors", half=False)).eval()
    assert loaded.cfg.click_propagation
    with torch.no_grad():
        assert torch.allclose(loaded(image, depth, coords, labels, prev)[0], c, atol=1e-6)


def test_click_propagation_without_clicks_is_the_identity():
    from napari_ois.model.ois import ClickPropagation

    head = ClickPropagation(8)
    torch.nn.init.normal_(head.out.weight)
    feat = torch.randn(2, 8, 16, 16)
    assert torch.equal(head(feat, torch.zeros(2, 0, 2), torch.zeros(2, 0, dtype=torch.long), 64), feat)
    assert torch.equal(head(feat, torch.zeros(2, 1, 2), torch.full((2, 1), -1), 64), feat)
    pts, lab = torch.tensor([[[10.0, 20.0]], [[30.0, 40.0]]]), torch.tensor([[1], [0]])
    out = head(feat, pts, lab, 64)
    assert out.shape == feat.shape and not torch.allclose(out, feat)
    # a sample with only padding keeps its features exactly, beside a sample with a click
    mixed = head(feat, pts, torch.tensor([[1], [-1]]), 64)
    assert torch.equal(mixed[1], feat[1]) and not torch.allclose(mixed[0], feat[0])
    # a padding click next to a real one takes no part
    padded = head(feat, torch.cat([pts, torch.full((2, 1, 2), 5.0)], 1), torch.cat([lab, torch.full((2, 1), -1)], 1), 64)
    assert torch.allclose(padded, out, atol=1e-6)


def test_the_sparse_propagation_preset_warm_starts_from_the_shipped_boxes_model():
    from napari_ois.registry import build_model, registry
    from napari_ois.training.loop import warm_start

    if "boxes" not in registry():
        pytest.skip("no shipped 'boxes' model")
    model = OISModel(get_config("ois-tiny-cef-sp"))
    left = warm_start(model, "boxes")
    assert left and all(k.startswith("click_propagation.") for k in left)
    boxes = build_model("boxes").eval().float()
    model = model.eval().float()
    image, _, coords, labels, prev = _inputs(b=1, s=192)
    with torch.no_grad():
        assert torch.allclose(boxes(image, None, coords, labels, prev)[0],
                              model(image, None, coords, labels, prev)[0], atol=1e-4)


# --------------------------------------------------------------------------- mask-aware quality head
def test_mask_quality_starts_at_the_token_score_and_learns_from_the_masks(tmp_path):
    """A warm start from a model without the head begins with its scores exactly; trained,
    the head's score depends on the masks it rates, its loss never moves the masks, and it
    round-trips through a weights file."""
    from napari_ois.registry import load_model_file, save_model

    cfg = tiny_config(fusion="early", box_prompts=True, mask_quality=True)
    mq, (a, ai), (b, bi) = _warm_started_head(cfg, "mask_quality.")
    image, depth, coords, labels, prev = _inputs()
    assert torch.equal(a, b) and torch.allclose(ai, bi, atol=1e-6)

    mq.train()
    logits, iou = mq(image, depth, coords, labels, prev)
    iou.sum().backward()
    last = mq.mask_quality.mlp.layers[-1]
    assert last.weight.grad.abs().sum() > 0
    # the masks' own path gets no gradient from the quality score through the pooling
    assert mq.hyper[0].layers[0].weight.grad is None or mq.hyper[0].layers[0].weight.grad.abs().sum() == 0
    torch.nn.init.normal_(last.weight, std=0.5)  # as after training
    for layer in mq.mask_quality.mlp.layers[:-1]:
        torch.nn.init.normal_(layer.weight, std=0.5)
    mq.eval()
    head = mq.mask_quality
    qt, mt = torch.randn(2, cfg.embed_dim), torch.randn(2, cfg.num_proposals + 1, cfg.embed_dim)
    feat = torch.randn(2, cfg.hr_dim, 16, 16)
    masks = torch.full((2, cfg.num_proposals + 1, 16, 16), -8.0)
    masks[:, :, 4:8, 4:8] = 8.0
    grown = masks.clone()
    grown[:, :, 2:12, 2:12] = 8.0
    with torch.no_grad():
        assert not torch.allclose(head(qt, mt, masks, feat), head(qt, mt, grown, feat), atol=1e-4)
        # the MLP's input is a function of its own (cached by benchmarks/ranking_study.py)
        x = head.features(qt, mt, masks, feat)
        assert x.shape == (2, cfg.num_proposals + 1, 2 * cfg.embed_dim + 3 * cfg.hr_dim + 3)
        assert torch.allclose(head.mlp(x)[..., 0], head(qt, mt, masks, feat), atol=1e-6)
        c = mq(image, depth, coords, labels, prev)
    loaded = load_model_file(save_model(mq, tmp_path / "mq.safetensors", half=False)).eval()
    assert loaded.cfg.mask_quality
    with torch.no_grad():
        d = loaded(image, depth, coords, labels, prev)
    assert torch.allclose(d[0], c[0], atol=1e-6) and torch.allclose(d[1], c[1], atol=1e-6)


def test_prompt_maps_keep_the_channel_order_the_weights_were_trained_with():
    """early: +disks, -disks, previous mask, box (full resolution); dense: previous mask,
    +disks, -disks, box (stride 4). One click of each kind, a box, a previous mask."""
    import torch.nn.functional as F

    from napari_ois.model.ois import box_map, n_maps, prompt_maps

    cfg = get_config("ois-tiny-cef", img_size=64)
    s = cfg.img_size
    coords = torch.tensor([[[10.0, 10.0], [40.0, 40.0]]])
    labels = torch.tensor([[1, 0]])
    prev = torch.zeros(1, 1, s, s)
    prev[..., 20:36, 20:36] = 1.0
    boxes = torch.tensor([[8.0, 8.0, 48.0, 56.0]])
    early = prompt_maps(cfg, coords, labels, prev, boxes, "early")
    dense = prompt_maps(cfg, coords, labels, prev, boxes, "dense")
    assert early.shape == (1, n_maps(cfg), s, s) and dense.shape == (1, n_maps(cfg), s // 4, s // 4)
    disks = click_disks(coords, labels, s, cfg.disk_radius)
    assert torch.equal(early[:, :2], disks) and torch.equal(early[:, 2:3], prev)
    assert torch.equal(early[:, 3:], box_map(boxes, s))
    assert early[0, 0, 10, 10] == 1 and early[0, 1, 40, 40] == 1 and early[0, 0, 40, 40] == 0
    assert torch.equal(dense[:, :1], F.avg_pool2d(prev, 4))
    assert dense[0, 1, 2, 2] == 1 and dense[0, 2, 10, 10] == 1 and dense[0, 1, 10, 10] == 0
    with pytest.raises(ValueError, match="layout must be"):
        prompt_maps(cfg, coords, labels, prev, boxes, "late")


# --------------------------------------------------------------------------- iCMFormer (seed 004)
def test_cross_modality_blocks_sit_between_two_groups_and_use_the_clicks(tmp_path):
    """``cross_blocks``: image and click tokens through the first blocks (shared), the
    cross-modality blocks (the image attends to the clicks), their sum through the rest."""
    from napari_ois.model.ois import CrossModalityBlock
    from napari_ois.registry import load_model_file, save_model

    assert get_config("ois-tiny-icm").cross_blocks == 3 and get_config("ois-tiny-icm").fusion == "early"
    torch.manual_seed(0)
    model = OISModel(_ef_config(cross_blocks=2)).eval()
    enc = model.encoder
    assert enc.cross_split == len(enc.body.blocks) // 2 == 6
    assert len(enc.cross) == 2 and all(isinstance(b, CrossModalityBlock) for b in enc.cross)
    torch.nn.init.normal_(enc.click_embed.weight, std=0.1)  # as after training
    image, depth, coords, labels, prev = _inputs(b=1)
    maps = torch.cat([click_disks(coords, labels, 64, 5.0), prev], 1)
    with torch.no_grad():
        emb = model.encode(image, depth)
        a, _ = enc.fuse_clicks(emb.patches, torch.zeros_like(maps))
        b, _ = enc.fuse_clicks(emb.patches, maps)
        torch.nn.init.normal_(enc.cross[0].cross_attn.v.weight, std=0.5)  # the image's view of the clicks
        c, _ = enc.fuse_clicks(emb.patches, maps)
    assert a.shape == b.shape == (1, 32, 4, 4)
    assert not torch.allclose(a, b, atol=1e-5)  # the clicks reach the features
    assert not torch.allclose(b, c, atol=1e-5)  # through the cross-attention
    # it trains end to end and round-trips through a weights file
    model.train()
    logits, iou = model(image, depth, coords, labels, prev)
    (logits.mean() + iou.mean()).backward()
    assert enc.cross[1].cross_attn.q.weight.grad.abs().sum() > 0
    assert enc.click_embed.weight.grad.abs().sum() > 0
    path = save_model(model.eval(), tmp_path / "icm.safetensors", half=False)
    loaded = load_model_file(path).eval()
    assert loaded.cfg.cross_blocks == 2
    with torch.no_grad():
        assert torch.allclose(model(image, depth, coords, labels, prev)[0],
                              loaded(image, depth, coords, labels, prev)[0], atol=1e-6)


def test_cross_modality_blocks_need_an_early_fusion_vit():
    with pytest.raises(ValueError, match="need fusion='early'"):
        OISModel(tiny_config(backbone="vit_tiny_patch16_224", img_size=64, cross_blocks=1))
    with pytest.raises(ValueError, match="plain ViT"):
        OISModel(tiny_config(fusion="early", cross_blocks=1))  # resnet10t
    with pytest.raises(ValueError, match="cross_split"):
        OISModel(_ef_config(cross_blocks=1, cross_split=12))

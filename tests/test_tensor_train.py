"""The GPU path, run on the CPU: the training pack, batches made by tensor ops, training from it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_ois.data.sources import synthetic_source
from napari_ois.training.pack import Pack, build_pack
from napari_ois.training.tensor_train import (DevicePack, chamfer_distance, first_clicks,
                                              make_batch, next_clicks, proposal_masks)

ROOT = Path(__file__).resolve().parents[1]
TINY = "{backbone: resnet10t, img_size: 64, embed_dim: 32, hr_dim: 8, decoder_depth: 1, num_heads: 2, mlp_dim: 64}"


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("pack") / "tiny.npz"
    src = synthetic_source(seed=0, n=6, shape=(90, 120))
    meta = build_pack(path, source=src, side=96, scenes=4, progress=False)
    return path, src, meta


def test_pack_round_trips_the_instance_maps_and_holds_scenes_with_depth(tiny_pack):
    path, src, meta = tiny_pack
    assert meta["images"] == 6 and meta["scenes"] == 4
    pack = Pack(path)
    assert len(pack) == 10 and pack.labels.shape == (10, 96, 96)
    for i in range(6):  # the source is 90 x 120 -> 72 x 96, nearest-resized labels, lossless PNG
        image, labels = src.load(i)
        h, w = pack.shape[i]
        assert (h, w) == (72, 96)
        assert set(np.unique(pack.labels[i, :h, :w])) <= set(np.unique(labels))
        assert (pack.labels[i, h:] == -2).all()  # padding is marked
    assert pack.has_depth[6:].all() and not pack.has_depth[:6].any()
    p = pack.item_weights(scene_ratio=0.35)
    assert p[6:].sum() == pytest.approx(0.35) and p.sum() == pytest.approx(1.0)


def test_pack_refuses_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", blob=np.zeros(3, np.uint8), offsets=np.zeros(1, np.int64),
             items=np.zeros((0, 3), np.int64), item_set=np.zeros(0, np.int64),
             meta=np.frombuffer(b'{"format": "other"}', np.uint8))
    with pytest.raises(ValueError, match="not a napari-ois training pack"):
        Pack(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        Pack(tmp_path / "missing.npz")


def test_chamfer_distance_is_the_chessboard_distance_with_the_border_as_outside():
    rng = np.random.default_rng(0)
    mask = ndi.binary_opening(rng.random((3, 40, 50)) > 0.3, iterations=1)
    mask[0, :, :] = True  # touches the border everywhere
    got = chamfer_distance(torch.from_numpy(mask), cap=64).numpy()
    for b in range(3):
        padded = np.pad(mask[b], 1)
        ref = ndi.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
        np.testing.assert_array_equal(got[b], ref)
    capped = chamfer_distance(torch.from_numpy(mask), cap=3).numpy()
    assert capped.max() == 3


def test_clicks_land_in_the_object_and_in_the_larger_error():
    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(4, 32, 32, dtype=torch.bool)
    target[:, 8:24, 8:24] = True
    usable = torch.ones_like(target)
    pts = first_clicks(target, usable, gen)
    for b in range(4):
        r, c = pts[b].long()
        assert target[b, r, c]
    pred = target.clone()
    pred[0, 8:24, 8:16] = False  # a missing half: a positive click there
    pred[1, 0:6, 0:32] = True  # a false band: a negative click there
    pred[2] = False
    pred[2, 8:24, 8:24] = True  # perfect: no click
    pts, lab = next_clicks(pred, target, usable, gen)
    assert lab[0] == 1 and 8 <= pts[0, 1] < 16 and target[0, pts[0, 0].long(), pts[0, 1].long()]
    assert lab[1] == 0 and pts[1, 0] < 6
    assert lab[2] == -1


def test_proposals_nest_object_neighbours_and_theirs():
    lab = torch.zeros(1, 10, 30, dtype=torch.long)
    lab[0, :, 0:10], lab[0, :, 10:20], lab[0, :, 20:30] = 1, 2, 3  # a chain 1-2-3
    props = proposal_masks(lab, torch.tensor([1]), 3)
    assert props[0, 0].sum() == 100 and props[0, 1].sum() == 200 and props[0, 2].sum() == 300
    assert (props[0, 0] <= props[0, 1]).all() and (props[0, 1] <= props[0, 2]).all()


def test_batches_are_consistent(tiny_pack):
    dp = DevicePack(Pack(tiny_pack[0]), "cpu")
    b = make_batch(dp, 6, 64, torch.Generator().manual_seed(1))
    assert b["image"].shape == (6, 3, 64, 64) and b["proposals"].shape == (6, 3, 64, 64)
    assert 0 <= float(b["image"].min()) and float(b["image"].max()) <= 1
    assert (b["target"] <= b["valid"]).all()
    assert torch.equal(b["proposals"][:, 0], b["target"])
    assert (b["target"].flatten(1).sum(1) >= 12).all()
    assert (b["depth"][~b["has_depth"]] == 0).all()


def test_zoom_crops_lay_the_object_out_as_zoom_in_inference_does(tiny_pack):
    """p_zoom_crop = 1: the object's longest side fills 1/1.8 to 1/1.2 of the input (the CPU
    loop's zoom-in crops; tests/test_training_data.py), the whole object in view."""
    from napari_ois.training.tensor_train import TensorAugment

    dp = DevicePack(Pack(tiny_pack[0]), "cpu")
    box = dp.obj_box
    olong = torch.maximum(box[:, 1] - box[:, 0], box[:, 3] - box[:, 2])
    ilong = dp.shape[dp.obj_item].float().max(1).values
    # above zoom_crop_min / 1.2 and under the image's side / 1.8: the expansion alone sets the crop
    big = (olong >= 20) & (olong * 1.8 <= ilong)
    assert big.any()
    dp.obj_p = torch.where(big, dp.obj_p, torch.zeros_like(dp.obj_p))
    dp.obj_p = dp.obj_p / dp.obj_p.sum()
    aug = TensorAugment(p_zoom_crop=1.0, p_hflip=0.0, p_vflip=0.0)
    size = 64
    for seed in range(4):
        b = make_batch(dp, 8, size, torch.Generator().manual_seed(seed), aug)
        t = b["target"]
        rows, cols = t.any(2), t.any(1)
        ext = []
        for i in range(len(t)):
            r, c = torch.nonzero(rows[i]).flatten(), torch.nonzero(cols[i]).flatten()
            ext.append(max(int(r[-1] - r[0]) + 1, int(c[-1] - c[0]) + 1))
        assert all(size / 1.8 - 2 <= e <= size / 1.2 + 2 for e in ext), ext


def test_train_pack_command_trains_and_writes_a_loadable_model(tiny_pack, tmp_path):
    from napari_ois.registry import load_model_file

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"arch: ois-tiny\nmodel_overrides: {TINY}\nbatch_size: 3\nwarmup: 1\n"
                   "log_every: 1\nthreads: 1\ndevice: cpu\n")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "napari_ois.training.tensor_train", "--pack",
                        str(tiny_pack[0]), "--config", str(cfg), "--out", str(out),
                        "--minutes", "1", "--max-steps", "3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 3 steps" in r.stdout
    model = load_model_file(out / "model.safetensors")
    assert model.cfg.backbone == "resnet10t"
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3


def test_train_pack_arguments_live_beside_the_pack_not_in_the_cli():
    """``python -m napari_ois.training.tensor_train`` and ``napari-ois train-pack`` share the
    arguments without tensor_train importing training/cli (which imports tensor_train)."""
    code = ("import sys\nfrom napari_ois.training import tensor_train\n"
            "try:\n    tensor_train.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'napari_ois.training.cli' not in sys.modules, 'tensor_train imported training.cli'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--pack" in r.stdout and "--max-steps" in r.stdout
    from napari_ois.cli import build_parser

    args = build_parser().parse_args(["train-pack", "--pack", "p.npz", "--config", "c.yaml", "--out", "o"])
    assert args.minutes == 9.0 and args.max_steps is None and args.func.__module__ == "napari_ois.training.cli"


@pytest.mark.parametrize("config", ["gpu-ois-tiny-cef.yaml", "gpu-ois-tiny-ef.yaml"])
def test_the_prepared_gpu_configs_train_on_the_cpu(tiny_pack, tmp_path, config):
    """The configs scripts/gpu_train.sh runs, as they are but for batch, device and threads:
    the warm start (the shipped default) fits the architecture, and two steps train."""
    import yaml

    from napari_ois.registry import load_model_file
    from napari_ois.training.loop import TrainConfig
    from napari_ois.training.tensor_train import train_from_pack

    raw = yaml.safe_load((ROOT / "configs" / config).read_text())
    raw.update(batch_size=2, device="cpu", threads=1, amp=False, log_every=1)
    cfg = tmp_path / config
    cfg.write_text(yaml.safe_dump(raw))
    tc = TrainConfig.from_yaml(cfg)
    res = train_from_pack(tc, tiny_pack[0], tmp_path / "run", minutes=5, progress=False, max_steps=2)
    assert res["step"] == 2 and np.isfinite(res["history"][-1]["loss"])
    assert load_model_file(tmp_path / "run" / "model.safetensors").cfg.name == raw["arch"]


def test_box_targets_match_the_cpu_loop_and_box_first_steps_train():
    from napari_ois.model import OISModel, get_config
    from napari_ois.training.loop import sample_box
    from napari_ois.training.tensor_train import target_boxes, tensor_train_step

    target = torch.zeros(3, 32, 40, dtype=torch.bool)
    target[0, 5:9, 10:30] = True
    target[1, 0:32, 39:40] = True
    gen = torch.Generator().manual_seed(0)
    boxes = target_boxes(target, gen, jitter=0.0)
    for i in range(2):
        assert tuple(boxes[i].tolist()) == sample_box(target[i].numpy(), np.random.default_rng(0), 0.0)
    assert boxes[2].tolist() == [0.0, 0.0, 0.0, 0.0]  # no object, no box
    moved = target_boxes(target, gen, jitter=0.1)
    assert (moved[:2, 2:] > moved[:2, :2]).all() and (moved[:2] >= 0).all()

    torch.manual_seed(0)
    model = OISModel(get_config("ois-tiny-cef", backbone="resnet10t", img_size=64, embed_dim=32,
                                hr_dim=8, decoder_depth=1, num_heads=2, mlp_dim=64))
    s = 64
    tgt = torch.zeros(2, s, s, dtype=torch.bool)
    tgt[:, 10:40, 12:50] = True
    batch = {"image": torch.rand(2, 3, s, s), "depth": torch.rand(2, 1, s, s),
             "has_depth": torch.ones(2, dtype=torch.bool), "target": tgt,
             "valid": torch.ones(2, s, s, dtype=torch.bool), "ignore": torch.zeros(2, s, s, dtype=torch.bool),
             "proposals": tgt[:, None].expand(2, 3, s, s).clone()}
    res = tensor_train_step(model, batch, torch.Generator().manual_seed(1), max_extra_clicks=2,
                            p_first_click_only=1.0, p_box_first=1.0)
    assert torch.isfinite(res["loss"]) and float(res["proposals"]) == 0.0  # boxes only
    res["loss"].backward()
    assert model.type_embed.weight.grad[4:].abs().sum() > 0

"""Fine-tuning on the user's own annotations: the command, the console function, the guard
rails and cancellation, end to end with a real (tiny) model on tiny image files."""

import json
import subprocess
import sys
import threading

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import napari_ois
from napari_ois.cli import main
from napari_ois.model import OISModel
from napari_ois.registry import build_model, save_model
from napari_ois import finetuning as ft
from conftest import tiny_config

MIN = 0.04  # minutes: ~2.4 s of training per run


def _scene(seed, shape=(60, 72), n=3):
    """A textured image with ``n`` ellipses of their own colours, and its instance map."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    image = 0.3 + 0.2 * rng.random((h, w, 3))
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.12, 0.22) * h, rng.uniform(0.12, 0.22) * w
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[m] = k
        image[m] = rng.random(3)
    return (image * 255).astype(np.uint8), labels


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    return save_model(OISModel(tiny_config()), tmp_path / "base.safetensors")


@pytest.fixture
def folder(tmp_path):
    """Four images in every mask form the command reads: ``<stem>.png`` (255 / 128 ignore),
    ``<stem>/<k>.png``, an instance label map, and a 16-bit grey image."""
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i in range(4):
        image, labels = _scene(i)
        if i == 3:  # 16-bit grey: windowed by percentiles, as prediction does
            image = (image.mean(-1) * 200).astype(np.uint16)
        iio.imwrite(img_dir / f"im{i}.png", image)
        if i == 0:
            m = np.where(labels == 1, 255, 0).astype(np.uint8)
            m[(labels == 2)] = 128  # ignore
            iio.imwrite(mask_dir / "im0.png", m)
        elif i == 1:
            (mask_dir / "im1").mkdir()
            for k in (1, 2, 3):
                iio.imwrite(mask_dir / "im1" / f"{k}.png", ((labels == k) * 255).astype(np.uint8))
        else:
            iio.imwrite(mask_dir / f"im{i}.png", labels.astype(np.uint8))  # instance map
    return img_dir, mask_dir


def test_reading_a_folder_in_every_mask_form(folder):
    from napari_ois.data.folders import read_folder_pairs  # the folder readers are the data layer's

    imgs, labs, names = read_folder_pairs(*folder)
    assert names == ["im0.png", "im1.png", "im2.png", "im3.png"]
    assert imgs[3].dtype == np.uint16
    assert sorted(np.unique(labs[0])) == [-1, 0, 1]  # 128 is ignore
    assert sorted(np.unique(labs[1])) == [0, 1, 2, 3]  # one object per file
    assert sorted(np.unique(labs[2])) == [0, 1, 2, 3]  # the instance map as it is


def test_folder_problems_are_annotation_errors_and_finetune_errors(folder, tmp_path):
    """The data layer raises ``AnnotationError``; the fine-tuning entry points turn it into
    their ``FinetuneError`` with the same message."""
    from napari_ois.data.folders import AnnotationError, read_folder_pairs

    with pytest.raises(AnnotationError, match="--masks .*: folder not found"):
        read_folder_pairs(folder[0], tmp_path / "nowhere")
    with pytest.raises(ft.FinetuneError, match="--masks .*: folder not found"):
        ft.finetune_folder(folder[0], tmp_path / "nowhere", tmp_path / "out", progress=False)
    with pytest.raises(ft.FinetuneError, match="labels must be >= 0"):
        ft.prepare_arrays([np.zeros((8, 8))], [np.full((8, 8), -3)])
    code = ("import sys, napari_ois.data.folders; "
            "bad = sorted(m for m in sys.modules if m.startswith('napari_ois.') "
            "and not m.startswith('napari_ois.data')); assert bad == [], bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_command_end_to_end_and_the_model_loads_everywhere(tmp_path, folder, base, capsys):
    out = tmp_path / "ft"
    rc = main(["finetune", "--images", str(folder[0]), "--masks", str(folder[1]),
               "--out", str(out), "--base", str(base), "--minutes", str(MIN),
               "--threads", "1", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "held-back check" in printed and f"--model {out}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["finetune.json", "model.json",
                                                     "model.safetensors"]
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["steps"] >= 1 and summary["objects"] >= 6
    assert summary["minutes_budget"] == MIN and summary["minutes_used"] > 0
    assert summary["held_back_objects"] >= 1
    assert 0.0 <= summary["heldout_iou_base"] <= summary["heldout_iou_best"] <= 1.0
    assert len(summary["history"]) >= 2  # the base and at least one check after training
    assert "fine-tuned from" in json.loads((out / "model.json").read_text())["notes"]["summary"]
    # the folder and the file in it load, with the base's architecture
    tuned = build_model(out)
    assert tuned.cfg.replace(notes={}) == build_model(base).cfg.replace(notes={})
    for spec in (str(out), str(out / "model.safetensors")):
        pred = napari_ois.load_predictor(spec, device="cpu")
        pred.set_image(_scene(9)[0])
        res = pred.predict([[30, 36]], [1])
        assert res.masks.shape[-2:] == (60, 72)
    # segment and eval take the folder as --model
    assert main(["segment", str(folder[0] / "im2.png"), "--point", "30,36", "--model", str(out),
                 "--out", str(tmp_path / "m.png")]) == 0
    assert main(["eval", "--images", str(folder[0]), "--masks", str(folder[1]), "--model",
                 str(out), "--max-clicks", "2", "--limit", "2", "--quiet"]) == 0


def test_console_function_on_label_arrays(tmp_path, base):
    """napari-style data: uint8 RGB, 16-bit grey, float32; labels as integer arrays."""
    images, labels = [], []
    for i in range(3):
        image, lab = _scene(10 + i, n=2)
        if i == 1:
            image = (image.mean(-1) * 100).astype(np.uint16)
        if i == 2:
            image = image.mean(-1).astype(np.float32) / 7.0 - 3.0
        images.append(image)
        labels.append(lab.astype(np.uint16))
    seen = []
    path = napari_ois.finetune(images, labels, minutes=MIN, out=tmp_path / "console", base=base,
                               progress=seen.append, threads=1, batch_size=2)
    assert path == tmp_path / "console" / "model.safetensors" and path.is_file()
    checks = [p for p in seen if p["heldout_iou"] == p["heldout_iou"]]
    assert checks and 0 <= checks[-1]["best_iou"] <= 1 and checks[-1]["left_s"] >= 0
    assert max(p["step"] for p in seen) >= 1
    pred = napari_ois.load_predictor(str(path), device="cpu")
    pred.set_image(images[1])
    assert pred.predict([[30, 36]], [1]).masks.shape[-2:] == (60, 72)


def test_the_step_budget_ends_the_run_with_the_learning_rate_decayed(tmp_path, base):
    """With time to spare the run stops at its step budget; the learning rate warms up, then
    only falls; the held-back checks are spread over the steps, the last at the last step."""
    assert ft.planned_steps(1) == ft.MIN_STEPS
    assert ft.planned_steps(100) == 100 * ft.STEPS_PER_OBJECT
    images, labels = _good()
    seen = []
    napari_ois.finetune(images, labels, minutes=5, out=tmp_path / "o", base=base, steps=6,
                        progress=seen.append, threads=1, batch_size=2)
    summary = json.loads((tmp_path / "o" / "finetune.json").read_text())
    assert summary["steps"] == summary["steps_planned"] == 6
    assert summary["minutes_used"] < 5
    history = summary["history"]
    assert [h["step"] for h in history][0] == 0 and history[-1]["step"] == 6
    assert 3 <= len(history) <= 7  # the base, then at most one check per step
    lrs = [p["lr"] for p in seen if p["phase"] == "train"]
    peak = lrs.index(max(lrs))
    assert peak <= 1 and all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert all(p["left_s"] <= 5 * 60 and p["total_s"] >= p["elapsed_s"] for p in seen)


def test_frozen_norm_statistics_and_the_weight_average(tmp_path, base, monkeypatch):
    """By default the base's batch-norm statistics are kept (the weights learn);
    ``ema_decay`` changes what is kept, not how the run trains."""
    scores = iter(np.linspace(0.1, 0.9, 100))  # every check beats the last: the last is kept
    monkeypatch.setattr(ft, "heldout_score", lambda *a, **k: float(next(scores)))
    images, labels = _good()
    runs = {}
    for name, kw in {"plain": {"update_norm_stats": True}, "frozen": {},
                     "average": {"update_norm_stats": False, "ema_decay": 0.8}}.items():
        path = napari_ois.finetune(images, labels, minutes=5, out=tmp_path / name, base=base,
                                   steps=4, progress=False, threads=1, batch_size=2, **kw)
        summary = json.loads((tmp_path / name / "finetune.json").read_text())
        assert summary["best_step"] == summary["steps"] == 4
        runs[name] = (build_model(str(path)).state_dict(), [h.get("loss") for h in summary["history"]])
    before = build_model(str(base)).state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in before if before[k].is_floating_point() and k not in stats]
    assert stats and weights

    def same(a, b, keys):
        return all(torch.equal(a[k], b[k]) for k in keys)
    assert not same(runs["plain"][0], before, stats)  # updated on request
    assert same(runs["frozen"][0], before, stats) and same(runs["average"][0], before, stats)
    assert not same(runs["frozen"][0], before, weights)
    # the same training (up to float rounding: kernels may sum in another order) ...
    assert runs["average"][1][1:] == pytest.approx(runs["frozen"][1][1:], rel=1e-5)
    assert not same(runs["average"][0], runs["frozen"][0], weights)  # ... another model kept


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_the_encoder_learns_at_its_own_rate(tmp_path, base, scale, monkeypatch):
    """``encoder_lr_scale`` 0 freezes the image encoder (weights and normalisation statistics
    unchanged) while the rest learns; with 0.1 the encoder learns too."""
    scores = iter(np.linspace(0.1, 0.9, 50))  # every check beats the last: the last step is kept
    monkeypatch.setattr(ft, "heldout_score", lambda *a, **k: float(next(scores)))
    images, labels = _good()
    path = napari_ois.finetune(images + [_scene(2)[0]], labels + [_scene(2)[1]], minutes=MIN,
                               out=tmp_path / "o", base=base, progress=False, threads=1,
                               batch_size=2, encoder_lr_scale=scale, lr=1e-2)
    summary = json.loads((tmp_path / "o" / "finetune.json").read_text())
    assert summary["best_step"] == summary["steps"] >= 1 and summary["encoder_lr_scale"] == scale
    before = build_model(str(base)).state_dict()
    after = build_model(str(path)).state_dict()

    def moved(prefix):
        keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
        return max(float((after[k].float() - before[k].float()).abs().max()) for k in keys)
    rest = max(moved(n) for n in ("blocks.", "hyper.", "iou_head."))
    assert rest > 0
    if scale == 0:
        assert moved("encoder.") == 0
    else:
        assert 0 < moved("encoder.")


def test_holdout_prefers_whole_images_else_objects_become_ignore():
    items = [ft.Annotated(f"i{j}", np.zeros((60, 72, 3), np.float32), _scene(j, n=2)[1])
             for j in range(4)]
    train, held, info = ft.split_holdout(items, np.random.default_rng(0))
    assert info["held_back_images"] and len(train) == 3 and len(held) == 2
    one = [ft.Annotated("only", np.zeros((60, 72, 3), np.float32), _scene(1, n=3)[1])]
    train, held, info = ft.split_holdout(one, np.random.default_rng(0))
    assert not info["held_back_images"] and len(held) == 1
    held_id = int(held[0].name.split("#")[1])
    assert not (train[0].labels == held_id).any() and (train[0].labels == -1).any()


def test_small_objects_are_kept_and_sampled():
    """An object of a few hundredths of a percent of its image (a nucleus, a thin cell) is
    trained on; only objects under MIN_OBJECT_PX pixels are left out."""
    from napari_ois.training.loop import TrainConfig

    labels = np.zeros((400, 400), np.int32)
    labels[100:106, 100:106] = 1  # 36 px: 0.02 % of the image
    labels[300:306, 200:206] = 2
    labels[50:53, 350:353] = 3  # 9 px: too small
    rgb = np.full((400, 400, 3), 0.3, np.float32)
    rgb[labels > 0] = 0.9
    item = ft.Annotated("small", rgb, labels)
    usable, small = ft.count_objects([item, item])
    assert usable == [(0, 1), (0, 2), (1, 1), (1, 2)] and small == 2
    builder = ft.sample_builder([item], tiny_config(), TrainConfig(scene_ratio=0.0))
    for j in range(4):
        s = builder.make_sample(np.random.default_rng(j))
        assert s["target"].sum() >= builder.cfg.min_target_px and not s["is_scene"]


def _good():
    return [_scene(0)[0], _scene(1)[0]], [_scene(0)[1], _scene(1)[1]]


@pytest.mark.parametrize("case, match", [
    ("few", "too few objects: 2 usable"),
    ("empty", "the labels are empty"),
    ("shape", "image 1: the image is 60x72 .* but its labels are 60x70"),
    ("count", "2 images but 1 label images"),
    ("float", "labels must be whole numbers"),
    ("arch", "cannot be fine-tuned: it is not a model of a known OIS architecture"),
    ("unknown", "base model 'no-such-model': unknown"),
    ("disk", "not enough disk space for the model"),
    ("check_clicks", "check_clicks must be >= 1, got 0"),
    ("encoder_lr_scale", "encoder_lr_scale must be a number >= 0, got -1"),
    ("steps", "steps must be a whole number >= 1, got 0"),
    ("ema_decay", "ema_decay must be a number in \\[0, 1\\), got 1"),
])
def test_guard_rails_name_the_problem(tmp_path, base, monkeypatch, case, match):
    images, labels = _good()
    kw = {"base": base}
    if case == "few":
        labels = [np.where(lab == 1, 1, 0) for lab in labels]
    elif case == "empty":
        labels = [np.zeros_like(lab) for lab in labels]
    elif case == "shape":
        labels[1] = labels[1][:, :70]
    elif case == "count":
        labels = labels[:1]
    elif case == "float":
        labels[0] = labels[0] + 0.5
    elif case == "arch":  # tensors of one architecture, the config of another
        torch.manual_seed(0)
        bad = save_model(OISModel(tiny_config(embed_dim=16)), tmp_path / "bad.safetensors")
        bad.with_suffix(".json").write_text(json.dumps(tiny_config().to_dict()))
        kw["base"] = bad
    elif case == "unknown":
        kw["base"] = "no-such-model"
    elif case == "disk":
        monkeypatch.setattr(ft.shutil, "disk_usage", lambda p: type("U", (), {"free": 4096})())
    elif case == "check_clicks":
        kw["check_clicks"] = 0
    elif case == "encoder_lr_scale":
        kw["encoder_lr_scale"] = -1.0
    elif case == "steps":
        kw["steps"] = 0
    elif case == "ema_decay":
        kw["ema_decay"] = 1.0
    with pytest.raises(ValueError, match=match):
        napari_ois.finetune(images, labels, minutes=MIN, out=tmp_path / "o", progress=False, **kw)
    assert not (tmp_path / "o").exists()


def test_the_command_reports_a_guard_rail_in_one_line(tmp_path, folder, capsys):
    rc = main(["finetune", "--images", str(folder[0]), "--masks", str(folder[1]),
               "--out", str(tmp_path / "o"), "--base", "random-walker", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-ois finetune: error: base model 'random-walker': unknown")
    assert "\n" not in err and "Traceback" not in err


def test_a_cancelled_run_changes_nothing(tmp_path, base):
    """should_stop turns true after the first step: no model, the one in OUT stays in use."""
    out = tmp_path / "in-use"
    save_model(build_model(base), out / "model.safetensors")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    stop = threading.Event()

    def progress(p):
        if p["step"] >= 1:
            stop.set()

    images, labels = _good()
    assert napari_ois.finetune(images, labels, minutes=1.0, out=out, base=base, should_stop=stop,
                               progress=progress, threads=1, batch_size=2) is None
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a callable works the same, and a new OUT is not even created
    calls = []
    res = ft.run_finetune(ft.prepare_arrays(images, labels), tmp_path / "new", base=base,
                          minutes=1.0, should_stop=lambda: len(calls) > 0,
                          progress=lambda p: calls.append(p) if p["step"] >= 1 else None,
                          threads=1, batch_size=2)
    assert res.cancelled and res.model_path is None and not (tmp_path / "new").exists()


def test_package_import_stays_light():
    code = ("import sys, napari_ois; assert 'finetune' in napari_ois.__all__; "
            "import napari_ois.cli; napari_ois.cli.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

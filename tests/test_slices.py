"""Propagation samples (training/slices.py): a neighbouring slice's mask as the prompt, an
empty answer where the structure has ended; the loop trains them with a padding click, and the
predictor takes a mask alone as a prompt (the same slot)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_ois.data.sources import TrainIndex
from napari_ois.model import OISModel, get_config
from napari_ois.training.data import SAMPLE_KEYS, SampleBuilder, SampleConfig
from napari_ois.training.loop import TrainConfig, train_step
from napari_ois.training.slices import NeighbourSlices, jitter_mask, slice_cases

TINY = {"backbone": "resnet10t", "img_size": 64, "embed_dim": 32, "hr_dim": 8,
        "decoder_depth": 1, "num_heads": 2, "mlp_dim": 64}


def _volume_set(root, name="VOL", cases=("c1", "c2"), n=6):
    """A training set of slice-named images: a disc (id 1) on slices 0-3 only, a square
    (id 2) on every slice."""
    img_dir, lab_dir = root / "train" / name / "images", root / "train" / name / "labels"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    rr, cc = np.mgrid[:64, :72]
    for case in cases:
        for z in range(n):
            lab = np.zeros((64, 72), np.uint8)
            if z < 4:
                lab[(rr - 20) ** 2 + (cc - 20) ** 2 < (8 + z) ** 2] = 1
            lab[40:56, 40:60] = 2
            img = np.where(lab == 1, 200, np.where(lab == 2, 120, 30)).astype(np.uint8)
            iio.imwrite(img_dir / f"{case}_z{z:03d}.png", img)
            iio.imwrite(lab_dir / f"{case}_z{z:03d}.png", lab)
    # a photo set without slice names: not a volume
    other = root / "train" / "PHOTOS"
    (other / "images").mkdir(parents=True)
    (other / "labels").mkdir(parents=True)
    iio.imwrite(other / "images" / "a.png", np.full((64, 72), 90, np.uint8))
    lab = np.zeros((64, 72), np.uint8)
    lab[10:30, 10:30] = 1
    iio.imwrite(other / "labels" / "a.png", lab)
    return root


def test_slice_cases_groups_slices_by_case_and_leaves_out_other_sets(tmp_path):
    index = TrainIndex(_volume_set(tmp_path))
    cases = slice_cases(index)
    assert sorted(cases) == ["VOL/c1", "VOL/c2"]
    assert [z for z, _ in cases["VOL/c1"]] == list(range(6))
    assert all(index.records[i].stem == f"c1_z{z:03d}" for z, i in cases["VOL/c1"])


def test_propagation_samples_show_a_neighbours_mask_and_empty_answers_past_the_end(tmp_path):
    index = TrainIndex(_volume_set(tmp_path))
    ns = NeighbourSlices(index, max_gap=2, p_absent=1.0)
    rng = np.random.default_rng(0)
    samples = [ns.make_sample(rng, 48) for _ in range(60)]
    assert all(s is not None and s["is_prop"] for s in samples)
    assert all(set(SAMPLE_KEYS) == set(s) for s in samples)
    assert all(s["prompt_mask"].any() for s in samples)  # the prompt is never empty
    empty = [s for s in samples if not s["target"].any()]
    # the disc ends after slice 3: with p_absent=1, slices 4-5 given the disc from 2-3 ask
    # for an empty answer
    assert len(empty) >= 5
    # a present object overlaps its prompt (the same place on the neighbouring slice)
    present = [s for s in samples if s["target"].any()]
    assert all((s["target"] & s["prompt_mask"]).any() for s in present)


def test_jitter_mask_grows_or_shrinks_but_never_empties():
    m = np.zeros((20, 20), bool)
    m[9:11, 9:11] = True
    rng = np.random.default_rng(1)
    outs = [jitter_mask(rng, m, 2) for _ in range(30)]
    assert all(o.any() for o in outs)
    assert {int(o.sum()) > 4 for o in outs} == {True, False}


def test_the_builder_mixes_propagation_samples_at_its_rate(tmp_path):
    index = TrainIndex(_volume_set(tmp_path))
    b = SampleBuilder(index, SampleConfig(size=48, p_propagate=0.5, scene_ratio=0.0))
    rng = np.random.default_rng(2)
    flags = [b.make_sample(rng)["is_prop"] for _ in range(80)]
    assert 20 <= sum(flags) <= 60
    off = SampleBuilder(index, SampleConfig(size=48, p_propagate=0.0, scene_ratio=0.0))
    assert not any(off.make_sample(rng)["is_prop"] for _ in range(10))


def _past_the_end_batch(tmp_path, n: int = 4) -> dict:
    """A batch of ``n`` propagation samples past the structure's end (empty targets)."""
    ns = NeighbourSlices(TrainIndex(_volume_set(tmp_path)), max_gap=2, p_absent=1.0)
    rng = np.random.default_rng(3)
    samples = []
    while len(samples) < n:
        s = ns.make_sample(rng, 64)
        if not s["target"].any():
            samples.append(s)
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in SAMPLE_KEYS
            if k != "source"}


def test_a_step_with_propagation_samples_trains_the_refined_mask_towards_empty(tmp_path):
    """Propagation samples get no proposal loss and their mask loss pushes an empty answer
    down: gradient steps on a batch of them lower its predicted area."""
    torch.manual_seed(0)
    batch = _past_the_end_batch(tmp_path)
    model = OISModel(get_config("ois-tiny-cef", **TINY))
    tc = TrainConfig(arch="ois-tiny-cef", model_overrides=TINY, p_first_click_only=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def area():
        with torch.no_grad():
            model.eval()
            emb = model.encode(batch["image"].float(), None)
            logits, _ = model.decode(emb, torch.zeros(4, 1, 2), -torch.ones(4, 1, dtype=torch.long),
                                     batch["prompt_mask"].float()[:, None])
            model.train()
        return float((logits[:, 0] > 0).float().mean())

    before = area()
    for i in range(25):
        res = train_step(model, batch, tc, np.random.default_rng([0, i]), torch.device("cpu"))
        assert float(res["proposals"]) == 0.0  # no proposals for propagation samples
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
    assert area() < max(0.02, 0.5 * before)


def test_the_predictor_takes_a_mask_alone_as_a_prompt(tiny_model, disk_image):
    from napari_ois.predictor import OISPredictor

    image, disk = disk_image
    pred = OISPredictor(tiny_model, device="cpu")
    pred.set_image(image)
    out = pred.predict(prev_mask=disk)
    assert out.masks.shape == (1, *disk.shape)
    with pytest.raises(ValueError, match="at least one click, a box or a prev_mask"):
        pred.predict()


def test_a_model_trained_on_propagation_samples_is_propagated_with_the_mask_alone(disk_image):
    """The model's notes choose the prompt: a mask-trained model gets no click on the next
    slice (as in training), any other model the interior click and its agreeing clicks."""
    from conftest import tiny_config
    from napari_ois.predictor import OISPredictor
    from napari_ois.session import InteractionSession

    image, disk = disk_image
    stack = np.stack([image] * 4)
    for notes, want in (({"propagation_prompt": "mask"}, "mask"), ({}, "clicks")):
        torch.manual_seed(0)
        model = OISModel(tiny_config(notes=notes)).eval()
        pred = OISPredictor(model, device="cpu")
        assert pred.propagation_prompt == want
        calls = []
        real = pred.predict

        def spy(points=(), labels=(), **kw):
            calls.append(len(points))
            return real(points, labels, **kw)

        pred.predict = spy
        s = InteractionSession(pred, stack)
        list(s.iter_propagate((1,), disk, area_ratio=None, min_overlap=None, min_score=-1.0,
                              min_area=0))
        assert calls, "propagation predicted no slice"
        assert (max(calls) == 0) == (want == "mask")


@pytest.mark.parametrize("p_prop_correct", [0.0, 1.0])
def test_corrected_propagation_samples_get_the_simulators_clicks(tmp_path, p_prop_correct):
    """``p_prop_correct``: after the mask-only prediction of a propagation sample, the click
    rounds correct it as a user corrects a propagated slice (a negative click where the
    structure has ended, that prediction as the previous mask); at 0 the neighbour's mask
    stays the only prompt."""
    torch.manual_seed(0)
    batch = _past_the_end_batch(tmp_path)
    model = OISModel(get_config("ois-tiny-cef", **TINY))
    decode, calls = model.decode, []

    def spy(emb, coords, labels, prev=None, *args, **kwargs):
        logits, iou = decode(emb, coords, labels, prev, *args, **kwargs)
        calls.append((labels.clone(), None if prev is None else prev.detach().clone()))
        return logits + 50.0, iou  # every pixel predicted: the answer (empty) is all error

    model.decode = spy
    tc = TrainConfig(arch="ois-tiny-cef", model_overrides=TINY, p_first_click_only=0.0,
                     max_extra_clicks=2, p_prop_correct=p_prop_correct)
    train_step(model, batch, tc, np.random.default_rng(5), torch.device("cpu"))
    labels, prev = calls[-1]
    prompt = batch["prompt_mask"].float()[:, None]
    if p_prop_correct == 0.0:
        assert (labels == -1).all()  # padding only
        assert torch.equal(prev, prompt)  # the neighbour's mask throughout
    else:
        assert (labels[:, 1:] == 0).all()  # a negative click per round: the slice is empty
        assert not torch.equal(prev, prompt) and bool((prev > 0.5).all())  # its own prediction

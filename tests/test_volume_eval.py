"""The volumetric protocol (``napari-ois eval3d``, ``evaluation.volume``) and the propagation
module it shares with the session (``napari_ois.propagation``).

The protocol's rules are tested with an oracle predictor (the ground truth of each slice); the
command end to end with the shipped default model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_ois import Prediction
from napari_ois.data.clicks import Click
from napari_ois.evaluation.volume import (
    Anchor,
    Case,
    StructureRun,
    check_case_shapes,
    dice,
    error_click,
    evaluate_volumes,
    find_cases,
    run_structure,
    volume_contrast_limits,
)
from napari_ois.propagation import check_z_range, propagate_slices, slice_prompt
from napari_ois.session import InteractionSession


class OraclePredictor:
    """The ground truth of the slice, for a volume whose intensities are its label ids.

    The structure is the id under the first positive click, else the most common id in the
    box, else under ``prev_mask`` (so a propagation whose prompt falls off the structure finds
    nothing: an empty mask). Scores are 1."""

    num_proposals = 3
    accepts_boxes = True
    zoom_in = None

    def __init__(self):
        self._state = None
        self.calls = []  # (points, labels, had_prev, multimask, box)

    def set_image(self, image, depth=None, contrast_limits=None):
        self._state = {"ids": np.rint(np.asarray(image, dtype=float)).astype(int)}
        return self._state

    @property
    def state(self):
        return self._state

    def set_state(self, state):
        self._state = state

    def _target(self, points, labels, prev_mask, box):
        ids = self._state["ids"]
        for (r, c), lab in zip(points, labels):
            if lab == 1 and ids[int(round(r)), int(round(c))]:
                return int(ids[int(round(r)), int(round(c))])
        region = None
        if box is not None:
            r0, c0, r1, c1 = (int(round(v)) for v in (box.as_tuple() if hasattr(box, "as_tuple") else box))
            region = ids[r0:r1 + 1, c0:c1 + 1]
        elif prev_mask is not None:
            region = ids[np.asarray(prev_mask) > 0]
        if region is None:
            return 0
        vals = region[region > 0]
        return int(np.bincount(vals).argmax()) if vals.size else 0

    def predict(self, points=(), labels=(), prev_mask=None, multimask=None, box=None):
        pts = np.asarray(points, float).reshape(-1, 2)
        self.calls.append((pts.tolist(), list(labels), prev_mask is not None, multimask, box))
        t = self._target(pts, labels, prev_mask, box)
        m = (self._state["ids"] == t) if t else np.zeros(self._state["ids"].shape, bool)
        n = self.num_proposals if multimask else 1
        masks = np.repeat(m[None], n, axis=0)
        return Prediction(masks, np.ones(n, np.float32), np.where(masks, 10.0, -10.0).astype(np.float32))


class DilatingPredictor(OraclePredictor):
    """The oracle's mask grown by one pixel: never perfect (for numbers that are not all 1)."""

    def predict(self, *args, **kwargs):
        from scipy import ndimage

        out = super().predict(*args, **kwargs)
        masks = np.stack([ndimage.binary_dilation(m) for m in out.masks])
        return Prediction(masks, out.scores, np.where(masks, 10.0, -10.0).astype(np.float32))


def cylinders(z=24, h=48, w=64):
    """Two structures that keep their area over Z (no tiny end slices): id 1 a 12 x 14 block
    on slices 4..15, id 3 a disk of radius 8 on slices 8..19."""
    lab = np.zeros((z, h, w), np.uint8)
    lab[4:16, 10:22, 8:22] = 1
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 24) ** 2 + (xx - 44) ** 2 <= 64
    lab[8:20][:, disk] = 3
    return lab


def ellipsoid(z=30, h=64, w=64, centre=(14, 32, 30), axes=(8, 18, 15)):
    zz, yy, xx = np.mgrid[:z, :h, :w]
    return (((zz - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2
            + ((xx - centre[2]) / axes[2]) ** 2) <= 1


def write_set(root, volumes, labels, names=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    names = names or [f"case{i}" for i in range(len(volumes))]
    for n, v, lab in zip(names, volumes, labels):
        tifffile.imwrite(root / "images" / f"{n}.tif", v)
        tifffile.imwrite(root / "labels" / f"{n}.tif", lab)
    return root / "images", root / "labels"


def oracle_slice(ids):
    """``propagate_slices``' per-slice callable on a label volume, by the oracle."""
    pred = OraclePredictor()

    def predict_slice(z, points, labels, prev_mask):
        pred.set_image(ids[z])
        out = pred.predict(points, labels, prev_mask=prev_mask, multimask=False)
        return out.masks[0], float(out.scores[0])

    return predict_slice


# --------------------------------------------------------------------------- propagation
def test_slice_prompt_is_the_masks_interior_point_and_the_agreeing_clicks():
    m = np.zeros((20, 20), bool)
    m[4:15, 4:15] = True
    clicks = [Click(5, 5, True), Click(18, 18, True), Click(18, 2, False), Click(6, 6, False)]
    points, labels, prev = slice_prompt(m, clicks)
    assert points[0] == [9, 9] and labels[0] == 1 and prev is not None and np.array_equal(prev, m)
    assert points[1:] == [[5, 5], [18, 2]] and labels[1:] == [1, 0]  # inside +, outside -


def test_propagation_stops_within_one_slice_of_the_end_of_the_structure():
    ball = ellipsoid()
    zs = np.nonzero(ball.any(axis=(1, 2)))[0]
    ids = ball.astype(np.uint8)
    start = int(np.argmax(ball.sum(axis=(1, 2))))
    stops = {}
    steps = list(propagate_slices(oracle_slice(ids), ball.shape[1:], ball.shape[0], start, ball[start],
                                  stops=stops))
    reached = sorted(st.key[0] for st in steps)
    assert reached == [z for z in range(reached[0], reached[-1] + 1) if z != start]
    assert abs(reached[-1] - zs[-1]) <= 1 and abs(reached[0] - zs[0]) <= 1
    assert "vanished" in stops[1] and "vanished" in stops[-1]  # its 1-px tips are under the floor
    for st in steps:  # the oracle: every reached slice is the structure there
        assert np.array_equal(st.mask, ball[st.key[0]])
    # a structure that keeps its area to its last slice: "vanished" just past its end
    lab = cylinders()
    stops = {}
    steps = list(propagate_slices(oracle_slice(lab), lab.shape[1:], lab.shape[0], 10, lab[10] == 1,
                                  stops=stops))
    assert sorted(st.key[0] for st in steps) == [4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15]
    assert stops == {1: "object vanished at slice 16 (0 px)", -1: "object vanished at slice 3 (0 px)"}


def test_propagation_respects_anchors_and_the_z_range():
    lab = cylinders()
    walk = oracle_slice(lab)
    stops = {}
    steps = list(propagate_slices(walk, lab.shape[1:], lab.shape[0], 10, lab[10] == 1,
                                  stop_at={6, 10, 13}, stops=stops))
    assert sorted(st.key[0] for st in steps) == [7, 8, 9, 11, 12]  # the start itself is no anchor
    assert stops[1].startswith("anchor at slice 13") and stops[-1].startswith("anchor at slice 6")
    stops = {}
    steps = list(propagate_slices(walk, lab.shape[1:], lab.shape[0], 10, lab[10] == 1,
                                  z_range=(8, 12), stops=stops))
    assert sorted(st.key[0] for st in steps) == [8, 9, 11, 12]
    assert stops == {1: "end of the Z range (8-12)", -1: "end of the Z range (8-12)"}
    # the same options through the session
    s = InteractionSession(OraclePredictor(), lab.astype(np.float32), rgb=False)
    steps = list(s.iter_propagate(10, lab[10] == 1, z_range=(None, 11), stop_at=[7]))
    assert sorted(st.key[0] for st in steps) == [8, 9, 11]
    assert s.propagation_stops[1] == "end of the Z range (0-11)"
    assert s.propagation_stops[-1].startswith("anchor at slice 7")
    # stop_empty=False: a shrinking but non-empty object goes on, an empty one still stops
    steps = list(s.iter_propagate(10, lab[10] == 1, min_area=10_000, directions=(1,)))
    assert steps == [] and "vanished at slice 11" in s.propagation_stops[1]
    steps = list(s.iter_propagate(10, lab[10] == 1, min_area=10_000, stop_empty=False, directions=(1,)))
    assert [st.key[0] for st in steps] == [11, 12, 13, 14, 15]
    assert s.propagation_stops[1] == "object lost at slice 16 (no overlap with the previous slice)"


@pytest.mark.parametrize("z_range, match", [
    ((5, 2), "is empty"), ((1.5, 4), "whole slice"), (3, "must be \\(first, last\\)"),
])
def test_bad_z_ranges_say_what_is_wrong(z_range, match):
    with pytest.raises(ValueError, match=match):
        check_z_range(z_range, 10)
    lab = cylinders()
    with pytest.raises(ValueError, match="outside z_range"):
        list(propagate_slices(oracle_slice(lab), lab.shape[1:], lab.shape[0], 10, lab[10] == 1, z_range=(0, 5)))


# --------------------------------------------------------------------------- the protocol
@pytest.mark.parametrize("first_prompt", ["click", "box"])
def test_the_oracle_gets_dice_1_in_one_interaction(tmp_path, first_prompt):
    lab = cylinders()
    lab2 = np.zeros_like(lab)
    lab2[2:22][:, 5:40, 5:30] = 2
    images, labels = write_set(tmp_path, [lab.astype(np.uint16), lab2.astype(np.uint16)], [lab, lab2])
    res = evaluate_volumes(OraclePredictor(), images, labels, interactions=3, first_prompt=first_prompt,
                           min_voxels=100, progress=False)
    assert [(o["case"], o["label"]) for o in res["objects"]] == [("case0", 1), ("case0", 3), ("case1", 2)]
    for o in res["objects"]:
        assert o["dice"] == [1.0, 1.0, 1.0] and o["fp_voxels"] == 0 and len(o["seconds"]) == 1
        assert o["interactions"][0]["stops"]["up"].startswith("object vanished")
        assert o["interactions"][0]["slice_dice"] == 1.0
    s = res["summary"]
    assert s["dice_per_interaction"] == [1.0, 1.0, 1.0] and s["noi80"] == 1.0 and s["noi90"] == 1.0
    assert s["num_objects"] == 3 and s["num_cases"] == 2 and s["seconds_per_interaction_median"] >= 0
    assert s["first_slice_dice_mean"] == 1.0
    first = res["objects"][0]["interactions"][0]
    assert first["slice"] == 4 and ("box" in first) == (first_prompt == "box")


def test_saved_masks_reproduce_the_json(tmp_path):
    lab = cylinders()
    images, labels = write_set(tmp_path, [lab.astype(np.uint16)], [lab])
    res = evaluate_volumes(DilatingPredictor(), images, labels, interactions=3, min_voxels=100,
                           save_masks=tmp_path / "masks", progress=False)
    saved = tifffile.imread(tmp_path / "masks" / "case0.tif")
    assert saved.shape == lab.shape and saved.dtype == lab.dtype
    assert set(np.unique(saved)) <= {0, 1, 3}
    for o in res["objects"]:
        assert o["shared_voxels"] == 0
        assert 0.5 < o["dice"][-1] < 1.0  # grown by a pixel: not perfect
        assert dice(saved == o["label"], lab == o["label"]) == pytest.approx(o["dice"][-1], abs=1e-12)
        assert np.count_nonzero((saved == o["label"]) & (lab != o["label"])) == o["fp_voxels"]
    # the JSON holds the same numbers
    from napari_ois.evaluation.runner import save_json

    path = save_json(res, tmp_path / "r.json")
    back = json.loads(path.read_text())
    assert [o["dice"] for o in back["objects"]] == [o["dice"] for o in res["objects"]]


def test_a_correction_repropagates_up_to_the_anchors_only():
    lab = cylinders()
    gt = lab == 1
    s = InteractionSession(OraclePredictor(), lab.astype(np.float32), rgb=False)
    run = StructureRun(s, gt)
    wrong = np.zeros_like(gt)
    wrong[:, 30:40, 30:40] = True  # a wrong object on every slice
    run.pred = wrong.copy()
    run.anchors = {6: Anchor([Click(15, 15, True)]), 13: Anchor([Click(15, 15, True)])}
    info = run.correct(9, Click(15, 14, True))
    changed = sorted(np.nonzero((run.pred != wrong).any(axis=(1, 2)))[0].tolist())
    assert changed == [7, 8, 9, 10, 11, 12]  # the corrected slice up to the anchors, not beyond
    assert np.array_equal(run.pred[7:13], gt[7:13])
    assert info["reached"] == [7, 12] and info["stops"]["up"].startswith("anchor at slice 13")
    assert sorted(run.anchors) == [6, 9, 13] and run.anchors[9].clicks == [Click(15, 14, True)]


def test_a_stop_rule_clears_a_leak_up_to_the_next_anchor():
    lab = cylinders()
    gt = lab == 1  # slices 4..15
    s = InteractionSession(OraclePredictor(), lab.astype(np.float32), rgb=False)
    run = StructureRun(s, gt)
    leak = gt.copy()
    leak[16:21, 10:22, 8:22] = True  # the old prediction ran past the end, to slice 20
    run.pred = leak.copy()
    run.anchors = {4: Anchor([Click(15, 15, True)])}
    info = run.correct(10, Click(15, 15, True))
    assert info["stops"]["up"] == "object vanished at slice 16 (0 px)"
    assert info["stops"]["down"].startswith("anchor at slice 4")
    assert not run.pred[16:].any() and run.dice() == 1.0


def test_a_negative_click_past_one_end_keeps_the_structure_up_to_the_anchor():
    """eval3d's interaction-2 dip (cef14, 13 of 48 CT organs): a negative click on a slice
    past the structure's end emptied that slice, and the stop there then cleared every slice
    up to the first click's."""
    lab = cylinders()
    gt = lab == 1  # slices 4..15
    s = InteractionSession(OraclePredictor(), lab.astype(np.float32), rgb=False)
    run = StructureRun(s, gt)
    leak = gt.copy()
    leak[1:4, 10:22, 8:22] = True  # the old prediction ran past the lower end, to slice 1
    run.pred = leak.copy()
    run.anchors = {10: Anchor([Click(15, 15, True)])}
    info = run.correct(3, Click(15, 15, False))
    assert info["stops"]["up"] == info["stops"]["down"] == "object vanished at the corrected slice"
    assert np.array_equal(run.pred[4:], gt[4:]), "the structure up to the anchor is kept"
    assert not run.pred[:4].any() and run.dice() == 1.0, "the leak below the corrected slice is cleared"


def test_interaction_2_changes_only_the_slices_it_reaches():
    """A structure in two pieces along Z: interaction 1 finds the larger one (propagation
    vanishes in the gap); interaction 2 clicks the missed piece, whose propagation stops in
    the gap too, and leaves the first piece as it was."""
    lab = np.zeros((24, 40, 40), np.uint8)
    lab[2:9, 5:30, 5:30] = 1
    lab[13:20, 10:20, 10:20] = 1
    s = InteractionSession(OraclePredictor(), lab.astype(np.float32), rgb=False)
    run = StructureRun(s, lab == 1)
    run.first_interaction()
    after1 = run.pred.copy()
    assert np.array_equal(after1[:10], lab[:10] == 1) and not after1[10:].any()
    info = run.next_interaction()
    assert info["click"][2] == 1 and 13 <= info["slice"] <= 19
    changed = np.nonzero((run.pred != after1).any(axis=(1, 2)))[0]
    assert changed.min() >= 13 and changed.max() <= 19 and run.dice() == 1.0
    rec, final = run_structure(s, lab == 1, interactions=4)
    assert rec["dice"][0] < 1.0 and rec["dice"][1:] == [1.0, 1.0, 1.0] and len(rec["seconds"]) == 2


def test_error_click_takes_the_largest_3d_region_on_its_largest_slice():
    gt = np.zeros((10, 30, 30), bool)
    gt[2:8, 5:25, 5:25] = True
    pred = gt.copy()
    pred[2:4, 5:25, 5:25] = False  # missed: 2 slices x 400 px
    pred[5, 0:5, 0:30] = True  # extra: 1 slice x 150 px
    z, click = error_click(gt, pred)
    assert z == 2 and click.positive and (click.row, click.col) == (14, 14)
    # a pixel already clicked is never clicked again
    clicked = {2: np.zeros((30, 30), bool)}
    clicked[2][14, 14] = True
    z2, click2 = error_click(gt, pred, clicked)
    assert z2 == 2 and (click2.row, click2.col) != (14, 14)
    assert error_click(gt, gt) is None


def test_the_volume_window_is_computed_once():
    assert volume_contrast_limits(np.zeros((3, 4, 4), np.uint8)) == (0.0, 255.0)
    vol = np.arange(2000, dtype=np.uint16).reshape(5, 20, 20)
    lo, hi = volume_contrast_limits(vol)
    assert lo == pytest.approx(np.percentile(vol, 0.5)) and hi == pytest.approx(np.percentile(vol, 99.5))
    assert volume_contrast_limits(np.full((2, 3, 3), 7.0)) == (7.0, 8.0)


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_file(tmp_path):
    lab = cylinders()
    images, labels = write_set(tmp_path, [lab, lab], [lab, lab], names=["a", "b"])
    (labels / "b.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"no labels for .*b\.tif: expected .*labels/b\.tif"):
        find_cases(images, labels)
    tifffile.imwrite(labels / "b.tif", lab[:, :, :10])
    with pytest.raises(ValueError, match=r"labels/b\.tif has shape \(24, 48, 10\) but its volume .*images/b\.tif"):
        find_cases(images, labels)
    tifffile.imwrite(images / "b.tif", lab[0])
    tifffile.imwrite(labels / "b.tif", lab[0])
    with pytest.raises(ValueError, match=r"images/b\.tif is a 2D image .*napari-ois eval"):
        find_cases(images, labels)
    with pytest.raises(ValueError, match="one grey volume"):
        check_case_shapes(Case("c", tmp_path / "c.tif", tmp_path / "l.tif"), (2, 3, 4, 5), (2, 3, 4, 5))
    s = InteractionSession(OraclePredictor(), lab.astype(np.float32), rgb=False)
    with pytest.raises(ValueError, match=r"labels/a\.tif, id 7: the structure is empty"):
        StructureRun(s, lab == 7, name=f"{labels / 'a.tif'}, id 7")
    with pytest.raises(FileNotFoundError, match="--images .*folder not found"):
        find_cases(tmp_path / "nope", labels)


def test_nifti_without_nibabel_says_so(tmp_path):
    pytest.importorskip("tifffile")
    try:
        import nibabel  # noqa: F401
        pytest.skip("nibabel is installed")
    except ImportError:
        pass
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "x.nii.gz").write_bytes(b"\0" * 10)
    (tmp_path / "labels" / "x.nii.gz").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"x\.nii\.gz: reading NIfTI volumes needs nibabel"):
        find_cases(tmp_path / "images", tmp_path / "labels")


def test_eval3d_command_messages_name_the_file(tmp_path, capsys):
    from napari_ois.cli import main

    lab = cylinders()
    images, labels = write_set(tmp_path, [lab], [lab[:, :, :20]], names=["vol"])
    rc = main(["eval3d", "--images", str(images), "--labels", str(labels), "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "labels/vol.tif has shape" in err and "images/vol.tif" in err
    assert not (tmp_path / "o.json").exists()


# --------------------------------------------------------------------------- end to end
def test_eval3d_command_end_to_end_with_the_default_model(tmp_path, capsys):
    from napari_ois.cli import main

    ball = ellipsoid(z=12, h=48, w=48, centre=(6, 24, 22), axes=(5, 12, 10))
    rng = np.random.default_rng(0)
    vol = (300 + 900 * ball + rng.normal(0, 20, ball.shape)).clip(0, 4000).astype(np.uint16)
    lab = ball.astype(np.uint8) * 2
    images, labels = write_set(tmp_path, [vol], [lab], names=["tiny"])
    out = tmp_path / "res" / "e.json"
    rc = main(["eval3d", "--images", str(images), "--labels", str(labels), "--model", "default",
               "--device", "cpu", "--limit", "1", "--interactions", "2", "--min-voxels", "50",
               "--json", str(out), "--save-masks", str(tmp_path / "masks"), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(out.read_text())
    assert {"objects", "summary", "protocol", "model", "dataset"} <= set(res)
    (o,) = res["objects"]
    assert {"case", "label", "dice", "seconds", "fp_voxels"} <= set(o)
    assert o["case"] == "tiny" and o["label"] == 2 and len(o["dice"]) == 2
    assert all(0.0 <= d <= 1.0 for d in o["dice"]) and 1 <= len(o["seconds"]) <= 2
    s = res["summary"]
    assert {"dice_per_interaction", "noi80", "noi90", "seconds_per_interaction_median"} <= set(s)
    assert len(s["dice_per_interaction"]) == 2 and 1.0 <= s["noi90"] <= 2.0
    saved = tifffile.imread(tmp_path / "masks" / "tiny.tif")
    assert dice(saved == 2, lab == 2) == pytest.approx(o["dice"][-1])
    assert "mean Dice per interaction" in captured.out


def test_eval3d_stop_rule_flags_reach_the_propagation(tmp_path, capsys):
    from napari_ois.cli import main

    ball = ellipsoid(z=16, h=40, w=40, centre=(8, 20, 20), axes=(7, 11, 11))
    rng = np.random.default_rng(1)
    vol = (300 + 900 * ball + rng.normal(0, 20, ball.shape)).clip(0, 4000).astype(np.uint16)
    images, labels = write_set(tmp_path, [vol], [ball.astype(np.uint8)], names=["b"])
    out = tmp_path / "e.json"
    rc = main(["eval3d", "--images", str(images), "--labels", str(labels), "--device", "cpu",
               "--interactions", "1", "--min-voxels", "50", "--json", str(out), "--quiet",
               "--save-masks", str(tmp_path / "m"), "--max-slices", "2", "--stop-below-iou", "-1",
               "--stop-area-change", "0", "--stop-below-overlap", "0"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["protocol"]["propagation"] == {"min_score": -1.0, "min_overlap": 0.0, "area_ratio": None,
                                              "max_slices": 2}
    z = np.flatnonzero(tifffile.imread(tmp_path / "m" / "b.tif").any((1, 2)))
    assert len(z) <= 5  # the clicked slice and at most 2 each way
    with pytest.raises(SystemExit):
        main(["eval3d", "--images", str(images), "--labels", str(labels), "--json", str(out),
              "--stop-area-change", "0.5"])
    assert "--stop-area-change: must be 0 (no area rule) or at least 1" in capsys.readouterr().err

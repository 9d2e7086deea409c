"""Bad input, table-driven: every case must fail with a message that names the problem.

Four tables: the Python API (``load_predictor``, ``OISPredictor.set_image`` / ``predict``),
the session (``InteractionSession``: clicks, keys, commits, labels), the command line
(``napari-ois segment``, ``eval``, ``plot``, ``train``, ``demo``: exit code 2, the reason on
stderr, no traceback) and the napari widget (a message in the status line). Where a session
or a widget is involved, the committed labels must be unchanged afterwards.

The model is the real tiny network of ``conftest.tiny_config``; where a file is needed it is
saved with ``napari_ois.registry.save_model``. Nothing here trains.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_ois import OISPredictor, load_predictor
from napari_ois.model import OISModel
from napari_ois.registry import save_model
from napari_ois.session import InteractionSession

from conftest import tiny_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _case(id_, *values, xfail=None, run=True):
    marks = [pytest.mark.xfail(reason=xfail, strict=True, run=run)] if xfail else []
    return pytest.param(*values, id=id_, marks=marks)


@pytest.fixture(scope="module")
def net() -> OISModel:
    torch.manual_seed(0)
    return OISModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def files(net, tmp_path_factory) -> dict:
    """Weights, images, configs and results files, good and bad, in one folder."""
    d = tmp_path_factory.mktemp("bad_inputs")
    f = {"dir": d, "weights": str(save_model(net, d / "tiny.safetensors"))}
    img = np.full((30, 40, 3), 60, np.uint8)
    img[8:22, 10:30] = 220
    iio.imwrite(d / "img.png", img)
    f["img"] = str(d / "img.png")
    (d / "text.png").write_text("this is not an image")
    f["not_image"] = str(d / "text.png")
    (d / "empty.png").write_bytes(b"")
    f["empty_image"] = str(d / "empty.png")
    (d / "text.safetensors").write_text("hello, not weights")
    f["text_weights"] = str(d / "text.safetensors")
    (d / "garbage.pt").write_bytes(b"\x00\x01 not a pickle")
    f["garbage_pt"] = str(d / "garbage.pt")
    torch.save({"something": 1}, d / "noconfig.pt")
    f["noconfig_pt"] = str(d / "noconfig.pt")
    (d / "folder.png").mkdir()
    f["folder_png"] = str(d / "folder.png")
    # weights whose JSON sidecar has a wrong type or is not JSON at all
    good_cfg = json.loads((d / "tiny.json").read_text())
    for name, text in {"wrongtype_model": json.dumps({**good_cfg, "img_size": "big"}),
                       "broken_sidecar": "{ img_size: 192 }"}.items():
        (d / f"{name}.safetensors").write_bytes((d / "tiny.safetensors").read_bytes())
        (d / f"{name}.json").write_text(text)
        f[name] = str(d / f"{name}.safetensors")
    # an eval folder (one image, one mask)
    (d / "ev" / "images").mkdir(parents=True)
    (d / "ev" / "masks").mkdir(parents=True)
    iio.imwrite(d / "ev" / "images" / "a.png", img)
    iio.imwrite(d / "ev" / "masks" / "a.png", ((img[..., 0] > 100) * 255).astype(np.uint8))
    f["ev_images"], f["ev_masks"] = str(d / "ev" / "images"), str(d / "ev" / "masks")
    # training configs
    for name, text in {
        "syntax.yaml": "steps: [1, 2\n",
        "unknown.yaml": "steps: 2\nbogus_field: 1\n",
        "list.yaml": "- steps\n- 2\n",
        "unknown.json": json.dumps({"steps": 2, "not_a_field": 3}),
        "wrongtype.json": json.dumps({"steps": "two"}),
        "wrongtype.yaml": "lr: fast\n",
    }.items():
        (d / name).write_text(text)
        f[name] = str(d / name)
    # plot inputs
    (d / "notresults.json").write_text(json.dumps({"steps": 2}))
    f["notresults"] = str(d / "notresults.json")
    (d / "broken.json").write_text("{not json")
    f["brokenjson"] = str(d / "broken.json")
    return f


# =========================================================================== Python API
@pytest.fixture
def pred(net) -> OISPredictor:
    p = OISPredictor(net, device="cpu")
    img = np.full((30, 40, 3), 60, np.uint8)
    img[8:22, 10:30] = 220
    p.set_image(img)
    return p


U16 = np.ones((10, 12), np.uint16)

API_CASES = [
    # set_image: dtypes and shapes
    _case("image-complex", lambda p: p.set_image(np.ones((8, 8), complex)), ValueError, "complex"),
    _case("image-object", lambda p: p.set_image(np.array([[object()] * 4] * 4)), ValueError, "dtype object"),
    _case("image-strings", lambda p: p.set_image(np.array([["a"] * 4] * 4)), ValueError, "expected numbers"),
    _case("image-1d", lambda p: p.set_image(np.ones(10)), ValueError, "1 dimensions"),
    _case("image-4d", lambda p: p.set_image(np.ones((2, 3, 10, 10))), ValueError, "4 dimensions"),
    _case("image-stack", lambda p: p.set_image(np.ones((20, 10, 30))), ValueError, "3D stack"),
    _case("image-empty", lambda p: p.set_image(np.ones((0, 10))), ValueError, "empty"),
    # contrast limits
    _case("cl-one-value", lambda p: p.set_image(U16, contrast_limits=(5,)), ValueError, "two numbers"),
    _case("cl-reversed", lambda p: p.set_image(U16, contrast_limits=(100, 5)), ValueError, "reversed"),
    _case("cl-nan", lambda p: p.set_image(U16, contrast_limits=(np.nan, 5)), ValueError, "finite"),
    _case("cl-text", lambda p: p.set_image(U16, contrast_limits="ab"), ValueError, "two numbers"),
    _case("depth-shape", lambda p: p.set_image(U16, depth=np.ones((3, 3))), ValueError, "depth has shape"),
    # predict: coordinates and labels
    _case("predict-before-image", lambda p: (p.reset_image(), p.predict([[1, 1]], [1])), RuntimeError,
          "before set_image"),
    _case("points-empty", lambda p: p.predict([], []), ValueError, "no points"),
    _case("points-3-coords", lambda p: p.predict([[1, 1, 1]], [1]), ValueError, r"shape \(N, 2\)"),
    _case("points-nan", lambda p: p.predict([[np.nan, 1]], [1]), ValueError, "NaN or inf"),
    _case("points-inf", lambda p: p.predict([[1, np.inf]], [1]), ValueError, "NaN or inf"),
    _case("point-outside", lambda p: p.predict([[30, 5]], [1]), ValueError, "outside the image"),
    _case("point-negative", lambda p: p.predict([[-1, 5]], [1]), ValueError, "outside the image"),
    _case("points-text", lambda p: p.predict([["a", "b"]], [1]), ValueError, "points must be numbers"),
    _case("labels-count", lambda p: p.predict([[1, 1]], [1, 0]), ValueError, "one label per point"),
    _case("labels-value", lambda p: p.predict([[1, 1]], [2]), ValueError, r"1 \(positive\) or 0"),
    _case("labels-text", lambda p: p.predict([[1, 1]], ["x"]), ValueError, r"1 \(positive\) or 0"),
    _case("prev-mask-shape", lambda p: p.predict([[1, 1]], [1], prev_mask=np.zeros((3, 3))), ValueError,
          "prev_mask has shape"),
    _case("prev-mask-3d", lambda p: p.predict([[1, 1]], [1], prev_mask=np.zeros((1, 30, 40))), ValueError,
          "prev_mask has shape"),
    # load_predictor
    _case("load-unknown-name", lambda p: load_predictor("no-such-model", device="cpu"), KeyError,
          "unknown model 'no-such-model'"),
    _case("load-missing-file", lambda p: load_predictor("/nowhere/x.safetensors", device="cpu"),
          FileNotFoundError, "weights file not found"),
    _case("load-device", lambda p: load_predictor("default", device="tpu"), ValueError, "device 'tpu'"),
]


@pytest.mark.parametrize("action, exc, match", API_CASES)
def test_api_bad_input(pred, action, exc, match):
    with pytest.raises(exc, match=match):
        action(pred)


@pytest.mark.parametrize("what, match", [
    ("text_weights", "not a readable safetensors file"),
    ("garbage_pt", "not a readable PyTorch checkpoint"),
    ("noconfig_pt", "no config found"),
    ("wrongtype_model", r"model config .*wrongtype_model\.json: img_size must be int, got 'big'"),
    ("broken_sidecar", r"model config .*broken_sidecar\.json is not valid JSON \(line 1, column 3"),
])
def test_api_weights_that_are_not_weights(files, what, match):
    with pytest.raises((ValueError, RuntimeError, OSError), match=match):
        load_predictor(files[what], device="cpu")


# =========================================================================== session
def _session(pred, stack=True):
    """A session with one committed object (id 1) and a current object (one click)."""
    img = np.full((30, 40, 3), 60, np.uint8)
    img[8:22, 10:30] = 220
    image = np.stack([img[..., 0]] * 3) if stack else img
    s = InteractionSession(pred, image)
    s.add_click((15, 20))
    s.commit()
    s.add_click((15, 12))
    return s


def _full(dtype, value):
    a = np.full((3, 30, 40), value, dtype)
    return a


def _readonly():
    a = np.zeros((3, 30, 40), np.int32)
    a.flags.writeable = False
    return a


SESSION_CASES = [
    # clicks
    _case("click-outside", lambda s: s.add_click((100, 5)), "outside the image plane"),
    _case("click-nan", lambda s: s.add_click((np.nan, 5)), "not finite"),
    _case("click-text", lambda s: s.add_click(("a", 5)), "a click needs numbers"),
    _case("click-none", lambda s: s.add_click(None), "a click needs numbers"),
    _case("click-4-coords", lambda s: s.add_click((0, 1, 2, 3)), "a click needs"),
    _case("click-slice-outside", lambda s: s.add_click((7, 10, 10)), "outside the stack"),
    _case("negative-first-click", lambda s: (s.reset_object(), s.add_click((10, 10), positive=False)),
          "first click of an object must be positive"),
    # slice keys
    _case("key-outside", lambda s: s.set_slice(9), "outside the stack"),
    _case("key-text", lambda s: s.set_slice("a"), "must be numbers"),
    _case("key-nan", lambda s: s.set_slice(np.nan), "not finite"),
    _case("key-too-long", lambda s: s.set_slice((1, 2)), "has 2 entries"),
    # proposals
    _case("proposal-missing", lambda s: s.select_proposal(9), "proposal 9 does not exist"),
    _case("proposal-text", lambda s: s.select_proposal("x"), "proposal index must be a whole number"),
    _case("proposal-none-yet", lambda s: (s.set_slice(2), s.select_proposal(0)), "no proposals on slice 2"),
    # commits
    _case("commit-nothing", lambda s: (s.reset_object(), s.commit()), "nothing to commit"),
    _case("commit-float-labels", lambda s: s.commit(np.zeros((3, 30, 40), np.float32)), "integer type"),
    _case("commit-bool-labels", lambda s: s.commit(np.zeros((3, 30, 40), bool)), "integer type"),
    _case("commit-labels-shape", lambda s: s.commit(np.zeros((30, 40), np.int32)), "must match"),
    _case("commit-labels-list", lambda s: s.commit([[[0] * 40] * 30] * 3), "must be an integer array"),
    _case("commit-labels-readonly", lambda s: s.commit(_readonly()), "read-only"),
    _case("commit-label-id-0", lambda s: s.commit(label_id=0), "must be >= 1"),
    _case("commit-label-id-text", lambda s: s.commit(label_id="x"), "label id must be a whole number"),
    _case("commit-id-too-big", lambda s: s.commit(_full(np.uint8, 255)), "does not fit"),
    _case("commit-on-labels-only", lambda s: s.commit(_full(np.int32, 7)), "lies entirely on existing labels"),
    # settings
    _case("depth-shape", lambda s: s.set_depth(np.zeros((2, 2))), "depth map has shape"),
    _case("contrast-limits-reversed", lambda s: s.set_contrast_limits((10, 1)), "reversed"),
    _case("propagate-area-ratio", lambda s: list(s.iter_propagate(area_ratio=(3, 4))), "low <= 1 <= high"),
    _case("propagate-overlap", lambda s: list(s.iter_propagate(min_overlap=2)), "min_overlap must lie"),
]


@pytest.mark.parametrize("action, match", SESSION_CASES)
def test_session_bad_input_keeps_committed_labels(pred, action, match):
    s = _session(pred)
    labels = s.labels.copy()
    clicks = s.all_clicks()
    with pytest.raises(ValueError, match=match):
        action(s)
    assert np.array_equal(s.labels, labels), "committed labels changed"
    assert labels.max() == 1
    if "first" not in match and "nothing to commit" not in match:
        assert s.all_clicks() == clicks, "the current object changed"


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": np.zeros((3, 3), np.int32)}, "labels have shape"),
    ({"labels": [[0] * 40] * 30}, "must be an integer array"),
    ({"contrast_limits": (1,)}, "two numbers"),
    ({"depth": np.zeros((4, 4))}, "depth map has shape"),
])
def test_session_constructor_bad_arguments(pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        InteractionSession(pred, np.zeros((30, 40), np.uint8), **kwargs)


@pytest.mark.parametrize("image, match", [
    (np.zeros(10), "at least two spatial axes"),
    (np.zeros((0, 10)), "plane is empty"),
])
def test_session_bad_images(pred, image, match):
    with pytest.raises(ValueError, match=match):
        InteractionSession(pred, image)


def test_session_propagation_on_a_2d_image_keeps_labels(pred):
    s = _session(pred, stack=False)
    labels = s.labels.copy()
    with pytest.raises(ValueError, match="needs a stack"):
        list(s.iter_propagate())
    assert np.array_equal(s.labels, labels)


# =========================================================================== command line
def run_cli(argv) -> tuple:
    """``napari-ois ARGV`` in process: (exit code, stderr)."""
    from napari_ois.cli import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            rc = exc.code
    return rc, err.getvalue()


def _seg(f, *extra, image="img", out=None):
    return ["segment", f[image] if image in f else image, "--point", "15,20",
            "--out", out or str(f["dir"] / "mask.png"), "--model", f["weights"], *extra]


CLI_CASES = [
    # segment
    _case("segment-image-missing", lambda f: _seg(f, image="/nowhere/img.png"), "image not found"),
    _case("segment-image-not-image", lambda f: _seg(f, image="not_image"), "could not be read as an image"),
    _case("segment-image-empty", lambda f: _seg(f, image="empty_image"), r"empty \(0 bytes\)"),
    _case("segment-point-format", lambda f: ["segment", f["img"], "--point", "15;20", "--out", "m.png"],
          "expected ROW,COL"),
    _case("segment-point-nan", lambda f: ["segment", f["img"], "--point", "nan,2", "--out", "m.png"],
          "must be finite"),
    _case("segment-point-outside", lambda f: ["segment", f["img"], "--point", "300,20", "--out",
                                              str(f["dir"] / "m.png"), "--model", f["weights"]],
          "lies outside the image of 30 x 40"),
    _case("segment-out-suffix", lambda f: _seg(f, out=str(f["dir"] / "m.jpg")), "unsupported file type '.jpg'"),
    _case("segment-out-folder", lambda f: _seg(f, out=f["folder_png"]), "is a folder"),
    _case("segment-model-unknown", lambda f: _seg(f, "--model", "no-such-model"), "unknown model"),
    _case("segment-model-missing", lambda f: _seg(f, "--model", "/nowhere/w.safetensors"), "weights file not found"),
    _case("segment-model-text", lambda f: _seg(f, "--model", f["text_weights"]), "not a readable safetensors"),
    _case("segment-model-garbage-pt", lambda f: _seg(f, "--model", f["garbage_pt"]),
          "not a readable PyTorch checkpoint"),
    _case("segment-model-no-config", lambda f: _seg(f, "--model", f["noconfig_pt"]), "no config found"),
    _case("segment-model-sidecar-wrong-type", lambda f: _seg(f, "--model", f["wrongtype_model"]),
          r"wrongtype_model\.json: img_size must be int, got 'big'"),
    _case("segment-model-sidecar-not-json", lambda f: _seg(f, "--model", f["broken_sidecar"]),
          r"broken_sidecar\.json is not valid JSON \(line 1, column 3: Expecting property name"),
    _case("segment-device", lambda f: _seg(f, "--device", "tpu"), "--device 'tpu'"),
    _case("segment-proposal", lambda f: _seg(f, "--proposal", "7"), "the model has 3 proposals"),
    _case("segment-proposal-negative", lambda f: _seg(f, "--proposal", "-1"), "must be >= 0"),
    _case("segment-depth", lambda f: _seg(f, "--depth", "foo"), "unknown depth setting"),
    # eval / plot
    _case("eval-no-data", lambda f: ["eval", "--model", f["weights"]], "no data"),
    _case("eval-images-without-masks", lambda f: ["eval", "--images", f["ev_images"], "--model", f["weights"]],
          "go together"),
    _case("eval-dataset-missing", lambda f: ["eval", "--dataset", "NoSuchSet", "--model", f["weights"]],
          "'NoSuchSet' not found"),
    _case("eval-model-text", lambda f: ["eval", "--images", f["ev_images"], "--masks", f["ev_masks"],
                                        "--model", f["text_weights"], "--quiet"],
          "cannot load model"),
    _case("eval-max-clicks", lambda f: ["eval", "--dataset", "x", "--max-clicks", "0"], "must be >= 1"),
    _case("eval-json-folder", lambda f: ["eval", "--images", f["ev_images"], "--masks", f["ev_masks"],
                                         "--model", f["weights"], "--json", str(f["dir"])],
          "--json"),
    _case("eval-plot-suffix", lambda f: ["eval", "--images", f["ev_images"], "--masks", f["ev_masks"],
                                         "--model", f["weights"], "--plot", str(f["dir"] / "c.txt")],
          "unsupported file type '.txt'"),
    _case("plot-missing", lambda f: ["plot", "/nowhere/r.json", "--out", str(f["dir"] / "p.png")], "not found"),
    _case("plot-not-results", lambda f: ["plot", f["notresults"], "--out", str(f["dir"] / "p.png")],
          "not a result of `napari-ois eval --json`"),
    _case("plot-broken-json", lambda f: ["plot", f["brokenjson"], "--out", str(f["dir"] / "p.png")],
          "not a JSON file"),
    # train (configs; nothing trains: every case stops before the first step)
    _case("train-config-missing", lambda f: ["train", "--config", "/nowhere/c.yaml", "--out", f["dir"] / "r"],
          "training config /nowhere/c.yaml does not exist"),
    _case("train-config-syntax", lambda f: ["train", "--config", f["syntax.yaml"], "--out", f["dir"] / "r"],
          r"is not valid YAML \(line"),
    _case("train-config-unknown", lambda f: ["train", "--config", f["unknown.yaml"], "--out", f["dir"] / "r"],
          r"unknown training config keys \['bogus_field'\]"),
    _case("train-json-unknown", lambda f: ["train", "--config", f["unknown.json"], "--out", f["dir"] / "r"],
          r"unknown training config keys \['not_a_field'\]"),
    _case("train-images-without-masks", lambda f: ["train", "--config", CONFIGS / "ois-tiny-cpu.yaml", "--out",
                                                   f["dir"] / "r", "--images", f["ev_images"]],
          "needs both --images and --masks"),
    _case("train-steps-not-a-number", lambda f: ["train", "--config", "x.yaml", "--out", "r", "--steps", "many"],
          "invalid int value"),
    _case("train-config-list", lambda f: ["train", "--config", f["list.yaml"], "--out", f["dir"] / "r"],
          "mapping"),
    _case("train-json-wrong-type", lambda f: ["train", "--config", f["wrongtype.json"], "--out", f["dir"] / "r"],
          "steps must be int"),
    _case("train-yaml-wrong-type", lambda f: ["train", "--config", f["wrongtype.yaml"], "--out", f["dir"] / "r"],
          "lr must be float"),
    # demo
    _case("demo-model", lambda f: ["demo", "--headless", "--out", f["dir"] / "d", "--model", "nope"],
          "unknown model"),
    _case("demo-device", lambda f: ["demo", "--headless", "--out", f["dir"] / "d", "--device", "gpu"],
          "--device 'gpu'"),
    _case("demo-out-file", lambda f: ["demo", "--headless", "--out", f["img"], "--model", f["weights"]],
          "is a file"),
]


@pytest.mark.parametrize("argv, match", CLI_CASES)
def test_cli_bad_input_exits_2_with_the_reason(files, argv, match):
    import re

    rc, err = run_cli(argv(files))
    assert rc == 2, err
    assert "Traceback" not in err
    assert re.search(match, err), err
    last = err.strip().splitlines()[-1]
    assert "error" in last


def test_cli_error_from_the_shell_has_no_traceback(files):
    """The same through the real entry point (a subprocess), for one config error."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "napari_ois.cli", "train", "--config", files["syntax.yaml"],
                        "--out", str(files["dir"] / "r")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is not valid YAML (line 2" in r.stderr


# =========================================================================== widget
WIDGET_CASES = [
    _case("click-outside", "click", (100, 5), "outside the image"),
    _case("negative-first-click", "negative", (10, 10), "must be positive"),
    _case("commit-nothing", "commit", None, "nothing to commit"),
    _case("labels-wrong-shape", "wrong_labels", None, "has shape"),
    _case("labels-id-does-not-fit", "full_uint8", None, "does not fit"),
    _case("propagate-2d", "propagate", None, "needs a 3D"),
]


@pytest.mark.parametrize("what, arg, match", WIDGET_CASES)
def test_widget_bad_input_is_a_message_and_keeps_labels(make_napari_viewer, qtbot, pred, what, arg, match):
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_ois._widget import OISWidget

    viewer = make_napari_viewer()
    img = np.full((48, 64, 3), 60, np.uint8)  # napari guesses RGB only above 30 px a side
    img[8:36, 10:40] = 220
    viewer.add_image(img, name="img")
    assert viewer.layers["img"].rgb
    existing = np.zeros((48, 64), np.int32)
    existing[0:3, 0:3] = 5
    if what == "full_uint8":
        existing = np.full((48, 64), 255, np.uint8)
        existing[10:30, 15:35] = 0
    if what == "wrong_labels":
        existing = np.zeros((12, 12), np.int32)
    lab = viewer.add_labels(existing.copy(), name="mine")
    w = OISWidget(viewer, predictor=pred)
    qtbot.addWidget(w)
    w.labels_combo.value = lab  # any labels layer is offered; a commit checks its shape
    qtbot.waitUntil(lambda: w.is_idle, timeout=60_000)

    def click(coord, positive=True):
        w.negative_box.value = not positive
        w.points_layer.add(np.asarray(coord, float))

    def settle():
        qtbot.waitUntil(lambda: w.is_idle and not w.session.needs_prediction(), timeout=60_000)

    if what == "click":
        click(arg)
        qtbot.waitUntil(lambda: len(w.points_layer.data) == 0, timeout=60_000)
    elif what == "negative":
        click(arg, positive=False)
        qtbot.waitUntil(lambda: len(w.points_layer.data) == 0, timeout=60_000)
    elif what == "commit":
        w.commit()
    elif what in ("wrong_labels", "full_uint8"):
        click((20, 25))
        settle()
        w.commit()
    elif what == "propagate":
        click((20, 25))
        settle()
        w.propagate()
    assert match in w.status, w.status
    assert w.messages[-1][0] == "error"
    assert np.array_equal(lab.data, existing), "committed labels changed"

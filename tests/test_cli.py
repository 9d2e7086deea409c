"""The command line: models, segment, bench, errors."""

import contextlib
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_ois.cli import main
from napari_ois.model import OISModel
from napari_ois.registry import save_model

from conftest import tiny_config


def _weights(tmp_path):
    torch.manual_seed(0)
    return str(save_model(OISModel(tiny_config()), tmp_path / "tiny.safetensors"))


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "ois-base" in out and "NAPARI_OIS_CACHE" in out


def test_segment_writes_a_mask_at_the_image_size(tmp_path, disk_image, capsys):
    iio.imwrite(tmp_path / "img.png", disk_image[0])
    out = tmp_path / "out" / "mask.png"
    rc = main(["segment", str(tmp_path / "img.png"), "--point", "24,30", "--negative", "2,2",
               "--out", str(out), "--model", _weights(tmp_path), "--device", "cpu"])
    assert rc == 0
    mask = iio.imread(out)
    assert mask.shape == disk_image[0].shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert "wrote" in capsys.readouterr().out


def test_segment_errors_are_clear(tmp_path, disk_image, capsys):
    iio.imwrite(tmp_path / "img.png", disk_image[0])
    rc = main(["segment", str(tmp_path / "img.png"), "--point", "500,30", "--out",
               str(tmp_path / "m.png"), "--model", _weights(tmp_path)])
    assert rc == 2 and "outside the image" in capsys.readouterr().err
    rc = main(["segment", str(tmp_path / "none.png"), "--point", "1,1", "--out", str(tmp_path / "m.png")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = main(["segment", str(tmp_path / "img.png"), "--point", "1,1", "--out", str(tmp_path / "m.png"),
               "--model", str(tmp_path / "missing.safetensors")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_segment_with_a_box_alone_or_with_clicks(tmp_path, disk_image, capsys):
    torch.manual_seed(0)
    weights = str(save_model(OISModel(tiny_config(fusion="early", box_prompts=True)),
                             tmp_path / "box.safetensors"))
    iio.imwrite(tmp_path / "img.png", disk_image[0])
    base = ["segment", str(tmp_path / "img.png"), "--model", weights, "--device", "cpu"]
    assert main([*base, "--box", "12,18,36,42", "--out", str(tmp_path / "a.png")]) == 0
    assert main([*base, "--box", "12,18,36,42", "--negative", "13,19",
                 "--out", str(tmp_path / "b.png")]) == 0
    a, b = iio.imread(tmp_path / "a.png"), iio.imread(tmp_path / "b.png")
    assert a.shape == b.shape == disk_image[0].shape[:2] and set(np.unique(a)) <= {0, 255}
    assert "wrote" in capsys.readouterr().out
    # bad boxes and models without boxes are named, nothing is written
    for extra, msg in [(["--box", "12,18,36"], "four numbers"), (["--box", "36,18,12,42"], "r1 > r0"),
                       (["--box", "100,100,120,130"], "outside the image")]:
        parse_error = "numbers" in msg or "r1" in msg  # argparse's own exit (status 2)
        with pytest.raises(SystemExit) if parse_error else contextlib.nullcontext():
            rc = main([*base, *extra, "--out", str(tmp_path / "c.png")])
            assert rc == 2
        assert msg in capsys.readouterr().err
    rc = main(["segment", str(tmp_path / "img.png"), "--box", "12,18,36,42", "--model",
               _weights(tmp_path), "--out", str(tmp_path / "c.png")])
    assert rc == 2 and "takes no box prompts" in capsys.readouterr().err
    rc = main(["segment", str(tmp_path / "img.png"), "--model", weights, "--out", str(tmp_path / "c.png")])
    assert rc == 2 and "--point ROW,COL" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_bench_prints_and_writes_json(tmp_path, capsys):
    rc = main(["bench", "--models", _weights(tmp_path), "--image-size", "128", "--clicks", "5",
               "--json", str(tmp_path / "lat.json")])
    assert rc == 0
    data = json.loads((tmp_path / "lat.json").read_text())
    r = data["results"][0]
    assert r["embed_s_median"] > 0 and r["click_s_median"] > 0 and r["clicks_timed"] == 5
    assert "click ms" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input (issue #10)
@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model: arguments must be checked before that."""
    import napari_ois.predictor as predictor

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(predictor, "load_predictor", refuse)


def _segment(tmp_path, image, out, *extra):
    return main(["segment", str(image), "--point", "24,30", "--out", str(out),
                 "--model", _weights(tmp_path), "--device", "cpu", *extra])


def _one_line_error(err, *words):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("napari-ois segment: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, err)


def test_segment_unwritable_output_is_refused_before_the_model_runs(tmp_path, disk_image, capsys, no_model):
    iio.imwrite(tmp_path / "img.png", disk_image[0])
    (tmp_path / "afile").write_text("x")
    # the output's parent is a file
    assert _segment(tmp_path, tmp_path / "img.png", tmp_path / "afile" / "mask.png") == 2
    _one_line_error(capsys.readouterr().err, "--out", "afile", "is a file")
    # the output is a folder
    (tmp_path / "outdir").mkdir()
    assert _segment(tmp_path, tmp_path / "img.png", tmp_path / "outdir") == 2
    _one_line_error(capsys.readouterr().err, "--out", "folder")
    # a suffix imageio cannot write as a mask
    assert _segment(tmp_path, tmp_path / "img.png", tmp_path / "mask.xyz") == 2
    _one_line_error(capsys.readouterr().err, "--out", ".xyz")
    assert not (tmp_path / "mask.xyz").exists()


def test_segment_input_that_is_not_an_image_is_a_clear_error(tmp_path, capsys, no_model):
    (tmp_path / "notes.png").write_text("this is text, not a PNG\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for name, words in (("notes.png", ("notes.png", "could not be read as an image")),
                        ("empty.png", ("empty.png", "empty")),
                        ("folder.png", ("folder.png", "not a file"))):
        assert _segment(tmp_path, tmp_path / name, tmp_path / "m.png") == 2
        _one_line_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "m.png").exists()


def test_segment_reads_a_numpy_array_as_stored(tmp_path, disk_image, capsys):
    # a float .npy (as a medical pipeline saves a slice) segments like the same pixels as PNG
    pixels = disk_image[0]
    iio.imwrite(tmp_path / "img.png", pixels)
    np.save(tmp_path / "img.npy", pixels.astype(np.float32) / 255.0)
    assert _segment(tmp_path, tmp_path / "img.png", tmp_path / "png.png") == 0
    assert _segment(tmp_path, tmp_path / "img.npy", tmp_path / "npy.png") == 0
    from_npy = iio.imread(tmp_path / "npy.png")
    assert from_npy.shape == pixels.shape[:2]
    assert (from_npy > 0).sum() > 0
    assert np.mean((from_npy > 0) == (iio.imread(tmp_path / "png.png") > 0)) > 0.99


def test_segment_refuses_a_numpy_file_that_is_not_an_image(tmp_path, capsys, no_model):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "complex.npy", np.ones((64, 64), dtype=np.complex64))
    np.save(tmp_path / "line.npy", np.arange(10.0))
    for name, words in (("objects.npy", ("objects.npy", "could not be read as an image")),
                        ("complex.npy", ("complex",)),
                        ("line.npy", ("line.npy", "not a 2D image"))):
        assert _segment(tmp_path, tmp_path / name, tmp_path / "m.png") == 2
        _one_line_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "m.png").exists()


def test_segment_out_of_range_arguments(tmp_path, disk_image, capsys, monkeypatch):
    iio.imwrite(tmp_path / "img.png", disk_image[0])
    img, out = tmp_path / "img.png", tmp_path / "m.png"
    with pytest.raises(SystemExit) as e:  # argparse: exit code 2 and a usage message
        _segment(tmp_path, img, out, "--proposal", "-1")
    assert e.value.code == 2 and "--proposal" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["segment", str(img), "--point", "nan,3", "--out", str(out)])
    assert e.value.code == 2 and "finite" in capsys.readouterr().err
    assert _segment(tmp_path, img, out, "--proposal", "7") == 2  # the test model has 3
    _one_line_error(capsys.readouterr().err, "--proposal 7", "3 proposals")
    assert not out.exists()
    import napari_ois.predictor as predictor

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(predictor, "load_predictor", refuse)
    assert _segment(tmp_path, img, out, "--negative", "3,-2") == 2
    _one_line_error(capsys.readouterr().err, "--negative", "outside the image of 48 x 70")
    assert _segment(tmp_path, img, out, "--device", "gpu") == 2
    _one_line_error(capsys.readouterr().err, "--device")
    rc = main(["segment", str(img), "--point", "1,1", "--out", str(out), "--model", "no-such-model"])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "--model", "unknown model")
    assert _segment(tmp_path, img, out, "--depth", "nonsense") == 2
    _one_line_error(capsys.readouterr().err, "--depth")


def test_segment_error_from_the_shell_has_no_traceback(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = subprocess.run([sys.executable, "-m", "napari_ois.cli", "segment", str(tmp_path / "notes.txt"),
                        "--point", "1,1", "--out", str(tmp_path / "m.png")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("napari-ois segment: error:") and "notes.txt" in r.stderr


# --------------------------------------------------------------------------- start-up and small ones
def test_cli_parser_does_not_import_torch_or_napari():
    code = (
        "import sys, napari_ois.cli as cli\n"
        "p = cli.build_parser()\n"
        "p.parse_args(['segment', 'x.png', '--point', '1,2', '--out', 'm.png'])\n"
        "heavy = [m for m in ('torch', 'napari', 'timm', 'vispy', 'qtpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "HEAVY []" in r.stdout
    # a bad argument is reported without importing torch either
    code = (
        "import sys, napari_ois.cli as cli\n"
        "rc = cli.main(['segment', 'missing.png', '--point', '1,2', '--out', 'm.png'])\n"
        "print('RC', rc, 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "RC 2 False" in r.stdout, r.stdout + r.stderr
    assert "image not found: missing.png" in r.stderr


def test_bench_without_json_only_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default used to be benchmarks/latency.json (committed)
    rc = main(["bench", "--models", _weights(tmp_path), "--image-size", "64", "--clicks", "3"])
    assert rc == 0
    assert "click ms" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_models_says_untrained_for_entries_without_weights(capsys):
    from napari_ois.registry import registry

    assert main(["models"]) == 0
    rows = {ln.split()[0]: ln.split()[2] for ln in capsys.readouterr().out.splitlines()
            if ln and not ln.startswith(" ") and len(ln.split()) > 2}
    for name, entry in registry().items():
        want = "untrained" if not (entry.package_file or entry.url) else (
            "yes" if entry.available() else "no")
        assert rows[name] == want, (name, rows[name])
    assert rows["ois-base"] == "untrained"


def test_a_torch_torchvision_mismatch_says_what_to_do(monkeypatch, capsys):
    """timm imports torchvision, which fails with an operator error when its build does not
    match torch's: the message says how to fix it in one line, for any exception type."""
    import argparse

    import napari_ois.cli as cli

    exc = RuntimeError("operator torchvision::nms does not exist")
    text = cli._error_text(argparse.Namespace(command="demo"), exc)
    assert "torchvision::nms" in text and "same index as torch" in text
    assert "docs/install.md" in text and "\n" not in text
    for kind in (RuntimeError, ImportError):
        def broken(args, kind=kind):
            raise kind("operator torchvision::nms does not exist")

        monkeypatch.setattr(cli, "cmd_models", broken)
        assert main(["models"]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("napari-ois models: error: torch and torchvision"), err
        assert "reinstall torchvision from the same index as torch" in err


"""The command line: models, segment, bench, errors."""

import json

import imageio.v3 as iio
import numpy as np
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


def test_bench_prints_and_writes_json(tmp_path, capsys):
    rc = main(["bench", "--models", _weights(tmp_path), "--image-size", "128", "--clicks", "5",
               "--json", str(tmp_path / "lat.json")])
    assert rc == 0
    data = json.loads((tmp_path / "lat.json").read_text())
    r = data["results"][0]
    assert r["embed_s_median"] > 0 and r["click_s_median"] > 0 and r["clicks_timed"] == 5
    assert "click ms" in capsys.readouterr().out

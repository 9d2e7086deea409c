"""benchmarks/zoom_floor.py: the small objects of a set, evaluated once per zoom-in floor."""
import json

import numpy as np
from PIL import Image

from conftest import load_benchmark_script
from napari_ois.registry import save_model

zoom_floor = load_benchmark_script("zoom_floor")


def test_zoom_floor_evaluates_only_small_objects_once_per_floor(tmp_path, tiny_model, capsys):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for stem, (r0, r1) in {"small": (60, 72), "large": (10, 110)}.items():
        img = rng.integers(0, 60, (128, 128, 3), dtype=np.uint8)
        mask = np.zeros((128, 128), np.uint8)
        mask[r0:r1, r0:r1] = 255
        img[mask > 0] = (220, 180, 60)
        Image.fromarray(img).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    model = save_model(tiny_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "floors.json"
    assert zoom_floor.main([str(model), str(out), "--floors", "64", "16", "--max-side", "40",
                            "--sets", str(root)]) == 0
    result = json.loads(out.read_text())
    assert sorted(result["floors"]) == ["16", "64"]
    for objs in result["floors"].values():  # the 100-px square is left out, the 12-px one kept
        assert [(o["name"], o["object_pixels"], len(o["ious"])) for o in objs] == [("small", 144, 20)]
        assert objs[0]["set"] == str(root)
    assert "1 objects under 40 px across" in capsys.readouterr().out

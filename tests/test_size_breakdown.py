"""benchmarks/size_breakdown.py: clicks by object size from eval JSON records."""
import json

from conftest import load_benchmark_script

size_breakdown = load_benchmark_script("size_breakdown")


def _obj(pixels, noc, best):
    return {"object_pixels": pixels, "NoC@85": noc, "ious": [best / 2, best]}


OBJECTS = [_obj(25, 20, 0.5), _obj(100, 12, 0.9), _obj(1600, 2, 0.95), _obj(10000, 1, 0.97)]


def test_bands_count_objects_by_side_and_those_that_never_reach():
    rows = size_breakdown.by_size(OBJECTS)
    assert [(r["lo"], r["objects"]) for r in rows] == [(0, 1), (10, 1), (40, 1), (80, 1)]
    assert rows[0]["noc"] == 20 and rows[0]["never"] == 1.0
    assert rows[1]["never"] == 0.0  # 0.9 reaches 85 %


def test_without_small_drops_objects_under_the_side():
    s = size_breakdown.without_small(OBJECTS, small=20)
    assert (s["objects"], s["small"], s["clicks"], s["small_clicks"]) == (4, 2, 35, 32)
    assert s["noc"] == 35 / 4 and s["noc_without_small"] == 1.5


def test_main_reads_eval_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"objects": OBJECTS}))
    assert size_breakdown.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "take 32 of 35 clicks (91.4%)" in out

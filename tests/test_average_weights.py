"""benchmarks/average_weights.py: the soup's weights are the mean of its checkpoints'."""
import torch

from napari_ois.model import OISModel
from napari_ois.registry import build_model, save_model

from conftest import load_benchmark_script, tiny_config


def test_the_average_of_two_checkpoints_is_the_mean_of_their_weights(tmp_path):
    tool = load_benchmark_script("average_weights")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_model(OISModel(tiny_config()), tmp_path / f"m{seed}.safetensors"))
    out = tmp_path / "soup.safetensors"
    assert tool.main([str(out), *map(str, paths)]) == 0
    a, b, soup = (build_model(p).state_dict() for p in (*paths, out))
    for k, v in soup.items():
        if v.is_floating_point():
            want = ((a[k] + b[k]) / 2).half().float()  # stored as float16
            assert torch.allclose(v, want, atol=1e-3), k
        else:
            assert torch.equal(v, a[k]), k


def test_checkpoints_of_other_architectures_are_refused(tmp_path, capsys):
    tool = load_benchmark_script("average_weights")
    torch.manual_seed(0)
    p1 = save_model(OISModel(tiny_config()), tmp_path / "a.safetensors")
    p2 = save_model(OISModel(tiny_config(embed_dim=16, name="ois-test-narrow")), tmp_path / "b.safetensors")
    assert tool.main([str(tmp_path / "soup.safetensors"), str(p1), str(p2)]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert not (tmp_path / "soup.safetensors").exists()

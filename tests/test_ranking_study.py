"""benchmarks/ranking_study.py: a head fitted on cached features ranks the proposals by them."""
import torch

from conftest import load_benchmark_script


def test_a_fitted_head_picks_the_proposal_its_features_say_is_best():
    study = load_benchmark_script("ranking_study")
    g = torch.Generator().manual_seed(0)
    n, k, d = 512, 3, 8
    iou = torch.rand(n, k, generator=g)
    x = torch.randn(n, k, d, generator=g)
    x[..., 0] = iou  # the features hold the answer
    base = torch.tensor([0.0, 0.3, 0.1]).expand(n, k).clone()  # a prior: token 1 first
    before = study.ranking_figures(base, iou, ["s"] * n)
    assert before["all"]["top"] < before["all"]["best"] - 0.1
    for kind in ("mse", "rank", "both"):
        mlp = study.fit_head(x, base, iou, kind, epochs=40, lr=3e-3)
        with torch.no_grad():
            score = base + mlp(x)[..., 0]
        fig = study.ranking_figures(score, iou, ["s"] * (n // 2) + ["t"] * (n // 2))
        assert fig["all"]["top"] > before["all"]["top"] + 0.05, kind
        assert set(fig) == {"all", "s", "t"} and fig["s"]["n"] == n // 2


def test_click_centrality_is_one_at_a_masks_innermost_point_and_zero_outside():
    import numpy as np

    study = load_benchmark_script("ranking_study")
    rr, cc = np.mgrid[:41, :41]
    big = (rr - 20) ** 2 + (cc - 20) ** 2 <= 15**2
    small = (rr - 20) ** 2 + (cc - 30) ** 2 <= 5**2  # a part on the big disk's right
    masks = np.stack([big, small, np.zeros_like(big)])
    at_centre = study.click_centrality(masks, (20.5, 20.5))
    assert at_centre[0] == 1.0 and at_centre[1] == 0.0 and at_centre[2] == 0.0
    in_part = study.click_centrality(masks, (20.5, 30.5))
    assert in_part[1] == 1.0 and 0.3 < in_part[0] < 0.45  # 5-6 px from the edge of a 15-px disk

"""Shared fixtures: a real (tiny) OIS model, small images, the shared data folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ois.model import OISConfig, OISModel

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(os.environ.get("NAPARI_OIS_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def load_benchmark_script(name: str):
    """A script of benchmarks/ (not a package) imported as a module, e.g. ``"ranking_study"``."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:  # as when run: a script imports its siblings by name
        sys.path.insert(0, str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**changes) -> OISConfig:
    """A real OIS network small enough for fast tests (resnet10t encoder at 64 px)."""
    cfg = OISConfig(
        name="ois-test", backbone="resnet10t", img_size=64, embed_dim=32, hr_dim=8,
        decoder_depth=1, num_heads=2, mlp_dim=64, num_proposals=3,
    )
    return cfg.replace(**changes)


@pytest.fixture
def tiny_model() -> OISModel:
    torch.manual_seed(0)
    return OISModel(tiny_config()).eval()


@pytest.fixture
def disk_image() -> tuple[np.ndarray, np.ndarray]:
    """A 48 x 70 RGB uint8 image with a bright disk; returns (image, disk mask)."""
    rr, cc = np.mgrid[:48, :70]
    mask = (rr - 24) ** 2 + (cc - 30) ** 2 < 12**2
    img = np.full((48, 70, 3), 40, np.uint8)
    img[mask] = (220, 180, 60)
    return img, mask


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set NAPARI_OIS_DATA); "
                    "these tests need ../shared/data beside the project")
    return SHARED_DATA

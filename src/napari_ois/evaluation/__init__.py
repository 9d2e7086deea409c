"""Evaluation with the papers' protocol: click simulator, metrics, dataset readers, classical
baselines, the runner and the ``eval``/``plot`` commands.

Quick use::

    from napari_ois.evaluation import evaluate, get_model, load_dataset
    res = evaluate(get_model("random-walker"), load_dataset("GrabCut"), limit=5)
    res["summary"]["NoC@90"]
"""

from .baselines import BASELINES, GeodesicPredictor, RandomWalkerPredictor, get_model
from .clicker import (LOGIT_THRESHOLD, PROB_THRESHOLD, Click, Clicker, binarize,
                      first_click, next_click, padded_distance)
from .datasets import (FolderDataset, InstanceFolderDataset, Sample, available_datasets,
                       data_roots, decode_mask, load_dataset, read_folder,
                       read_image, read_instance_folder, read_mask, resolve_dataset)
from .metrics import iou, k_miou, miou_curve, noc, nof, pad_ious, summarize
from .runner import evaluate, load_results, sat_latency, save_json

__all__ = [
    "BASELINES", "GeodesicPredictor", "RandomWalkerPredictor", "get_model",
    "LOGIT_THRESHOLD", "PROB_THRESHOLD", "Click", "Clicker", "binarize", "first_click",
    "next_click", "padded_distance",
    "FolderDataset", "InstanceFolderDataset", "Sample", "available_datasets", "data_roots",
    "decode_mask", "load_dataset", "read_folder", "read_image", "read_instance_folder",
    "read_mask", "resolve_dataset",
    "iou", "k_miou", "miou_curve", "noc", "nof", "pad_ious", "summarize",
    "evaluate", "load_results", "sat_latency", "save_json",
]

"""Evaluation with the papers' protocol: metrics, classical baselines, the runner and the
``eval``/``plot`` commands. The click simulator and the dataset readers it runs on are the
data layer's (:mod:`napari_ois.data.clicks`, :mod:`napari_ois.data.datasets`).

Quick use::

    from napari_ois.data.datasets import load_dataset
    from napari_ois.evaluation import evaluate, get_model
    res = evaluate(get_model("random-walker"), load_dataset("GrabCut"), limit=5)
    res["summary"]["NoC@90"]

and volumes (``napari-ois eval3d``)::

    from napari_ois.evaluation import evaluate_volumes
    res = evaluate_volumes(predictor, "vols/", "labels/", interactions=6, progress=False)
    res["summary"]["dice_per_interaction"]
"""

import importlib

#: public name -> submodule; imported on first use, so that ``napari_ois.evaluation.cli``
#: (and with it the ``napari-ois`` parser) does not pull in scipy up front
_LAZY = {
    **dict.fromkeys(("BASELINES", "GeodesicPredictor", "RandomWalkerPredictor", "get_model"),
                    "baselines"),
    **dict.fromkeys(("iou", "k_miou", "miou_curve", "noc", "nof", "pad_ious", "summarize"),
                    "metrics"),
    **dict.fromkeys(("evaluate", "load_results", "sat_latency", "save_json"), "runner"),
    **dict.fromkeys(("evaluate_volumes", "find_cases", "run_structure"), "volume"),
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'napari_ois.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BASELINES", "GeodesicPredictor", "RandomWalkerPredictor", "get_model",
    "iou", "k_miou", "miou_curve", "noc", "nof", "pad_ious", "summarize",
    "evaluate", "load_results", "sat_latency", "save_json",
    "evaluate_volumes", "find_cases", "run_structure",
]

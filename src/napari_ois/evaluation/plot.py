"""mIoU-vs-clicks curves from evaluation results (matplotlib, Agg backend, no display)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .metrics import miou_curve

ResultLike = Union[Dict, str, os.PathLike]


def _as_results(items: Sequence[ResultLike]) -> List[Dict]:
    from .runner import load_results

    out: List[Dict] = []
    for it in items:
        if isinstance(it, dict):
            got, where = [it], "a result"
        else:
            try:
                got = load_results(it)
            except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{it}: not a JSON file written by `napari-ois eval --json` ({exc})") from None
            where = str(it)
        for r in got:
            ok = isinstance(r, dict) and (
                (isinstance(r.get("summary"), dict) and r["summary"].get("mIoU"))
                or (isinstance(r.get("objects"), list) and all(isinstance(o, dict) and "ious" in o
                                                               for o in r["objects"]) and r["objects"]))
            if not ok:
                raise ValueError(f"{where}: not a result of `napari-ois eval --json` (it has no "
                                 "summary.mIoU and no objects[].ious to plot)")
        out.extend(got)
    return out


def result_curve(result: Dict) -> np.ndarray:
    """The k-mIoU curve (fractions) of a result: ``summary["mIoU"]``, or recomputed from the
    per-object IoU sequences."""
    curve = result.get("summary", {}).get("mIoU")
    if curve:
        return np.asarray([np.nan if v is None else v for v in curve], dtype=np.float64)
    mc = int(result.get("protocol", {}).get("max_clicks", 20))
    return miou_curve([o["ious"] for o in result.get("objects", [])], mc)


def result_label(result: Dict, show_dataset: bool = True) -> str:
    model = str(result.get("model", "model"))
    ds = result.get("dataset")
    noc90 = result.get("summary", {}).get("NoC@90")
    label = f"{model} / {ds}" if (show_dataset and ds) else model
    if isinstance(noc90, (int, float)):
        label += f" (NoC90 {noc90:.2f})"
    return label


def plot_curves(results: Sequence[ResultLike], out: Union[str, os.PathLike],
                title: Optional[str] = None, dpi: int = 120) -> Path:
    """Plot the mIoU-vs-clicks curve of every result (dicts or JSON paths) into ``out``.

    Labels are ``model / dataset`` (the dataset is left out when all results share it; it
    then goes in the title). Returns the written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    res = _as_results(results)
    if not res:
        raise ValueError("no results to plot")
    datasets = {str(r.get("dataset")) for r in res}
    same_ds = len(datasets) == 1
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        for r in res:
            curve = 100.0 * result_curve(r)
            ks = np.arange(1, curve.size + 1)
            ax.plot(ks, curve, marker="o", markersize=3, linewidth=1.5,
                    label=result_label(r, show_dataset=not same_ds))
        for t in (85, 90, 95):
            ax.axhline(t, color="0.8", linewidth=0.8, linestyle="--", zorder=0)
        ax.set_xlabel("number of clicks")
        ax.set_ylabel("mIoU (%)")
        if title is None:
            title = "mIoU vs clicks" + (f" - {next(iter(datasets))}" if same_ds else "")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        max_k = max(result_curve(r).size for r in res)
        ax.set_xlim(0.5, max_k + 0.5)
        ax.set_xticks(range(1, max_k + 1, 1 if max_k <= 20 else max(1, max_k // 10)))
        out = Path(out)
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out

"""The report's charts, drawn with matplotlib on the Agg canvas (no display, no pyplot global state)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from masklet.report.stats import HISTOGRAMS, Funnel, ShardThroughput, histogram_values

KEPT_COLOR = "#2a9d8f"
DROPPED_COLOR = "#e76f51"
THRESHOLD_COLOR = "#222222"
INTEGER_COLUMNS = ("num_visible", "edit_count", "visibility_changes")
HIGH_IS_GOOD = ("stability_mean", "pred_iou_mean", "num_visible")  # most masklets sit at the right
MAX_SHARD_LABELS = 40  # beyond this many shards, tick labels would overlap: the table below names them


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def funnel_png(f: Funnel) -> bytes:
    """Produced, then one bar per drop reason, then kept: where the masklets went."""
    labels = ["produced", *(f"dropped: {r}" for r in f.dropped), "kept"]
    values = [f.produced, *f.dropped.values(), f.kept]
    colors = ["#6c757d", *[DROPPED_COLOR] * len(f.dropped), KEPT_COLOR]
    fig = Figure(figsize=(8, 0.45 * len(labels) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels)
    for yi, v in zip(y, values, strict=True):
        ax.annotate(str(v), (v, yi), xytext=(4, 0), textcoords="offset points", va="center")
    ax.set_xlabel("masklets")
    ax.set_title("filter funnel")
    ax.margins(x=0.12)
    return _png(fig)


def histograms_png(masklets, thresholds: dict[str, list[tuple[float, str]]] | None = None) -> bytes:
    """One histogram per quality statistic, kept and dropped stacked, with a dashed cut line at each
    threshold of the filter that produced the output (`thresholds`: column -> [(x, label)])."""
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (column, label) in zip(axes, HISTOGRAMS, strict=True):
        kept, dropped = histogram_values(masklets, column)
        lines = (thresholds or {}).get(column, [])
        if kept.size + dropped.size:
            integer = column in INTEGER_COLUMNS
            both = np.concatenate([kept, dropped])
            low, high = both.min(), both.max()
            if integer:  # the cut lines sit between integers: widen the bins to take them in
                low = min([low, *(np.ceil(x) - 1 for x, _ in lines)])
                high = max([high, *(np.floor(x) + 1 for x, _ in lines)])
                bins = np.arange(low, high + 2) - 0.5
            else:
                bins = np.linspace(min([low, *(x for x, _ in lines)]), max([high, *(x for x, _ in lines)]), 21)
                if bins[0] == bins[-1]:
                    bins = 20
            ax.hist(
                [kept, dropped],
                bins=bins,
                stacked=True,
                histtype="stepfilled",  # one polygon per group, not a patch per bin: cheap to draw
                color=[KEPT_COLOR, DROPPED_COLOR],
                label=["kept", "dropped"],
            )
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        for x, text in lines:
            ax.axvline(x, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.5, label=text)
        if kept.size + dropped.size or lines:
            # where the bars usually are not ("best" is slow to compute on many values)
            ax.legend(fontsize="small", loc="upper left" if column in HIGH_IS_GOOD else "upper right")
        ax.set_xlabel(label)
        ax.set_ylabel("masklets")
    return _png(fig)


def throughput_png(rows: list[ShardThroughput]) -> bytes:
    """Annotated frames per second of wall time, per shard: stragglers and slow workers stand out."""
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x, [r.frames_per_second for r in rows], color="#457b9d")
    if len(rows) <= MAX_SHARD_LABELS:
        ax.set_xticks(x, [r.shard_id for r in rows], rotation=45, ha="right", fontsize="small")
    ax.set_xlabel("shard")
    ax.set_ylabel("frames / s (wall)")
    ax.set_title("throughput per shard")
    return _png(fig)

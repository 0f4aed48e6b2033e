"""The report's charts, drawn with matplotlib on the Agg canvas (no display, no pyplot global state)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from masklet.report.stats import HISTOGRAMS, Funnel, ShardThroughput, histogram_values

KEPT_COLOR = "#2a9d8f"
DROPPED_COLOR = "#e76f51"
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


def histograms_png(masklets) -> bytes:
    """One histogram per quality statistic, kept and dropped stacked, so thresholds show as cut lines."""
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (column, label) in zip(axes, HISTOGRAMS, strict=False):
        kept, dropped = histogram_values(masklets, column)
        if kept.size + dropped.size:
            integer = column in ("num_visible", "edit_count")
            both = np.concatenate([kept, dropped])
            bins = np.arange(both.min(), both.max() + 2) - 0.5 if integer else 20
            ax.hist(
                [kept, dropped], bins=bins, stacked=True, color=[KEPT_COLOR, DROPPED_COLOR], label=["kept", "dropped"]
            )
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("masklets")
    axes[-1].set_axis_off()
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

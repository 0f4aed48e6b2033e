"""`masklet report` and `masklet show`: assemble the sections of a report and write it as one file."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from masklet import __version__
from masklet.io import storage
from masklet.io.outputs import OutputShard, read_shard
from masklet.report import plots, stats
from masklet.report.data import OutputSummary, load_output
from masklet.report.html import esc, image, page, table
from masklet.report.overlays import Overlay, color, render

DEFAULT_VIDEOS = 8
REPORT_FILE = "report.html"
SHOW_EXTENSIONS = (".html", ".htm", ".webp")
MAX_LISTED_ERRORS = 1000


def default_out(root: str, name: str) -> str:
    """Beside the outputs for a local root; in the current directory for a remote one (a browser opens files)."""
    fs, _ = storage.url_to_fs(root)
    return storage.join(root, name) if storage.is_local(fs) else name


def write_report(root: str, out: str | None = None, *, videos: int = DEFAULT_VIDEOS, keys: Sequence[str] = ()) -> str:
    """Write the report of `root` (overlays for `videos` videos plus `keys`) to `out`; return where."""
    if videos < 0:
        raise ValueError(f"--videos must be >= 0, got {videos}")
    summary = load_output(root)
    chosen = choose_videos(summary, videos, keys)
    sections = [
        f"<h1>masklet report</h1><p class=muted>{esc(root)} &middot; generated {esc(_now())} by masklet "
        f"{esc(__version__)}</p>",
        _random_weights_warning(summary),
        _derivation_note(summary),
        _summary_section(summary),
        _funnel_section(summary),
        _histogram_section(summary),
        _throughput_section(summary),
        _errors_section(summary),
        "<h2>Videos</h2><p class=muted>The videos with the most masklets, and any asked for by key: kept "
        "masklets in their colour with their id, dropped ones below with the filter that removed them.</p>",
        *_video_sections(summary, chosen),
    ]
    out = out or default_out(root, REPORT_FILE)
    storage.write_bytes(out, page(f"masklet report: {root}", "\n".join(sections)).encode())
    return out


def write_show(root: str, key: str, out: str | None = None) -> str:
    """One video's overlay: an HTML page, or only the animation when `out` ends in .webp."""
    if out is not None and not out.lower().endswith(SHOW_EXTENSIONS):
        raise ValueError(f"--out {out}: masklet show writes {', '.join(SHOW_EXTENSIONS)} files only")
    summary = load_output(root)
    (video_key,) = choose_videos(summary, 0, [key])
    out = out or default_out(root, f"show-{video_key}.html")
    if out.lower().endswith(".webp"):
        overlay = _overlays(summary, [video_key])[video_key]
        if isinstance(overlay, str) or overlay.animation is None:
            raise ValueError(
                f"video {key!r} has no animation: {overlay if isinstance(overlay, str) else overlay.problem}"
            )
        storage.write_bytes(out, overlay.animation)
    else:
        body = f"<h1>masklet show: {esc(key)}</h1><p class=muted>{esc(root)}</p>" + "".join(
            _video_sections(summary, [video_key])
        )
        storage.write_bytes(out, page(f"masklet show: {key}", body).encode())
    return out


def choose_videos(summary: OutputSummary, count: int, keys: Sequence[str]) -> list[str]:
    """`keys` (video keys or original keys), then the `count` ok videos with the most masklets."""
    rows = summary.videos.to_pylist()
    by_name = {r["original_key"]: r["video_key"] for r in rows} | {r["video_key"]: r["video_key"] for r in rows}
    unknown = [k for k in keys if k not in by_name]
    if unknown:
        raise ValueError(
            f"unknown video key {unknown[0]!r}: none of the {len(rows)} videos in the committed shards of "
            f"{summary.root} has it as video_key or original_key"
        )
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (-r["num_masklets"], r["video_key"]))
    return list(dict.fromkeys([*(by_name[k] for k in keys), *(r["video_key"] for r in ok[:count])]))


def _random_weights_warning(summary: OutputSummary) -> str:
    """Labels from untrained weights are noise; a report of them must say so before anything else."""
    if (summary.config.get("model") or {}).get("init") != "random":
        return ""
    return (
        "<p class=problem><strong>Warning: untrained weights.</strong> This job ran with model.init=random "
        "(seeded random weights, asked for by name): its masklets are noise, fit for tests only, not for training."
        "</p>"
    )


def _derivation_note(summary: OutputSummary) -> str:
    """What a `masklet filter` / `sample` output was made from, step by step."""
    steps = (summary.job or {}).get("derived") or []
    if not steps:
        return ""
    items = []
    for step in steps:
        settings = {k: v for k, v in step.items() if k not in ("command", "from", "at") and v is not None}
        items.append(
            f"<li><code>masklet {esc(step.get('command'))}</code> of {esc(step.get('from'))} at {esc(step.get('at'))}"
            f": {esc(json.dumps(settings, sort_keys=True))}</li>"
        )
    return (
        "<p><strong>A derived output.</strong> Its masks are those of the job below; only which masklets are kept "
        f"was decided again, by:</p><ol>{''.join(items)}</ol>"
    )


def _summary_section(summary: OutputSummary) -> str:
    job = summary.job or {}
    progress = summary.progress or {}
    facts = [
        ("model", job.get("model")),
        ("checkpoint", job.get("checkpoint")),
        ("checkpoint sha256", job.get("checkpoint_sha256")),
        ("config hash", job.get("config_hash")),
        ("masklet version", job.get("masklet_version")),
        ("job created", job.get("created_at")),
        ("last run", _last_run(progress) if progress else None),
    ]
    totals = stats.totals(summary.videos, summary.markers)
    counts = [(name.replace("_", " "), value) for name, value in totals.items()]
    config = json.dumps(summary.config, indent=1, sort_keys=True) if summary.job else "no job.json in this root"
    return (
        "<h2>Job</h2>"
        + table(["", ""], [(k, "—" if v is None else v) for k, v in facts])
        + "<h3>Summary of the committed shards</h3>"
        + table(["", ""], counts, numeric=[1])
        + f"<details><summary>config</summary><pre>{esc(config)}</pre></details>"
    )


def _last_run(progress: dict) -> str:
    """The last run's state and its own wall time (the shards' summed seconds overlap when workers run together)."""
    took = f" after {progress['elapsed_seconds']:.1f} s" if "elapsed_seconds" in progress else ""
    return f"{progress.get('state', '?')} at {progress.get('updated_at', '?')}{took}"


def _funnel_section(summary: OutputSummary) -> str:
    f = stats.funnel(summary.masklets)
    rows = [("produced", f.produced), *((f"dropped: {r}", n) for r, n in f.dropped.items()), ("kept", f.kept)]
    return (
        "<h2>Filter funnel</h2>"
        + table(["stage", "masklets"], rows, numeric=[1])
        + image(plots.funnel_png(f), "image/png", "filter funnel")
    )


def _histogram_section(summary: OutputSummary) -> str:
    return "<h2>Quality statistics</h2>" + image(
        plots.histograms_png(summary.masklets),
        "image/png",
        "histograms of stability, predicted IoU, length, area, edits",
    )


def _throughput_section(summary: OutputSummary) -> str:
    rows = stats.throughput(summary.markers)
    if not rows:
        return "<h2>Throughput</h2><p>No committed shard yet.</p>"
    listed = [
        (
            r.shard_id,
            r.videos,
            r.errors,
            r.frames,
            r.masklets,
            r.kept,
            f"{r.wall_seconds:.1f}",
            f"{r.model_seconds:.1f}",
            f"{r.frames_per_second:.2f}",
        )
        for r in rows
    ]
    headers = ["shard", "videos", "errors", "frames", "masklets", "kept", "wall s", "model s", "frames/s"]
    derived = (
        "<p class=muted>Timings of the job that labelled these shards.</p>"
        if summary.job and summary.job.get("derived")
        else ""
    )
    return (
        "<h2>Throughput</h2>"
        + derived
        + image(plots.throughput_png(rows), "image/png", "throughput per shard")
        + table(headers, listed, numeric=range(1, 9))
    )


def _errors_section(summary: OutputSummary) -> str:
    failed = stats.errors(summary.videos)
    if not failed:
        return "<h2>Errors</h2><p>No video failed.</p>"
    rows = [(v["shard_id"], v["original_key"], v["error_type"], v["error"]) for v in failed[:MAX_LISTED_ERRORS]]
    more = (
        f"<p>… and {len(failed) - MAX_LISTED_ERRORS} more, in videos/*.parquet</p>" if len(failed) > len(rows) else ""
    )
    return f"<h2>Errors ({len(failed)} videos)</h2>" + table(["shard", "video", "type", "reason"], rows) + more


def _overlays(summary: OutputSummary, keys: Sequence[str]) -> dict[str, Overlay | str]:
    """Per key: its overlay, or the error of a failed video."""
    storage.configure(summary.config.get("storage") or {})  # the inputs are read as the job read them
    source_format = (summary.config.get("source") or {}).get("format")
    shard_of = {v["video_key"]: v["shard_id"] for v in summary.videos.select(["video_key", "shard_id"]).to_pylist()}
    shards: dict[str, OutputShard] = {}
    result: dict[str, Overlay | str] = {}
    for key in keys:
        shard_id = shard_of[key]
        shard = shards.get(shard_id) or shards.setdefault(shard_id, read_shard(summary.root, shard_id))
        video = next(v for v in shard.videos if v.video_key == key)
        if video.status == "error":
            result[key] = f"the video failed: {video.error}"
            continue
        masklets = [m for m in shard.masklets if m.video_key == key]
        write_video = bool(shard.marker.get("write_video"))
        result[key] = render(
            summary.root, shard_id, video, masklets, write_video=write_video, source_format=source_format
        )
    return result


def _video_sections(summary: OutputSummary, keys: Sequence[str]) -> list[str]:
    rows = {r["video_key"]: r for r in summary.videos.to_pylist()}
    keys_array = pa.array(list(keys), type=pa.string())  # typed: `--videos 0` asks for no video at all
    masklets = summary.masklets.filter(pc.is_in(summary.masklets.column("video_key"), keys_array))
    by_video: dict[str, list[dict]] = {}
    for m in masklets.to_pylist():
        by_video.setdefault(m["video_key"], []).append(m)
    overlays = _overlays(summary, keys)
    return [_video_section(rows[k], by_video.get(k, []), overlays[k]) for k in keys]


def _video_section(video: dict, masklets: list[dict], overlay: Overlay | str) -> str:
    title = esc(video["video_key"])
    if video["original_key"] != video["video_key"]:
        title += f" <span class=muted>({esc(video['original_key'])})</span>"
    meta = (
        f"<p class=muted>shard {esc(video['shard_id'])} &middot; {esc(video['source_uri'])} &middot; "
        f"{video['num_masklets']} masklets, {video['num_kept']} kept</p>"
    )
    parts = [f'<section class=video id="video-{esc(video["video_key"])}"><h3>{title}</h3>', meta]
    if isinstance(overlay, str):
        parts.append(f"<p class=problem>{esc(overlay)}</p></section>")
        return "".join(parts)
    kept = [m for m in masklets if m["kept"]]
    dropped = [m for m in masklets if not m["kept"]]
    if overlay.problem:
        parts.append(f"<p class=problem>{esc(overlay.problem)}</p>")
    if overlay.animation:
        shown = f"{overlay.frames} of {overlay.annotated} annotated frames"
        parts.append(image(overlay.animation, "image/webp", f"kept masklets of {video['video_key']}"))
        parts.append(f"<p class=muted>{shown}</p>")
    swatch = '<span style="display:inline-block;width:.9em;height:.9em;background:rgb{};vertical-align:middle"></span> '
    if kept:
        parts.append("<h4>Kept</h4>")
        parts.append(_masklet_table(kept))
        parts.append(
            "<p>" + " &nbsp; ".join(swatch.format(color(m["masklet_id"])) + str(m["masklet_id"]) for m in kept) + "</p>"
        )
    if dropped:
        parts.append(f"<h4>Dropped ({len(dropped)})</h4>")
        if overlay.dropped_strip:
            parts.append(image(overlay.dropped_strip, "image/png", f"dropped masklets of {video['video_key']}"))
        parts.append(_masklet_table(dropped, with_reason=True))
    parts.append("</section>")
    return "".join(parts)


def _masklet_table(masklets: list[dict], with_reason: bool = False) -> str:
    """One row per masklet with its quality statistics (and, for dropped ones, the filter that dropped it)."""
    reason = ["reason"] if with_reason else []
    rows = [
        (
            m["masklet_id"],
            *([m["reject_reason"]] if with_reason else []),
            m["num_visible"],
            _f(m["stability_mean"]),
            _f(m["pred_iou_mean"]),
            _f(m["area_rel_mean"], 4),
            m["edit_count"],
        )
        for m in masklets
    ]
    return table(["masklet", *reason, "visible frames", "stability", "pred IoU", "rel. area", "edits"], rows)


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

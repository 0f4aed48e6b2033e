"""`masklet report` and `masklet show`: assemble the sections of a report and write it as one file."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from masklet import __version__
from masklet.config import redacted, unredacted
from masklet.io import storage
from masklet.io.outputs import OutputShard, read_shard
from masklet.io.schema import MaskletRecord
from masklet.pipelines.doubt import Masklet
from masklet.report import lookfirst, plots, stats, viewer
from masklet.report.data import OutputSummary, load_output
from masklet.report.html import esc, image, page, table
from masklet.report.overlays import Overlay, animate, colors, render

DEFAULT_VIDEOS = 8
REPORT_FILE = "report.html"
SHOW_EXTENSIONS = (".html", ".htm", ".webp")
MAX_LISTED_ERRORS = 1000
MAX_TILES = 12  # dropped masklets drawn large per video (all are in its list)
# (label, column, digits) of the statistics listed per masklet
COLUMNS = (
    ("visible frames", "num_visible", None),
    ("stability", "stability_mean", 3),
    ("pred IoU", "pred_iou_mean", 3),
    ("rel. area", "area_rel_mean", 4),
    ("edits", "edit_count", None),
    ("flicker", "visibility_changes", None),
)
SECTIONS = (
    ("look-first", "Where to look first"),
    ("job", "Job"),
    ("funnel", "Filter funnel"),
    ("quality", "Quality statistics"),
    ("throughput", "Throughput"),
    ("errors", "Errors"),
    ("videos", "Videos"),
)


@dataclass(frozen=True)
class VideoData:
    """A shown video's view (or why it has none) and its masklets' full records, by id."""

    overlay: Overlay
    records: dict[int, MaskletRecord]


def default_out(root: str, name: str) -> str:
    """Beside the outputs for a local root; in the current directory for a remote one (a browser opens files)."""
    fs, _ = storage.url_to_fs(root)
    return storage.join(root, name) if storage.is_local(fs) else name


def write_report(root: str, out: str | None = None, *, videos: int = DEFAULT_VIDEOS, keys: Sequence[str] = ()) -> str:
    """Write the report of `root` (viewers for `videos` videos plus `keys`) to `out`; return where."""
    if videos < 0:
        raise ValueError(f"--videos must be >= 0, got {videos}")
    summary = load_output(root)
    ranked = lookfirst.rankings(summary.masklets)
    chosen = choose_videos(summary, videos, keys, ranked)
    loaded = _load_videos(summary, chosen)
    nav = " ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in SECTIONS)
    sections = [
        f"<h1>masklet report</h1><p class=muted>{esc(root)} &middot; generated {esc(_now())} by masklet "
        f"{esc(__version__)}</p><nav class=toc>{nav}</nav>",
        _random_weights_warning(summary),
        _derivation_note(summary),
        _look_first_section(ranked, loaded),
        _summary_section(summary),
        _funnel_section(summary),
        _histogram_section(summary),
        _throughput_section(summary),
        _errors_section(summary),
        "<h2 id=videos>Videos</h2><p class=muted>The videos of the masklets listed under Where to look first "
        "(the first of each list, then the second, ...), and any asked for by key. Scrub the annotated frames, "
        "compare the raw frame with the overlay, switch between fill and outline, tick masklets to show or "
        "hide them; dropped masklets are listed unticked and drawn large below, each with the filter that "
        "removed it.</p>",
        *_video_sections(summary, chosen, loaded),
    ]
    out = out or default_out(root, REPORT_FILE)
    storage.write_bytes(out, _page(f"masklet report: {root}", "\n".join(sections)).encode())
    return out


def write_show(root: str, key: str, out: str | None = None) -> str:
    """One video's viewer: an HTML page, or only an animation of its kept masklets when `out` ends in .webp."""
    if out is not None and not out.lower().endswith(SHOW_EXTENSIONS):
        raise ValueError(f"--out {out}: masklet show writes {', '.join(SHOW_EXTENSIONS)} files only")
    summary = load_output(root)
    (video_key,) = choose_videos(summary, 0, [key])
    out = out or default_out(root, f"show-{video_key}.html")
    loaded = _load_videos(summary, [video_key])
    if out.lower().endswith(".webp"):
        data = loaded[video_key]
        view = None if isinstance(data, str) else data.overlay.view
        if view is None:
            why = data if isinstance(data, str) else data.overlay.problem
            raise ValueError(f"video {key!r} has no animation: {why}")
        kept = sorted(i for i, m in data.records.items() if m.kept)
        storage.write_bytes(out, animate(view, kept, colors(data.records)))
    else:
        body = f"<h1>masklet show: {esc(key)}</h1><p class=muted>{esc(root)}</p>" + "".join(
            _video_sections(summary, [video_key], loaded)
        )
        storage.write_bytes(out, _page(f"masklet show: {key}", body).encode())
    return out


def choose_videos(
    summary: OutputSummary, count: int, keys: Sequence[str], ranked: dict[str, list[Masklet]] | None = None
) -> list[str]:
    """`keys` (video keys or original keys), then `count` ok videos: those of the masklets most likely to be
    wrong (`lookfirst.videos_to_show` of `ranked`), then, if that is not enough, those with the most masklets."""
    rows = summary.videos.to_pylist()
    by_name = {r["original_key"]: r["video_key"] for r in rows} | {r["video_key"]: r["video_key"] for r in rows}
    unknown = [k for k in keys if k not in by_name]
    if unknown:
        raise ValueError(
            f"unknown video key {unknown[0]!r}: none of the {len(rows)} videos in the committed shards of "
            f"{summary.root} has it as video_key or original_key"
        )
    picked = lookfirst.videos_to_show(ranked, count) if ranked and count else []
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (-r["num_masklets"], r["video_key"]))
    taken = set(picked)
    rest = [r["video_key"] for r in ok if r["video_key"] not in taken]
    picked += rest[: max(0, count - len(picked))]
    return list(dict.fromkeys([*(by_name[k] for k in keys), *picked]))


def _page(title: str, body: str) -> str:
    return page(title, body, style=viewer.STYLE, script=viewer.SCRIPT)


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
    shown = redacted(summary.config)  # a job.json of an older masklet may hold secrets
    config = json.dumps(shown, indent=1, sort_keys=True) if summary.job else "no job.json in this root"
    return (
        "<h2 id=job>Job</h2>"
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
        "<h2 id=funnel>Filter funnel</h2>"
        + table(["stage", "masklets"], rows, numeric=[1])
        + image(plots.funnel_png(f), "image/png", "filter funnel")
    )


def _throughput_section(summary: OutputSummary) -> str:
    rows = stats.throughput(summary.markers)
    if not rows:
        return "<h2 id=throughput>Throughput</h2><p>No committed shard yet.</p>"
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
        "<h2 id=throughput>Throughput</h2>"
        + derived
        + image(plots.throughput_png(rows), "image/png", "throughput per shard")
        + table(headers, listed, numeric=range(1, 9))
    )


def _errors_section(summary: OutputSummary) -> str:
    failed = stats.errors(summary.videos)
    if not failed:
        return "<h2 id=errors>Errors</h2><p>No video failed.</p>"
    rows = [(v["shard_id"], v["original_key"], v["error_type"], v["error"]) for v in failed[:MAX_LISTED_ERRORS]]
    more = (
        f"<p>… and {len(failed) - MAX_LISTED_ERRORS} more, in videos/*.parquet</p>" if len(failed) > len(rows) else ""
    )
    return (
        f"<h2 id=errors>Errors ({len(failed)} videos)</h2>" + table(["shard", "video", "type", "reason"], rows) + more
    )


def _look_first_section(ranked: dict[str, list[Masklet]], loaded: dict[str, VideoData | str]) -> str:
    """Per doubt order, its first kept masklets, each a link to its video at the frame to check."""
    lists = []
    for by, title, column in lookfirst.ORDERS:
        items = []
        for m in ranked[by][: lookfirst.PER_LIST]:
            value = getattr(m, column)
            text = f"{esc(m.video_key)} &middot; masklet {m.masklet_id} &middot; {_signal(column, value)}"
            data = loaded.get(m.video_key)
            record = None if not isinstance(data, VideoData) else data.records.get(m.masklet_id)
            view = None if record is None else data.overlay.view
            frame = None if view is None else lookfirst.focus_frame(record, by, view.frame_indices)
            if frame is None:
                why = f"not shown here: add --key {esc(m.video_key)}" if data is None else "frames unavailable"
                items.append(f"<li>{text} <span class=muted>({why})</span></li>")
            else:
                items.append(
                    f"<li>{_jump(m.video_key, frame, m.masklet_id, text)} <span class=muted>frame {frame}</span></li>"
                )
        body = f"<ol>{''.join(items)}</ol>" if items else "<p class=muted>none</p>"
        lists.append(f"<div><h3>{esc(title)}</h3>{body}</div>")
    return (
        "<h2 id=look-first>Where to look first</h2><p class=muted>The kept masklets most likely to be wrong, by "
        "each signal of <code>masklet.pipelines.doubt</code> (the one ranking, which a review export selects by too; "
        "the count lists leave out masklets with none). Each link opens its video at the frame to check: the "
        "lowest-scoring frame, the largest jump in area (edits), the first frame it vanishes on (flicker), its first "
        f"frame (short).</p><div class=lookfirst>{''.join(lists)}</div>"
    )


def _signal(column: str, value: object) -> str:
    if value is None:
        return "never visible"
    return {
        "stability_mean": f"stability {value:.3f}",
        "pred_iou_mean": f"pred IoU {value:.3f}",
        "edit_count": f"{value} edit{'s' * (value != 1)}",
        "visibility_changes": f"{value} visibility change{'s' * (value != 1)}",
        "num_visible": f"{value} visible frame{'s' * (value != 1)}",
    }[column]


def _jump(video_key: str, frame: int, masklet_id: int, text: str) -> str:
    """A link to a video's viewer that (with the page's script) opens `frame` with `masklet_id` shown and marked."""
    return (
        f'<a class=jump href="#video-{quote(video_key, safe="")}" data-video="{esc(video_key)}" '
        f'data-frame="{frame}" data-masklet="{masklet_id}">{text}</a>'
    )


def _histogram_section(summary: OutputSummary) -> str:
    filters = summary.config.get("filters")
    lines = stats.threshold_lines(filters)
    steps = (summary.job or {}).get("derived") or []
    by = next((s for s in reversed(steps) if s.get("command") == "filter"), None)
    source = (
        f"<code>masklet filter</code> of {esc(by.get('from'))}"
        if by is not None
        else "the job (job.json config.filters)"
    )
    if filters is None:
        note = "No job.json with filters in this root: no threshold lines."
    elif lines:
        active = ", ".join(esc(label) for column in lines for _, label in lines[column])
        note = f"Dashed lines: the thresholds that produced this output, from {source}: {active}."
    else:
        note = f"The thresholds that produced this output ({source}) drop no masklet by these statistics."
    return (
        "<h2 id=quality>Quality statistics</h2>"
        + image(
            plots.histograms_png(summary.masklets, lines),
            "image/png",
            "histograms of stability, predicted IoU, length, area, edits, flicker",
        )
        + f"<p class=muted>{note}</p>"
    )


def _load_videos(summary: OutputSummary, keys: Sequence[str]) -> dict[str, VideoData | str]:
    """Per key: its view and full records, or the error of a failed video."""
    # the inputs are read as the job read them; credentials redacted in job.json are the reader's own
    storage.configure(unredacted(summary.config.get("storage") or {}))
    source_format = (summary.config.get("source") or {}).get("format")
    shard_of = {v["video_key"]: v["shard_id"] for v in summary.videos.select(["video_key", "shard_id"]).to_pylist()}
    shards: dict[str, OutputShard] = {}
    result: dict[str, VideoData | str] = {}
    for key in keys:
        shard_id = shard_of[key]
        shard = shards.get(shard_id) or shards.setdefault(shard_id, read_shard(summary.root, shard_id))
        video = next(v for v in shard.videos if v.video_key == key)
        if video.status == "error":
            result[key] = f"the video failed: {video.error}"
            continue
        masklets = [m for m in shard.masklets if m.video_key == key]
        write_video = bool(shard.marker.get("write_video"))
        overlay = render(summary.root, shard_id, video, masklets, write_video=write_video, source_format=source_format)
        result[key] = VideoData(overlay, {m.masklet_id: m for m in masklets})
    return result


def _video_sections(summary: OutputSummary, keys: Sequence[str], loaded: dict[str, VideoData | str]) -> list[str]:
    rows = {r["video_key"]: r for r in summary.videos.to_pylist()}
    keys_array = pa.array(list(keys), type=pa.string())  # typed: `--videos 0` asks for no video at all
    masklets = summary.masklets.filter(pc.is_in(summary.masklets.column("video_key"), keys_array))
    by_video: dict[str, list[dict]] = {}
    for m in masklets.to_pylist():
        by_video.setdefault(m["video_key"], []).append(m)
    filters = summary.config.get("filters")
    return [_video_section(i, rows[k], by_video.get(k, []), loaded[k], filters) for i, k in enumerate(keys)]


def _video_section(index: int, video: dict, masklets: list[dict], data: VideoData | str, filters: dict | None) -> str:
    key = video["video_key"]
    title = esc(key)
    if video["original_key"] != key:
        title += f" <span class=muted>({esc(video['original_key'])})</span>"
    meta = (
        f"<p class=muted>shard {esc(video['shard_id'])} &middot; {esc(video['source_uri'])} &middot; "
        f"{video['num_masklets']} masklets, {video['num_kept']} kept</p>"
    )
    parts = [f'<section class=video id="video-{esc(key)}"><h3>{title}</h3>', meta]
    if isinstance(data, str):
        parts.append(f"<p class=problem>{esc(data)}</p></section>")
        return "".join(parts)
    overlay = data.overlay
    masklets = sorted(masklets, key=lambda m: (not m["kept"], m["masklet_id"]))
    dropped = [m for m in masklets if not m["kept"]]
    palette = colors(m["masklet_id"] for m in masklets)
    if overlay.problem:
        parts.append(f"<p class=problem>{esc(overlay.problem)}</p>")
    view = overlay.view
    if view is not None:
        shown = len(view.frame_indices)
        more = f" (the first {shown} of its {overlay.annotated} annotated frames)" if shown < overlay.annotated else ""
        parts.append(f"<p class=muted>{shown} annotated frames{more}; kept masklets ticked.</p>")
        parts.append(viewer.viewer(index, key, view, masklets, palette, [(c[0], c[1]) for c in COLUMNS], _cells))
    else:
        parts.append(_masklet_table(masklets, filters))
    if dropped:
        parts.append(f"<h4>Dropped ({len(dropped)})</h4>")
        if view is not None:
            tiles = [_tile_row(m, data.records.get(m["masklet_id"]), view.frame_indices) for m in dropped[:MAX_TILES]]
            parts.append(viewer.tiles(key, view, tiles, palette, lambda t: _tile_caption(key, t, filters)))
            if len(dropped) > MAX_TILES:
                parts.append(f"<p class=muted>&hellip; and {len(dropped) - MAX_TILES} more, listed above.</p>")
    parts.append("</section>")
    return "".join(parts)


def _tile_row(m: dict, record: MaskletRecord | None, shown: list[int]) -> dict:
    """A dropped masklet's row with the frame its tile shows (`frame`, `position` into the view) and, for a
    duplicate, the masklet it duplicates (`other`)."""
    frame = None if record is None else lookfirst.largest_frame(record, shown)
    kind, _, arg = (m["reject_reason"] or "").partition(":")
    other = int(arg) if kind == "duplicate_of" and arg.isdigit() else None
    return {**m, "frame": frame, "position": None if frame is None else shown.index(frame), "other": other}


def _tile_caption(video_key: str, t: dict, filters: dict | None) -> str:
    reason = f"<span class=reason>{esc(stats.reason_detail(t, filters))}</span>"
    head = f"<strong>masklet {t['masklet_id']}</strong> {reason}"
    if t["frame"] is None:
        where = "never visible" if t["num_visible"] == 0 else "not visible on the frames shown"
        return f"{head}<br><span class=muted>{where}: no region to draw</span>"
    dup = f"; dashed: masklet {t['other']}, the one it duplicates" if t["other"] is not None else ""
    link = _jump(video_key, t["frame"], t["masklet_id"], "open in the viewer")
    return f"{head}<br><span class=muted>frame {t['frame']}, where it is largest{dup}</span> &middot; {link}"


def _cells(m: dict) -> list[str]:
    return [
        _f(m[column], digits) if digits else ("—" if m[column] is None else str(m[column]))
        for _, column, digits in COLUMNS
    ]


def _masklet_table(masklets: list[dict], filters: dict | None) -> str:
    """One row per masklet with its statistics and, for dropped ones, why (a video whose frames cannot be shown)."""
    rows = [(m["masklet_id"], "kept" if m["kept"] else stats.reason_detail(m, filters), *_cells(m)) for m in masklets]
    return table(["masklet", "status", *(c[0] for c in COLUMNS)], rows)


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

"""Held-out evaluation: a model's masklets on a synthetic corpus scored against its exact ground truth.

Issue 7's targets, measured on shards that were not trained on (docs/evaluation.md):
- prompted: every ground-truth object, prompted with its GT mask on its first visible frame and
  tracked forward, reaches mean J&F >= 0.85 (`PROMPTED_TARGET_JF`);
- automatic: the job's automatic pipeline recalls >= 80% of GT masklets at J&F >= 0.5
  (`AUTO_TARGET_RECALL`, `MATCH_THRESHOLD`).

The input is the same JobConfig a job runs (model, pipeline, filters, `source`), so the numbers are
those of the outputs a job would write: frames are decoded with the job's `source.fps` stride and
`source.max_frames`, and ground truth is taken at exactly those frame indices. Ground truth is the
`{key}.gt.json` member (SA-V annotation, `masklet.io.sav`) next to each `{key}.mp4` in the wds
shards `masklet synth` writes; a video without one is an input error (GroundTruthError), found
before the model runs, as scores without ground truth would be silently wrong. A video that cannot
be decoded is an error row and the evaluation goes on, as in a job.

Scoring is split from running (`score_prompted`, `score_auto` take dense masks), so it can be
checked on its own: ground truth scored against itself gives 1.0. Masks are held dense per video
([T, H, W] per object over the sampled frames): held-out synthetic videos are small.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from masklet.config import ConfigError, JobConfig
from masklet.eval.metrics import masklet_scores, match_masklets
from masklet.io import rle, sav
from masklet.io.annotated import read_members
from masklet.io.errors import InputError
from masklet.io.schema import MaskletRecord
from masklet.io.sources import Shard, VideoError, VideoInput, iter_videos, list_shards
from masklet.io.video import Frame
from masklet.model import SAM2Model
from masklet.model.device import resolve_device
from masklet.pipelines.contract import factory_path, make_pipeline
from masklet.pipelines.model_loading import load_model
from masklet.pipelines.quality import MaskletSequences
from masklet.pipelines.tracking import TrackerFactory, record, tracker_factory

log = logging.getLogger(__name__)

MODES = ("prompted", "auto")
PROMPTED_TARGET_JF = 0.85
AUTO_TARGET_RECALL = 0.80
MATCH_THRESHOLD = 0.5
GT_SUFFIX = ".gt.json"


class GroundTruthError(InputError):
    """Ground truth that is missing or does not fit the video; the message names the video and file."""


# ---------------------------------------------------------------- ground truth


def read_ground_truth(shard: Shard) -> tuple[list[str], dict[str, bytes]]:
    """The video keys of a wds shard in order, and each `{key}.gt.json` member's bytes by key.

    A second read of the tar (iter_videos hands the pipeline only the video, metadata and prompts):
    the ground truth must never reach a pipeline, and reading it up front lets a missing one stop the
    evaluation before any model time is spent.
    """
    # a truncated shard: what was read stands; iter_videos reports the break as an error row
    members = read_members(shard.uri, GT_SUFFIX.lstrip("."), video_bytes=False)
    return list(members.videos), members.annotations


def sampled_ground_truth(annotation: sav.SavAnnotation, frame_indices: Sequence[int]) -> dict[int, np.ndarray]:
    """Dense GT masks [T, H, W] per masklet id at the given video frame indices (the frames a job samples).

    Raises GroundTruthError for a frame the annotation does not cover: scoring it as "no object"
    would punish correct predictions.
    """
    position = {f: p for p, f in enumerate(annotation.frame_indices)}
    missing = [f for f in frame_indices if f not in position]
    if missing:
        raise GroundTruthError(
            f"video {annotation.video_id!r}: its ground truth does not annotate frame(s) {missing[:5]} "
            f"that the job samples (annotated: {annotation.frame_indices[:5]}...); lower source.fps or regenerate"
        )
    h, w = annotation.height, annotation.width
    out = {o: np.zeros((len(frame_indices), h, w), dtype=bool) for o in annotation.masklet_ids}
    for t, f in enumerate(frame_indices):
        row = annotation.masklet[position[f]]
        for o, r in zip(annotation.masklet_ids, row, strict=True):
            out[o][t] = rle.decode(r)
    return out


def record_masks(record: MaskletRecord, frame_indices: Sequence[int]) -> np.ndarray:
    """A masklet's masks [T, H, W] at `frame_indices`; frames it does not cover are empty (not tracked there)."""
    by_frame = dict(zip(record.frame_indices, record.rles(), strict=True))
    out = np.zeros((len(frame_indices), record.height, record.width), dtype=bool)
    for t, f in enumerate(frame_indices):
        if f in by_frame:
            out[t] = rle.decode(by_frame[f])
    return out


# ---------------------------------------------------------------- scoring


def score_prompted(
    pred: Mapping[int, np.ndarray], gt: Mapping[int, np.ndarray], frame_indices: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Per GT object, J / F / J&F of its prediction from its prompt frame to the last sampled frame.

    The prompt frame is the object's first frame with a non-empty GT mask (where the evaluation
    prompts it). As in DAVIS semi-supervised evaluation it is excluded from the mean: there the
    tracker is given the answer. Frames after it count in full, empty-vs-empty scoring 1.0 (the
    DAVIS convention, `masklet_scores` default), so an object that leaves the frame must be
    reported absent. A missing prediction is empty throughout. Objects never visible, or first
    visible on the last sampled frame, have nothing to score: their rows say why and carry no scores.
    """
    rows = []
    for obj, masks in gt.items():
        masks = np.asarray(masks, dtype=bool)
        n = masks.shape[0]
        seen = masks.reshape(n, -1).any(1)
        row: dict[str, Any] = {"id": int(obj), "scored": False}
        if not seen.any():
            rows.append({**row, "reason": "never visible on the sampled frames"})
            continue
        start = int(np.argmax(seen))
        row["prompt_frame"] = int(frame_indices[start]) if frame_indices is not None else start
        if start == n - 1:
            rows.append({**row, "reason": "first visible on the last sampled frame: no frame after the prompt"})
            continue
        p = pred.get(obj)
        p = np.zeros_like(masks) if p is None else np.asarray(p, dtype=bool)
        if p.shape != masks.shape:
            raise ValueError(f"object {obj}: prediction of shape {p.shape}, ground truth {masks.shape}")
        s = masklet_scores(p[start + 1 :], masks[start + 1 :])
        rows.append({**row, "scored": True, "frames_scored": n - start - 1, "j": s.j, "f": s.f, "jf": s.jf})
    return rows


def score_auto(
    preds: Sequence[np.ndarray], gt: Mapping[int, np.ndarray], threshold: float = MATCH_THRESHOLD
) -> dict[str, Any]:
    """Match predicted masklets to GT masklets (`match_masklets`, one-to-one, J&F >= threshold).

    GT masklets never visible on the sampled frames are left out (`gt_never_visible`): no
    prediction can find them and an empty prediction would match them perfectly. Pair J&F counts
    only frames where either mask is non-empty (see `match_masklets`).
    """
    visible = {o: m for o, m in gt.items() if np.asarray(m).any()}
    ids = list(visible)
    result = match_masklets(list(preds), [visible[o] for o in ids], threshold=threshold)
    scores = [float(s) for s in result.pair_scores]
    return {
        "gt_masklets": len(ids),
        "gt_never_visible": len(gt) - len(ids),
        "pred_masklets": len(preds),
        "matched": len(result.pairs),
        "recall": result.recall,
        "precision": result.precision,
        "matched_jf": float(np.mean(scores)) if scores else None,
        "pairs": [{"pred": p, "gt_id": int(ids[g]), "jf": s} for (p, g), s in zip(result.pairs, scores, strict=True)],
        "best_jf_per_gt": {str(o): float(b) for o, b in zip(ids, result.best_per_gt, strict=True)},
    }


# ---------------------------------------------------------------- running


def track_ground_truth(
    key: str, frames: Iterable[Frame], annotation: sav.SavAnnotation, make_tracker: TrackerFactory
) -> tuple[list[int], list[MaskletRecord]]:
    """Prompt every GT object with its GT mask on its first visible sampled frame and track all of them
    forward in one batched pass; return the sampled frame indices and the masklets (as a prompted job
    records them: `MaskletSequences`, visible where object score > 0 and mask non-empty).

    Not `masklet.pipelines.prompted.track_prompts`: that also tracks late objects backward to the
    first frame (a second decode), which this protocol does not score.
    """
    position = {f: p for p, f in enumerate(annotation.frame_indices)}
    tracker = make_tracker(reverse=False, start=0)
    sequences = MaskletSequences(key, source="prompt")
    pending = list(annotation.masklet_ids)
    indices: list[int] = []
    for frame in frames:
        indices.append(frame.index)
        if frame.index not in position:
            raise GroundTruthError(f"video {key!r}: its ground truth does not annotate sampled frame {frame.index}")
        row = annotation.masklet[position[frame.index]]
        for obj in list(pending):
            r = row[annotation.masklet_ids.index(obj)]
            if rle.area(r) > 0:
                tracker.add_object(obj, mask=rle.decode(r))
                pending.remove(obj)
        record(sequences, frame.index, tracker.step(frame.rgb))
    return indices, sequences.records()


def _check_size(key: str, annotation: sav.SavAnnotation, height: int, width: int) -> None:
    if (annotation.height, annotation.width) != (height, width):
        raise GroundTruthError(
            f"video {key!r} is {height}x{width} but its ground truth is {annotation.height}x{annotation.width}"
        )


def _prompted_row(
    item: VideoInput, annotation: sav.SavAnnotation, make_tracker: TrackerFactory, config: JobConfig
) -> dict[str, Any]:
    source = config.source
    with item.open(fps=source.fps, max_frames=source.max_frames, prefetch_frames=source.prefetch_frames) as stream:
        _check_size(item.key, annotation, stream.height, stream.width)
        indices, records = track_ground_truth(item.key, stream, annotation, make_tracker)
    pred = {r.masklet_id: record_masks(r, indices) for r in records}
    objects = score_prompted(pred, sampled_ground_truth(annotation, indices), indices)
    scored = [o for o in objects if o["scored"]]
    return {
        "frames": len(indices),
        "frame_indices": indices,
        "gt_objects": len(objects),
        "scored": len(scored),
        **_means(scored),
        "objects": objects,
    }


def _auto_row(item: VideoInput, annotation: sav.SavAnnotation, pipeline: Any, config: JobConfig) -> dict[str, Any]:
    source = config.source
    with item.open(fps=source.fps, max_frames=source.max_frames, prefetch_frames=source.prefetch_frames) as stream:
        _check_size(item.key, annotation, stream.height, stream.width)
        records = list(pipeline(item, stream))
    indices = stream.frame_indices
    kept = [r for r in records if r.kept]
    scores = score_auto([record_masks(r, indices) for r in kept], sampled_ground_truth(annotation, indices))
    for pair in scores["pairs"]:
        pair["pred_id"] = kept[pair.pop("pred")].masklet_id
    return {
        "frames": len(indices),
        "frame_indices": list(indices),
        "gt_objects": len(annotation.masklet_ids),
        "masklets_total": len(records),
        **scores,
    }


def _means(objects: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    if not objects:
        return {"j": None, "f": None, "jf": None}
    return {k: float(np.mean([o[k] for o in objects])) for k in ("j", "f", "jf")}


def _auto_config(config: JobConfig) -> JobConfig:
    """The config with pipeline.mode auto: a config written for prompted jobs still names the automatic
    pipeline's settings (and a plug-in `workers.pipeline` is used as it is)."""
    return config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"mode": "auto"})})


def _plan(config: JobConfig, max_videos: int | None) -> list[tuple[Shard, dict[str, bytes]]]:
    """The shards to read (enough for `max_videos`) with their ground truth; raises if any is missing."""
    if config.source.format != "wds":
        raise ConfigError(
            f"source.format is {config.source.format!r}: held-out evaluation reads {{key}}{GT_SUFFIX} from wds shards"
        )
    plan, count = [], 0
    for shard in list_shards(config.source):
        if max_videos is not None and count >= max_videos:
            break
        keys, gts = read_ground_truth(shard)
        wanted = keys if max_videos is None else keys[: max_videos - count]
        missing = [k for k in wanted if k not in gts]
        if missing:
            raise GroundTruthError(
                f"shard {shard.uri}: video {missing[0]!r} has no ground truth member {missing[0]}{GT_SUFFIX} "
                f"({len(missing)} of {len(wanted)} videos lack one); evaluate a corpus written by `masklet synth`"
            )
        count += len(keys)
        plan.append((shard, gts))
    return plan


def evaluate(
    config: JobConfig,
    *,
    modes: Sequence[str] = MODES,
    max_videos: int | None = None,
    model: SAM2Model | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate the config's model on the held-out corpus at `config.source.uri`; a JSON-serialisable dict.

    `model` / `device` default to what a job worker loads (`load_model`, `resolve_device`); tests pass
    a model directly. Returns `settings`, `summary` (per mode and over videos) and per mode a row per
    video, in corpus order; a video that cannot be decoded or scored is a row with status "error".
    """

    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"evaluation modes must be among {', '.join(MODES)}, got {list(modes)}")
    if max_videos is not None and max_videos < 1:
        raise ConfigError(f"max_videos must be >= 1, got {max_videos}")
    plan = _plan(config, max_videos)
    device = device if device is not None else resolve_device(config.model.device)
    if model is None:
        model = load_model(config.model, device, config.model.sha256)
    model.eval()
    auto_config = _auto_config(config)
    pipeline = make_pipeline(auto_config, model, device) if "auto" in modes else None
    make_tracker = tracker_factory(model)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    videos = 0
    for shard, gts in plan:
        for item in iter_videos(shard):
            if max_videos is not None and videos >= max_videos:
                break
            videos += 1
            base = {"key": item.key, "shard": shard.id}
            if isinstance(item, VideoError):
                for m in modes:
                    rows[m].append({**base, "status": "error", "error_type": "VideoError", "error": item.reason})
                continue
            for m in modes:
                try:
                    annotation = sav.parse(gts[item.original_key])
                    if m == "prompted":
                        row = _prompted_row(item, annotation, make_tracker, config)
                    else:
                        row = _auto_row(item, annotation, pipeline, config)
                    rows[m].append({**base, "status": "ok", **row})
                except Exception as exc:  # this video only, as in a job; decode errors are ValueErrors
                    if not isinstance(exc, ValueError):
                        log.exception("video %s of %s failed", item.key, shard.uri)
                    error = {"error_type": type(exc).__name__, "error": str(exc) or repr(exc)}
                    rows[m].append({**base, "status": "error", **error})
    summary: dict[str, Any] = {"videos": videos}
    if "prompted" in rows:
        summary["prompted"] = summarize_prompted(rows["prompted"])
    if "auto" in rows:
        summary["auto"] = summarize_auto(rows["auto"])
    settings = {
        "model": config.model.name,
        "checkpoint": config.model.weights,
        "image_size": config.model.image_size,
        "device": str(device),
        "source": config.source.uri,
        "fps": config.source.fps,
        "max_frames": config.source.max_frames,
        "max_videos": max_videos,
        "modes": list(modes),
        "auto_pipeline": factory_path(auto_config) if "auto" in modes else None,
        "filters": config.filters.model_dump(mode="json"),
    }
    return {"settings": settings, "summary": summary, **rows}


def summarize_prompted(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over every scored object of every video (not a mean of video means), as DAVIS averages."""
    ok = [r for r in rows if r["status"] == "ok"]
    scored = [o for r in ok for o in r["objects"] if o["scored"]]
    means = _means(scored)
    return {
        "videos_ok": len(ok),
        "videos_error": len(rows) - len(ok),
        "gt_objects": sum(r["gt_objects"] for r in ok),
        "objects_scored": len(scored),
        **means,
        "target_jf": PROMPTED_TARGET_JF,
        "meets_target": means["jf"] is not None and means["jf"] >= PROMPTED_TARGET_JF,
    }


def summarize_auto(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Recall = matched / GT masklets and precision = matched / kept predictions, over all videos pooled."""
    ok = [r for r in rows if r["status"] == "ok"]
    gt = sum(r["gt_masklets"] for r in ok)
    pred = sum(r["pred_masklets"] for r in ok)
    matched = sum(r["matched"] for r in ok)
    pair_jf = [p["jf"] for r in ok for p in r["pairs"]]
    recall = matched / gt if gt else None
    return {
        "videos_ok": len(ok),
        "videos_error": len(rows) - len(ok),
        "gt_masklets": gt,
        "pred_masklets": pred,
        "matched": matched,
        "recall": recall,
        "precision": matched / pred if pred else None,
        "matched_jf": float(np.mean(pair_jf)) if pair_jf else None,
        "threshold": MATCH_THRESHOLD,
        "target_recall": AUTO_TARGET_RECALL,
        "meets_target": recall is not None and recall >= AUTO_TARGET_RECALL,
    }


# ---------------------------------------------------------------- report


def _num(value: float | None) -> str:
    return "    -" if value is None else f"{value:.3f}"


def format_report(result: Mapping[str, Any]) -> str:
    """A short table per mode (a row per video, then all videos) and a summary line per mode."""
    s = result["settings"]
    lines = [f"model {s['model']} ({s['checkpoint'] or 'random weights'}) on {s['device']}; source {s['source']}"]
    summary = result["summary"]
    width = max([12, *(len(r["key"]) for m in MODES for r in result.get(m, []))])
    if "prompted" in result:
        lines += ["", "prompted: GT mask on each object's first visible frame, tracked forward (prompt frame excluded)"]
        lines.append(f"  {'video':<{width}}  objects  scored      J      F    J&F")
        for r in result["prompted"]:
            if r["status"] != "ok":
                lines.append(f"  {r['key']:<{width}}  error: {r['error_type']}: {r['error']}")
                continue
            lines.append(
                f"  {r['key']:<{width}}  {r['gt_objects']:>7}  {r['scored']:>6}  "
                f"{_num(r['j'])}  {_num(r['f'])}  {_num(r['jf'])}"
            )
        p = summary["prompted"]
        lines.append(
            f"  {'all':<{width}}  {p['gt_objects']:>7}  {p['objects_scored']:>6}  "
            f"{_num(p['j'])}  {_num(p['f'])}  {_num(p['jf'])}"
        )
    if "auto" in result:
        lines += ["", f"auto: {s['auto_pipeline']} kept masklets matched one-to-one to GT at J&F >= {MATCH_THRESHOLD}"]
        lines.append(f"  {'video':<{width}}   gt  pred  matched  recall  precision  J&F(matched)")
        for r in result["auto"]:
            if r["status"] != "ok":
                lines.append(f"  {r['key']:<{width}}  error: {r['error_type']}: {r['error']}")
                continue
            lines.append(
                f"  {r['key']:<{width}}  {r['gt_masklets']:>3}  {r['pred_masklets']:>4}  {r['matched']:>7}   "
                f"{_num(r['recall'])}      {_num(r['precision'])}         {_num(r['matched_jf'])}"
            )
        a = summary["auto"]
        lines.append(
            f"  {'all':<{width}}  {a['gt_masklets']:>3}  {a['pred_masklets']:>4}  {a['matched']:>7}   "
            f"{_num(a['recall'])}      {_num(a['precision'])}         {_num(a['matched_jf'])}"
        )
    lines.append("")
    lines.append(summary_line(result))
    return "\n".join(lines)


def summary_line(result: Mapping[str, Any]) -> str:
    """One line: each mode's headline number against its issue-7 target, and the failed videos."""
    summary = result["summary"]
    parts = [f"{summary['videos']} video{'' if summary['videos'] == 1 else 's'}"]
    if "prompted" in summary:
        p = summary["prompted"]
        verdict = "met" if p["meets_target"] else "not met"
        parts.append(f"prompted J&F {_num(p['jf']).strip()} (target >= {PROMPTED_TARGET_JF}: {verdict})")
    if "auto" in summary:
        a = summary["auto"]
        verdict = "met" if a["meets_target"] else "not met"
        parts.append(
            f"auto recall {_num(a['recall']).strip()} at J&F >= {MATCH_THRESHOLD} "
            f"(target >= {AUTO_TARGET_RECALL}: {verdict}), precision {_num(a['precision']).strip()}"
        )
    failed = max((summary[m]["videos_error"] for m in MODES if m in summary), default=0)
    if failed:
        parts.append(f"{failed} video(s) failed")
    return "summary: " + "; ".join(parts)


def failed_videos(result: Mapping[str, Any]) -> int:
    """Videos that are an error row in any mode."""
    return len({r["key"] for m in MODES for r in result.get(m, []) if r["status"] != "ok"})

"""`masklet review import OUT CORRECTIONS NEW_OUT --format cvat|labelstudio`: a person's review of an
export written into a new output root; OUT is only read.

Both formats become one thing per masklet a person touched (`MaskletReview`): the mask they left on
each exported frame they saw, whether they rejected it, whether the tool says they accepted it as a
whole, and who and when where the tool says so. Then one rule decides, per masklet:

- rejected (the tool's reject, or no mask left on any frame): dropped, reason `review`, masks as they were;
- corrected (some frame's mask differs from the model's, pixel for pixel): the person's masks replace the
  model's on exactly those frames (a frame the model had no entry on gets one, with scores 0),
  `human_edit_count` = those frames;
- accepted (nothing changed and the tool says accepted): `human_edit_count` 0;
- otherwise not reviewed: the row stays as it was, its review columns null.

What counts as accepted: CVAT, the `review` attribute set to `accepted` on any of the masklet's masks;
Label Studio, an annotation submitted on every exported frame of the masklet. Everything is read and
checked before anything is written: a mask of the wrong size, an unknown video or masklet, a frame
that was not exported, a reference from another export, a damaged file: refused, naming the item.
"""

from __future__ import annotations

import io
import json
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from masklet.io import rle, storage
from masklet.io.outputs import read_marker, read_shard, rewrite_output
from masklet.io.schema import REVIEW_REJECTED, MaskletRecord, empty_counts
from masklet.io.sinks import list_done
from masklet.review.formats import cvat, labelstudio
from masklet.review.manifest import MANIFEST, ExportedVideo, Manifest, load, parse_ref

FORMATS = ("cvat", "labelstudio")
MAX_LISTED = 20  # refusals listed in one message


class CorrectionsRefused(ValueError):
    """The corrections cannot be imported; `problems` names each bad item."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        problems = self.problems
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"corrections refused, nothing written ({len(problems)} problem(s)):\n  {shown}{more}")

    def __reduce__(self) -> tuple:  # pickles whole (the default would rebuild it from its message)
        return (type(self), (self.problems,))


@dataclass
class MaskletReview:
    """What a person left of one masklet: COCO counts of their mask per exported position they saw."""

    masks: dict[int, str] = field(default_factory=dict)
    rejected: bool = False
    accepted: bool = False
    reviewer: str | None = None
    reviewed_at: str | None = None


Reviews = dict[tuple[str, int], MaskletReview]  # (video_key, masklet_id) -> review


@dataclass
class ImportSummary:
    export_id: str
    verdicts: dict[str, int]
    frames_changed: int
    not_reviewed: int
    shards: int


def import_review(
    out_root: str, corrections: str, fmt: str, new_root: str, *, export_uri: str | None = None
) -> ImportSummary:
    """Read, check and apply CORRECTIONS (module doc) to OUT's rows, writing NEW_OUT."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if new_root.rstrip("/") == out_root.rstrip("/"):
        raise ValueError(f"the new output must differ from the reviewed one ({out_root!r} is never modified)")
    if list_done(new_root):
        raise ValueError(f"{new_root!r} already holds committed shards; write the reviewed output to a new folder")
    manifest = find_manifest(corrections) if export_uri is None else load(export_uri)
    _check_output(out_root, manifest)
    reviews = read_cvat(corrections, manifest) if fmt == "cvat" else read_labelstudio(corrections, manifest)
    decided = decide_all(out_root, manifest, reviews)
    verdicts = {v: sum(r.review_verdict == v for r in decided.values()) for v in ("accepted", "corrected", "rejected")}
    changed = sum(r.human_edit_count or 0 for r in decided.values())

    def transform(shard_id: str, records: list[MaskletRecord]) -> list[MaskletRecord]:
        return [decided.get((shard_id, r.video_key, r.masklet_id), r) for r in records]

    derivation = {
        "command": "review import",
        "format": fmt,
        "export_id": manifest.export_id,
        "corrections": corrections,
        "review": {**verdicts, "frames_changed": changed},
    }
    markers = rewrite_output(out_root, new_root, transform, derivation)
    return ImportSummary(manifest.export_id, verdicts, changed, len(manifest.masklets) - len(decided), len(markers))


def find_manifest(corrections: str) -> Manifest:
    """The export's manifest found beside CORRECTIONS: in it (a folder) or in one of its three parent folders."""
    base = corrections.rstrip("/")
    for _ in range(4):
        fs, path = storage.url_to_fs(storage.join(base, MANIFEST))
        if storage.call("check", base, fs.exists, path):
            return load(base)
        parent = posixpath.dirname(base)
        if not parent or parent == base or parent.endswith(":/") or parent.endswith(":"):
            break
        base = parent
    raise ValueError(f"no {MANIFEST} in or above {corrections!r}; name the export with --export REVIEW_URI")


def _check_output(out_root: str, manifest: Manifest) -> None:
    """The shards the export came from must be the ones OUT has now (not labelled again since)."""
    shards = sorted({v.shard_id for v in manifest.videos})
    done = list_done(out_root)
    for shard_id in shards:
        if shard_id not in done:
            raise ValueError(
                f"{out_root!r} has no committed shard {shard_id!r}: export {manifest.export_id} is of another output"
            )
        committed = read_marker(out_root, shard_id).get("committed_at")
        if committed != manifest.output["shards"].get(shard_id):
            raise ValueError(
                f"shard {shard_id} of {out_root!r} was committed at {committed}, export {manifest.export_id} was "
                f"made from the one committed at {manifest.output['shards'].get(shard_id)}: export it again"
            )


# --- CVAT -------------------------------------------------------------------------------------------


def read_cvat(corrections: str, manifest: Manifest) -> Reviews:
    """Reviews from CVAT XML files: CORRECTIONS is one (.xml, or a .zip of CVAT's export) or a folder of them."""
    problems: list[str] = []
    reviews: Reviews = {}
    seen: dict[str, str] = {}
    files = list(_cvat_files(corrections))
    if not files:
        raise CorrectionsRefused([f"{corrections}: no CVAT .xml or .zip file"])
    for source, data in files:
        try:
            doc = cvat.parse(data, source)
            key = _cvat_video(doc, source, manifest)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if key in seen:
            problems.append(f"{source}: video {key!r} again (also in {seen[key]}); give one file per video")
            continue
        seen[key] = source
        found = _cvat_reviews(doc, source, manifest.video(key), manifest, problems)
        reviews.update({(key, m): r for m, r in found.items()})
    if problems:
        raise CorrectionsRefused(problems)
    return reviews


def _cvat_files(uri: str) -> Iterator[tuple[str, bytes]]:
    fs, path = storage.url_to_fs(uri)
    if storage.call("check", uri, fs.isdir, path):
        names = sorted(p for p in storage.call("list", uri, fs.find, path) if p.endswith((".xml", ".zip")))
        paths = [(storage.join(uri, posixpath.relpath(p, path)), p) for p in names]
    else:
        paths = [(uri, path)]
    for shown, p in paths:
        data = storage.call("read", shown, fs.cat_file, p)
        if p.endswith(".zip") or data[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    for member in sorted(n for n in archive.namelist() if n.endswith(".xml")):
                        yield f"{shown}!{member}", archive.read(member)
            except zipfile.BadZipFile as exc:
                yield shown, f"not a whole zip file ({exc})".encode()  # parse() names it as not XML
        else:
            yield shown, data


def _cvat_video(doc: cvat.Document, source: str, manifest: Manifest) -> str:
    """The video a CVAT file is of: its frame image names, else its masklet references."""
    named = {parsed[0] for parsed in (cvat.parse_frame_name(f.name) for f in doc.frames) if parsed}
    referred = {ref[1] for ref in (parse_ref(s.attributes.get(cvat.ATTR_MASKLET, "")) for s in doc.shapes) if ref}
    keys = named or referred
    if len(keys) != 1:
        what = f"frames of videos {sorted(keys)}" if keys else "no frame names or masklet references"
        raise ValueError(f"{source}: {what}; a file holds one exported video (task name {doc.name!r})")
    (key,) = keys
    if manifest.video(key) is None:
        raise ValueError(f"{source}: unknown video {key!r}: export {manifest.export_id} has no such video")
    return key


def _cvat_reviews(
    doc: cvat.Document, source: str, video: ExportedVideo, manifest: Manifest, problems: list[str]
) -> dict[int, MaskletReview]:
    size, count = (video.height, video.width), len(video.frames)
    for frame in doc.frames:
        where = f"{source}: frame {frame.id} ({frame.name})"
        if not 0 <= frame.id < count:
            problems.append(f"{where}: a frame that was not exported (video {video.video_key!r} has {count})")
        elif (frame.height, frame.width) != size:
            problems.append(f"{where}: {frame.width}x{frame.height}, the video is {size[1]}x{size[0]}")
        elif (named := cvat.parse_frame_name(frame.name)) and named[1] != frame.id:
            problems.append(f"{where}: frame {frame.id} holds the image of exported frame {named[1]}")
    if doc.frames and len(doc.frames) != count:
        problems.append(f"{source}: {len(doc.frames)} frames, the export has {count} of video {video.video_key!r}")
    shapes: dict[int, list[cvat.Shape]] = {m: [] for m in video.masklets}
    for shape in doc.shapes:
        where = f"{source}: frame {shape.frame}, mask {shape.attributes.get(cvat.ATTR_MASKLET) or '(no masklet)'}"
        ref = parse_ref(shape.attributes.get(cvat.ATTR_MASKLET, ""))
        verdict = shape.attributes.get(cvat.ATTR_REVIEW, cvat.REVIEW_VALUES[0])
        if ref is None:
            problems.append(
                f"{where}: no masklet reference; a new object is not imported (delete it, or copy the "
                f"`{cvat.ATTR_MASKLET}` attribute of the masklet it belongs to)"
            )
        elif ref[0] != manifest.export_id:
            problems.append(
                f"{where}: from export {ref[0]}, not export {manifest.export_id} (a file of another export)"
            )
        elif ref[1] != video.video_key:
            problems.append(f"{where}: a masklet of video {ref[1]!r} in the file of video {video.video_key!r}")
        elif ref[2] not in shapes:
            problems.append(f"{where}: unknown masklet {ref[2]}: not exported for video {video.video_key!r}")
        elif not 0 <= shape.frame < count:
            problems.append(f"{where}: a frame that was not exported (video {video.video_key!r} has {count})")
        elif shape.frame_size != size:
            problems.append(
                f"{where}: a mask of {shape.frame_size[1]}x{shape.frame_size[0]}, the video is {size[1]}x{size[0]}"
            )
        elif shape.label != cvat.LABEL:
            problems.append(f"{where}: label {shape.label!r}; masks of label {cvat.LABEL!r} are read")
        elif verdict not in cvat.REVIEW_VALUES:
            problems.append(f"{where}: review {verdict!r}, expected one of {', '.join(cvat.REVIEW_VALUES)}")
        else:
            shapes[ref[2]].append(shape)
    if problems:
        return {}
    empty = empty_counts(*size)
    out = {}
    for masklet_id, found in shapes.items():
        masks: dict[int, str] = {}
        for position in range(count):
            on = [s.mask() for s in found if s.frame == position]
            masks[position] = rle.encode(np.logical_or.reduce(on))["counts"] if on else empty
        verdicts = {s.attributes.get(cvat.ATTR_REVIEW) for s in found}
        out[masklet_id] = MaskletReview(
            masks=masks,
            rejected="rejected" in verdicts or not found,
            accepted="accepted" in verdicts,
            reviewer=doc.reviewer,
            reviewed_at=doc.updated,
        )
    return out


# --- Label Studio -----------------------------------------------------------------------------------


def read_labelstudio(corrections: str, manifest: Manifest) -> Reviews:
    """Reviews from Label Studio's JSON export (a list of tasks with their annotations)."""
    data = storage.read_bytes(corrections)
    try:
        tasks = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorrectionsRefused([f"{corrections}: not a whole JSON file ({exc})"]) from exc
    if not isinstance(tasks, list):
        raise CorrectionsRefused([f"{corrections}: not Label Studio's JSON export (a list of tasks)"])
    problems: list[str] = []
    found: dict[tuple[str, int], dict[int, tuple[str, str, bool, str | None]]] = {}
    for i, task in enumerate(tasks):
        where = f"{corrections}: task {task.get('id', f'#{i}') if isinstance(task, dict) else f'#{i}'}"
        try:
            key, masklet_id, position, video = _ls_task(task, manifest)
            annotation = labelstudio.latest_annotation(task)
            if annotation is None:
                continue
            mask = labelstudio.annotation_mask(annotation, video.height, video.width)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        when = labelstudio.annotation_time(annotation) or ""
        entry = (
            when,
            rle.encode(mask)["counts"],
            labelstudio.annotation_rejects(annotation),
            labelstudio.annotation_author(annotation),
        )
        frames = found.setdefault((key, masklet_id), {})
        if position not in frames or frames[position][0] <= when:
            frames[position] = entry
    if problems:
        raise CorrectionsRefused(problems)
    reviews: Reviews = {}
    for (key, masklet_id), frames in found.items():
        latest = max(frames.values(), key=lambda e: e[0])
        reviews[(key, masklet_id)] = MaskletReview(
            masks={p: e[1] for p, e in frames.items()},
            rejected=any(e[2] for e in frames.values()),
            accepted=len(frames) == len(manifest.video(key).frames),
            reviewer=latest[3],
            reviewed_at=latest[0] or None,
        )
    return reviews


def _ls_task(task: object, manifest: Manifest) -> tuple[str, int, int, ExportedVideo]:
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict) or "masklet" not in data or "position" not in data:
        raise ValueError("not a task of a masklet review export (its data has no masklet and position)")
    ref = parse_ref(str(data["masklet"]))
    if ref is None:
        raise ValueError(f"masklet {data['masklet']!r} is not a masklet reference")
    export_id, key, masklet_id = ref
    if export_id != manifest.export_id or data.get("export", export_id) != export_id:
        raise ValueError(f"from export {export_id}, not export {manifest.export_id} (a file of another export)")
    video = manifest.video(key)
    if video is None:
        raise ValueError(f"unknown video {key!r}: export {manifest.export_id} has no such video")
    if masklet_id not in video.masklets:
        raise ValueError(f"unknown masklet {masklet_id}: not exported for video {key!r}")
    position = data["position"]
    if (
        not isinstance(position, int)
        or not 0 <= position < len(video.frames)
        or data.get("frame") != video.frames[position]
    ):
        raise ValueError(f"frame {data.get('frame')} (position {position}) of video {key!r} was not exported")
    return key, masklet_id, position, video


# --- the decision -----------------------------------------------------------------------------------


def decide_all(out_root: str, manifest: Manifest, reviews: Reviews) -> dict[tuple[str, str, int], MaskletRecord]:
    """The new row of every reviewed masklet, by (shard_id, video_key, masklet_id); unreviewed ones left out."""
    out = {}
    videos = {v.video_key: v for v in manifest.videos}
    for shard_id in sorted({videos[k].shard_id for k, _ in reviews}):
        records = {(r.video_key, r.masklet_id): r for r in read_shard(out_root, shard_id).masklets}
        for (key, masklet_id), review in reviews.items():
            if videos[key].shard_id != shard_id:
                continue
            if (key, masklet_id) not in records:
                raise ValueError(f"masklet {masklet_id} of video {key!r} is not in shard {shard_id} of {out_root!r}")
            new = decide(records[(key, masklet_id)], review, videos[key].frames)
            if new is not None:
                out[(shard_id, key, masklet_id)] = new
    return out


def decide(record: MaskletRecord, review: MaskletReview, frames: list[int]) -> MaskletRecord | None:
    """A masklet's row after the review (module doc's rule), or None if nobody reviewed it."""
    empty = empty_counts(record.height, record.width)
    entry = {f: t for t, f in enumerate(record.frame_indices)}
    changes = {}
    for position, counts in sorted(review.masks.items()):
        f = frames[position]
        model = (record.rle[entry[f]] if f in entry else "") or empty
        if counts != model:
            changes[f] = counts
    who = {"reviewer": review.reviewer, "reviewed_at": review.reviewed_at}
    after = [changes.get(f, c or empty) for f, c in zip(record.frame_indices, record.rle, strict=True)]
    after += [c for f, c in changes.items() if f not in entry]
    if review.rejected or all(c == empty for c in after):
        return replace(
            record,
            kept=False,
            reject_reason=REVIEW_REJECTED,
            human_edit_count=0,
            human_edit_frames=[],
            review_verdict="rejected",
            **who,
        )
    if not changes:
        if not review.accepted:
            return None
        return replace(record, human_edit_count=0, human_edit_frames=[], review_verdict="accepted", **who)
    indices = sorted(set(record.frame_indices) | set(changes))
    scores = {f: (record.pred_iou[t], record.stability[t], record.object_score[t]) for f, t in entry.items()}
    size = [record.height, record.width]
    corrected = MaskletRecord.from_frames(
        record.video_key,
        record.masklet_id,
        source=record.source,
        frame_indices=indices,
        rles=[{"size": size, "counts": changes.get(f) or record.rle[entry[f]] or empty} for f in indices],
        pred_iou=[scores.get(f, (0.0, 0.0, 0.0))[0] for f in indices],
        stability=[scores.get(f, (0.0, 0.0, 0.0))[1] for f in indices],
        object_score=[scores.get(f, (0.0, 0.0, 0.0))[2] for f in indices],
        edit_count=record.edit_count,
        kept=record.kept,
        reject_reason=record.reject_reason,
    )
    return replace(
        corrected, human_edit_count=len(changes), human_edit_frames=sorted(changes), review_verdict="corrected", **who
    )

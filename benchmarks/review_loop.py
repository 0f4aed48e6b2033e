"""The data engine with a person in the loop, measured with a simulated annotator (issue 22, item 4).

SA-V's masklets were proposed by a model, checked by people and corrected where they went wrong, and
the paper's Table 9 trains on the most-edited ones. This loop plays that on synthetic corpora, whose
exact ground truth lets a script play the reviewer honestly:

1. Round 0 (by default the shipped `masklet_demo`) auto-labels an unlabeled corpus with the demo job
   (`masklet run`), as benchmarks/data_engine_loop.py does.
2. For each selection strategy (`--strategies`; the same budget of R masklets each) `masklet review
   export` writes the files a person would get (CVAT XML or Label Studio tasks). The simulated
   reviewer (`Reviewer`) reads those files, not the output, and on each exported frame where the
   masklet's IoU with its ground-truth object is below `--edit-below` (0.7) replaces the mask with the
   ground-truth mask (the frame counts as edited); a masklet whose best tube IoU with any object is
   below `--reject-below` (0.3) is rejected; anything else is accepted. It writes its review in the
   tool's own export format and `masklet review import` reads it back, the code a person's file goes
   through; the imported verdicts and edited frames are checked against what the reviewer did.
3. The annotation effort per strategy: masklets reviewed, frames edited, edits per reviewed masklet,
   rejections, and the share of all the errors in round 0's kept masklets that the review found (the
   same reviewer run over every kept masklet gives the total).
4. Round 1 fine-tunes round 0 (`masklet train`, `--steps` steps) on the review of `--train-from`:
   (a) the R reviewed masklets (accepted and corrected), (b) the top K of them by human edits
   (`masklet sample --by edits`), (c) K random ones of them (`--by random`), (d) round 0's unreviewed
   auto-labels (every kept masklet), (e) every kept masklet after the review (corrected where a
   person looked, as a team would train next); K = half of R. `masklet eval` scores every model on a
   held-out corpus: prompted J&F from first-frame masks, automatic recall at J&F >= 0.5 and precision.

Why these settings: with the demo job's 6 fps the shipped model is strong on this corpus (prompted J&F
0.886, docs/demo-model.md) and makes few errors to correct. Its last training stage saw strides 3-4 of
the 24 fps corpus; labelling at `--fps 3` (stride 8, objects move twice as far between frames, the same
videos) is motion it never trained on, so round 0 makes errors a reviewer finds and round 1 has
something to learn; clips are `--clip-frames 6`, all a 6-frame video has. Everything goes through the
CLI users run, one command at a time; a rerun with the same settings reuses what is done.

    python benchmarks/review_loop.py --work demo-output/review-loop --json demo-output/review-loop/result.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from data_engine_loop import ROOT, count_kept, evaluate, job_weights, masklet, model_table, synth, train

from masklet.eval.holdout import record_masks, sampled_ground_truth
from masklet.io import sav
from masklet.io.annotated import read_members
from masklet.io.outputs import read_shard, read_table, rewrite_output
from masklet.io.sinks import list_done
from masklet.pipelines.sampling import mark_sampled
from masklet.review.formats import cvat, labelstudio
from masklet.review.manifest import ExportedVideo, load, parse_ref

STRATEGIES = ("stability", "edits", "flicker", "random")
MaskletKey = tuple[str, int]  # (video_key, masklet_id)
Truth = Callable[[ExportedVideo], dict[int, np.ndarray]]  # GT object id -> bool [T, H, W] at the video's frames


# --- the simulated reviewer --------------------------------------------------------------------------


def frame_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; 1 when both are empty (nothing to see, nothing to fix)."""
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


@dataclass(frozen=True)
class Judgement:
    """What the reviewer decided about one masklet: its object, and the GT mask of each frame it fixed."""

    gt_object: int | None
    tube_iou: float
    rejected: bool
    corrections: dict[int, np.ndarray] = field(default_factory=dict)  # exported position -> GT mask

    @property
    def edited(self) -> int:
        return len(self.corrections)

    @property
    def verdict(self) -> str:
        return "rejected" if self.rejected else "corrected" if self.corrections else "accepted"


@dataclass(frozen=True)
class Reviewer:
    """A person with the ground truth: fixes each frame whose IoU is below `edit_below` by redrawing the
    object exactly, rejects a masklet whose best tube IoU with any object is below `reject_below`."""

    edit_below: float = 0.7
    reject_below: float = 0.3
    name: str = "simulated-reviewer"
    at: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    def judge(self, masks: np.ndarray, gt: Mapping[int, np.ndarray]) -> Judgement:
        """Match `masks` [T, H, W] to the GT object of the highest tube IoU (pixels summed over the frames),
        then correct every frame below `edit_below` to that object's mask."""
        best, best_iou = None, 0.0
        for obj, truth in sorted(gt.items()):
            union = int(np.logical_or(masks, truth).sum())
            tube = int(np.logical_and(masks, truth).sum()) / union if union else 0.0
            if tube > best_iou:
                best, best_iou = obj, tube
        if best is None or best_iou < self.reject_below:
            return Judgement(best, best_iou, rejected=True)
        truth = gt[best]
        fixes = {t: truth[t] for t in range(len(masks)) if frame_iou(masks[t], truth[t]) < self.edit_below}
        return Judgement(best, best_iou, rejected=False, corrections=fixes)

    def review_cvat(self, export: Path, dest: Path, truth: Truth) -> dict[MaskletKey, Judgement]:
        """Review every exported video's annotations.xml as a CVAT user would, writing the task's export
        (CVAT for images 1.1) to `dest`/KEY.xml: corrected masks redrawn, `review` set to accepted or
        rejected on one of the masklet's masks."""
        manifest = load(str(export))
        dest.mkdir(parents=True, exist_ok=True)
        out: dict[MaskletKey, Judgement] = {}
        for video in manifest.videos:
            xml = export / "videos" / video.video_key / "annotations.xml"
            doc = cvat.parse(xml.read_bytes(), str(xml))
            gt = truth(video)
            shapes: dict[int, list[cvat.Shape]] = {m: [] for m in video.masklets}
            for shape in doc.shapes:
                ref = parse_ref(shape.attributes.get(cvat.ATTR_MASKLET, ""))
                if ref is None or ref[2] not in shapes:
                    raise ValueError(f"{xml}: a mask that is not an exported masklet's ({shape.attributes})")
                shapes[ref[2]].append(shape)
            reviewed: list[cvat.Shape] = []
            for masklet_id, mine in shapes.items():
                seen = np.zeros((len(video.frames), video.height, video.width), dtype=bool)
                for shape in mine:
                    seen[shape.frame] |= shape.mask()
                judgement = out[(video.video_key, masklet_id)] = self.judge(seen, gt)
                if judgement.rejected:
                    if mine:  # no mask left at all is a rejection too
                        mine[0].attributes[cvat.ATTR_REVIEW] = "rejected"
                    reviewed.extend(mine)
                    continue
                attrs = {cvat.ATTR_MASKLET: manifest.ref(video.video_key, masklet_id), cvat.ATTR_REVIEW: "unreviewed"}
                kept = [s for s in mine if s.frame not in judgement.corrections]
                drawn = (cvat.Shape.of_mask(t, m, attrs, source="manual") for t, m in judgement.corrections.items())
                kept = sorted([*kept, *(s for s in drawn if s is not None)], key=lambda s: s.frame)
                if not judgement.corrections:
                    kept[0].attributes[cvat.ATTR_REVIEW] = "accepted"
                reviewed.extend(kept)
            doc.shapes, doc.reviewer, doc.updated = reviewed, self.name, self.at
            (dest / f"{video.video_key}.xml").write_bytes(cvat.render(doc))
        return out

    def review_labelstudio(self, export: Path, dest: Path, truth: Truth) -> dict[MaskletKey, Judgement]:
        """Review labelstudio/tasks.json as a Label Studio user would, writing its JSON export to `dest`:
        every frame of a kept masklet submitted (redrawn where corrected), a rejected masklet's first
        frame submitted with the `rejected` choice and its other frames left alone."""
        manifest = load(str(export))
        tasks = json.loads((export / "labelstudio" / "tasks.json").read_text())
        videos = {v.video_key: v for v in manifest.videos}
        seen: dict[MaskletKey, np.ndarray] = {}
        for task in tasks:
            data, video = task["data"], videos[task["data"]["video_key"]]
            key = (video.video_key, data["masklet_id"])
            if key not in seen:
                seen[key] = np.zeros((len(video.frames), video.height, video.width), dtype=bool)
            seen[key][data["position"]] = labelstudio.annotation_mask(
                task["predictions"][-1], video.height, video.width
            )
        out: dict[MaskletKey, Judgement] = {}
        for video_key in dict.fromkeys(k for k, _ in seen):
            gt = truth(videos[video_key])
            out.update({k: self.judge(masks, gt) for k, masks in seen.items() if k[0] == video_key})
        done, first = [], set()
        for i, task in enumerate(tasks):
            task = {**task, "id": i + 1}
            data = task["data"]
            judgement = out[(data["video_key"], data["masklet_id"])]
            if judgement.rejected:
                if (data["video_key"], data["masklet_id"]) not in first:
                    first.add((data["video_key"], data["masklet_id"]))
                    task = labelstudio.annotate(task, rejected=True, user=self._ls_user(), at=self.at)
            else:
                fix = judgement.corrections.get(data["position"])
                task = labelstudio.annotate(task, mask=fix, user=self._ls_user(), at=self.at)
            done.append(task)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(done))
        return out

    def _ls_user(self) -> dict:
        return {"id": 1, "email": f"{self.name}@example.com"}


class GroundTruth:
    """The exact masks of a synthetic video at given frames, read from the `{key}.gt.json` beside the
    video in the corpus tar the output names as the video's source."""

    def __init__(self, out_root: Path) -> None:
        self.sources: dict[str, str] = {}
        for shard in sorted(list_done(str(out_root))):
            table = read_table(str(out_root), shard, "videos", columns=["video_key", "source_uri"]).to_pydict()
            self.sources.update(zip(table["video_key"], table["source_uri"], strict=True))
        self._tars: dict[str, dict[str, bytes]] = {}

    def masks(self, video_key: str, original_key: str, frames: list[int]) -> dict[int, np.ndarray]:
        tar = self.sources[video_key].partition("#")[0]
        if tar not in self._tars:
            self._tars[tar] = read_members(tar, "gt.json", video_bytes=False).annotations
        return sampled_ground_truth(sav.parse(self._tars[tar][original_key]), frames)

    def __call__(self, video: ExportedVideo) -> dict[int, np.ndarray]:
        return self.masks(video.video_key, video.original_key, video.frames)


# --- effort ------------------------------------------------------------------------------------------


def effort(judgements: Mapping[MaskletKey, Judgement], frames: Mapping[str, int]) -> dict:
    """Counts of one review: verdicts, masklet-frames shown (`frames`: exported frames per video) and edited."""
    verdicts = [j.verdict for j in judgements.values()]
    return {
        "reviewed": len(judgements),
        "accepted": verdicts.count("accepted"),
        "corrected": verdicts.count("corrected"),
        "rejected": verdicts.count("rejected"),
        "frames_shown": sum(frames[k] for k, _ in judgements),
        "frames_edited": sum(j.edited for j in judgements.values()),
    }


def oracle(labels: Path, truth: GroundTruth, reviewer: Reviewer) -> tuple[dict, dict[MaskletKey, Judgement]]:
    """The same reviewer over every kept masklet of round 0's output: all the errors there are to find."""
    judgements: dict[MaskletKey, Judgement] = {}
    frames: dict[str, int] = {}
    for shard in sorted(list_done(str(labels))):
        data = read_shard(str(labels), shard)
        for video in data.videos:
            mine = [m for m in data.masklets if m.video_key == video.video_key and m.kept]
            if not mine:
                continue
            frames[video.video_key] = len(video.frame_indices)
            gt = truth.masks(video.video_key, video.original_key, video.frame_indices)
            for m in mine:
                judgements[(m.video_key, m.masklet_id)] = reviewer.judge(record_masks(m, video.frame_indices), gt)
    return effort(judgements, frames), judgements


def imported_counts(root: Path) -> dict:
    """Verdicts and edited frames as `masklet review import` wrote them (to check against the reviewer)."""
    verdicts: list[str | None] = []
    edited = 0
    for shard in sorted(list_done(str(root))):
        table = read_table(str(root), shard, "masklets", columns=["review_verdict", "human_edit_count"]).to_pydict()
        verdicts += table["review_verdict"]
        edited += sum(n or 0 for n in table["human_edit_count"])
    return {v: verdicts.count(v) for v in ("accepted", "corrected", "rejected")} | {"frames_edited": edited}


def keep_reviewed(reviewed: Path, out: Path) -> int:
    """`reviewed` with only the masklets a person kept (accepted or corrected); the rest `not_sampled`,
    as `masklet sample` marks them. Returns how many are kept."""
    chosen = set()
    for shard in sorted(list_done(str(reviewed))):
        table = read_table(
            str(reviewed), shard, "masklets", columns=["video_key", "masklet_id", "kept", "review_verdict"]
        )
        for row in table.to_pylist():
            if row["kept"] and row["review_verdict"] in ("accepted", "corrected"):
                chosen.add((shard, row["video_key"], row["masklet_id"]))
    derivation = {"command": "benchmarks/review_loop.py: reviewed masklets only", "kept": len(chosen)}
    rewrite_output(str(reviewed), str(out), lambda shard, records: mark_sampled(shard, records, chosen), derivation)
    return len(chosen)


def edited_count(root: Path) -> int:
    """Kept masklets with at least one frame a person changed."""
    n = 0
    for shard in sorted(list_done(str(root))):
        table = read_table(str(root), shard, "masklets", columns=["kept", "human_edit_count"]).to_pylist()
        n += sum(1 for r in table if r["kept"] and (r["human_edit_count"] or 0) > 0)
    return n


# --- the loop ----------------------------------------------------------------------------------------


def _done(root: Path) -> bool:
    return root.exists() and bool(list_done(str(root)))


def review_round(
    labels: Path,
    work: Path,
    by: str,
    budget: int,
    fmt: str,
    reviewer: Reviewer,
    truth: GroundTruth,
    per_video: int | None,
) -> tuple[dict, Path]:
    """Export R masklets chosen `by` one strategy, review them, import the review; its effort and new output."""
    base = work / f"review-{by}"
    export, reviewed = base / "export", base / "reviewed"
    if not (export / "review.json").exists():
        cap = ["--per-video", str(per_video)] if per_video else []
        masklet("review", "export", str(labels), str(export), "--by", by, "--top-k", str(budget), "--format", fmt, *cap)
    if fmt == "cvat":
        corrections = base / "corrections"
        judgements = reviewer.review_cvat(export, corrections, truth)
    else:
        corrections = base / "corrections" / "export.json"
        judgements = reviewer.review_labelstudio(export, corrections, truth)
    if not _done(reviewed):
        masklet(
            "review", "import", str(labels), str(corrections), str(reviewed), "--format", fmt, "--export", str(export)
        )
    frames = {v.video_key: len(v.frames) for v in load(str(export)).videos}
    counts = effort(judgements, frames)
    imported = imported_counts(reviewed)
    expected = {k: counts[k] for k in ("accepted", "corrected", "rejected", "frames_edited")}
    if imported != expected:
        raise SystemExit(f"review {by}: the reviewer did {expected}, `masklet review import` wrote {imported}")
    return counts, reviewed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo-output/review-loop", help="folder for corpora, labels, reviews, runs")
    parser.add_argument("--job", default="configs/demo.yaml", help="job config of round 0 (model and pipeline)")
    parser.add_argument("--train", default="configs/train-round1.yaml", help="training config of round 1")
    parser.add_argument("--round0", help="round-0 checkpoint (default: the job config's model weights)")
    parser.add_argument("--unlabeled", type=int, default=48, help="videos to auto-label (seed 300)")
    parser.add_argument("--heldout", type=int, default=16, help="held-out videos to evaluate on (seed 200)")
    parser.add_argument("--fps", type=float, default=3.0, help="frame rate of labelling and evaluation (source.fps)")
    parser.add_argument("--clip-frames", type=int, default=6, help="frames per training clip (clip.frames)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="`review export --by` orders to compare")
    parser.add_argument("--budget", type=float, default=0.3, help="R: masklets reviewed, as a fraction of the kept")
    parser.add_argument("--per-video", type=int, help="at most this many reviewed masklets per video")
    parser.add_argument("--format", choices=("cvat", "labelstudio"), default="cvat", help="the review tool's files")
    parser.add_argument("--edit-below", type=float, default=0.7, help="a frame under this IoU is corrected")
    parser.add_argument("--reject-below", type=float, default=0.3, help="a masklet under this tube IoU is rejected")
    parser.add_argument("--train-from", default="stability", help="whose review round 1 trains on")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps of each round-1 model")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.train_from not in strategies:
        raise SystemExit(f"--train-from {args.train_from!r} is not one of --strategies {strategies}")

    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    saved = work / "settings.json"
    if saved.exists() and json.loads(saved.read_text()) != settings:
        raise SystemExit(f"{work} holds a run with other settings ({saved}); use another --work")
    saved.write_text(json.dumps(settings, indent=1))
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    unlabeled, heldout = work / "unlabeled", work / "heldout"
    synth(unlabeled, args.unlabeled, seed=300)
    synth(heldout, args.heldout, seed=200)
    heldout_uri = f"{heldout}/shard-*.tar"
    rate = [f"source.fps={args.fps:g}"]
    round0 = [f"model.checkpoint={args.round0}"] if args.round0 else []

    labels = work / "round0-labels"
    if not _done(labels) or len(list_done(str(labels))) < len(list(unlabeled.glob("shard-*.tar"))):
        seconds["auto-label"] = masklet(
            "run", args.job, f"source.uri={unlabeled}/shard-*.tar", f"output.uri={labels}", "output.write_video=true",
            *rate, *round0, "--force",
        )  # fmt: skip
    kept = count_kept(labels)
    if kept < 4:
        raise SystemExit(f"round 0 kept {kept} masklets on {args.unlabeled} videos: too few to review and train on")
    budget = max(2, round(kept * args.budget))
    top_k = max(1, round(budget / 2))

    # --- review, per strategy ---
    reviewer = Reviewer(edit_below=args.edit_below, reject_below=args.reject_below)
    truth = GroundTruth(labels)
    t0 = time.perf_counter()
    total, _ = oracle(labels, truth, reviewer)
    efforts, outputs = {}, {}
    for by in strategies:
        efforts[by], outputs[by] = review_round(
            labels, work, by, budget, args.format, reviewer, truth, args.per_video
        )  # fmt: skip
    seconds["review (export, simulated review, import)"] = time.perf_counter() - t0

    # --- round 1 ---
    reviewed = outputs[args.train_from]
    only_reviewed = work / "data-reviewed"
    if not _done(only_reviewed):
        keep_reviewed(reviewed, only_reviewed)
    pool = count_kept(only_reviewed)
    k = min(top_k, pool)
    for by in ("edits", "random"):
        if not _done(work / f"data-{by}"):
            masklet("sample", str(only_reviewed), str(work / f"data-{by}"), "--by", by, "--top-k", str(k))
    edited_in_top = edited_count(work / "data-edits")
    variants = {
        "reviewed": (f"(a) the {pool} reviewed masklets kept ({args.train_from} review)", only_reviewed),
        "edits": (f"(b) the {k} most edited of them ({edited_in_top} with edits)", work / "data-edits"),
        "random": (f"(c) {k} random of them", work / "data-random"),
        "auto": (f"(d) round 0's {kept} kept auto-labels, unreviewed", labels),
        "after-review": (f"(e) every kept masklet after the review ({count_kept(reviewed)})", reviewed),
    }
    init = args.round0 or job_weights(args.job)
    origin = f"`{args.round0}`" if args.round0 else "`masklet_demo` (ground truth of its training corpus)"
    models = {"round 0": (origin, _cached_eval(work, "round0", args.round0, args.job, heldout_uri, rate))}
    for short, (name, data) in variants.items():
        run = work / f"train-{short}"
        if not (run / "model.pt").exists():
            seconds[f"train {short}"] = train(
                args.train, data, run, init, args.steps, f"clip.frames={args.clip_frames}"
            )  # fmt: skip
        models[f"round 1 ({short})"] = (
            name,
            _cached_eval(work, run.name, str(run / "model.pt"), args.job, heldout_uri, rate),
        )
    seconds["total"] = time.perf_counter() - t_start

    print(f"\nround 0 kept {kept} masklets on {args.unlabeled} videos at {args.fps:g} fps; review budget R = {budget} "
          f"per strategy ({args.format}), K = {k}; {args.steps} steps per round-1 run")  # fmt: skip
    print(_effort_table(efforts, total, kept))
    print(model_table(models))
    print("\nwall seconds: " + ", ".join(f"{key} {v:.0f}" for key, v in seconds.items()))
    if args.json:
        result = {
            "settings": settings,
            "kept": kept,
            "budget": budget,
            "k": k,
            "edited_in_top_k": edited_in_top,
            "all_errors": total,
            "effort": efforts,
            "models": {name: {"trained_on": on, "summary": s} for name, (on, s) in models.items()},
            "seconds": seconds,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


def _cached_eval(work: Path, name: str, checkpoint: str | None, job: str, heldout: str, rate: list[str]) -> dict:
    """`masklet eval`, unless this run already wrote its result (a rerun with the same settings)."""
    result = work / f"eval-{name}.json"
    if result.exists():
        return json.loads(result.read_text())["summary"]
    return evaluate(name, checkpoint, job, heldout, work, *rate)


def _pct(part: float, whole: float) -> str:
    return "n/a" if not whole else f"{100 * part / whole:.0f}%"


def _effort_table(efforts: Mapping[str, dict], total: dict, kept: int) -> str:
    lines = [
        "\n| review by | masklets reviewed | frames edited (of reviewed) | edited frames per reviewed masklet "
        "| corrected / accepted / rejected | share of all edited frames found | rejections found |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = dict(efforts) | {"every kept masklet": total}
    for by, e in rows.items():
        lines.append(
            f"| {by} | {e['reviewed']} ({_pct(e['reviewed'], kept)}) "
            f"| {e['frames_edited']} of {e['frames_shown']} ({_pct(e['frames_edited'], e['frames_shown'])}) "
            f"| {e['frames_edited'] / e['reviewed']:.2f} | {e['corrected']} / {e['accepted']} / {e['rejected']} "
            f"| {_pct(e['frames_edited'], total['frames_edited'])} | {e['rejected']} of {total['rejected']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

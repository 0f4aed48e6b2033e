"""One long video on N workers against one worker (issue 20, item 3): wall time and identities.

Writes a synthetic long video with ground truth (`masklet synth`'s scenes: objects that enter late,
leave and come back, pass behind others), then labels it with `masklet run` (the job's own code on an
embedded Ray, in this process) once whole on one worker, and once split (`split.chunk_seconds`) on
each `--workers` count, with the shipped demo model and configs/demo.yaml's pipeline. For each run:

- the job's wall time (`JobSummary.seconds`: from the first worker's start to the last commit);
- identities, against the ground truth: each kept masklet is given, on every annotated frame where
  it is visible, the ground-truth object it overlaps at IoU >= 0.5 (if any). A masklet whose object
  changes is an identity switch (`switches`; `at_boundary`: the change falls within a chunk's overlap
  of a boundary); a ground-truth object that is the main object (most frames) of several masklets is
  split (`split_objects`, `extra_masklets` the masklets beyond one per object). Objects covered:
  those the main object of at least one masklet.

    python benchmarks/split_video.py --work demo-output/split-video          # the table of docs/long-videos.md
    python benchmarks/split_video.py --work /tmp/sv --frames 240 --workers 2  # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from masklet.config import SourceConfig, load_config
from masklet.eval.holdout import read_ground_truth, record_masks, sampled_ground_truth
from masklet.io import sav
from masklet.io.outputs import read_shard
from masklet.io.sinks import list_done
from masklet.io.sources import list_shards
from masklet.jobs.cluster import keep_on_loopback
from masklet.synth.corpus import write_corpus

REPO = Path(__file__).resolve().parent.parent
MATCH_IOU = 0.5


def identities(root: Path, annotation: sav.SavAnnotation, boundaries: list[int], margin: int) -> dict[str, Any]:
    """The identity counts of the module doc for the kept masklets of the one video under `root`."""
    (shard_id,) = [s for s in list_done(str(root)) if read_shard(str(root), s).videos]
    shard = read_shard(str(root), shard_id)
    frames = shard.videos[0].frame_indices
    truth = sampled_ground_truth(annotation, frames)
    gt_ids = sorted(truth)
    gt = np.stack([truth[o] for o in gt_ids]).reshape(len(gt_ids), len(frames), -1)
    kept = [m for m in shard.masklets if m.kept]
    switches = at_boundary = 0
    main: dict[int, list[int]] = {}
    for m in kept:
        masks = record_masks(m, frames).reshape(len(frames), -1)
        objects = []
        for t in np.flatnonzero(masks.any(1)):
            inter = (gt[:, t] & masks[t]).sum(1)
            union = (gt[:, t] | masks[t]).sum(1)
            iou = inter / np.maximum(union, 1)
            best = int(np.argmax(iou))
            if iou[best] >= MATCH_IOU:
                objects.append((frames[t], gt_ids[best]))
        changes = [f for (_, a), (f, b) in zip(objects, objects[1:], strict=False) if a != b]
        switches += bool(changes)
        at_boundary += any(abs(f - b) <= margin for f in changes for b in boundaries)
        if objects:
            ids, counts = np.unique([o for _, o in objects], return_counts=True)
            main.setdefault(int(ids[np.argmax(counts)]), []).append(m.masklet_id)
    visible = [o for o, masks in truth.items() if masks.any()]
    return {
        "masklets_kept": len(kept),
        "switches": switches,
        "switches_at_boundary": at_boundary,
        "objects": len(visible),
        "objects_covered": len(main),
        "split_objects": sum(len(v) > 1 for v in main.values()),
        "extra_masklets": sum(len(v) - 1 for v in main.values()),
    }


def run(args: argparse.Namespace, corpus: Path, out: Path, workers: int, split: bool) -> dict[str, Any]:
    overrides = [
        f"source.uri={corpus}/*.tar",
        f"output.uri={out}",
        f"workers.count={workers}",
        "workers.num_cpus=1",
        "ray.dashboard=false",
        *args.overrides,
    ]
    if split:
        overrides += [f"split.chunk_seconds={args.chunk_seconds}", f"split.overlap_seconds={args.overlap_seconds}"]
    shutil.rmtree(out, ignore_errors=True)
    from masklet.jobs.driver import run_job  # imports Ray: after keep_on_loopback()

    summary = run_job(load_config(str(REPO / "configs" / "demo.yaml"), overrides), log_every=600)
    if summary.exit_code != 0:
        raise SystemExit(f"the job in {out} exited {summary.exit_code}")
    return {"workers": workers, "split": split, "seconds": round(summary.seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=1440, help="video frames at 24 fps (1440: a minute)")
    parser.add_argument("--size", default="128x96")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk-seconds", type=float, default=15.0)
    parser.add_argument("--overlap-seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. pipeline.reseed_every=2")
    args = parser.parse_args()
    keep_on_loopback()
    width, height = (int(v) for v in args.size.split("x"))
    corpus = args.work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    write_corpus(
        str(corpus), videos=1, per_shard=1, seed=args.seed, width=width, height=height, frames=args.frames, fps=24.0
    )
    (shard,) = list_shards(SourceConfig(uri=str(corpus / "*.tar")))
    keys, annotations = read_ground_truth(shard)
    annotation = sav.parse(annotations[keys[0]])
    fps = load_config(str(REPO / "configs" / "demo.yaml"), [f"source.uri={corpus}/*.tar", "output.uri=x"]).source.fps
    stride = round(24 / fps)
    chunk, overlap = round(args.chunk_seconds * fps), round(args.overlap_seconds * fps)
    boundaries = [k * chunk * stride for k in range(1, args.frames // (chunk * stride) + 1)]
    results = []
    for workers, split in [(1, False), *((n, True) for n in args.workers)]:
        out = args.work / f"{'split' if split else 'whole'}-{workers}"
        row = run(args, corpus, out, workers, split)
        row.update(identities(out, annotation, boundaries, margin=overlap * stride))
        results.append(row)
        print(json.dumps(row), flush=True)
    base = results[0]["seconds"]
    print(
        f"\n{args.frames} frames at 24 fps ({args.size}), labelled at {fps:g} fps; chunks of {chunk} + {overlap} frames"
    )
    print("| run | workers | wall s | speed-up | kept | switches (at a boundary) | objects covered | split (extra) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {'split' if r['split'] else 'whole'} | {r['workers']} | {r['seconds']} | {base / r['seconds']:.2f}x | "
            f"{r['masklets_kept']} | {r['switches']} ({r['switches_at_boundary']}) | {r['objects_covered']} of "
            f"{r['objects']} | {r['split_objects']} ({r['extra_masklets']}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

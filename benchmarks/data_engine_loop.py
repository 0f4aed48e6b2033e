"""The data-engine loop, measured: does training on the engine's own auto-labels improve the model?

Round 0 is a model (by default the shipped `masklet_demo`). It auto-labels a synthetic corpus that no
model was trained on, with re-seeding on so that corrections count as edits (the job config's
`pipeline.reseed_every`, or `--reseed-every`); the job's filters keep the good masklets. Round 1
fine-tunes round 0 on those auto-labels only (no ground truth), three ways: every kept masklet, the
K most-edited (`masklet sample --by edits`) and K random ones (`--by random`), K being a fraction of
the kept. Every model is then scored on a held-out corpus with `masklet eval` (prompted J&F from
first-frame masks, automatic recall at J&F >= 0.5), and the table is printed as Markdown.
Everything goes through the CLI users run, one command at a time.

    python benchmarks/data_engine_loop.py --work demo-output/engine-loop --steps 300
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from masklet.io.outputs import read_table
from masklet.io.sinks import list_done

ROOT = Path(__file__).resolve().parents[1]


def masklet(*args: str) -> float:
    """Run one masklet command, echoing it; return its wall seconds (a failure stops the loop)."""
    cmd = [sys.executable, "-m", "masklet", *args]
    print("$ masklet " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def evaluate(name: str, checkpoint: str | None, job: str, heldout: str, out: Path, *overrides: str) -> dict:
    """`masklet eval` of one model on the held-out corpus; its summary (prompted and automatic)."""
    result = out / f"eval-{name}.json"
    weights = [f"model.checkpoint={checkpoint}"] if checkpoint else []
    masklet("eval", job, f"source.uri={heldout}", *weights, *overrides, "--json", str(result))
    return json.loads(result.read_text())["summary"]


def synth(corpus: Path, videos: int, seed: int) -> None:
    """A synthetic corpus with ground truth, unless one is there already (a rerun reuses it)."""
    if not corpus.exists():
        masklet("synth", str(corpus), "--videos", str(videos), "--per-shard", "8", "--seed", str(seed))


def count_kept(root: Path) -> int:
    """Kept masklets of an output, over all its committed shards."""
    return sum(
        sum(read_table(str(root), shard, "masklets", columns=["kept"]).column("kept").to_pylist())
        for shard in list_done(str(root))
    )


def train(config: str, data: Path, run: Path, init: str, steps: int, *overrides: str) -> float:
    """Fine-tune `init` on the kept masklets of the output at `data` (its SA-V wds); wall seconds."""
    return masklet(
        "train", config, f"data.uri={data}/wds/*.tar", f"output.uri={run}", f"model.init_checkpoint={init}",
        f"optim.steps={steps}", *overrides,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo-output/engine-loop", help="folder for corpora, labels and runs")
    parser.add_argument("--job", default="configs/demo.yaml", help="job config of round 0 (model and pipeline)")
    parser.add_argument("--train", default="configs/train-round1.yaml", help="training config of round 1")
    parser.add_argument("--unlabeled", type=int, default=48, help="videos to auto-label")
    parser.add_argument("--heldout", type=int, default=16, help="held-out videos to evaluate on")
    parser.add_argument(
        "--reseed-every", type=int, help="annotated frames between re-seeds when auto-labelling (default: the job's)"
    )
    parser.add_argument("--sample-fraction", type=float, default=0.5, help="K as a fraction of the kept masklets")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps of each round-1 model")
    parser.add_argument("--round0", help="round-0 checkpoint (default: the job config's model weights)")
    args = parser.parse_args()

    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    unlabeled, heldout = work / "unlabeled", work / "heldout"
    synth(unlabeled, args.unlabeled, seed=300)
    synth(heldout, args.heldout, seed=200)
    heldout_uri = f"{heldout}/shard-*.tar"

    labels = work / "round0-labels"
    round0 = [f"model.checkpoint={args.round0}"] if args.round0 else []
    reseed = [f"pipeline.reseed_every={args.reseed_every}"] if args.reseed_every else []
    seconds["auto-label"] = masklet(
        "run", args.job, f"source.uri={unlabeled}/shard-*.tar", f"output.uri={labels}", "output.write_video=true",
        *reseed, *round0, "--force",
    )  # fmt: skip
    kept = count_kept(labels)
    if kept == 0:
        round0_eval = evaluate("round0", args.round0, args.job, heldout_uri, work)
        raise SystemExit(
            f"round 0 kept no masklet on {args.unlabeled} videos, so round 1 has nothing to train on "
            f"(round 0 on the held-out set: {json.dumps(round0_eval)}); a stronger round-0 model is needed"
        )
    top_k = max(1, round(kept * args.sample_fraction))
    for by in ("edits", "random"):
        masklet("sample", str(labels), str(work / f"round0-{by}"), "--by", by, "--top-k", str(top_k))

    rows = {"round 0": evaluate("round0", args.round0, args.job, heldout_uri, work)}
    variants = {
        "all": ("every kept auto-label", labels),
        "edits": (f"the {top_k} most-edited", work / "round0-edits"),
        "random": (f"{top_k} random", work / "round0-random"),
    }
    init = args.round0 or job_weights(args.job)
    trained_on = {"round 0": "ground truth of the training corpus"}
    for short, (name, root) in variants.items():
        run = work / f"train-{short}"
        seconds[f"train {name}"] = train(args.train, root, run, init, args.steps)
        rows[f"round 1 ({short})"] = evaluate(run.name, str(run / "model.pt"), args.job, heldout_uri, work)
        trained_on[f"round 1 ({short})"] = f"round 0 + {name} (no ground truth)"

    print(f"\nauto-labels: {kept} kept masklets on {args.unlabeled} videos; K = {top_k}; {args.steps} steps per run")
    print(model_table({name: (trained_on[name], s) for name, s in rows.items()}))
    print("\nwall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


def model_table(models: Mapping[str, tuple[str, dict]]) -> str:
    """The markdown table of models: name -> (what it was trained on, its `masklet eval` summary)."""
    lines = [
        "\n| model | trained on | prompted J&F | auto recall @0.5 | auto precision |",
        "|---|---|---|---|---|",
    ]
    for name, (on, s) in models.items():
        p, a = s["prompted"], s["auto"]
        lines.append(f"| {name} | {on} | {_fmt(p['jf'])} | {_fmt(a['recall'])} | {_fmt(a['precision'])} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def job_weights(job: str) -> str:
    from masklet.config import load_config

    weights = load_config(str(ROOT / job)).model.weights
    if weights is None:
        raise SystemExit(f"{job} names no weights and --round0 is not given")
    return weights


if __name__ == "__main__":
    main()

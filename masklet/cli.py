"""The `masklet` command line.

Exit codes: 0 success, 1 work that ran and failed in part, 3 done below workers.min_count workers,
2 a bad config or bad arguments
found before any work started.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence

from masklet import __version__
from masklet.config import ConfigError, JobConfig, dump_config, load_config, storage_from_env, validate_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_TERMINATED = 143  # SIGTERM, likewise


def _cmd_synth(args: argparse.Namespace) -> int:
    from masklet.synth.corpus import write_corpus

    shards = write_corpus(
        args.out_uri,
        videos=args.videos,
        per_shard=args.per_shard,
        seed=args.seed,
        width=args.width,
        height=args.height,
        frames=args.frames,
        fps=args.fps,
    )
    print(f"wrote {args.videos} videos in {len(shards)} shards to {args.out_uri}")
    for shard in shards:
        print(f"  {shard}")
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    print(dump_config(config), end="")
    print(f"# config hash: {config.content_hash()} (as in job.json and output rows; placement left out)")
    return EXIT_OK


def _cmd_filter(args: argparse.Namespace) -> int:
    from collections import Counter

    from masklet.config import FiltersConfig
    from masklet.io.layout import JOB_FILE, read_json
    from masklet.io.outputs import rewrite_output
    from masklet.pipelines.filters import apply_filters

    base = ((read_json(args.in_uri, JOB_FILE) or {}).get("config") or {}).get("filters")
    filters = FiltersConfig.from_overrides(args.overrides, base)
    origin = f"{args.in_uri}/{JOB_FILE}" if base is not None else "defaults"
    print(f"thresholds ({origin} + overrides): {filters.model_dump(mode='json')}")
    outcomes: Counter[str] = Counter()

    def transform(shard_id: str, records: list) -> list:
        records = apply_filters(records, filters)
        outcomes.update((r.reject_reason or "kept").split(":")[0] for r in records)
        return records

    derivation = {"command": "filter", "filters": filters.model_dump(mode="json")}
    markers = rewrite_output(args.in_uri, args.out_uri, transform, derivation)
    total, kept = sum(outcomes.values()), outcomes.pop("kept", 0)
    print(f"wrote {len(markers)} shards to {args.out_uri}: {total} masklets, {kept} kept")
    for reason, count in sorted(outcomes.items()):
        print(f"  dropped as {reason}: {count} masklet{'s' if count != 1 else ''}")
    return EXIT_OK


def _cmd_sample(args: argparse.Namespace) -> int:
    from masklet.io.outputs import read_table, rewrite_output
    from masklet.io.sinks import list_done
    from masklet.pipelines.sampling import CANDIDATE_COLUMNS, Candidate, mark_sampled, select

    shard_ids = sorted(list_done(args.in_uri))
    candidates = [
        Candidate(shard_id=s, **row)
        for s in shard_ids
        for row in read_table(args.in_uri, s, "masklets", columns=CANDIDATE_COLUMNS).to_pylist()
    ]
    selected = select(candidates, by=args.by, top_k=args.top_k, fraction=args.fraction, seed=args.seed)
    derivation = {"command": "sample", "by": args.by, "top_k": args.top_k, "fraction": args.fraction, "seed": args.seed}
    markers = rewrite_output(
        args.in_uri,
        args.out_uri,
        lambda shard_id, records: mark_sampled(shard_id, records, selected),
        derivation,
        shard_ids=shard_ids,
    )
    kept = sum(c.kept for c in candidates)
    print(f"kept {len(selected)} of {kept} kept masklets (by {args.by}); wrote {len(markers)} shards to {args.out_uri}")
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    import fsspec

    from masklet.eval import holdout

    config = _job_config(args)
    modes = holdout.MODES if args.mode == "both" else (args.mode,)
    result = holdout.evaluate(config, modes=modes, max_videos=args.max_videos)
    print(holdout.format_report(result))
    if args.json is not None:
        with fsspec.open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return EXIT_FAILED if holdout.failed_videos(result) else EXIT_OK


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser(
        "eval",
        help="score a model on a held-out synthetic corpus against its ground truth",
        description="Evaluate CONFIG's model on the wds shards at source.uri (written by `masklet synth`, each "
        "video with its {key}.gt.json), at the job's source.fps and max_frames: prompted tracking from each "
        "object's first GT mask (mean J&F) and the automatic pipeline (recall of GT masklets at J&F >= 0.5); "
        "docs/evaluation.md. Exit 0: evaluated; 1: some videos failed (error rows); 2: config or input error.",
    )
    ev.add_argument("config", metavar="CONFIG", help="YAML job config (any fsspec URI)")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. model.device=cpu")
    ev.add_argument("--mode", choices=("prompted", "auto", "both"), default="both", help="what to evaluate (both)")
    ev.add_argument("--max-videos", type=int, metavar="N", help="evaluate only the first N videos")
    ev.add_argument("--json", metavar="OUT_FILE", help="write the full result (summary and per-video rows) as JSON")
    ev.set_defaults(run=_cmd_eval, config_json=None)


def _cmd_train(args: argparse.Namespace) -> int:
    from masklet.train.config import load_train_config
    from masklet.train.trainer import train

    config = load_train_config(args.config, args.overrides)
    result = train(config)
    print(f"trained {result.steps} steps (from step {result.resumed_from}): {result.checkpoint}")
    return EXIT_OK


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    tr = commands.add_parser(
        "train",
        help="train or fine-tune the model on masklet shards (the next round of the data engine)",
        description="Train CONFIG's model on SA-V annotated tar shards (masklet outputs' wds/*.tar, or a "
        "`masklet synth` corpus with annotation: gt.json) with the SAM 2 recipe: 8-frame clips, simulated "
        "mask/click/box prompts and corrective clicks, focal+dice, IoU and object-score losses, AdamW. Writes "
        "output.uri/last.pt every output.checkpoint_every steps (a rerun resumes from it) and output.uri/model.pt "
        "at the end, in the official checkpoint layout. Exit 0: trained; 2: config or input error.",
    )
    tr.add_argument("config", metavar="CONFIG", help="YAML training config (any fsspec URI)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.steps=500")
    tr.set_defaults(run=_cmd_train)


def _job_config(args: argparse.Namespace) -> JobConfig:
    """CONFIG with overrides, or the resolved config `masklet submit` sends as --config-json."""
    if args.config_json is not None:
        if args.config is not None:
            raise ConfigError("give either CONFIG [KEY=VALUE ...] or --config-json, not both")
        try:
            data = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("--config-json must be a JSON object of config sections")
        data["storage"] = data.get("storage") or storage_from_env()  # where `masklet submit` puts it
        return validate_config(data, origin="--config-json")
    if args.config is None:
        raise ConfigError("a CONFIG file is required")
    return load_config(args.config, args.overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from masklet.jobs.cluster import keep_on_loopback, plain_logs

    config = _job_config(args)
    plain_logs()
    if config.ray.address is None:
        keep_on_loopback()  # before Ray is imported: an embedded Ray listens on 127.0.0.1 only
    from masklet.jobs.driver import Terminated, run_job

    try:
        return run_job(config, force=args.force).exit_code
    except KeyboardInterrupt as exc:
        why, code = (
            ("stopped by SIGTERM", EXIT_TERMINATED)
            if isinstance(exc, Terminated)
            else ("interrupted", EXIT_INTERRUPTED)
        )
        print(f"\nmasklet run: {why}; run the same command again to resume", file=sys.stderr)
        return code


def _cmd_submit(args: argparse.Namespace) -> int:
    from masklet.jobs import submit

    submission = submit.build_submission(
        _job_config(args), working_dir=args.working_dir, pip=args.pip, env=args.env, force=args.force
    )
    for warning in submission.warnings:
        print(f"masklet submit: warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(f"entrypoint: {submission.entrypoint}")
        print(f"runtime_env: {json.dumps(submission.shown_runtime_env(), sort_keys=True)}")
        return EXIT_OK
    job_id = submit.submit(args.address, submission)
    print(job_id)
    if not args.wait:
        print(f"follow it with: masklet logs {job_id} --follow; masklet status {job_id}", file=sys.stderr)
        return EXIT_OK
    submit.logs(args.address, job_id, sys.stdout, follow=True)
    state = submit.status(args.address, job_id)["status"]
    print(f"job {job_id}: {state}", file=sys.stderr)
    return EXIT_OK if state == "SUCCEEDED" else EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    from masklet.jobs import submit

    info = submit.status(args.address, args.job_id)
    print(info["status"])
    for key in ("message", "entrypoint", "start_time", "end_time"):
        if info[key]:
            print(f"  {key}: {info[key]}")
    return EXIT_OK


def _cmd_logs(args: argparse.Namespace) -> int:
    from masklet.jobs import submit

    submit.logs(args.address, args.job_id, sys.stdout, follow=args.follow)
    return EXIT_OK


def _cmd_stop(args: argparse.Namespace) -> int:
    from masklet.jobs import submit

    stopped = submit.stop(args.address, args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already ended'}")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from masklet.io.verify import forget, verify_output

    result = verify_output(args.out_uri, checksums=args.checksums)
    for damage in result.damage:
        print(damage)
    damaged = result.damaged_shards
    how = "sizes and sha256" if args.checksums else "sizes"
    print(f"{result.shards} committed shard(s), {result.files} file(s) checked ({how}): {len(damaged)} damaged")
    if damaged and args.repair:
        forget(args.out_uri, damaged)
        print(f"removed the markers of {len(damaged)} shard(s): rerun the job to label them again")
    elif damaged:
        print("rerun with --repair to remove their markers, then rerun the job to label them again")
    return EXIT_FAILED if damaged else EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from masklet.report import write_report

    print(write_report(args.out_uri, args.out, videos=args.videos, keys=args.key))
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from masklet.report import write_show

    print(write_show(args.out_uri, args.key, args.out))
    return EXIT_OK


def _add_report_commands(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="write an HTML report of an output: stats, plots, overlays",
        description="Write one self-contained HTML file (images inside, no server needed) about OUT_URI: the job's "
        "config and counts, the filter funnel, histograms of the quality statistics, throughput per shard, the "
        "failed videos, and overlays of the kept and dropped masklets of a few videos. Prints the file's path "
        "(default: OUT_URI/report.html for a local root, ./report.html for a remote one).",
    )
    report.add_argument("out_uri", metavar="OUT_URI", help="an output root (any fsspec URI)")
    report.add_argument(
        "--videos",
        type=int,
        default=8,
        metavar="N",
        help="viewers of N videos: those of the masklets most likely wrong first (default 8)",
    )
    report.add_argument("--key", action="append", default=[], metavar="KEY", help="also overlay this video (repeated)")
    report.add_argument("--out", metavar="FILE", help="where to write the report (any fsspec URI)")
    report.set_defaults(run=_cmd_report)

    show = commands.add_parser(
        "show",
        help="overlay the masklets of one video of an output",
        description="Write an HTML page with one video's kept masklets (animated) and dropped ones (with reasons), "
        "or only the animation when FILE ends in .webp. Prints the file's path (default: "
        "OUT_URI/show-KEY.html for a local root, ./show-KEY.html for a remote one).",
    )
    show.add_argument("out_uri", metavar="OUT_URI", help="an output root (any fsspec URI)")
    show.add_argument("key", metavar="KEY", help="the video's key (video_key or original_key)")
    show.add_argument("--out", metavar="FILE", help="where to write it: .html (default) or .webp")
    show.set_defaults(run=_cmd_show)


def _cmd_review_export(args: argparse.Namespace) -> int:
    from masklet.review.export import FORMATS, ExportSettings, export_review

    settings = ExportSettings(
        by=args.by,
        top_k=args.top_k,
        fraction=args.fraction,
        per_video=args.per_video,
        seed=args.seed,
        formats=FORMATS if args.format is None else (args.format,),
        image_url_prefix=args.image_url_prefix,
    )
    manifest = export_review(args.out_uri, args.review_uri, settings)
    frames = sum(len(v.frames) for v in manifest.videos)
    print(
        f"export {manifest.export_id}: {len(manifest.masklets)} of {manifest.selection['candidates']} kept masklets "
        f"(by {args.by}) in {len(manifest.videos)} videos, {frames} frames, as {' and '.join(settings.formats)}; "
        f"wrote {args.review_uri} (docs/review.md says how to load it)"
    )
    return EXIT_OK


def _cmd_review_import(args: argparse.Namespace) -> int:
    from masklet.review.corrections import import_review

    summary = import_review(args.out_uri, args.corrections, args.format, args.new_out_uri, export_uri=args.export)
    verdicts = ", ".join(f"{n} {v}" for v, n in summary.verdicts.items())
    print(
        f"export {summary.export_id}: {verdicts} ({summary.frames_changed} frames changed by a person), "
        f"{summary.not_reviewed} not reviewed; wrote {summary.shards} shards to {args.new_out_uri}"
    )
    return EXIT_OK


def _add_review_commands(commands: argparse._SubParsersAction) -> None:
    from masklet.pipelines.doubt import ORDERS

    review = commands.add_parser(
        "review",
        help="send masklets to people (CVAT, Label Studio) and bring their corrections back",
        description="Human review of an output's masklets (docs/review.md): `export` chooses the masklets to "
        "look at first and writes them with their frames for CVAT and Label Studio; `import` reads a tool's "
        "export back into a new output root.",
    )
    sub = review.add_subparsers(dest="review_command", required=True, metavar="SUBCOMMAND")
    export = sub.add_parser(
        "export",
        help="write the masklets a person should look at first, for CVAT and Label Studio",
        description="Rank the kept masklets of OUT_URI (--by: lowest stability_mean or pred_iou_mean, most automatic "
        "edits, i.e. re-seed disagreements, most visibility changes, fewest visible frames, or a seeded random "
        "control), take --top-k or --fraction of them, at most --per-video per video, and write REVIEW_URI: "
        "review.json and selection.csv (the selection and its scores), the frames as JPEG, CVAT XML 1.1 per video "
        "and Label Studio tasks with the masks as predictions. OUT_URI is only read.",
    )
    export.add_argument("out_uri", metavar="OUT_URI", help="an output root (any fsspec URI)")
    export.add_argument("review_uri", metavar="REVIEW_URI", help="a new folder for the export (any fsspec URI)")
    export.add_argument("--by", choices=ORDERS, default="stability", help="what to look at first (default stability)")
    size = export.add_mutually_exclusive_group(required=True)
    size.add_argument("--top-k", type=int, help="export this many masklets")
    size.add_argument("--fraction", type=float, help="export this fraction of the kept masklets (rounded half up)")
    export.add_argument("--per-video", type=int, metavar="N", help="at most N masklets of one video")
    export.add_argument("--seed", type=int, default=0, help="random seed for --by random (default 0)")
    export.add_argument("--format", choices=("cvat", "labelstudio"), help="only this tool's files (default both)")
    export.add_argument(
        "--image-url-prefix",
        default="/data/local-files/?d=",
        metavar="PREFIX",
        help="what Label Studio tasks put before an image's path in REVIEW_URI (default: Label Studio's local "
        "files, with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=REVIEW_URI)",
    )
    export.set_defaults(run=_cmd_review_export)

    imp = sub.add_parser(
        "import",
        help="write a new output with a person's corrections and verdicts",
        description="Read CORRECTIONS (CVAT: XML files or CVAT's export zips, one per video, or a folder of them; "
        "Label Studio: its JSON export) and write NEW_OUT_URI: OUT_URI's shards with the masks a person changed, "
        "human_edit_count and review_verdict per masklet, rejected masklets dropped with reason review. Everything "
        "is checked first; a bad item refuses the whole import and nothing is written. OUT_URI is only read.",
    )
    imp.add_argument("out_uri", metavar="OUT_URI", help="the output root that was exported")
    imp.add_argument("corrections", metavar="CORRECTIONS", help="the tool's export (file or folder)")
    imp.add_argument("new_out_uri", metavar="NEW_OUT_URI", help="where the reviewed output goes (a new folder)")
    imp.add_argument("--format", choices=("cvat", "labelstudio"), required=True, help="the tool CORRECTIONS come from")
    imp.add_argument(
        "--export",
        metavar="REVIEW_URI",
        help="the export folder (default: the one holding review.json in or above CORRECTIONS)",
    )
    imp.set_defaults(run=_cmd_review_import)


def _add_job_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config (any fsspec URI)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. workers.count=2")
    parser.add_argument("--config-json", metavar="JSON", help="a whole resolved config instead of CONFIG")
    parser.add_argument(
        "--force",
        action="store_true",
        help="run into an output root that holds another job's outputs: its done shards are kept as they are "
        "(their rows keep their own config_hash), the other shards run with this config, and job.json records "
        "this job with the old one in its history",
    )


def _add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the cluster's Ray dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")


def _add_job_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="label a corpus: run a job on an embedded Ray or a Ray cluster",
        description="Run CONFIG: every input shard not done yet becomes an output shard. Without ray.address "
        "an embedded Ray on 127.0.0.1 runs it; with one (e.g. ray.address=auto) it joins that cluster. "
        "Rerunning resumes: done shards are skipped. Exit 0: all done; 1: some shards or videos failed "
        "(listed); 2: a config or input error, nothing run.",
    )
    _add_job_config_arguments(run)
    run.set_defaults(run=_cmd_run)

    submit = commands.add_parser(
        "submit",
        help="run a job on a Ray cluster through the Ray Jobs API",
        description="Validate CONFIG here and submit `masklet run` with it to the cluster; prints the job id.",
    )
    _add_job_config_arguments(submit)
    _add_address_argument(submit)
    submit.add_argument("--working-dir", help="local directory (or URI) to ship as the job's working_dir")
    submit.add_argument("--pip", action="append", default=[], metavar="SPEC", help="pip requirement to install")
    submit.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable")
    submit.add_argument("--dry-run", action="store_true", help="print the entrypoint and runtime env, submit nothing")
    submit.add_argument("--wait", action="store_true", help="follow the logs; exit 0 if the job succeeded, else 1")
    submit.set_defaults(run=_cmd_submit)

    for name, handler, summary in (
        ("status", _cmd_status, "show a submitted job's status"),
        ("logs", _cmd_logs, "print a submitted job's output"),
        ("stop", _cmd_stop, "stop a submitted job"),
    ):
        sub = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        sub.add_argument("job_id", metavar="JOB_ID", help="the id `masklet submit` printed")
        _add_address_argument(sub)
        if name == "logs":
            sub.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        sub.set_defaults(run=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masklet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"masklet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth",
        help="write a synthetic video corpus with ground-truth masklets",
        description="Write deterministic synthetic videos (H.264) with SA-V ground truth as WebDataset shards.",
    )
    synth.add_argument("out_uri", metavar="OUT_URI", help="output folder (any fsspec URI)")
    synth.add_argument("--videos", type=int, required=True, help="number of videos")
    synth.add_argument("--per-shard", type=int, required=True, help="videos per tar shard")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    synth.add_argument("--width", type=int, default=320)
    synth.add_argument("--height", type=int, default=240)
    synth.add_argument("--frames", type=int, default=48, help="frames per video")
    synth.add_argument("--fps", type=float, default=24.0, help="frame rate of the videos")
    synth.set_defaults(run=_cmd_synth)

    config = commands.add_parser(
        "config",
        help="validate a job config and print it resolved",
        description="Validate CONFIG with its key=value overrides and print every setting, defaults included.",
    )
    config.add_argument("config", metavar="CONFIG", help="YAML config (any fsspec URI)")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. workers.count=2")
    config.set_defaults(run=_cmd_config)

    filt = commands.add_parser(
        "filter",
        help="apply new quality thresholds to an output, without the GPU",
        description="Re-decide kept / reject_reason of every masklet of IN_URI with new thresholds and write the "
        "shards to OUT_URI (same layout; the SA-V JSON holds the newly kept masklets). Thresholds start from "
        "IN_URI/job.json's filters when there is one, else the defaults.",
    )
    filt.add_argument("in_uri", metavar="IN_URI", help="an output root (any fsspec URI)")
    filt.add_argument("out_uri", metavar="OUT_URI", help="where the re-filtered shards go")
    filt.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="thresholds, e.g. min_stability_mean=0.9")
    filt.set_defaults(run=_cmd_filter)

    sample = commands.add_parser(
        "sample",
        help="keep the most-edited (or random) masklets of an output",
        description="Keep a subset of the kept masklets of IN_URI, across all its shards, and write the shards "
        "to OUT_URI; the others become kept=false, reject_reason=not_sampled. --by edits: most edits first "
        "(a person's edited frames where reviewed, else automatic edits; ties: higher stability_mean, then "
        "video_key, masklet_id); --by random: a seeded random subset.",
    )
    sample.add_argument("in_uri", metavar="IN_URI", help="an output root (any fsspec URI)")
    sample.add_argument("out_uri", metavar="OUT_URI", help="where the sampled shards go")
    sample.add_argument("--by", choices=("edits", "random"), default="edits", help="selection order (default edits)")
    size = sample.add_mutually_exclusive_group(required=True)
    size.add_argument("--top-k", type=int, help="keep this many masklets")
    size.add_argument("--fraction", type=float, help="keep this fraction of the kept masklets (rounded half up)")
    sample.add_argument("--seed", type=int, default=0, help="random seed for --by random (default 0)")
    sample.set_defaults(run=_cmd_sample)

    verify = commands.add_parser(
        "verify",
        help="check that every committed shard of an output still holds the files its marker lists",
        description="Compare each committed shard's files with its _done marker: present, the same size and, with "
        "--checksums, the same sha256 (reads every file). Exit 0: all intact; 1: damage found (listed). With "
        "--repair, the damaged shards' markers are removed, so rerunning the job labels them again.",
    )
    verify.add_argument("out_uri", metavar="OUT_URI", help="an output root (any fsspec URI)")
    verify.add_argument("--checksums", action="store_true", help="also compare every file's sha256 (reads it all)")
    verify.add_argument("--repair", action="store_true", help="remove the markers of the damaged shards")
    verify.set_defaults(run=_cmd_verify)
    _add_report_commands(commands)
    _add_review_commands(commands)
    _add_job_commands(commands)
    _add_eval_command(commands)
    _add_train_command(commands)
    return parser


def _suggest_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Exit 2 with a "did you mean" for a misspelt command, before argparse lists all of them."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    word = next((a for a in argv if not a.startswith("-")), None)
    if word is not None and word not in commands:
        close = difflib.get_close_matches(word, list(commands), n=1)
        if close:
            parser.error(f"unknown command {word!r} (did you mean {close[0]!r}?)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _suggest_command(parser, argv)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"masklet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""The `masklet` command line.

Exit codes: 0 success, 1 work that ran and failed in part, 2 a bad config or bad arguments
found before any work started.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from masklet import __version__
from masklet.config import ConfigError, dump_config, load_config

EXIT_OK = 0
EXIT_USAGE = 2


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
    print(f"# config hash: {config.content_hash()}")
    return EXIT_OK


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"masklet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""Listing a manifest of millions of rows: the driver's time and peak memory, split to files or held.

Writes a CSV manifest of N rows (uri, key and a metadata column, ~90 bytes a row) to a temp folder,
then lists it as a job's driver does, each run in a fresh process (peak RSS = `ru_maxrss`):
- `spill`: `list_shards(source, spill=OUT/_manifest)`, the rows of each shard streamed to a file;
- `held` (with --held): `list_shards(source)`, every row kept in the driver (what a job did before).

    python benchmarks/manifest_scale.py --rows 1000000 10000000 [--held]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from masklet.config import SourceConfig
from masklet.io.sources import list_shards


def write_manifest(path: str, rows: int) -> None:
    with open(path, "w") as f:
        f.write("uri,key,lang\n")
        for i in range(rows):
            f.write(f"s3://corpus/videos/{i // 1000:05d}/video-{i:09d}.mp4,video-{i:09d},en\n")


def worker(manifest: str, out: str | None, per_shard: int) -> dict[str, float]:
    source = SourceConfig(uri=manifest, format="manifest", videos_per_shard=per_shard)
    start = time.perf_counter()
    shards = list_shards(source, spill=out)
    seconds = time.perf_counter() - start
    return {
        "shards": len(shards),
        "seconds": seconds,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--held", action="store_true", help="also list with every row held in memory")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        manifest, out, per_shard = args.worker
        print(json.dumps(worker(manifest, out if out != "-" else None, int(per_shard))))
        return
    print(f"{'rows':>10} {'mode':>6} {'shards':>8} {'seconds':>8} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory(prefix="masklet-manifest-") as tmp:
        for rows in args.rows:
            manifest = os.path.join(tmp, f"list-{rows}.csv")
            write_manifest(manifest, rows)
            for mode in ("spill", "held") if args.held else ("spill",):
                out = os.path.join(tmp, f"out-{rows}", "_manifest") if mode == "spill" else "-"
                command = [sys.executable, __file__, "--worker", manifest, out, str(args.per_shard)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(f"{mode} of {rows} rows failed:\n{done.stderr[-3000:]}")
                r = json.loads(done.stdout.splitlines()[-1])
                print(f"{rows:>10} {mode:>6} {r['shards']:>8} {r['seconds']:>8.1f} {r['rss_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()

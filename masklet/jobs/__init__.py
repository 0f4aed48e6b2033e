"""Many videos on many machines: the Ray driver, worker actors, resume, progress and cluster submission.

- `driver`: `masklet run`: plan (inputs, done shards, job.json), a dynamic shard queue over worker
  actors with retries, progress and a summary.
- `worker`: the actor that loads the model once and turns input shards into output shards.
- `pipeline_registry`: the per-video pipeline contract and where a worker finds its pipeline.
- `cluster`: embedded Ray on 127.0.0.1 or a joined cluster; how many workers of what size.
- `manifest`: job.json and the job hash; `progress`: live line, log lines, progress.json;
  `metrics`: Ray metrics per worker; `submit`: the Ray Jobs API (`submit`, `status`, `logs`, `stop`).

Only this package (and the CLI) knows Ray exists; `cluster` and `pipeline_registry` do not import
it at module level, so the CLI can keep an embedded Ray on loopback before Ray is imported.
"""

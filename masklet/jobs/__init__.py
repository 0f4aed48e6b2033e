"""Many videos on many machines: the Ray driver, worker actors, resume, progress and cluster submission.

- `driver`: `masklet run`: plan (inputs, done shards, job.json), a dynamic shard queue over worker
  actors with retries, progress and a summary.
- `shard`: the work of one shard without Ray (`process_shard`, `label_video`): what the actor runs,
  and what a notebook, a test or a GPU benchmark calls directly.
- `worker`: the actor around it: the model loaded once, progress polls, metrics, liveness.
- `cluster`: embedded Ray on 127.0.0.1 or a joined cluster; how many workers of what size.
- `job_record`: job.json and the job hash; `progress`: live line, log lines, progress.json;
  `metrics`: Ray metrics per worker; `submit`: the Ray Jobs API (`submit`, `status`, `logs`, `stop`).

Only this package (and the CLI) knows Ray exists; `shard`, `progress`, `job_record` and `cluster` do not
import it at module level (`cluster` imports it inside its functions, so the CLI can keep an embedded
Ray on loopback before Ray is imported).
"""

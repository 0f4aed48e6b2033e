"""What happens to one video between decoded frames and masklets: seed, track, score, filter.

Nothing here touches Ray or storage (that is `masklet.jobs` and `masklet.io`): a pipeline takes frames
and a model and returns masks and scores, so it runs the same in a test, a notebook and a worker.

- `automask`: automatic mask generation on one frame (SAM's grid-of-points prompting, filtered by
  predicted IoU, stability and box NMS), the seeds of automatic masklets.
- `grids`, `nms`, `mask_ops`: the geometry it is built from (point grids and crops, box NMS,
  stability score, boxes of masks, small-region clean-up).
"""

"""See what a job produced, and judge it: a self-contained HTML report of any output root, local or remote.

`data` reads the root through masklet.io.outputs (summary columns only, never the RLE of every
masklet), `stats` turns rows into the funnel, histograms (with the filter's threshold lines),
throughput and drop reasons, `plots` draws them with matplotlib (Agg), `lookfirst` lists the kept
masklets most likely to be wrong by masklet.pipelines.doubt and picks the videos to show from them,
`overlays` decodes only the annotated frames of those videos (downscaled, encoded once as WebP) with
their masklets' masks as RLE, `viewer` is the page's plain-JavaScript viewer of them (scrubber, raw
and overlay, fill or outline, opacity, a checkbox per masklet, large tiles of the dropped ones), and
`html` puts everything in one file: no server, no internet.
"""

from masklet.report.build import write_report, write_show

__all__ = ["write_report", "write_show"]

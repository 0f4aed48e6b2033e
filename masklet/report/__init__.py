"""See what a job produced: a self-contained HTML report of any output root, local or remote.

`data` reads the root through masklet.io.outputs (summary columns only, never the RLE of every
masklet), `stats` turns rows into the funnel, histograms and throughput, `plots` draws them with
matplotlib (Agg), `overlays` decodes only the annotated frames of a few videos and paints their
masklets into an animated WebP, and `html` puts everything in one file with inlined images.
"""

from masklet.report.build import write_report, write_show

__all__ = ["write_report", "write_show"]

"""Human review of an output's masklets: choose what a person should look at, export it for CVAT and
Label Studio, and import their corrections into a new output root (docs/review.md).

- `export.py`: `masklet review export`: the selection (masklet.pipelines.doubt's ranking, top-k or a
  fraction, per-video caps) and the files the tools read, with the frames.
- `corrections.py`: `masklet review import`: the tools' exports read back, checked whole, and written as
  a new output with per-masklet human edits and review verdicts.
- `manifest.py`: review.json, what an export holds; `frames.py`: the frames of an output's video.
- `formats/cvat.py`, `formats/labelstudio.py`: the two tools' files and mask encodings.

Reads and writes outputs through masklet.io only; never imports masklet.jobs or Ray.
"""

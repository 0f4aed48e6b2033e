"""masklet: an open data engine for video segmentation with the SAM 2 memory model.

`masklet.Labeler` labels videos from Python (masklet.api); `masklet run` / `masklet submit` run the
same pipelines as jobs over a corpus. Importing masklet loads neither torch nor Ray: the API is
imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Labeler", "Masklets", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Labeler", "Masklets"):
        from masklet import api

        return getattr(api, name)
    raise AttributeError(f"module 'masklet' has no attribute {name!r}")

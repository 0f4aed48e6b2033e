"""One self-contained HTML page: images inlined as data URIs, no script or style from elsewhere.

The page's base script marks `<body data-images>` with `ok N` or `broken K of N` once it has
loaded, so a person (and the browser test) sees at once whether every image decoded; a page may
add its own style and script (the report's video viewer), inlined too.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } pre { background: #f7f7f7; padding: .6em; overflow: auto; font-size: .85em; }
.video { border: 1px solid #ddd; border-radius: 6px; padding: .2em 1em 1em; margin: 1em 0; }
.problem { color: #b00020; } .muted { color: #666; }
"""

SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).length;
  document.body.dataset.images = broken ? `broken ${broken} of ${images.length}` : `ok ${images.length}`;
});
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def image(data: bytes, mime: str, alt: str) -> str:
    """An <img> whose bytes are inside the page."""
    return f'<img src="data:{mime};base64,{base64.b64encode(data).decode()}" alt="{esc(alt)}">'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{esc(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, *, style: str = "", script: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title>"
        f"<style>{STYLE}{style}</style><script>{SCRIPT}</script>"
        f"{f'<script>{script}</script>' if script else ''}</head>\n<body>\n{body}\n</body></html>\n"
    )

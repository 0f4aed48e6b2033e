"""The page's video viewer: the HTML of a video's viewer and dropped tiles, and the plain script that draws them.

A video's data (frames as WebP data URIs, each masklet's masks as COCO RLE strings at the stored
frame size, colours) sits in a `<script type="application/json">` beside its viewer. The script
decodes a frame only when it is shown, decodes the RLE of the masklets on it, and composes the
overlay on a canvas: fill (with an opacity) or outline only, the masklets ticked in the list, their
ids at each mask's interior point (the pixel farthest from its border, clear of labels placed
before; one with no such place is named only in the list). Nothing is fetched: the page stays one file.

The script publishes `window.masklet` (the viewers by video key, and `ready`, a promise of the
first draw of every viewer and tile) and sets `<body data-viewers>` to `ready N` or `failed: ...`,
which the browser test reads.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from masklet.report.html import esc
from masklet.report.overlays import View

LABEL_BOX = (18, 28)  # (height, width) of an id label's box in CSS pixels, as the script draws it

STYLE = """
.viewer { outline: none; }
.viewer .controls { display: flex; flex-wrap: wrap; gap: .4em 1em; align-items: center; margin: .4em 0; }
.viewer .controls button { min-width: 2.4em; }
.viewer .scrub { flex: 1 1 18em; }
.viewer .stage { display: flex; gap: 8px; flex-wrap: wrap; }
.viewer canvas, .tile canvas { background: #111; image-rendering: auto; display: block; }
.viewer .stage figure { margin: 0; } .viewer .stage figcaption { font-size: .8em; color: #666; }
.viewer[data-layout=overlay] .raw-fig, .viewer[data-layout=raw] .overlay-fig { display: none; }
.swatch { display: inline-block; width: .9em; height: .9em; vertical-align: middle; border-radius: 2px;
  margin-right: .3em; }
table.masklets tr.focus td { background: #fff3b0; } table.masklets tr.dropped td { color: #777; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { margin: 0; border: 1px solid #ddd; padding: 4px; }
.tile figcaption { font-size: .85em; max-width: 480px; } .reason { color: #b00020; }
.lookfirst { display: grid; grid-template-columns: repeat(auto-fill, minmax(22em, 1fr)); gap: 0 1.5em; }
.lookfirst ol { padding-left: 1.6em; margin: .3em 0 .8em; } .lookfirst li { margin: .15em 0; }
nav.toc a { margin-right: .8em; }
"""

SCRIPT = r"""
"use strict";
(() => {
  const viewers = {};
  const started = [];

  // COCO compressed RLE (pycocotools' string format) -> column-major 0/1 bytes of h*w pixels
  function decodeRle(s, n) {
    const counts = [];
    for (let p = 0; p < s.length;) {
      let x = 0, k = 0, more = 1;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20; p++; k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    const out = new Uint8Array(n);
    let pos = 0, on = 0;
    for (const c of counts) { if (on) out.fill(1, pos, pos + c); pos += c; on ^= 1; }
    return out;
  }

  // pixels of `mask` (row-major W*H) within `width` of its border; the frame's border counts
  function edge(mask, W, H, width) {
    let inner = mask;
    for (let i = 0; i < width; i++) {
      const next = new Uint8Array(W * H);
      for (let y = 1; y < H - 1; y++) for (let x = 1; x < W - 1; x++) {
        const j = y * W + x;
        next[j] = inner[j] & inner[j - 1] & inner[j + 1] & inner[j - W] & inner[j + W];
      }
      inner = next;
    }
    const out = new Uint8Array(W * H);
    for (let j = 0; j < W * H; j++) out[j] = mask[j] & (inner[j] ^ 1);
    return out;
  }

  // the pixels just outside `mask` (4-neighbours), to darken around an outline
  function ring(mask, W, H) {
    const out = new Uint8Array(W * H);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const j = y * W + x;
      if (mask[j]) continue;
      out[j] = (x > 0 && mask[j - 1]) | (x < W - 1 && mask[j + 1])
        | (y > 0 && mask[j - W]) | (y < H - 1 && mask[j + W]);
    }
    return out;
  }

  // taxicab distance to the nearest pixel outside the mask (outside the frame counts as outside)
  function distance(mask, W, H) {
    const d = new Int32Array(W * H);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const j = y * W + x;
      if (!mask[j]) continue;
      d[j] = 1 + Math.min(y > 0 ? d[j - W] : 0, x > 0 ? d[j - 1] : 0);
    }
    for (let y = H - 1; y >= 0; y--) for (let x = W - 1; x >= 0; x--) {
      const j = y * W + x;
      if (!mask[j]) continue;
      d[j] = Math.min(d[j], 1 + Math.min(y < H - 1 ? d[j + W] : 0, x < W - 1 ? d[j + 1] : 0));
    }
    return d;
  }

  // labels: each at its mask's pixel farthest from the border whose box stays on the frame and clear
  // of the boxes placed before (the same rule as masklet.report.overlays.label_points)
  function placeLabels(masks, W, H, bh, bw) {
    const placed = [];
    for (const { id, mask } of masks) {
      const d = distance(mask, W, H);
      let best = -1, bx = 0, by = 0;
      for (let y = bh >> 1; y < H - (bh >> 1); y++) for (let x = bw >> 1; x < W - (bw >> 1); x++) {
        const j = y * W + x;
        if (!mask[j] || d[j] <= best) continue;
        if (placed.some((p) => Math.abs(p.y - y) < bh && Math.abs(p.x - x) < bw)) continue;
        best = d[j]; bx = x; by = y;
      }
      if (best >= 0) placed.push({ id, x: bx, y: by });
    }
    return placed;
  }

  function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }

  class Video {
    constructor(root, data) {
      this.root = root;
      this.data = data;
      this.W = data.display[1]; this.H = data.display[0];
      this.position = 0;
      this.images = [];
      this.masks = new Map();  // `${id}:${position}` -> display-size mask
      this.focus = null;
      this.timer = null;
      this.labels = [];
      this.byId = new Map(data.masklets.map((m) => [m.id, m]));
      const q = (s) => root.querySelector(s);
      this.overlay = q("canvas.overlay"); this.raw = q("canvas.raw");
      this.scrub = q("input.scrub"); this.label = q(".frame-label"); this.playButton = q("button.play");
      this.opacity = q("input.opacity"); this.showLabels = q("input.labels");
      this.rowMap = Array.from({ length: this.H }, (_, y) => Math.floor(y * data.height / this.H));
      this.colMap = Array.from({ length: this.W }, (_, x) => Math.floor(x * data.width / this.W));
      this.scrub.addEventListener("input", () => this.seek(+this.scrub.value));
      q("button.prev").addEventListener("click", () => this.step(-1));
      q("button.next").addEventListener("click", () => this.step(1));
      this.playButton.addEventListener("click", () => this.toggle());
      q("select.layout").addEventListener("change", (e) => { root.dataset.layout = e.target.value; });
      root.querySelectorAll("input.mode").forEach((r) => r.addEventListener("change", () => {
        this.opacity.disabled = this.mode() === "outline";
        this.draw();
      }));
      this.opacity.addEventListener("input", () => this.draw());
      this.showLabels.addEventListener("change", () => this.draw());
      root.querySelectorAll("input.show").forEach((c) => c.addEventListener("change", () => this.draw()));
      root.querySelectorAll("button.all, button.none, button.kept").forEach((b) => b.addEventListener("click", () => {
        root.querySelectorAll("input.show").forEach((c) => {
          const m = this.byId.get(+c.dataset.masklet);
          c.checked = b.classList.contains("all") || (b.classList.contains("kept") && m.kept);
        });
        this.draw();
      }));
      root.addEventListener("keydown", (e) => {
        if (e.target !== root && e.target !== this.scrub) return;  // other controls keep their own keys
        if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
          e.preventDefault();
          this.step(e.key === "ArrowLeft" ? -1 : 1);
        } else if (e.key === " ") {
          e.preventDefault();
          this.toggle();
        }
      });
    }

    mode() { return this.root.querySelector("input.mode:checked").value; }
    shown() {
      return Array.from(this.root.querySelectorAll("input.show:checked"), (c) => +c.dataset.masklet);
    }

    image(position) {
      if (!this.images[position]) {
        const img = new Image();
        img.src = this.data.images[position];
        this.images[position] = img.decode().then(() => img);
      }
      return this.images[position];
    }

    mask(id, position) {
      const key = `${id}:${position}`;
      if (!this.masks.has(key)) {
        const counts = this.byId.get(id).rle[position];
        let out = null;
        if (counts) {
          const h = this.data.height, small = decodeRle(counts, h * this.data.width);
          out = new Uint8Array(this.W * this.H);
          let any = 0;
          for (let x = 0; x < this.W; x++) {
            const base = this.colMap[x] * h;
            for (let y = 0; y < this.H; y++) {
              const v = small[base + this.rowMap[y]];
              out[y * this.W + x] = v;
              any |= v;
            }
          }
          if (!any) out = null;
        }
        if (this.masks.size > 64) this.masks.clear();  // a frame's worth: masks are W*H bytes each
        this.masks.set(key, out);
      }
      return this.masks.get(key);
    }

    async draw() {
      const position = this.position, token = (this.token = (this.token || 0) + 1);
      const img = await this.image(position);
      if (token !== this.token) return;
      const { W, H } = this;
      this.raw.getContext("2d").drawImage(img, 0, 0, W, H);
      const ctx = this.overlay.getContext("2d");
      ctx.drawImage(img, 0, 0, W, H);
      const frame = ctx.getImageData(0, 0, W, H), px = frame.data;
      const outline = this.mode() === "outline", alpha = +this.opacity.value / 100;
      const masks = [];
      for (const id of this.shown()) {
        const mask = this.mask(id, position);
        if (mask) masks.push({ id, mask });
      }
      for (const { id, mask } of masks) {
        const c = rgb(this.byId.get(id).color);
        const width = (outline ? 2 : 1) + (id === this.focus ? 1 : 0);
        if (!outline && alpha > 0) {
          for (let j = 0; j < W * H; j++) {
            if (mask[j]) for (let k = 0; k < 3; k++) px[4 * j + k] = px[4 * j + k] * (1 - alpha) + c[k] * alpha;
          }
        }
        if (outline) {
          const around = ring(mask, W, H);
          for (let j = 0; j < W * H; j++) if (around[j]) for (let k = 0; k < 3; k++) px[4 * j + k] *= 0.3;
        }
        const e = edge(mask, W, H, width);
        for (let j = 0; j < W * H; j++) if (e[j]) for (let k = 0; k < 3; k++) px[4 * j + k] = c[k];
      }
      ctx.putImageData(frame, 0, 0);
      const [bh, bw] = this.data.label_box;
      this.labels = this.showLabels.checked ? placeLabels(masks, W, H, bh, bw) : [];
      ctx.font = "bold 13px system-ui, sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
      for (const { id, x, y } of this.labels) {
        ctx.fillStyle = "rgba(0,0,0,.75)";
        ctx.fillRect(x - bw / 2 + 2, y - bh / 2 + 2, bw - 4, bh - 4);
        ctx.strokeStyle = this.byId.get(id).color; ctx.lineWidth = 2;
        ctx.strokeRect(x - bw / 2 + 2, y - bh / 2 + 2, bw - 4, bh - 4);
        ctx.fillStyle = "#fff"; ctx.fillText(String(id), x, y + 1);
      }
      const n = this.data.frames.length;
      this.label.textContent = `frame ${this.data.frames[position]} (${position + 1} of ${n})`;
      this.root.dataset.drawn = `${position}:${token}`;
    }

    seek(position) {
      const n = this.data.frames.length;
      this.position = Math.max(0, Math.min(n - 1, position));
      this.scrub.value = String(this.position);
      return this.draw();
    }
    step(delta) { this.pause(); return this.seek(this.position + delta); }
    pause() { clearInterval(this.timer); this.timer = null; this.playButton.textContent = "\u25b6 play"; }
    toggle() {
      if (this.timer) return this.pause();
      this.playButton.textContent = "\u275a\u275a pause";
      this.timer = setInterval(() => this.seek((this.position + 1) % this.data.frames.length), this.data.step_ms);
    }
    // a link from "where to look first" or a dropped tile: that frame, that masklet shown and marked
    jump(frameIndex, id) {
      this.pause();
      this.root.querySelectorAll("tr.focus").forEach((r) => r.classList.remove("focus"));
      this.focus = id;
      const box = this.root.querySelector(`input.show[data-masklet="${id}"]`);
      if (box) { box.checked = true; box.closest("tr").classList.add("focus"); }
      const position = this.data.frames.indexOf(frameIndex);
      return this.seek(position < 0 ? 0 : position);
    }

    async drawTile(figure) {
      const id = +figure.dataset.masklet, position = +figure.dataset.position;
      const other = figure.dataset.other ? +figure.dataset.other : null;
      const canvas = figure.querySelector("canvas"), ctx = canvas.getContext("2d");
      const { W, H } = this;
      ctx.drawImage(await this.image(position), 0, 0, W, H);
      const frame = ctx.getImageData(0, 0, W, H), px = frame.data;
      const paint = (mask, color, dashed) => {
        const c = rgb(color), around = ring(mask, W, H), e = edge(mask, W, H, 2);
        for (let j = 0; j < W * H; j++) {
          if (around[j]) for (let k = 0; k < 3; k++) px[4 * j + k] *= 0.3;
          const x = j % W, y = (j - x) / W;
          if (e[j] && (!dashed || ((x + y) >> 2) % 2 === 0)) for (let k = 0; k < 3; k++) px[4 * j + k] = c[k];
        }
      };
      const theirs = other === null || !this.byId.has(other) ? null : this.mask(other, position);
      if (theirs) paint(theirs, this.byId.get(other).color, true);
      const mine = this.mask(id, position);
      if (mine) paint(mine, this.byId.get(id).color, false);
      ctx.putImageData(frame, 0, 0);
    }

    start() {
      const tiles = Array.from(this.root.parentElement.querySelectorAll("figure.tile[data-masklet]"));
      return Promise.all([this.seek(0), ...tiles.map((t) => this.drawTile(t))]);
    }
  }

  document.addEventListener("click", (e) => {
    const a = e.target.closest("a.jump");
    if (!a) return;
    const v = viewers[a.dataset.video];
    if (v) v.jump(+a.dataset.frame, +a.dataset.masklet);
  });

  function init() {
    document.querySelectorAll(".viewer[data-video]").forEach((root) => {
      const data = JSON.parse(document.getElementById(root.dataset.data).textContent);
      const v = new Video(root, data);
      viewers[root.dataset.video] = v;
      started.push(v.start());
    });
    const ready = Promise.all(started);
    window.masklet = { viewers, ready, decodeRle, placeLabels };
    ready.then(
      () => { document.body.dataset.viewers = `ready ${started.length}`; },
      (err) => { document.body.dataset.viewers = `failed: ${err}`; console.error("masklet viewer:", err); },
    );
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _json_script(element_id: str, doc: object) -> str:
    """JSON inside the page: `<` escaped, so no string in it can close the script element."""
    text = json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def viewer(
    index: int,
    video_key: str,
    view: View,
    masklets: Sequence[dict],
    palette: dict[int, str],
    columns: Sequence[tuple[str, str]],
    cells,
) -> str:
    """A video's viewer: controls, raw frame and overlay canvases, the masklet list with checkboxes.

    `masklets` are summary rows (kept ones first); kept masklets start shown, dropped ones hidden.
    `columns` / `cells(row)`: the statistics listed per masklet.
    """
    height, width = view.display
    data = {
        "frames": view.frame_indices,
        "images": [data_uri(b, "image/webp") for b in view.images],
        "height": view.height,
        "width": view.width,
        "display": [height, width],
        "step_ms": view.step_ms,
        "label_box": list(LABEL_BOX),
        "masklets": [
            {
                "id": m["masklet_id"],
                "color": palette[m["masklet_id"]],
                "kept": bool(m["kept"]),
                "rle": view.masks.get(m["masklet_id"], [""] * len(view.frame_indices)),
            }
            for m in masklets
        ],
    }
    n = len(view.frame_indices)
    data_id = f"view-data-{index}"
    rows = []
    for m in masklets:
        mid = m["masklet_id"]
        status = "kept" if m["kept"] else f"dropped: {m['reject_reason']}"
        box = (
            f'<input type=checkbox class=show data-masklet="{mid}"{" checked" if m["kept"] else ""} '
            f'aria-label="show masklet {mid}">'
        )
        cells_html = "".join(f"<td class=num>{esc(c)}</td>" for c in cells(m))
        rows.append(
            f'<tr data-masklet="{mid}"{"" if m["kept"] else " class=dropped"}><td>{box}</td>'
            f'<td><span class=swatch style="background:{palette[mid]}"></span>{mid}</td><td>{esc(status)}</td>'
            f"{cells_html}</tr>"
        )
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in [("show", ""), ("masklet", ""), ("status", ""), *columns])
    return (
        f'<div class=viewer tabindex=0 data-video="{esc(video_key)}" data-data="{data_id}" data-layout=both>'
        "<div class=controls>"
        '<button class=prev title="previous frame (left arrow)">&#9664;</button>'
        '<button class=play title="play / pause (space)">&#9654; play</button>'
        '<button class=next title="next frame (right arrow)">&#9654;</button>'
        f'<input type=range class=scrub min=0 max="{n - 1}" value=0 step=1 aria-label="frame">'
        f"<span class=frame-label>frame {view.frame_indices[0]} (1 of {n})</span>"
        "<span class=muted>keys: &larr; &rarr; step, space play / pause</span></div>"
        "<div class=controls>"
        "<label>view <select class=layout><option value=both selected>raw and overlay</option>"
        "<option value=overlay>overlay only</option><option value=raw>raw only</option></select></label>"
        f'<span>masks <label><input type=radio class=mode name="mode-{index}" value=fill checked> fill</label> '
        f'<label><input type=radio class=mode name="mode-{index}" value=outline> outline</label></span>'
        "<label>fill opacity <input type=range class=opacity min=0 max=100 value=40></label>"
        "<label><input type=checkbox class=labels checked> ids</label>"
        "<span>masklets <button class=kept>kept</button> <button class=all>all</button> "
        "<button class=none>none</button></span></div>"
        "<div class=stage>"
        f'<figure class=raw-fig><canvas class=raw width="{width}" height="{height}"></canvas>'
        "<figcaption>raw frame</figcaption></figure>"
        f'<figure class=overlay-fig><canvas class=overlay width="{width}" height="{height}"></canvas>'
        "<figcaption>masks of the ticked masklets</figcaption></figure></div>"
        f"<table class=masklets><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{_json_script(data_id, data)}</div>"
    )


def tiles(video_key: str, view: View, dropped: Sequence[dict], palette: dict[int, str], captions) -> str:
    """Large tiles of dropped masklets: the frame where each is largest, its region outlined (a duplicate's
    kept original dashed), its reason. `dropped`: rows with `position` (into the view) or None."""
    height, width = view.display
    figures = []
    for m in dropped:
        mid = m["masklet_id"]
        caption = captions(m)
        if m["position"] is None:
            figures.append(f"<figure class=tile><figcaption>{caption}</figcaption></figure>")
            continue
        other = "" if m.get("other") is None else f' data-other="{m["other"]}"'
        figures.append(
            f'<figure class=tile data-masklet="{mid}" data-position="{m["position"]}"{other}>'
            f'<canvas width="{width}" height="{height}" aria-label="dropped masklet {mid} of {esc(video_key)}">'
            f"</canvas><figcaption>{caption}</figcaption></figure>"
        )
    return f"<div class=tiles>{''.join(figures)}</div>"

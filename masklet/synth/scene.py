"""Procedural scenes with exact ground truth, to test a video segmenter where the answer is known.

A scene is drawn from (seed, video index) alone, so any video of a corpus can be regenerated on its
own. Each scene plans the events a tracker has to survive: an object that leaves the frame and comes
back, an object that enters after the first frame, a smaller object passing in front of a larger one,
strong scale change and rotation, all over a textured background that pans. Frames are rendered in
numpy, back to front; the renderer reports both the visible mask of each object (what SA-V annotates:
pixels hidden by an object in front are excluded) and its amodal mask (the whole shape in the frame).
The events recorded per video are measured on those masks, not taken from the plan.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

SHAPES = ("ellipse", "rectangle", "polygon", "blob")
TEXTURES = ("stripes", "checks", "blobs", "gradient")
# Object radius as a fraction of the short side of the frame.
SIZE_CLASSES = {"small": (0.07, 0.11), "medium": (0.13, 0.2), "large": (0.24, 0.32)}
# Events measured per object; all but "fully_occluded" are also planned into every long enough video.
EVENTS = ("late_entry", "exit_reenter", "occluded", "fully_occluded", "scale_change", "rotation")
SCALE_CHANGE_RATIO = 1.5  # max/min scale over the video from which a scale change counts as an event
ROTATION_RAD = 0.5  # total rotation from which rotation counts as an event
MIN_RADIUS_PX = 2.5


@dataclass(frozen=True)
class Frame:
    """One rendered frame: RGB uint8 [H, W, 3]; visible and amodal bool masks [N, H, W]."""

    rgb: np.ndarray
    visible: np.ndarray
    amodal: np.ndarray


@dataclass(frozen=True)
class Shape:
    """A shape inside the unit disk of its local frame, so radius * scale bounds it in pixels."""

    kind: str
    params: tuple[float, ...]

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        if self.kind == "ellipse":
            (aspect,) = self.params
            return u * u + (v / aspect) ** 2 <= 1.0
        if self.kind == "rectangle":
            (half_diag_angle,) = self.params
            return (np.abs(u) <= np.cos(half_diag_angle)) & (np.abs(v) <= np.sin(half_diag_angle))
        r = np.hypot(u, v)
        theta = np.arctan2(v, u)
        if self.kind == "polygon":
            (sides,) = self.params
            wedge = 2 * np.pi / sides
            return r * np.cos(np.mod(theta, wedge) - wedge / 2) <= np.cos(wedge / 2)
        base, *harmonics = self.params  # blob: (base, order, amplitude, phase, ...)
        edge = np.full_like(theta, base)
        for order, amplitude, phase in zip(harmonics[::3], harmonics[1::3], harmonics[2::3], strict=True):
            edge += amplitude * np.cos(order * theta + phase)
        return r <= edge


@dataclass(frozen=True)
class Texture:
    """A two-colour pattern fixed to the object's local frame, so it moves, scales and turns with it."""

    kind: str
    colors: np.ndarray  # [2, 3] float, 0..255
    direction: float
    period: float  # in local units (1 = radius)
    noise: np.ndarray  # lattice for the "blobs" pattern

    def paint(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        along = u * np.cos(self.direction) + v * np.sin(self.direction)
        if self.kind == "stripes":
            weight = (np.sin(2 * np.pi * along / self.period) > 0).astype(np.float32)
        elif self.kind == "checks":
            cells = np.floor(u / self.period) + np.floor(v / self.period)
            weight = np.mod(cells, 2).astype(np.float32)
        elif self.kind == "blobs":
            n = self.noise.shape[0] - 1
            field = _value_noise(self.noise, (v + 1) * n / 2, (u + 1) * n / 2)
            weight = np.clip((field - 0.35) / 0.3, 0.0, 1.0)
        else:  # gradient
            weight = np.clip(0.5 + 0.5 * along, 0.0, 1.0)
        weight = weight[..., None]
        return self.colors[0] * (1 - weight) + self.colors[1] * weight


@dataclass(frozen=True)
class SceneObject:
    """One object and its planned path; `planned` names the events the plan aims for."""

    id: int
    shape: Shape
    texture: Texture
    size_class: str
    radius: float
    depth: int  # 0 is the back
    planned: tuple[str, ...]
    cx: np.ndarray  # [T] pixel coordinates of the centre
    cy: np.ndarray
    scale: np.ndarray  # [T]
    angle: np.ndarray  # [T] radians

    def describe(self) -> dict:
        return {
            "id": self.id,
            "shape": self.shape.kind,
            "texture": self.texture.kind,
            "size_class": self.size_class,
            "radius_px": round(self.radius, 3),
            "depth": self.depth,
            "planned": list(self.planned),
            "scale_range": [round(float(self.scale.min()), 4), round(float(self.scale.max()), 4)],
        }


@dataclass(frozen=True)
class Background:
    """Two octaves of lattice noise in world coordinates, seen through a window that pans."""

    colors: np.ndarray  # [2, 3] float, 0..255
    coarse: np.ndarray
    fine: np.ndarray
    cells: tuple[float, float]
    pan: np.ndarray  # [T, 2] world offset (x, y) of the frame's corner

    def render(self, t: int, height: int, width: int) -> np.ndarray:
        ys = (np.arange(height, dtype=np.float32) + self.pan[t, 1])[:, None]
        xs = (np.arange(width, dtype=np.float32) + self.pan[t, 0])[None, :]
        field = 0.65 * _value_noise(self.coarse, ys / self.cells[0], xs / self.cells[0])
        field += 0.35 * _value_noise(self.fine, ys / self.cells[1], xs / self.cells[1])
        weight = field[..., None]
        return self.colors[0] * (1 - weight) + self.colors[1] * weight


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    num_frames: int
    background: Background
    objects: tuple[SceneObject, ...]

    def render(self, t: int) -> Frame:
        """Draw frame t back to front; an object's visible mask is what no object in front covers."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside 0..{self.num_frames - 1}")
        h, w = self.height, self.width
        rgb = self.background.render(t, h, w)
        amodal = np.zeros((len(self.objects), h, w), dtype=bool)
        for obj in sorted(self.objects, key=lambda o: o.depth):
            extent = obj.radius * obj.scale[t]
            x0, x1 = max(0, int(np.floor(obj.cx[t] - extent))), min(w, int(np.ceil(obj.cx[t] + extent)) + 1)
            y0, y1 = max(0, int(np.floor(obj.cy[t] - extent))), min(h, int(np.ceil(obj.cy[t] + extent)) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            dx = (np.arange(x0, x1) + 0.5 - obj.cx[t])[None, :] / extent
            dy = (np.arange(y0, y1) + 0.5 - obj.cy[t])[:, None] / extent
            cos, sin = np.cos(obj.angle[t]), np.sin(obj.angle[t])
            u, v = dx * cos + dy * sin, dy * cos - dx * sin
            inside = obj.shape.inside(u, v)
            amodal[obj.id, y0:y1, x0:x1] = inside
            rgb[y0:y1, x0:x1][inside] = obj.texture.paint(u[inside], v[inside])
        visible = np.zeros_like(amodal)
        covered = np.zeros((h, w), dtype=bool)
        for obj in sorted(self.objects, key=lambda o: -o.depth):
            visible[obj.id] = amodal[obj.id] & ~covered
            covered |= amodal[obj.id]
        rgb_u8 = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return Frame(rgb=rgb_u8, visible=visible, amodal=amodal)

    def events(self, amodal_area: np.ndarray, visible_area: np.ndarray) -> list[dict[str, bool]]:
        """Which events happened to each object, measured on per-frame mask areas [T, N]."""
        out = []
        for obj in self.objects:
            in_frame = amodal_area[:, obj.id] > 0
            seen = visible_area[:, obj.id] > 0
            first_in = int(np.argmax(in_frame)) if in_frame.any() else len(in_frame)
            rest = in_frame[first_in:]
            left = np.flatnonzero(~rest)
            out.append(
                {
                    "late_entry": bool(seen.any() and not seen[0]),
                    "exit_reenter": bool(left.size and rest[left[0] :].any()),
                    "occluded": bool((visible_area[:, obj.id] < amodal_area[:, obj.id]).any()),
                    "fully_occluded": bool((in_frame & ~seen).any()),
                    "scale_change": bool(obj.scale.max() / obj.scale.min() >= SCALE_CHANGE_RATIO),
                    "rotation": bool(np.ptp(obj.angle) >= ROTATION_RAD),
                }
            )
        return out


def make_scene(seed: int, index: int, *, width: int, height: int, frames: int) -> Scene:
    """The scene of video `index` of the corpus drawn with `seed`; depends on nothing else."""
    if min(width, height, frames) < 1:
        raise ValueError(f"scene needs positive width, height and frames, got {width}x{height}x{frames}")
    rng = np.random.default_rng([seed, index])
    return _Planner(rng, width, height, frames).scene()


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3 - 2 * x)


def _value_noise(lattice: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Lattice noise in [0, 1] at continuous lattice coordinates, wrapping with the lattice's period."""
    gh, gw = lattice.shape
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = _smoothstep(y - y0), _smoothstep(x - x0)
    i0, j0 = y0.astype(np.int64) % gh, x0.astype(np.int64) % gw
    i1, j1 = (i0 + 1) % gh, (j0 + 1) % gw
    top = lattice[i0, j0] * (1 - fx) + lattice[i0, j1] * fx
    bottom = lattice[i1, j0] * (1 - fx) + lattice[i1, j1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _ease(keys: dict[int, np.ndarray], frames: int) -> np.ndarray:
    """Values at frames 0..T-1 through keyframes with ease-in-out: smooth motion that hits every
    keyframe exactly, so a planned position (say, fully outside the frame) really occurs."""
    times = np.array(sorted(keys), dtype=np.float64)
    values = np.stack([np.atleast_1d(keys[int(k)]) for k in times]).astype(np.float64)
    if len(times) == 1:
        return np.repeat(values, frames, axis=0)
    t = np.arange(frames, dtype=np.float64)
    seg = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    s = np.clip((t - times[seg]) / (times[seg + 1] - times[seg]), 0.0, 1.0)
    return values[seg] + (values[seg + 1] - values[seg]) * _smoothstep(s)[:, None]


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32) * 255


class _Planner:
    """Draws one scenario. Objects are at least 3 (up to 6 on larger frames), each with its own hue,
    and the events are spread over them: exit and re-entry, late entry, a crossing where the smaller
    object passes in front, one strong scale change and one strong rotation. Events that need more
    frames than the video has (re-entry needs 3, late entry 2) are left out of the plan."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, frames: int) -> None:
        self.rng, self.w, self.h, self.t = rng, width, height, frames

    def scene(self) -> Scene:
        rng = self.rng
        n_max = min(6, 3 + int(np.sqrt(self.w * self.h)) // 64)
        n = int(rng.integers(3, n_max + 1))
        plans = self._roles(n)
        short = min(self.w, self.h)
        classes = [list(SIZE_CLASSES)[i % 3] for i in rng.permutation(n)]
        radii = [max(MIN_RADIUS_PX, rng.uniform(*SIZE_CLASSES[c]) * short) for c in classes]
        occluder = next(i for i, p in enumerate(plans) if "occluder" in p)
        occluded = next(i for i, p in enumerate(plans) if "occluded" in p)
        if radii[occluder] >= radii[occluded]:  # the smaller one crosses in front, covering it in part
            radii[occluder], radii[occluded] = radii[occluded], radii[occluder]
            classes[occluder], classes[occluded] = classes[occluded], classes[occluder]
        # Larger objects sit further back, so an object is rarely hidden in full by accident.
        order = sorted(range(n), key=lambda i: (-radii[i], i == occluder, i))
        depth = {i: d for d, i in enumerate(order)}
        scales = [self._scale(scale_change="scale_change" in p) for p in plans]
        angles = [self._angle(rotation="rotation" in p) for p in plans]
        paths: list[np.ndarray | None] = [None] * n
        for i in sorted(range(n), key=lambda i: "occluder" in plans[i]):  # the occluder follows the other
            extent = radii[i] * float(scales[i].max())
            target = None
            if "occluder" in plans[i]:
                target = paths[occluded], radii[occluded] * 0.35
            paths[i] = self._path(plans[i], extent, target)
        hue0 = rng.random()
        shapes = rng.permutation(len(SHAPES))
        textures = rng.permutation(len(TEXTURES))
        hue_slots = rng.permutation(n)
        objects = []
        for i in range(n):
            hue = hue0 + (hue_slots[i] + rng.uniform(-0.15, 0.15)) / n
            objects.append(
                SceneObject(
                    id=i,
                    shape=self._shape(SHAPES[shapes[i % len(SHAPES)]]),
                    texture=self._texture(TEXTURES[textures[i % len(TEXTURES)]], hue, radii[i]),
                    size_class=classes[i],
                    radius=float(radii[i]),
                    depth=depth[i],
                    planned=plans[i],
                    cx=paths[i][:, 0],
                    cy=paths[i][:, 1],
                    scale=scales[i],
                    angle=angles[i],
                )
            )
        return Scene(self.w, self.h, self.t, self._background(hue0 + 0.5 / n), tuple(objects))

    def _roles(self, n: int) -> list[tuple[str, ...]]:
        roles: list[list[str]] = [[] for _ in range(n)]
        slots = [int(i) for i in self.rng.permutation(n)]
        exit_obj, late_obj, occluded_obj = slots[:3]
        if self.t >= 3:
            roles[exit_obj].append("exit_reenter")
        if self.t >= 2:
            roles[late_obj].append("late_entry")
        roles[occluded_obj].append("occluded")
        roles[slots[3] if n > 3 else late_obj].append("occluder")
        roles[int(self.rng.integers(n))].append("scale_change")
        roles[int(self.rng.integers(n))].append("rotation")
        return [tuple(r) for r in roles]

    def _scale(self, *, scale_change: bool) -> np.ndarray:
        rng = self.rng
        ratio = rng.uniform(1.6, 2.2) if scale_change else rng.uniform(1.0, 1.25)
        half = np.log(ratio) / 2 * (1 if rng.random() < 0.5 else -1)  # grow or shrink around scale 1
        return np.exp(_ease({0: -half, self.t - 1: half}, self.t)[:, 0])

    def _angle(self, *, rotation: bool) -> np.ndarray:
        rng = self.rng
        total = rng.uniform(1.0, 2.5) if rotation else rng.uniform(0.0, 0.4)
        total = total if rng.random() < 0.5 else -total
        start = rng.uniform(0, 2 * np.pi)
        return start + total * np.linspace(0.0, 1.0, self.t)

    def _inside(self, extent: float) -> np.ndarray:
        """A centre that keeps most of an object of this extent inside the frame."""
        margin = 0.8 * extent
        point = []
        for size in (self.w, self.h):
            lo, hi = min(margin, size / 2), max(size - margin, size / 2)
            point.append(self.rng.uniform(lo, hi))
        return np.array(point)

    def _outside(self, extent: float, near: np.ndarray | None = None) -> np.ndarray:
        """A centre from which no pixel of the object reaches the frame; beside `near` if given."""
        w, h = self.w, self.h
        gap = extent + 1.0
        if near is None:
            side = int(self.rng.integers(4))
        else:
            side = int(np.argmin([near[0], w - near[0], near[1], h - near[1]]))
        if side < 2:
            y = near[1] if near is not None else self.rng.uniform(0, h)
            return np.array([-gap if side == 0 else w + gap, y])
        x = near[0] if near is not None else self.rng.uniform(0, w)
        return np.array([x, -gap if side == 2 else h + gap])

    def _path(self, plan: tuple[str, ...], extent: float, target: tuple[np.ndarray, float] | None) -> np.ndarray:
        """Centre [T, 2] through keyframes that realise the plan."""
        last = self.t - 1
        keys: dict[int, np.ndarray] = {0: self._inside(extent), last: self._inside(extent)}
        if "exit_reenter" in plan:  # hold fully outside from 35% to 60% of the video
            out_from = max(1, int(0.35 * last))
            out_to = min(last - 1, max(out_from, int(np.ceil(0.6 * last))))
            keys[out_from] = keys[out_to] = self._outside(extent, near=keys[0])
        elif "late_entry" in plan:
            keys[0] = self._outside(extent)
            if last >= 3:
                keys[max(1, int(0.4 * last))] = self._inside(extent)
        elif last >= 4 and self.rng.random() < 0.5:
            keys[last // 2] = self._inside(extent)
        if target is not None:
            other, jitter = target
            when = max(1, int(np.ceil(0.7 * last))) if "late_entry" in plan else int(0.5 * last)
            keys = {k: p for k, p in keys.items() if k <= 0 or k >= last or abs(k - when) > 1}
            keys[when] = other[when] + self.rng.uniform(-jitter, jitter, size=2)
        return _ease(keys, self.t)

    def _shape(self, kind: str) -> Shape:
        rng = self.rng
        if kind == "ellipse":
            return Shape(kind, (rng.uniform(0.55, 1.0),))
        if kind == "rectangle":
            return Shape(kind, (rng.uniform(0.5, np.pi / 4),))
        if kind == "polygon":
            return Shape(kind, (float(rng.choice([3, 5, 6])),))
        orders = rng.choice([2, 3, 4, 5], size=3, replace=False)
        amplitudes = rng.uniform(0.04, 0.1, size=3)
        harmonics: list[float] = []
        for order, amplitude in zip(orders, amplitudes, strict=True):
            harmonics += [float(order), float(amplitude), rng.uniform(0, 2 * np.pi)]
        return Shape(kind, (1.0 - float(amplitudes.sum()), *harmonics))

    def _texture(self, kind: str, hue: float, radius: float) -> Texture:
        rng = self.rng
        colors = np.stack([_rgb(hue, 0.9, 0.95), _rgb(hue + 0.04, 0.75, 0.45)])
        min_period = (4.0 if kind == "stripes" else 2.0) / radius  # keep a pattern cell >= 2 px
        period = max(rng.uniform(0.35, 0.7) if kind == "stripes" else rng.uniform(0.3, 0.5), min_period)
        return Texture(kind, colors, rng.uniform(0, np.pi), period, rng.random((6, 6)).astype(np.float32))

    def _background(self, hue: float) -> Background:
        rng = self.rng
        short = min(self.w, self.h)
        speed = rng.uniform(0.3, 1.2) * max(1.0, short / 100)
        heading = rng.uniform(0, 2 * np.pi)
        t = np.arange(self.t)[:, None]
        drift = t * speed * np.array([np.cos(heading), np.sin(heading)])
        wobble = 0.15 * short * np.sin(t * rng.uniform(0.05, 0.15) + rng.uniform(0, 2 * np.pi, size=2))
        return Background(
            colors=np.stack([_rgb(hue, 0.15, 0.7), _rgb(hue + 0.1, 0.2, 0.3)]),
            coarse=rng.random((16, 16)).astype(np.float32),
            fine=rng.random((32, 32)).astype(np.float32),
            cells=(max(4.0, short / 4), max(2.0, short / 10)),
            pan=(drift + wobble).astype(np.float32),
        )

"""The report in a real browser: headless Chromium driven over the DevTools protocol (aiohttp's websocket).

The page must load with every image decoded, every video viewer drawn, and without a console message
of level error, an uncaught exception or a failed resource. Then it is used as a person would: the
scrubber moves frames, a checkbox hides a masklet, outline differs from fill, play advances and
pause stops, a "where to look first" link jumps to its video and frame; the RLE decoder and the
label placement of the page's script agree with Python's. Screenshots are kept in test-artifacts/
(report.png, the whole page; report-fill.png, report-outline.png, report-raw.png, report-hidden.png,
the viewer in each mode; report-dropped.png, a dropped tile). A control page with a broken image and
a console.error proves the check sees both. Without a `chromium` binary the tests are skipped, except
in CI (CI=true), where they fail.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image
from report_helpers import ANNOTATED, build_output

from masklet.io import rle
from masklet.io.outputs import read_shard
from masklet.report import write_report
from masklet.report.html import page
from masklet.report.overlays import label_points
from masklet.report.viewer import LABEL_BOX

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WIDTH = 1280
MAX_HEIGHT = 12000  # a screenshot taller than this is cut (Chromium limits texture sizes)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        why = "no `chromium` on PATH (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; in CI the browser test must run")
        pytest.skip(why)
    return found


class Page:
    """One tab over the DevTools protocol: calls by id, every event kept for later inspection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict] = []

    async def call(self, method: str, **params: object) -> dict:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        while True:
            message = await self._next()
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    async def wait_for(self, method: str) -> dict:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(await self._next())
        return next(e for e in self.events if e.get("method") == method)

    async def js(self, expression: str) -> object:
        """The value of `expression` (awaited when it is a promise); a thrown error fails the test."""
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def shot(self, selector: str, path: Path | None = None) -> np.ndarray:
        """A screenshot of the element `selector` as RGB pixels (and a PNG at `path`)."""
        box = await self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + scrollX, r.y + scrollY, r.width, r.height]; })()"
        )
        x, y, width, height = box
        clip = {"x": x, "y": y, "width": width, "height": height, "scale": 1}
        shot = await self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        if path is not None:
            path.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    async def _next(self) -> dict:
        message = await self.ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"DevTools connection ended: {message.type}")
        return json.loads(message.data)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads (Log entries of level error)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + params["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log ({params['entry']['source']}): {params['entry']['text']}")
        return found


@asynccontextmanager
async def browse(chromium: str, url: str, profile: Path) -> AsyncIterator[Page]:
    """`url` loaded in a fresh headless Chromium (window WIDTH x 900), its tab open for the caller."""
    process = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={WIDTH},900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None:
                raise RuntimeError(f"chromium exited with {process.returncode} before listening")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                tab = Page(ws)
                for domain in ("Runtime", "Log", "Page"):
                    await tab.call(f"{domain}.enable")
                await tab.call("Page.navigate", url=url)
                await tab.wait_for("Page.loadEventFired")
                yield tab
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def full_page(tab: Page, path: Path) -> None:
    metrics = await tab.call("Page.getLayoutMetrics")
    height = min(MAX_HEIGHT, int(metrics["cssContentSize"]["height"]))
    await tab.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False)
    shot = await tab.call("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    await tab.call("Emulation.clearDeviceMetricsOverride")


def changed(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels that differ between two screenshots of one element."""
    assert a.shape == b.shape
    return int((np.abs(a.astype(int) - b.astype(int)).sum(-1) > 30).sum())


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("browser")
    root = str(base / "out")
    build_output(root, str(base / "corpus"), write_video=False, missing_source=True)
    return Path(write_report(root, str(base / "report.html"))), root


def test_report_loads_and_its_viewer_works_in_chromium(chromium: str, report: tuple[Path, str], tmp_path: Path) -> None:
    path, root = report
    ARTIFACTS.mkdir(exist_ok=True)
    names = ("report", "report-fill", "report-outline", "report-raw", "report-hidden", "report-dropped")
    for name in names:
        (ARTIFACTS / f"{name}.png").unlink(missing_ok=True)
    shard = read_shard(root, "shard-000000")

    async def scenario() -> None:
        async with browse(chromium, path.as_uri(), tmp_path / "profile") as tab:
            await tab.js("window.masklet.ready")
            # 3 plots as <img>; 2 viewers (the third video's frames are gone, the fourth failed)
            assert await tab.js("document.body.dataset.images") == "ok 3"
            assert await tab.js("document.body.dataset.viewers") == "ready 2"
            keys = await tab.js("Object.keys(window.masklet.viewers)")
            assert len(keys) == 2
            key = keys[0]
            v = f"window.masklet.viewers[{json.dumps(key)}]"
            sel = f'.viewer[data-video="{key}"]'
            records = {m.masklet_id: m for m in shard.masklets if m.video_key == key}
            await full_page(tab, ARTIFACTS / "report.png")

            # the JS decoder reads the stored RLE strings as masklet.io.rle does
            for m in records.values():
                for counts in filter(None, m.rle):
                    got = await tab.js(
                        f"Array.from(window.masklet.decodeRle({json.dumps(counts)}, {m.height * m.width}))"
                    )
                    expected = rle.decode({"size": [m.height, m.width], "counts": counts}).T.reshape(-1)
                    assert np.array_equal(np.asarray(got, dtype=bool), expected)

            # the scrubber moves frames (both canvases change, the label follows)
            first = await tab.shot(f"{sel} canvas.overlay")
            raw_first = await tab.shot(f"{sel} canvas.raw")
            await tab.js(
                f"(() => {{ const s = document.querySelector('{sel} input.scrub'); s.value = 3;"
                f" s.dispatchEvent(new Event('input')); return {v}.draw(); }})()"
            )
            assert await tab.js(f"{v}.position") == 3
            assert await tab.js(f"document.querySelector('{sel} .frame-label').textContent") == (
                f"frame {ANNOTATED[3]} (4 of {len(ANNOTATED)})"
            )
            fill = await tab.shot(f"{sel} canvas.overlay", ARTIFACTS / "report-fill.png")
            assert changed(first, fill) > 100 and changed(raw_first, await tab.shot(f"{sel} canvas.raw")) > 100
            # step buttons
            await tab.js(f"document.querySelector('{sel} button.next').click(); {v}.draw()")
            assert await tab.js(f"{v}.position") == 4
            await tab.js(f"document.querySelector('{sel} button.prev').click(); {v}.draw()")
            assert await tab.js(f"{v}.position") == 3
            # and keys, once the viewer has the focus
            await tab.js(f"document.querySelector('{sel}').focus()")
            for kind in ("keyDown", "keyUp"):
                await tab.call(
                    "Input.dispatchKeyEvent", type=kind, key="ArrowRight", code="ArrowRight", windowsVirtualKeyCode=39
                )
            await tab.js(f"{v}.draw()")
            assert await tab.js(f"{v}.position") == 4
            await tab.js(f"{v}.seek(3)")

            # labels: each inside its own mask, no two boxes overlapping, placed as Python places them
            labels = await tab.js(f"{v}.labels")
            assert {label["id"] for label in labels} == {i for i, m in records.items() if m.kept and m.area[3] > 0}
            bh, bw = LABEL_BOX
            for i, a in enumerate(labels):
                for b in labels[i + 1 :]:
                    assert abs(a["x"] - b["x"]) >= bw or abs(a["y"] - b["y"]) >= bh, (a, b)
            height, width = await tab.js(f"[{v}.H, {v}.W]")
            masks = []
            for label in labels:
                m = records[label["id"]]
                full = rle.decode({"size": [m.height, m.width], "counts": m.rle[3]})
                mask = full[np.ix_(np.arange(height) * m.height // height, np.arange(width) * m.width // width)]
                assert mask[label["y"], label["x"]]
                masks.append((label["id"], mask))
            assert label_points(masks, LABEL_BOX) == {a["id"]: (a["x"], a["y"]) for a in labels}

            # a checkbox hides a masklet: its pixels change, the others' do not
            hide = labels[0]["id"]
            await tab.js(f"document.querySelector('{sel} input.show[data-masklet=\"{hide}\"]').click(); {v}.draw()")
            hidden = await tab.shot(f"{sel} canvas.overlay", ARTIFACTS / "report-hidden.png")
            assert changed(fill, hidden) > 50
            assert hide not in [label["id"] for label in await tab.js(f"{v}.labels")]
            await tab.js(f"document.querySelector('{sel} input.show[data-masklet=\"{hide}\"]').click(); {v}.draw()")
            assert changed(fill, await tab.shot(f"{sel} canvas.overlay")) == 0

            # outline differs from fill, and leaves the object's inside as the raw frame has it
            await tab.js(f"document.querySelector('{sel} input.mode[value=outline]').click(); {v}.draw()")
            outline = await tab.shot(f"{sel} canvas.overlay", ARTIFACTS / "report-outline.png")
            raw = await tab.shot(f"{sel} canvas.raw")
            assert changed(fill, outline) > 100
            assert changed(raw, outline) < changed(raw, fill)
            assert await tab.js(f"document.querySelector('{sel} input.opacity').disabled") is True
            await tab.js(f"document.querySelector('{sel} input.mode[value=fill]').click(); {v}.draw()")
            # opacity 0 with no ids: only the 1-pixel outlines differ from the raw frame
            await tab.js(
                f"(() => {{ const o = document.querySelector('{sel} input.opacity'); o.value = 0;"
                f" o.dispatchEvent(new Event('input')); document.querySelector('{sel} input.labels').click();"
                f" return {v}.draw(); }})()"
            )
            assert changed(raw, await tab.shot(f"{sel} canvas.overlay")) < changed(raw, fill)
            # the raw-only layout hides the overlay
            await tab.js(
                f"(() => {{ const s = document.querySelector('{sel} select.layout'); s.value = 'raw';"
                " s.dispatchEvent(new Event('change')); })()"
            )
            await tab.shot(f"{sel} .stage", ARTIFACTS / "report-raw.png")
            assert await tab.js(f"document.querySelector('{sel} canvas.overlay').offsetWidth") == 0

            # play advances, pause stops
            await tab.js(f"{v}.seek(0)")
            await tab.js(f"document.querySelector('{sel} button.play').click()")
            await asyncio.sleep(0.8)
            await tab.js(f"document.querySelector('{sel} button.play').click()")
            stopped = await tab.js(f"{v}.position")
            assert stopped > 0
            await asyncio.sleep(0.4)
            assert await tab.js(f"{v}.position") == stopped

            # a dropped masklet is drawn large, on the frame where it is largest, with its reason
            tile = f'section[id="video-{key}"] figure.tile[data-masklet]'
            assert await tab.js(f"document.querySelectorAll('{tile}').length") == sum(
                not m.kept for m in records.values()
            )
            tile_pixels = await tab.shot(f"{tile} canvas", ARTIFACTS / "report-dropped.png")
            assert tile_pixels.shape[1] >= 300 and tile_pixels.std() > 5
            captions = await tab.js(f"Array.from(document.querySelectorAll('{tile} figcaption'), c => c.textContent)")
            dropped = [m for m in records.values() if not m.kept]
            assert [c.split(" (")[0] for c in captions] == [
                f"masklet {m.masklet_id} {m.reject_reason}" for m in dropped
            ]

            # "where to look first" links jump to their video, at their frame, with their masklet shown
            links = await tab.js(
                "Array.from(document.querySelectorAll('a.jump'), a => [a.dataset.video, +a.dataset.frame,"
                " +a.dataset.masklet])"
            )
            assert links
            for n, (video, frame, masklet) in enumerate(links[:4]):
                await tab.js(f"document.querySelectorAll('a.jump')[{n}].click()")
                target = f"window.masklet.viewers[{json.dumps(video)}]"
                await tab.js(f"{target}.draw()")
                top = await tab.js(
                    f"document.getElementById({json.dumps('video-' + video)}).getBoundingClientRect().top"
                )
                assert abs(top) < 5, (video, top)
                assert await tab.js(f"{target}.data.frames[{target}.position]") == frame
                assert await tab.js(f"{target}.shown().includes({masklet})")
                assert await tab.js(f"{target}.focus") == masklet

            assert tab.problems() == []

    asyncio.run(asyncio.wait_for(scenario(), 120))
    for name in names:
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000, name


def test_browser_check_sees_broken_images_and_console_errors(chromium: str, tmp_path: Path) -> None:
    control = tmp_path / "control.html"
    control.write_text(page("control", '<img src="missing.png" alt="gone"><script>console.error("boom")</script>'))

    async def scenario() -> tuple[str, list[str]]:
        async with browse(chromium, control.as_uri(), tmp_path / "profile") as tab:
            return await tab.js("document.body.dataset.images || ''"), tab.problems()

    images, problems = asyncio.run(asyncio.wait_for(scenario(), 90))

    assert images == "broken 1 of 1"
    assert "console: boom" in problems
    assert any("ERR_FILE_NOT_FOUND" in p for p in problems), problems

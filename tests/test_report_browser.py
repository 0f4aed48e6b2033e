"""The report in a real browser: headless Chromium driven over the DevTools protocol (aiohttp's websocket).

The page must load with every image decoded and without a console message of level error, an
uncaught exception or a failed resource; the screenshot is kept in test-artifacts/report.png. A
control page with a broken image and a console.error proves the check sees both. Without a
`chromium` binary the test is skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from report_helpers import build_output

from masklet.report import write_report
from masklet.report.html import page

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


async def inspect(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> dict:
    """Load `url` headless; return the page's image verdict, image count and problems."""
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
                verdict = await tab.call("Runtime.evaluate", expression="document.body.dataset.images || ''")
                count = await tab.call("Runtime.evaluate", expression="document.images.length")
                if screenshot is not None:
                    metrics = await tab.call("Page.getLayoutMetrics")
                    height = min(MAX_HEIGHT, int(metrics["cssContentSize"]["height"]))
                    await tab.call(
                        "Emulation.setDeviceMetricsOverride",
                        width=WIDTH,
                        height=height,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    shot = await tab.call("Page.captureScreenshot", format="png")
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                return {
                    "images": verdict["result"]["value"],
                    "count": count["result"]["value"],
                    "problems": tab.problems(),
                }
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_report_loads_in_chromium_with_all_images(chromium: str, tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    build_output(root, str(tmp_path / "corpus"), write_video=False, missing_source=True)
    report = Path(write_report(root, str(tmp_path / "report.html")))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)

    result = asyncio.run(asyncio.wait_for(inspect(chromium, report.as_uri(), tmp_path / "profile", screenshot), 90))

    # 3 plots + 2 videos with frames x (animation + dropped strip)
    assert result == {"images": "ok 7", "count": 7, "problems": []}
    assert screenshot.stat().st_size > 10_000


def test_browser_check_sees_broken_images_and_console_errors(chromium: str, tmp_path: Path) -> None:
    control = tmp_path / "control.html"
    control.write_text(page("control", '<img src="missing.png" alt="gone"><script>console.error("boom")</script>'))

    result = asyncio.run(asyncio.wait_for(inspect(chromium, control.as_uri(), tmp_path / "profile"), 90))

    assert result["images"] == "broken 1 of 1"
    assert "console: boom" in result["problems"]
    assert any("ERR_FILE_NOT_FOUND" in p for p in result["problems"]), result["problems"]

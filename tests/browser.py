"""Open a local HTML file in headless Chromium and report what a reader's browser would see.

Chromium is driven over the DevTools protocol through `--remote-debugging-pipe` (JSON messages
on file descriptors 3 and 4, NUL-terminated), so nothing here needs a network port or a Python
package beyond the standard library. It is started with posix_spawn, which puts the pipes on
those descriptors without running Python code between fork and exec (safe with threads).
`inspect_page` collects console errors, uncaught exceptions, every network request, the size of
every image and SVG, the page's scroll width and a full-page screenshot.

As a script it writes the README's screenshot of a report:
    python tests/browser.py runs/demo/report.html docs/report.png
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
    "--hide-scrollbars", "--remote-debugging-pipe",
)
# The images of a page are checked once layout is done; this measures every <img> and <svg>.
MEASURE = """JSON.stringify({
  scrollWidth: document.documentElement.scrollWidth,
  scrollHeight: document.documentElement.scrollHeight,
  images: [...document.querySelectorAll('img, svg')].map(e => {
    const r = e.getBoundingClientRect();
    return {tag: e.tagName.toLowerCase(), alt: e.getAttribute('alt') || '',
            width: r.width, height: r.height,
            natural: e.tagName === 'IMG' ? e.naturalWidth * e.naturalHeight : null,
            complete: e.tagName === 'IMG' ? e.complete : true};
  }),
  scripts: document.scripts.length,
  title: document.title,
})"""


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM if set, else the first of the usual names on PATH."""
    if env := os.environ.get("CHROMIUM"):
        return env if shutil.which(env) else None
    return next((p for name in CANDIDATES if (p := shutil.which(name))), None)


@dataclass
class PageReport:
    """What loading one page produced."""

    url: str
    width: int
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    scroll_width: int = 0
    scroll_height: int = 0
    scripts: int = 0
    title: str = ""
    screenshot: bytes = b""

    @property
    def external_requests(self) -> list[str]:
        """Requests other than the page itself and data: URIs (a self-contained page has none)."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


class CDPError(RuntimeError):
    """Chromium answered a DevTools command with an error, or not at all."""


class Browser:
    """One headless Chromium process and its DevTools pipe; use as a context manager."""

    def __init__(self, binary: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="llmdistill-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # above 4, so that putting one end on 3 cannot overwrite the other
        r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child_r, from_child_w))
        for fd in (to_child_r, from_child_w):
            os.close(fd)
        argv = [binary, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"]
        try:
            self._pid = os.posix_spawn(binary, argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, r, 3),  # Chromium reads commands here
                (os.POSIX_SPAWN_DUP2, w, 4),  # and writes answers and events here
            ])
        finally:
            os.close(r)
            os.close(w)
        self._status: int | None = None
        self._next_id = 0
        self._messages: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from_child, 1 << 16):
            buf += chunk
            *whole, buf = buf.split(b"\0")
            for raw in whole:
                self._messages.put(json.loads(raw))
        self._messages.put(None)  # Chromium closed the pipe

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             events: list[dict] | None = None) -> dict:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._get(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if events is not None and "method" in reply:
                events.append(reply)

    def wait_for(self, event: str, events: list[dict]) -> None:
        """Collect events until `event` arrives (or one already did)."""
        if any(e["method"] == event for e in events):
            return
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._get(deadline, event)
            if "method" in msg:
                events.append(msg)
                if msg["method"] == event:
                    return

    def drain(self, events: list[dict], seconds: float = 0.3) -> None:
        """Collect events for a moment longer (late console messages, late requests)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self._messages.get(timeout=left)
            except queue.Empty:
                return
            if msg and "method" in msg:
                events.append(msg)

    def _get(self, deadline: float, waiting_for: str) -> dict:
        try:
            msg = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise CDPError(f"no answer from Chromium within {self.timeout}s "
                           f"(waiting for {waiting_for})") from None
        if msg is None:
            raise CDPError(f"Chromium exited (status {self._wait(0)}) "
                           f"while waiting for {waiting_for}")
        return msg

    def close(self) -> None:
        """Ask Chromium to quit, then make sure it has; remove its profile."""
        with contextlib.suppress(CDPError, OSError):
            self.send("Browser.close")
        if self._wait(10) is None:
            os.kill(self._pid, signal.SIGKILL)
            self._wait(None)
        os.close(self._to_child)
        self._reader.join(timeout=5)
        os.close(self._from_child)
        self._profile.cleanup()

    def _wait(self, timeout: float | None) -> int | None:
        """Chromium's exit status once it has exited within `timeout` s (None: wait), else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._status is None:
            pid, status = os.waitpid(self._pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() >= deadline:
                break
            else:
                time.sleep(0.05)
        return self._status

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _console_errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                               for a in p.get("args", [])))
        elif e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        elif e["method"] == "Network.loadingFailed":
            out.append(f"network: {p.get('errorText')} ({p.get('requestId')})")
    return out


def inspect_page(browser: Browser, path: Path, width: int, height: int = 900,
                 mobile: bool = False, screenshot: bool = True) -> PageReport:
    """Load `path` in a fresh tab `width` CSS pixels wide and report on it (see PageReport)."""
    url = Path(path).resolve().as_uri()
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    events: list[dict] = []
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session=session, events=events)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1,
                      "mobile": mobile}, session=session, events=events)
        browser.send("Page.navigate", {"url": url}, session=session, events=events)
        browser.wait_for("Page.loadEventFired", events)
        browser.drain(events)
        found = json.loads(browser.send("Runtime.evaluate", {"expression": MEASURE,
                                                             "returnByValue": True},
                                        session=session, events=events)["result"]["value"])
        report = PageReport(url=url, width=width, scroll_width=found["scrollWidth"],
                            scroll_height=found["scrollHeight"], images=found["images"],
                            scripts=found["scripts"], title=found["title"])
        if screenshot:
            size = browser.send("Page.getLayoutMetrics", session=session,
                                events=events)["cssContentSize"]
            shot = browser.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
            }, session=session, events=events)
            report.screenshot = base64.b64decode(shot["data"])
        browser.drain(events, 0.1)
    finally:
        browser.send("Target.closeTarget", {"targetId": target}, events=events)
    report.console_errors = _console_errors(events)
    report.requests = [e["params"]["request"]["url"] for e in events
                       if e["method"] == "Network.requestWillBeSent"]
    return report


def main(argv: list[str]) -> int:
    """Screenshot an HTML file at laptop width into a PNG (the README's picture of a report)."""
    if len(argv) != 2:
        print("usage: python tests/browser.py REPORT.html OUT.png", file=sys.stderr)
        return 2
    binary = find_chromium()
    if binary is None:
        print("no Chromium binary found (install Debian's `chromium`)", file=sys.stderr)
        return 1
    with Browser(binary) as browser:
        report = inspect_page(browser, Path(argv[0]), width=1280)
    problems = report.console_errors + [f"request: {u}" for u in report.external_requests]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    Path(argv[1]).write_bytes(report.screenshot)
    print(f"{argv[1]}: {len(report.screenshot) / 1e6:.2f} MB, "
          f"1280 × {report.scroll_height} CSS px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

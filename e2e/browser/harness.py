"""Runs the browser tests against a running phxkv node.

Every function named `test_*` in every `test_*.py` file next to this one is
called with a fresh browser page and an `Env` (the node's URL, a small API
client, the cluster token). A test fails when it raises, and also when the
page logged a JavaScript error: an uncaught exception ("pageerror") or a
console message of type "error". The one console error that is allowed is
Chromium's own network line for a 4xx answer ("Failed to load resource:
the server responded with a status of 409"): the console shows API
refusals such as a failed compare-and-swap on purpose, and the browser
logs each of them.

Usage: harness.py DIR, with PHXKV_URL, PHXKV_TOKEN_FILE, CHROMIUM and
PHXKV_JOINER (`name=peer URL` of a node started with --join) set;
BROWSER_TESTS selects tests by name, BROWSER_SCREENSHOTS names a directory
for screenshots.
"""

import importlib.util
import json
import os
import re
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALLOWED_NETWORK_ERROR = re.compile(
    r"^Failed to load resource: the server responded with a status of 4\d\d"
)


class Env:
    """What a test gets besides its page: the node and a plain API client."""

    def __init__(self, base, token_file, joiner, screenshots):
        self.base = base.rstrip("/")
        self.token_file = token_file
        # A running node that waits to be added: (name, peer URL).
        self.joiner = tuple(joiner.split("=", 1)) if joiner else None
        self.screenshots = Path(screenshots) if screenshots else None
        # Keys are named per run, so a rerun against the same cluster works.
        self.run = format(int(time.time() * 1000), "x")

    def url(self, path):
        return self.base + path

    def token(self):
        return Path(self.token_file).read_text().strip()

    def api(self, method, path, body=None):
        """Calls the API directly (not through the page); returns (status, body)."""
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.url(path), data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def put(self, key, value):
        status, body = self.api("PUT", "/v1/kv/" + urllib.parse.quote(key, safe=""), value)
        assert status == 200, f"PUT {key}: {status} {body}"
        return body

    def screenshot(self, page, name):
        """Saves a screenshot when BROWSER_SCREENSHOTS is set."""
        if self.screenshots is None:
            return
        self.screenshots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(self.screenshots / f"{name}.png"))


class ConsoleErrors:
    """Collects the JavaScript errors a page reports."""

    def __init__(self, page):
        self.errors = []
        page.on("pageerror", lambda err: self.errors.append(f"uncaught: {err}"))
        page.on("console", self._console)

    def _console(self, msg):
        if msg.type != "error":
            return
        if ALLOWED_NETWORK_ERROR.match(msg.text):
            return
        location = msg.location or {}
        where = location.get("url", "")
        if location.get("lineNumber") is not None:
            where += f":{location.get('lineNumber')}"
        self.errors.append(f"console.error: {msg.text} ({where})")


def discover(directory, selected):
    tests = []
    for file in sorted(Path(directory).glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in sorted(vars(module)):
            func = getattr(module, name)
            if name.startswith("test_") and callable(func):
                full = f"{file.stem}.{name}"
                if not selected or selected in full:
                    tests.append((full, func))
    return tests


def launch(p, attempts=3):
    """Starts Chromium, again if it dies while starting: headless Chromium
    on a loaded machine now and then crashes before it opens a page, which
    says nothing about the pages under test. A crash during a test is
    still that test's failure."""
    for attempt in range(1, attempts + 1):
        try:
            return p.chromium.launch(
                executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                args=CHROMIUM_ARGS,
            )
        except PlaywrightError as e:
            if attempt == attempts:
                raise
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"browser: Chromium did not start ({first_line}); trying again", flush=True)
            time.sleep(2)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__)
    env = Env(
        os.environ["PHXKV_URL"],
        os.environ["PHXKV_TOKEN_FILE"],
        os.environ.get("PHXKV_JOINER"),
        os.environ.get("BROWSER_SCREENSHOTS"),
    )
    tests = discover(directory, os.environ.get("BROWSER_TESTS", ""))
    if not tests:
        print("browser: no tests selected", file=sys.stderr)
        return 2
    expect.set_options(timeout=15_000)
    failures = []
    with sync_playwright() as p:
        browser = launch(p)
        try:
            for name, func in tests:
                context = browser.new_context(viewport={"width": 1360, "height": 900})
                page = context.new_page()
                page.set_default_timeout(15_000)
                console = ConsoleErrors(page)
                started = time.monotonic()
                problem = None
                try:
                    func(page, env)
                except Exception:
                    problem = traceback.format_exc()
                # Errors logged while the test ran, even after a failure.
                page.wait_for_timeout(200)
                if console.errors:
                    problem = (problem or "") + "JavaScript errors on the page:\n  " + "\n  ".join(
                        console.errors
                    )
                took = time.monotonic() - started
                if problem:
                    failures.append(name)
                    print(f"FAIL {name} ({took:.1f}s) at {page.url}\n{problem}", flush=True)
                else:
                    print(f"ok   {name} ({took:.1f}s)", flush=True)
                context.close()
        finally:
            browser.close()
    print(f"browser: {len(tests) - len(failures)} passed, {len(failures)} failed", flush=True)
    for name in failures:
        print(f"  failed: {name}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared pieces of the console's browser tests (no tests here): Debian's Chromium driven by Playwright,
signing in, full-page screenshots.

Chromium is used for real: when `/usr/bin/chromium` (or `$GATEWAY_TEST_CHROMIUM`) is missing these raise,
so the tests fail loudly (they never skip); `make debian-packages` installs it. Playwright is only told where the
browser is: nothing downloads one.

Screenshots go to the test run's own folder. With `CONSOLE_SCREENSHOTS=DIR` set (e.g. `docs/images`) each is
also written there as `console-<page>.png`, 1280 pixels wide, in 256 colours (and through `optipng` when it
is installed), so a run of the tests refreshes the documentation's pictures only when asked to:

    CONSOLE_SCREENSHOTS=docs/images .venv/bin/pytest tests/test_console_browser.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Locator, Page, ViewportSize, sync_playwright

CHROMIUM = Path(os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}  # the width of the documentation's screenshots
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS"


def chromium() -> Path:
    """The browser the tests drive; raises, saying how to install it, when it is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: the console's browser tests need Debian's Chromium. Run "
                           "`make debian-packages` (as root), or `sudo apt-get install -y chromium fonts-liberation`.")
    return CHROMIUM


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium()), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def session(browser: Browser, base_url: str, key: str | None = None) -> Iterator[Page]:
    """A page in a browser context of its own (its own cookies), signed in with `key` when one is given."""
    context: BrowserContext = browser.new_context(base_url=base_url, viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        if key is not None:
            sign_in(page, key)
            assert "/console/login" not in page.url, page.content()
        yield page
    finally:
        context.close()


def sign_in(page: Page, key: str) -> None:
    """Fill in the console's sign-in form with `key` and submit it (the page that answers stays open)."""
    page.goto("/console/login")
    page.fill("#api_key", key)
    with page.expect_navigation():
        page.get_by_test_id("sign-in").click()


def screenshot(page: Page, name: str, out_dir: Path, mask: Sequence[Locator] = ()) -> Path:
    """A full-page screenshot as `<out_dir>/console-<name>.png`, also to $CONSOLE_SCREENSHOTS when set; `mask`:
    elements painted over (a secret)."""
    path = out_dir / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True, mask=list(mask))
    if docs_dir := os.environ.get(SCREENSHOTS_ENV):
        target = Path(docs_dir) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        small_png(path, target)
    return path


def small_png(source: Path, target: Path) -> None:
    """`source` as a PNG of 256 colours (a page's flat colours lose nothing a reader sees), then `optipng`'s
    when it is installed: a third of the bytes, or less."""
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    if optipng := shutil.which("optipng"):
        subprocess.run([optipng, "-quiet", "-o2", str(target)], check=True, timeout=120)

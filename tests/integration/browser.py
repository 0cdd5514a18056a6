"""A real headless Chromium (Debian's ``chromium`` package) driven by Playwright's Python API.

Playwright's own browser download is never used: it launches the system's ``chromium`` (``make test``
installs the package when it is missing). Every page opened here may reach loopback only; a request to
any other host is aborted and recorded, so a page that needs a CDN fails its test instead of quietly
working on a machine with Internet access.

Screenshots go to ``var/screenshots/`` in the checkout (git-ignored), or ``IMAGINEQ_SCREENSHOTS``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page, Route, sync_playwright

from devstack.services import REPO_ROOT

SCREENSHOTS = Path(os.environ.get("IMAGINEQ_SCREENSHOTS", REPO_ROOT / "var" / "screenshots"))
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no chromium on PATH: `make test` installs Debian's chromium package")


@dataclass
class Session:
    page: Page
    #: URLs of requests the page tried to send off loopback (all were aborted).
    refused: list[str] = field(default_factory=list)

    def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def session(
    chromium: Browser, *, http_credentials: tuple[str, str] | None = None, width: int = 1280
) -> Iterator[Session]:
    context = chromium.new_context(
        viewport={"width": width, "height": 800},
        http_credentials={"username": http_credentials[0], "password": http_credentials[1]}
        if http_credentials
        else None,
    )
    opened = Session(page=context.new_page())

    def loopback_only(route: Route) -> None:
        if (urlsplit(route.request.url).hostname or "") in LOOPBACK:
            route.continue_()
        else:
            opened.refused.append(route.request.url)
            route.abort()

    context.route("**/*", loopback_only)
    try:
        yield opened
    finally:
        context.close()

"""Shared set-up for the web chat tests: Debian's Chromium driven by Playwright (never a
downloaded browser), pages with a fresh localStorage each, screenshots kept as artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import needs

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots land here (gitignored) so people can look at them after a run.
SHOTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "tmp" / "web-chat"
STORAGE_KEY = "lhama.chats.v1"


@pytest.fixture(scope="module")
def browser():
    sync_api = needs.module("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def open_page(browser, url: str, width: int = 1280, height: int = 800, dark: bool = False):
    """A page in a fresh context (empty localStorage) with clipboard access; page errors fail."""
    context = browser.new_context(
        viewport={"width": width, "height": height}, color_scheme="dark" if dark else "light", reduced_motion="reduce"
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(url + "/")
    ready(page)
    return page


def ready(page) -> None:
    """Waits until the page has listed the models (it saves its state then: seed after that)."""
    page.wait_for_function("document.querySelector('#status').textContent === 'Ready'")


def seed_conversations(page, conversations: list[dict], current: str | None = None) -> None:
    """Puts conversations into the page's storage as a user's earlier visit would, then reloads."""
    data = {"version": 1, "currentId": current or conversations[0]["id"], "conversations": conversations}
    page.evaluate("([k, v]) => localStorage.setItem(k, v)", [STORAGE_KEY, json.dumps(data)])
    page.reload()
    ready(page)


def conversation(cid: str, title: str, messages: list[dict], **settings) -> dict:
    return {
        "id": cid,
        "title": title,
        "created": 1,
        "updated": 1,
        "draft": "",
        "messages": messages,
        "settings": {
            "model": "",
            "system": "",
            "temperature": 0.7,
            "top_p": 1,
            "max_tokens": 16,
            "seed": "",
            **settings,
        },
    }


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 5000
    return path

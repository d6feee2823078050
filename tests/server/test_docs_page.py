"""/docs (Swagger UI) works offline: Debian's Chromium, driven by Playwright, with every request
that does not go to 127.0.0.1 aborted, still renders the operations. /redoc is not served (its
bundle fetches a logo from a CDN)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def offline_page():
    """A page whose network is the loopback interface only; ``left`` collects what tried to leave."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (make test does it)")
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium is missing: apt-get install -y chromium (make test does it)")
    left: list[str] = []

    def only_loopback(route):
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith("data:"):
            route.continue_()
        else:
            left.append(url)
            route.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context()
        context.route("**/*", only_loopback)
        yield context.new_page(), left
        browser.close()


def test_docs_html_names_no_other_host(server):
    html = httpx.get(server.url + "/docs", timeout=10).text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "http" not in html, html
    assert httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js", timeout=10).status_code == 200
    assert httpx.get(server.url + "/redoc", timeout=10).status_code == 404


def test_swagger_ui_renders_the_operations_offline(server, offline_page):
    from playwright.sync_api import expect

    page, left = offline_page
    left.clear()
    page.goto(server.url + "/docs")
    chat = page.locator(".opblock-summary-path[data-path='/v1/chat/completions']")
    expect(chat).to_be_visible(timeout=30_000)
    assert page.locator(".opblock").count() >= 10  # the whole list, not one stray element
    chat.click()  # expands: the request body schema comes from our /openapi.json
    expect(page.locator(".opblock-body").first).to_be_visible()
    assert left == []

"""The chat page at / in real headless Chromium (Debian's, driven by Playwright): a streamed
reply appears token by token, Stop aborts the fetch and the server cancels the generation."""

from __future__ import annotations

import shutil

import pytest

from tests.server.conftest import MODEL, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        yield page
        browser.close()


def test_chat_page_streams_and_stops(server, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    expect(page.locator("#model-name")).to_have_text(MODEL)
    page.locator("#settings summary").click()
    page.fill("#system-prompt", "You are a storyteller.")
    page.fill("#max-tokens", "400")
    page.locator("#settings summary").click()
    aborted = server.metrics()["lhama_engine_requests_aborted_total"]

    page.fill("#prompt", "Tell me a long story about a dragon.")
    page.keyboard.press("Enter")
    reply = page.locator(".msg.assistant").last
    expect(page.locator(".msg.user").last).to_have_text("Tell me a long story about a dragon.")
    expect(page.locator("#stop")).to_be_enabled()
    page.wait_for_function("document.querySelector('.msg.assistant').textContent.length > 5")
    first = reply.text_content()
    page.wait_for_function(f"document.querySelector('.msg.assistant').textContent.length > {len(first) + 5}")
    assert reply.text_content().startswith(first)  # it grew: streamed, not delivered at the end

    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    stopped_at = reply.text_content()
    assert "(stopped)" in stopped_at
    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000

    # The server saw the abort, freed the KV cache, and stopped generating.
    m = wait_for(lambda: (x := server.metrics())["lhama_kv_cache_blocks_used"] == 0
                 and x["lhama_running_requests"] == 0 and x, timeout=20)
    assert m and m["lhama_engine_requests_aborted_total"] == aborted + 1
    assert reply.text_content() == stopped_at

    # A second, short turn completes normally.
    page.locator("#settings summary").click()
    page.fill("#max-tokens", "8")
    page.fill("#prompt", "Thanks!")
    page.click("#send")
    expect(page.locator("#status")).to_contain_text("done", timeout=30000)
    assert page.locator(".msg.assistant").count() == 2

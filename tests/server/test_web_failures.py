"""The chat page when the server goes away and comes back: a banner with Retry, the unsent
message kept in the box, a server that now wants an API key leads to the key field, and a server
that dies mid-answer leaves the partial answer marked as interrupted."""

from __future__ import annotations

import socket

from tests.server.web_chat import browser, open_page, shot  # noqa: F401
from tests.serving import ServerProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_banner_keeps_message_then_retry_and_api_key(browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    port = free_port()
    srv = ServerProcess(tmp_path / "data", "--port", str(port))
    try:
        page = open_page(browser, srv.url)
        page.click("#settings-toggle")
        page.fill("#max_tokens", "8")
        page.click("#settings-close")
        srv.stop()

        page.fill("#prompt", "Are you there?")
        page.keyboard.press("Enter")
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#banner-text")).to_contain_text("cannot be reached")
        expect(page.locator("#banner-retry")).to_be_visible()
        expect(page.locator("#prompt")).to_have_value("Are you there?")  # kept, not lost
        assert page.locator(".msg.user").count() == 0
        expect(page.locator("#model")).to_have_text("offline")  # not the model it can no longer reach
        expect(page.locator("#chat-title")).to_have_text("New chat")
        shot(page, "desktop-1280-offline.png")

        # Back, on the same port, now with an API key: Retry gets a 401 and leads to the key field.
        srv = ServerProcess(tmp_path / "data", "--port", str(port), "--api-key", "sesame")
        page.click("#banner-retry")
        expect(page.locator("#banner-text")).to_contain_text("needs an API key")
        expect(page.locator("#api-key")).to_be_focused()
        expect(page.locator("#settings")).to_be_visible()
        page.fill("#api-key", "sesame")
        page.keyboard.press("Tab")  # change event: the key is used and the models load
        expect(page.locator("#banner")).to_be_hidden()
        expect(page.locator("#model")).to_be_enabled()
        page.reload()  # the kept message is a draft, and the key is remembered: both survive a reload
        expect(page.locator("#prompt")).to_have_value("Are you there?")
        expect(page.locator("#status")).to_have_text("Ready")
        page.click("#send")
        expect(page.locator(".msg.user .body")).to_have_text("Are you there?")
        expect(page.locator(".msg.assistant .stats")).to_contain_text("tok/s", timeout=60000)
        expect(page.locator("#prompt")).to_have_value("")

        # The server dies while an answer streams: what came is kept and marked, the banner shows.
        page.click("#settings-toggle")
        page.fill("#max_tokens", "400")
        page.click("#settings-close")
        page.fill("#prompt", "Tell me a long story about a dragon.")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('.msg.assistant.streaming')?.textContent.length > 20")
        srv.proc.kill()
        expect(page.locator("#banner-text")).to_contain_text("cannot be reached")
        last = page.locator(".msg.assistant").last
        expect(last.locator(".stats .warning")).to_contain_text("interrupted")
        assert len(last.locator(".body").text_content()) > 20
        assert page.errors == []
    finally:
        srv.stop()

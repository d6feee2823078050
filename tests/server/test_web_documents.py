"""The chat page's documents and tools in real Chromium against a real server: files uploaded
into a vector store, answers grounded with file_search, [n] citations that open the passage,
and the code interpreter toggle with its calls shown in a collapsible block."""

from __future__ import annotations

import json

from tests.server.web_chat import (  # noqa: F401
    browser,
    conversation,
    open_page,
    seed_conversations,
    shot,
)

HANDBOOK = """Zorblax handbook.

The Zorblax office opens at 7:45 on weekdays and closes at 16:30.
Visitors park behind building C and sign in at the blue desk.
"""


def chat_requests(page) -> list[dict]:
    bodies: list[dict] = []
    page.on(
        "request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None
    )
    return bodies


def stored(page) -> dict:
    return json.loads(page.evaluate("localStorage.getItem('lhama.chats.v1')"))


def test_documents_ground_answers_and_citations_open_passages(server, browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    page = open_page(browser, server.url)
    sent = chat_requests(page)
    doc = tmp_path / "handbook.txt"
    doc.write_text(HANDBOOK)
    page.click("#settings-toggle")
    page.set_input_files("#document-files", str(doc))
    expect(page.locator("#documents li")).to_have_text(["handbook.txt (ready)"], timeout=60000)
    page.fill("#max_tokens", "16")
    page.click("#settings-close")
    page.fill("#prompt", "When does the Zorblax office open?")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .stats")).to_contain_text("tok/s", timeout=60000)

    conv = stored(page)["conversations"][0]
    store_id = conv["settings"]["vectorStoreId"]
    assert store_id.startswith("vs_")
    assert sent[-1]["tools"] == [{"type": "file_search", "vector_store_ids": [store_id], "max_num_results": 5}]
    sources = conv["messages"][1]["meta"]["sources"]
    assert sources[0]["filename"] == "handbook.txt" and "7:45" in sources[0]["text"]

    # A reply citing [1] (as the grounded prompt asks the model to): the mark opens the passage.
    reply = "It opens at 7:45 [1]. Code stays code: `a[1]`"
    seed_conversations(
        page,
        [
            conversation(
                "c1",
                "Handbook",
                [
                    {"role": "user", "content": "When?"},
                    {"role": "assistant", "content": reply, "meta": {"finish": "stop", "sources": sources}},
                ],
            )
        ],
    )
    citation = page.locator(".msg.assistant .citation")
    expect(citation).to_have_count(1)
    expect(citation.locator("blockquote")).to_be_hidden()
    citation.locator("button").click()
    expect(citation.locator("blockquote")).to_be_visible()
    expect(citation.locator("blockquote")).to_contain_text("7:45")
    expect(citation.locator("cite")).to_have_text("handbook.txt")
    shot(page, "desktop-1280-citation.png")
    assert page.errors == []


def test_code_interpreter_toggle_and_tool_call_blocks(server, browser):  # noqa: F811
    from playwright.sync_api import expect

    page = open_page(browser, server.url)
    sent = chat_requests(page)
    page.click("#settings-toggle")
    page.check("#codeInterpreter")
    page.fill("#max_tokens", "24")
    page.click("#settings-close")
    page.fill("#prompt", "Use Python to compute 17 * 23.")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .stats")).to_contain_text("tokens", timeout=60000)
    assert sent[-1]["tools"] == [{"type": "function", "function": {"name": "code_interpreter"}}]
    meta = stored(page)["conversations"][0]["messages"][1]["meta"]
    calls = page.locator(".msg.assistant .tool-call")
    expect(calls).to_have_count(len(meta["toolCalls"]))  # whatever the small model chose to do

    calls_meta = {
        "finish": "tool_calls",
        "toolCalls": [{"id": "c1", "name": "code_interpreter", "arguments": json.dumps({"code": "print(17 * 23)"})}],
    }
    seed_conversations(
        page,
        [
            conversation(
                "c1",
                "Python",
                [{"role": "user", "content": "17 * 23?"}, {"role": "assistant", "content": "", "meta": calls_meta}],
                codeInterpreter=True,
            )
        ],
    )
    block = page.locator(".msg.assistant .tool-call")
    expect(block.locator("summary")).to_have_text("Tool call: code_interpreter")
    expect(block.locator("pre")).to_be_hidden()
    block.locator("summary").click()
    expect(block.locator("pre")).to_have_text("print(17 * 23)")
    expect(page.locator(".msg.assistant .stats")).to_contain_text("finish: tool_calls")
    assert page.errors == []

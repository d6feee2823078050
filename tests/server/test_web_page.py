"""The chat page at / in real headless Chromium against a real server: markdown rendering,
streaming with Stop and a queued send, stats and the max-tokens cut, conversations kept across
reloads, per-message actions, settings validation, the sidebar, both layouts, documents with
file_search and citations, and the code interpreter running the model's Python in the sandbox."""

from __future__ import annotations

import json

import httpx
import pytest

from lhama.sampling_defaults import REQUEST_SAMPLING_DEFAULTS
from tests import needs
from tests.server.web_chat import (  # noqa: F401
    browser,
    conversation,
    open_page,
    seed_conversations,
    shot,
)
from tests.serving import MODEL, wait_for

MARKDOWN = """Here is **bold** and `inline code`.

```python
def add(a, b):
    return a + b
```

| name | size |
|------|------|
| ant  | 1    |
| yak  | 900  |

Math: $e^{i\\pi} + 1 = 0$ and \\(a_1 + b_1\\); prices stay text: $5 and $10.

$$\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$$

<img src=x onerror="window.pwned = 1"> <script>window.pwned = 2</script> [link](javascript:window.pwned=3)
$\\href{javascript:window.pwned=4}{x}$
"""


@pytest.fixture
def expect():
    from playwright.sync_api import expect

    return expect


def test_markdown_renders_safely_with_highlighted_code_tables_and_copy(server, browser, expect):  # noqa: F811
    page = open_page(browser, server.url)
    seed_conversations(
        page,
        [
            conversation(
                "c1", "Markdown", [{"role": "user", "content": "show me"}, {"role": "assistant", "content": MARKDOWN}]
            )
        ],
    )
    reply = page.locator(".msg.assistant .body")
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator(".code-bar span")).to_have_text("python")
    assert reply.locator("pre code .hljs-keyword").first.text_content() == "def"  # highlighted
    assert reply.locator("table tr").count() == 3
    assert reply.locator("td").nth(2).text_content().strip() == "yak"
    # Math typeset by KaTeX with its own (vendored) fonts; dollar amounts stay text.
    expect(reply.locator(".katex")).to_have_count(4)  # the fourth: an \\href KaTeX does not trust
    expect(reply.locator(".katex-display .mfrac")).to_have_count(1)
    assert "prices stay text: $5 and $10." in reply.text_content()
    fonts = "document.fonts.load('16px KaTeX_Main').then((f) => f.length > 0 && f.every((x) => x.status === 'loaded'))"
    assert page.evaluate(fonts)
    # Raw HTML stays text, scripts never run, javascript: links are dropped.
    assert reply.locator("img, script").count() == 0
    assert "<img src=x" in reply.text_content()
    assert page.evaluate("window.pwned") is None
    assert reply.locator("a[href^='javascript']").count() == 0
    reply.locator(".copy-code").click()
    expect(reply.locator(".copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b\n"

    # Streaming: a finished block is rendered once and kept (same DOM node) while text grows,
    # and a half-open code fence renders as code, not as a paragraph of backticks.
    kept = page.evaluate("""async () => {
        const { StreamingMarkdown } = await import('/static/js/render.js');
        const el = document.createElement('div'); document.body.append(el);
        const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
        const v = new StreamingMarkdown(el);
        v.update('First paragraph.\\n\\nSecond'); await frame();
        const first = el.querySelector('p');
        v.update('First paragraph.\\n\\nSecond grows\\n\\n```js\\nlet x'); await frame();
        const same = el.querySelector('p') === first;
        const openFence = el.querySelector('pre code') !== null;
        v.finish();
        return { same, openFence, html: el.innerHTML };
    }""")
    assert kept["same"] and kept["openFence"], kept["html"]
    assert page.errors == []


def test_stream_stop_queue_stats_and_reload(server, browser, expect):  # noqa: F811
    page = open_page(browser, server.url)
    expect(page.locator("#model")).to_have_value(MODEL)
    page.click("#settings-toggle")
    page.fill("#system", "You are a storyteller.")
    page.fill("#max_tokens", "400")
    page.click("#settings-close")
    aborted = server.metrics()["lhama_engine_requests_aborted_total"]

    page.fill("#prompt", "Tell me a long story about a dragon.")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user .body").first).to_have_text("Tell me a long story about a dragon.")
    expect(page.locator("#stop")).to_be_visible()
    body = ".msg.assistant.streaming .body"
    page.wait_for_function(f"document.querySelector('{body}')?.textContent.length > 5")
    first = page.locator(body).text_content()
    page.wait_for_function(f"document.querySelector('{body}').textContent.length > {len(first) + 5}")

    # A message sent while the answer streams is queued, visibly, not dropped; it goes out with
    # the settings of that moment (8 tokens: it will be cut, and say so).
    page.click("#settings-toggle")
    page.fill("#max_tokens", "8")
    page.click("#settings-close")
    page.fill("#prompt", "Tell me another long story.")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.queued")).to_contain_text("Tell me another long story.")
    expect(page.locator("#status")).to_contain_text("Queued")
    expect(page.locator(".msg.assistant.streaming")).to_be_visible()  # still streaming above it
    shot(page, "desktop-1280-streaming.png")

    page.keyboard.press("Escape")  # stops the story; the queued message is sent next
    stopped = page.locator(".msg.assistant").first
    expect(stopped.locator(".stats")).to_contain_text("stopped")
    expect(stopped.locator(".stats")).to_contain_text("≈")  # no usage after a stop: counted pieces
    m = wait_for(lambda: (x := server.metrics())["lhama_engine_requests_aborted_total"] > aborted and x, timeout=20)
    assert m and m["lhama_engine_requests_aborted_total"] == aborted + 1
    second = page.locator(".msg.assistant").nth(1)
    expect(second.locator(".stats .warning")).to_contain_text("cut by max tokens (8)", timeout=60000)
    expect(second.locator(".stats")).to_contain_text("8 tokens")
    expect(second.locator(".stats")).to_contain_text("tok/s")
    expect(page.locator(".msg.queued")).to_have_count(0)
    assert page.locator(".msg.user").count() == 2
    kv = wait_for(lambda: server.metrics()["lhama_kv_cache_blocks_used"] == 0, timeout=20)
    assert kv
    shot(page, "desktop-1280.png")

    # Everything survives a reload: the turns, their stats, the title, the settings.
    texts = page.locator(".msg .body").all_text_contents()
    page.reload()
    expect(page.locator(".msg")).to_have_count(4)
    assert page.locator(".msg .body").all_text_contents() == texts
    expect(page.locator(".msg.assistant").nth(1).locator(".stats .warning")).to_contain_text("cut by max tokens")
    expect(page.locator("#conversations .conv-title")).to_have_text(["Tell me a long story about a dragon."])
    expect(page.locator("#system")).to_have_value("You are a storyteller.")
    expect(page.locator("#max_tokens")).to_have_value("8")
    assert page.errors == []


def test_regenerate_edit_and_copy(server, browser, expect):  # noqa: F811
    page = open_page(browser, server.url)
    seed_conversations(
        page,
        [
            conversation(
                "c1",
                "Greeting",
                [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "old **answer**"}],
                max_tokens=8,
            )
        ],
    )
    expect(page.locator(".msg.assistant .body strong")).to_have_text("answer")
    page.locator(".msg.assistant .actions .copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == "old **answer**"  # the markdown source

    page.locator(".msg.assistant .regenerate").click()
    expect(page.locator(".msg.assistant .stats")).to_contain_text("tok/s", timeout=60000)
    expect(page.locator(".msg")).to_have_count(2)
    assert "old answer" not in page.locator(".msg.assistant .body").text_content()

    page.locator(".msg.user .edit").click()
    page.fill(".edit-box", "Say goodbye.")
    page.click(".save-edit")
    expect(page.locator(".msg.user .body")).to_have_text("Say goodbye.")
    expect(page.locator(".msg.assistant .stats")).to_contain_text("tok/s", timeout=60000)
    expect(page.locator(".msg")).to_have_count(2)
    stored = json.loads(page.evaluate("localStorage.getItem('lhama.chats.v1')"))
    messages = stored["conversations"][0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Say goodbye."
    assert messages[1]["meta"]["finish"] in ("stop", "length")
    assert page.errors == []


def test_sampling_left_to_the_server_defaults(server, browser, expect):  # noqa: F811
    page = open_page(browser, server.url)
    models = httpx.get(server.base + "/models").json()["data"]
    expect(page.locator("#model")).to_have_value(MODEL)
    page.click("#settings-toggle")
    # Sampling left to the server: its defaults as placeholders, and a send carries none of them.
    defaults = models[0]["sampling_defaults"]
    shared = REQUEST_SAMPLING_DEFAULTS  # what the server applies to a field a request leaves out
    assert defaults == {"temperature": shared.temperature, "top_p": shared.top_p, "max_tokens": shared.max_tokens}
    for name in ("temperature", "top_p", "max_tokens"):
        expect(page.locator("#" + name)).to_have_value("")
        expect(page.locator("#" + name)).to_have_attribute("placeholder", f"{defaults[name]} (default)")
    sent = []

    def answer(route):
        sent.append(route.request.post_data_json)
        chunk = {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
        route.fulfill(
            status=200, content_type="text/event-stream", body=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
        )

    page.route("**/v1/chat/completions", answer)
    page.fill("#prompt", "unset sampling")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .body").first).to_have_text("ok")
    page.unroute("**/v1/chat/completions")
    assert len(sent) == 1 and not {"temperature", "top_p", "max_tokens"} & set(sent[0]), sent
    page.fill("#temperature", "0.3")
    page.route("**/v1/chat/completions", answer)
    page.fill("#prompt", "one set")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .body")).to_have_count(2)
    page.unroute("**/v1/chat/completions")
    assert sent[1]["temperature"] == 0.3 and not {"top_p", "max_tokens"} & set(sent[1]), sent
    assert page.errors == []


def test_settings_are_validated_per_conversation(server, browser, expect):  # noqa: F811
    page = open_page(browser, server.url)
    models = httpx.get(server.base + "/models").json()["data"]
    expect(page.locator("#model option")).to_have_text([m["id"] for m in models])
    page.click("#settings-toggle")
    page.fill("#temperature", "7")
    page.fill("#top_p", "0")
    page.fill("#seed", "-3")
    expect(page.locator("#temperature-error")).to_have_text("Temperature must be between 0 and 2.")
    expect(page.locator("#temperature")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#top_p-error")).not_to_be_empty()
    expect(page.locator("#seed-error")).not_to_be_empty()
    page.click("#prompt")
    page.keyboard.type("hello")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("there")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text("Not sent: Temperature must be between 0 and 2.")
    expect(page.locator("#temperature")).to_be_focused()
    expect(page.locator("#prompt")).to_have_value("hello\nthere")  # refused, not dropped
    assert page.locator(".msg.user").count() == 0
    page.fill("#max_tokens", "100000")
    expect(page.locator("#max_tokens-error")).to_contain_text(str(models[0]["max_model_len"]))

    # Valid values are kept for this conversation only; a new chat starts from them.
    page.fill("#temperature", "1.2")
    page.fill("#top_p", "0.9")
    page.fill("#seed", "42")
    page.fill("#max_tokens", "32")
    expect(page.locator("#temperature-error")).to_be_empty()
    page.fill("#system", "Answer in French.")
    page.keyboard.press("Control+Shift+O")
    expect(page.locator("#conversations li")).to_have_count(2)
    expect(page.locator("#temperature")).to_have_value("1.2")
    page.fill("#system", "Answer in German.")
    page.locator("#conversations .conv-title").nth(1).click()
    expect(page.locator("#system")).to_have_value("Answer in French.")
    stored = json.loads(page.evaluate("localStorage.getItem('lhama.chats.v1')"))
    first = next(c for c in stored["conversations"] if c["settings"]["system"] == "Answer in French.")
    want = {"temperature": 1.2, "top_p": 0.9, "seed": 42, "max_tokens": 32, "model": MODEL}
    assert {k: first["settings"][k] for k in want} == want
    assert page.errors == []


def test_sidebar_new_rename_search_delete_export_import(server, browser, expect, tmp_path):  # noqa: F811
    page = open_page(browser, server.url)
    seed_conversations(
        page,
        [
            conversation(
                "a", "Python lists", [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
            ),
            conversation(
                "b", "Dinner ideas", [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
            ),
        ],
        current="a",
    )
    expect(page.locator("#chat-title")).to_have_text("Python lists")
    page.locator("#conversations .conv-title", has_text="Dinner ideas").click()
    expect(page.locator(".msg.user .body")).to_have_text("q2")

    page.locator("#conversations li", has_text="Dinner ideas").locator("button[aria-label^='Rename']").click()
    page.fill("#conversations .rename", "Dinner plans")
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("Dinner plans")
    page.fill("#search", "PYTHON")
    expect(page.locator("#conversations .conv-title")).to_have_text(["Python lists"])
    page.fill("#search", "")

    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "chats.json"
    download.value.save_as(exported)
    assert {c["title"] for c in json.loads(exported.read_text())["conversations"]} == {"Python lists", "Dinner plans"}

    delete = page.locator("#conversations li", has_text="Dinner plans").locator(".delete")
    delete.click()
    expect(delete).to_have_text("Delete?")  # a second click confirms
    delete.click()
    expect(page.locator("#conversations .conv-title")).to_have_text(["Python lists"])
    expect(page.locator("#chat-title")).to_have_text("Python lists")

    page.set_input_files("#import-file", str(exported))
    expect(page.locator("#status")).to_have_text("Imported 2 conversations")
    expect(page.locator("#conversations li")).to_have_count(3)
    page.reload()
    expect(page.locator("#conversations li")).to_have_count(3)
    assert page.errors == []


def test_phone_width_layout_and_dark_mode(server, browser, expect):  # noqa: F811
    page = open_page(browser, server.url, width=390, height=780, dark=True)
    seed_conversations(
        page,
        [
            conversation(
                "c1",
                "A rather long conversation title about dragons",
                [{"role": "user", "content": "Show code and a table"}, {"role": "assistant", "content": MARKDOWN}],
            )
        ],
    )
    header = page.locator("header").bounding_box()
    assert header["height"] < 60  # one line: no wrapped three-line header
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing forces sideways scrolling
    full = page.evaluate("""() => {
        const p = document.querySelector('#prompt'), s = getComputedStyle(p);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = s.font;
        return ctx.measureText(p.placeholder).width < p.clientWidth - parseFloat(s.paddingLeft) * 2;
    }""")
    assert full  # the placeholder is not cut
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(19, 19, 22)"
    expect(page.locator("#sidebar")).not_to_be_visible()
    shot(page, "phone-390-dark.png")
    page.click("#menu")
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#menu")).to_have_attribute("aria-expanded", "true")
    shot(page, "phone-390-sidebar.png")
    page.locator("#conversations .conv-title").first.click()
    expect(page.locator("#sidebar")).not_to_be_visible()
    page.click("#settings-toggle")
    expect(page.locator("#settings")).to_be_visible()
    shot(page, "phone-390-settings.png")
    page.keyboard.press("Escape")
    expect(page.locator("#settings")).to_be_hidden()

    light = open_page(browser, server.url, width=390, height=780)
    light.fill("#prompt", "Hi")
    shot(light, "phone-390.png")
    # Keyboard order: the skip link, then (the hidden list skipped) the menu, the model, settings;
    # the skip link leads to the message box.
    light.focus(".skip")
    for target in ("#menu", "#model", "#settings-toggle"):
        light.keyboard.press("Tab")
        expect(light.locator(target)).to_be_focused()
    light.focus(".skip")
    light.keyboard.press("Enter")
    expect(light.locator("#prompt")).to_be_focused()
    assert page.errors == [] and light.errors == []


HANDBOOK = """Zorblax handbook.

The Zorblax office opens at 7:45 on weekdays and closes at 16:30.
Visitors park behind building C and sign in at the blue desk.
"""


def bodies_to(page, path: str) -> list[dict]:
    """The JSON bodies the page POSTs to `path`, as it sends them."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith(path) else None)
    return bodies


def stored(page) -> dict:
    return json.loads(page.evaluate("localStorage.getItem('lhama.chats.v1')"))


def add_handbook(page, expect, tmp_path) -> None:
    doc = tmp_path / "handbook.txt"
    doc.write_text(HANDBOOK)
    page.click("#settings-toggle")
    page.set_input_files("#document-files", str(doc))
    expect(page.locator("#documents li")).to_have_text(["handbook.txt (ready)"], timeout=60000)


def test_documents_ground_answers_and_citations_open_passages(server, browser, expect, tmp_path):  # noqa: F811
    page = open_page(browser, server.url)
    sent = bodies_to(page, "/v1/chat/completions")
    add_handbook(page, expect, tmp_path)
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
    answer = {"role": "assistant", "content": reply, "meta": {"finish": "stop", "sources": sources}}
    seed_conversations(page, [conversation("c1", "Handbook", [{"role": "user", "content": "When?"}, answer])])
    citation = page.locator(".msg.assistant .citation")
    expect(citation).to_have_count(1)
    expect(citation.locator("blockquote")).to_be_hidden()
    citation.locator("button").click()
    expect(citation.locator("blockquote")).to_be_visible()
    expect(citation.locator("blockquote")).to_contain_text("7:45")
    expect(citation.locator("cite")).to_have_text("handbook.txt")
    shot(page, "desktop-1280-citation.png")
    assert page.errors == []


FAILED_RUN = {
    "id": "ci_1",
    "code": "import math\nprint(math.sqrt(-1))",
    "logs": "error (exit code 1)\n[stderr]\nValueError: math domain error\n[/stderr]",
    "status": "completed",
}


def test_code_interpreter_runs_the_models_python_in_the_sandbox(server, browser, expect):  # noqa: F811
    from lhama.tools.builtin import CodeInterpreter

    needs.binary("bwrap", "bubblewrap")
    page = open_page(browser, server.url)
    sent = bodies_to(page, "/v1/responses")
    page.click("#settings-toggle")
    page.select_option("#codeInterpreter", "required")  # a Python run on every message
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "48")
    page.click("#settings-close")
    page.fill("#prompt", "Use Python to compute 17 * 23.")
    page.keyboard.press("Enter")
    reply = page.locator(".msg.assistant")
    expect(reply.locator(".stats")).to_contain_text("tokens", timeout=120000)
    assert sent[-1]["tools"][0]["type"] == "code_interpreter"
    assert (sent[-1]["tool_choice"], sent[-1]["max_output_tokens"], sent[-1]["stream"]) == ("required", 48, True)
    runs = stored(page)["conversations"][0]["messages"][1]["meta"]["toolRuns"]
    assert runs, "a required code-interpreter turn ran no code"
    blocks = reply.locator(".tool-run")
    expect(blocks).to_have_count(len(runs))
    first = blocks.first
    expect(first.locator(".tool-output")).to_be_hidden()  # collapsed until opened
    status = runs[0]["logs"].split("\n")[0]
    expect(first.locator("summary")).to_have_text(f"Ran Python in the sandbox · {status}")
    first.locator("summary").click()
    expect(first.locator(".tool-code")).to_have_text(runs[0]["code"])
    expect(first.locator(".tool-output")).to_have_text(runs[0]["logs"])
    # What the page shows is the sandbox's report: the same code run here in the sandbox agrees.
    assert runs[0]["logs"] == CodeInterpreter()(runs[0]["code"])

    # Saved runs come back after a reload; a failed one is marked, its code highlighted.
    cut = {"id": "ci_2", "code": "print(1)", "logs": "stopped before the sandbox answered", "status": "incomplete"}
    answer = {"role": "assistant", "content": "It fails.", "meta": {"finish": "stopped", "toolRuns": [FAILED_RUN, cut]}}
    seed_conversations(
        page,
        [conversation("c1", "Python", [{"role": "user", "content": "sqrt(-1)?"}, answer], codeInterpreter="auto")],
    )
    expect(page.locator("#codeInterpreter")).to_have_value("auto")
    expect(page.locator(".msg.assistant .tool-run.failed summary")).to_have_text(
        [
            "Ran Python in the sandbox · error (exit code 1)",
            "Python run not finished · stopped before the sandbox answered",
        ]
    )
    block = page.locator(".msg.assistant .tool-run.failed").first
    block.locator("summary").click()
    expect(block.locator(".tool-code .hljs-keyword").first).to_have_text("import")
    expect(block.locator(".tool-output")).to_contain_text("ValueError: math domain error")
    shot(page, "desktop-1280-code-interpreter.png")
    page.set_viewport_size({"width": 390, "height": 780})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "phone-390-code-interpreter.png")
    assert page.errors == []


@pytest.mark.slow
def test_code_interpreter_with_documents_over_the_responses_api(server, browser, expect, tmp_path):  # noqa: F811
    """Both tools at once: the page asks /v1/responses, shows the passages the server's
    file_search found (not a second search) and sends earlier runs back on the next turn."""
    page = open_page(browser, server.url)
    sent = bodies_to(page, "/v1/responses")
    searches = bodies_to(page, "/search")
    add_handbook(page, expect, tmp_path)
    page.select_option("#codeInterpreter", "required")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "48")
    page.click("#settings-close")
    page.fill("#prompt", "When does the Zorblax office open?")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .stats")).to_contain_text("tokens", timeout=120000)
    store_id = stored(page)["conversations"][0]["settings"]["vectorStoreId"]
    assert sent[-1]["tools"][1] == {"type": "file_search", "vector_store_ids": [store_id], "max_num_results": 5}
    assert sent[-1]["include"] == ["file_search_call.results"]
    meta = stored(page)["conversations"][0]["messages"][1]["meta"]
    assert meta["sources"][0]["filename"] == "handbook.txt" and "7:45" in meta["sources"][0]["text"]
    assert searches == []  # the sources came with the response
    assert meta["toolRuns"]

    page.fill("#prompt", "And when does it close?")
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant").nth(1).locator(".stats")).to_contain_text("tokens", timeout=120000)
    calls = [i for i in sent[-1]["input"] if i.get("type") == "code_interpreter_call"]
    assert [c["id"] for c in calls] == [r["id"] for r in meta["toolRuns"]]
    assert page.locator("#banner").is_hidden()  # the server took the earlier runs back
    assert page.errors == []


@pytest.mark.slow
def test_model_picker_lists_adapters_and_a_reply_uses_the_chosen_one(browser, expect, tmp_path):  # noqa: F811
    from lhama.loader import load_model
    from tests.engine.lora_adapters import make_adapter
    from tests.serving import ServerProcess

    adapter = make_adapter(tmp_path / "a1", load_model("default").args, rank=4, targets=("wq",), seed=1)
    srv = ServerProcess(tmp_path / "data", "--lora", f"tuned={adapter}", timeout=600)
    try:
        page = open_page(browser, srv.url)
        sent = bodies_to(page, "/v1/chat/completions")
        ids = [m["id"] for m in httpx.get(srv.base + "/models").json()["data"]]
        assert "tuned" in ids and MODEL in ids
        expect(page.locator("#model option")).to_have_text(ids)
        page.select_option("#model", "tuned")
        page.click("#settings-toggle")
        page.fill("#max_tokens", "8")
        page.click("#settings-close")
        page.fill("#prompt", "Say hello.")
        page.keyboard.press("Enter")
        expect(page.locator(".msg.assistant .stats")).to_contain_text("tokens", timeout=120000)
        assert sent[-1]["model"] == "tuned"
        assert stored(page)["conversations"][0]["messages"][1]["meta"]["model"] == "tuned"
        page.reload()
        expect(page.locator("#model")).to_have_value("tuned")  # kept with the conversation
        assert page.errors == []
    finally:
        srv.stop()

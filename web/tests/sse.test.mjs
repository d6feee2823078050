import assert from "node:assert/strict";
import { test } from "node:test";

import { readEvents, SSEParser } from "../../src/lhama/server/static/js/sse.js";

test("events split anywhere across chunks come out whole", () => {
  const text = 'data: {"a":1}\n\n: keep-alive\n\ndata: {"b":"x\\ny"}\n\ndata: [DONE]\n\n';
  for (let size = 1; size <= text.length; size++) {
    const parser = new SSEParser();
    const out = [];
    for (let i = 0; i < text.length; i += size) out.push(...parser.feed(text.slice(i, i + size)));
    assert.deepEqual(out, [{ a: 1 }, { b: "x\ny" }, "[DONE]"], `chunk size ${size}`);
  }
});

test("CRLF line ends, data without a space, and multi-line data", () => {
  const parser = new SSEParser();
  assert.deepEqual(parser.feed('data:{"a":1}\r\n\r\nevent: x\r\ndata: [1,\r\ndata: 2]\r\n\r\n'), [{ a: 1 }, [1, 2]]);
});

test("an unfinished event waits for its blank line", () => {
  const parser = new SSEParser();
  assert.deepEqual(parser.feed('data: {"a":1}\n'), []);
  assert.deepEqual(parser.feed("\n"), [{ a: 1 }]);
});

test("readEvents decodes UTF-8 split inside a character and stops at [DONE]", async () => {
  const bytes = new TextEncoder().encode('data: {"t":"héllo 🦙"}\n\ndata: [DONE]\n\ndata: {"after":1}\n\n');
  const body = new ReadableStream({
    start(controller) {
      for (let i = 0; i < bytes.length; i += 3) controller.enqueue(bytes.slice(i, i + 3));
      controller.close();
    },
  });
  const events = [];
  for await (const e of readEvents(body)) events.push(e);
  assert.deepEqual(events, [{ t: "héllo 🦙" }]);
});

test("a body that ends without [DONE] still yields its last event", async () => {
  const body = new ReadableStream({
    start(c) {
      c.enqueue(new TextEncoder().encode('data: {"x":2}\n\n'));
      c.close();
    },
  });
  const events = [];
  for await (const e of readEvents(body)) events.push(e);
  assert.deepEqual(events, [{ x: 2 }]);
});

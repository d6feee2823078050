import assert from "node:assert/strict";
import { test } from "node:test";

import { ConversationStore, STORAGE_KEY, titleFrom } from "../../src/lhama/server/static/js/store.js";

class MemoryStorage {
  constructor() { this.map = new Map(); }
  getItem(k) { return this.map.has(k) ? this.map.get(k) : null; }
  setItem(k, v) { this.map.set(k, String(v)); }
}

function clock() {
  let t = 1000;
  return () => (t += 10);
}

test("conversations survive a new store on the same storage (a reload)", () => {
  const storage = new MemoryStorage();
  const a = new ConversationStore(storage, clock());
  const c = a.create({ system: "Be brief.", temperature: 0.2 });
  c.messages.push({ role: "user", content: "hi" }, { role: "assistant", content: "hello", meta: { tokens: 2 } });
  a.touch(c);
  const b = new ConversationStore(storage, clock());
  assert.equal(b.currentId, c.id);
  assert.deepEqual(b.current().messages, c.messages);
  assert.equal(b.current().settings.system, "Be brief.");
  assert.equal(b.current().settings.temperature, 0.2);
  assert.equal(b.current().settings.top_p, ""); // what was not given stays unset: the server's default
});

test("chats saved with the page's old built-in sampling values (0.7, 1, 1024) leave sampling to the server", () => {
  const storage = new MemoryStorage();
  const old = (id, temperature) => ({
    id, title: id, created: 1, updated: 1, draft: "", messages: [],
    settings: { model: "m", system: "", temperature, top_p: 1, max_tokens: 1024, seed: "" },
  });
  storage.setItem(STORAGE_KEY, JSON.stringify({ version: 1, currentId: "a", conversations: [old("a", 0.7), old("b", 0.2)] }));
  const s = new ConversationStore(storage, clock());
  assert.deepEqual([s.get("a").settings.temperature, s.get("a").settings.top_p, s.get("a").settings.max_tokens], ["", "", ""]);
  // one field changed: the user chose these, so all are kept
  assert.deepEqual([s.get("b").settings.temperature, s.get("b").settings.top_p, s.get("b").settings.max_tokens], [0.2, 1, 1024]);
});

test("list is most recent first; search matches titles ignoring case; rename and remove", () => {
  const s = new ConversationStore(new MemoryStorage(), clock());
  const one = s.create();
  s.rename(one.id, "Python question");
  const two = s.create();
  s.rename(two.id, "Dinner ideas");
  assert.deepEqual(s.list().map((c) => c.title), ["Dinner ideas", "Python question"]);
  s.touch(one);
  assert.deepEqual(s.list().map((c) => c.title), ["Python question", "Dinner ideas"]);
  assert.deepEqual(s.list("PYTHON").map((c) => c.id), [one.id]);
  assert.deepEqual(s.list("nothing"), []);
  assert.equal(s.rename(one.id, "   "), false);
  s.select(two.id);
  s.remove(two.id);
  assert.equal(s.currentId, one.id); // the current one went: the most recent other is shown
  s.remove(one.id);
  assert.equal(s.current(), null);
});

test("export then import adds copies with fresh ids; bad files are refused with a reason", () => {
  const s = new ConversationStore(new MemoryStorage(), clock());
  const c = s.create();
  c.title = "Kept";
  c.messages.push({ role: "user", content: "q" });
  const dump = s.exportJSON();
  assert.equal(s.importJSON(dump), 1);
  assert.equal(s.conversations.length, 2);
  assert.notEqual(s.conversations[0].id, s.conversations[1].id);
  assert.deepEqual(s.conversations[1].messages, [{ role: "user", content: "q" }]);
  assert.throws(() => s.importJSON("{nope"), /not JSON/);
  assert.throws(() => s.importJSON('{"conversations":[{"messages":[{"role":"robot","content":1}]}]}'), /no lhama conversations/);
  assert.equal(s.conversations.length, 2);
});

test("a damaged storage entry starts an empty list instead of breaking the page", () => {
  const storage = new MemoryStorage();
  storage.setItem(STORAGE_KEY, "{broken");
  const s = new ConversationStore(storage);
  assert.deepEqual(s.list(), []);
});

test("titles come from the first line, shortened", () => {
  assert.equal(titleFrom("  How do I   sort a list?\nmore"), "How do I sort a list?");
  assert.equal(titleFrom("x".repeat(80)).length, 48);
  assert.equal(titleFrom(""), "New chat");
});

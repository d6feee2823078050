import assert from "node:assert/strict";
import { test } from "node:test";

import { ReplyAccumulator, replySeconds, replyStats, requestBody, stableCut } from "../../src/lhama/server/static/js/chat-state.js";
import { DEFAULT_SETTINGS, samplingPlaceholders, validateSettings } from "../../src/lhama/server/static/js/settings.js";

test("settings: temperature 0..2, top_p (0, 1], whole max tokens within the context, optional seed", () => {
  const ok = validateSettings({ temperature: "1.5", top_p: "0.9", max_tokens: "256", seed: "" });
  assert.deepEqual(ok.errors, {});
  assert.equal(ok.values.temperature, 1.5);
  assert.equal(ok.values.seed, "");
  const bad = validateSettings({ temperature: "7", top_p: "0", max_tokens: "2.5", seed: "-1" });
  assert.deepEqual(Object.keys(bad.errors).sort(), ["max_tokens", "seed", "temperature", "top_p"]);
  assert.match(validateSettings({ temperature: "warm", top_p: 1, max_tokens: 1 }).errors.temperature, /between 0 and 2/);
  // empty fields are not errors: they are left to the server's sampling defaults
  const unset = validateSettings({ temperature: " ", top_p: "", max_tokens: "" });
  assert.deepEqual(unset.errors, {});
  assert.deepEqual([unset.values.temperature, unset.values.top_p, unset.values.max_tokens], ["", "", ""]);
  assert.match(validateSettings({ temperature: 1, top_p: 1, max_tokens: 9000 }, { maxModelLen: 8192 }).errors.max_tokens, /8192/);
  assert.equal(validateSettings({ temperature: 0, top_p: 1, max_tokens: 1, seed: "42" }).values.seed, 42);
  // the code interpreter: off, "auto" or "required"; a saved chat's old checkbox `true` is "auto"
  assert.equal(validateSettings({ temperature: 0, top_p: 1, max_tokens: 1 }).values.codeInterpreter, "");
  assert.equal(validateSettings({ temperature: 0, top_p: 1, max_tokens: 1, codeInterpreter: true }).values.codeInterpreter, "auto");
  assert.equal(validateSettings({ temperature: 0, top_p: 1, max_tokens: 1, codeInterpreter: "required" }).values.codeInterpreter, "required");
  assert.equal(validateSettings({ temperature: 0, top_p: 1, max_tokens: 1, codeInterpreter: "sometimes" }).values.codeInterpreter, "");
});

test("request body: system first, settings as sent, seed and tools only when set", () => {
  const conv = { messages: [{ role: "user", content: "hi", meta: {} }] };
  const { values } = validateSettings({ model: "m", system: " Be brief. ", temperature: 0.3, top_p: 0.9, max_tokens: 64, seed: "" });
  const body = requestBody(conv, values);
  assert.deepEqual(body.messages, [{ role: "system", content: "Be brief." }, { role: "user", content: "hi" }]);
  assert.equal(body.model, "m");
  assert.equal(body.max_tokens, 64);
  assert.equal("seed" in body, false);
  assert.equal("tools" in body, false);
  const withTools = requestBody(conv, { ...values, seed: 7, vectorStoreId: "vs_1" });
  assert.equal(withTools.seed, 7);
  assert.deepEqual(withTools.tools.map((t) => t.type), ["file_search"]);
});

test("request body: sampling fields the user left empty are not sent (the server's defaults apply)", () => {
  const conv = { messages: [{ role: "user", content: "hi", meta: {} }] };
  const fresh = validateSettings({ ...DEFAULT_SETTINGS, model: "m" });
  assert.deepEqual(fresh.errors, {});
  const body = requestBody(conv, fresh.values);
  for (const name of ["temperature", "top_p", "max_tokens", "seed"]) assert.equal(name in body, false, name);
  const some = requestBody(conv, validateSettings({ ...DEFAULT_SETTINGS, model: "m", temperature: "0" }).values);
  assert.equal(some.temperature, 0); // 0 is a value (greedy), not "unset"
  assert.equal("top_p" in some, false);
  assert.equal("max_tokens" in some, false);
});

test("placeholders show the server's sampling defaults, or say that the server decides", () => {
  assert.deepEqual(samplingPlaceholders({ temperature: 0.6, top_p: 0.9, max_tokens: 512 }), {
    temperature: "0.6 (default)", top_p: "0.9 (default)", max_tokens: "512 (default)",
  });
  assert.equal(samplingPlaceholders(null).temperature, "server default");
});

test("reply accumulator joins deltas, whole tool calls, finish reason and usage", () => {
  const r = new ReplyAccumulator();
  assert.equal(r.add({ choices: [{ delta: { role: "assistant" } }] }), false);
  assert.equal(r.add({ choices: [{ delta: { content: "Hel" } }] }), true);
  r.add({ choices: [{ delta: { content: "lo" }, finish_reason: "length" }] });
  r.add({ choices: [{ delta: { tool_calls: [{ index: 0, id: "c1", function: { name: "code_interpreter", arguments: '{"code":"1+1"}' } }] } }] });
  r.add({ choices: [], usage: { completion_tokens: 5 } });
  assert.equal(r.content, "Hello");
  assert.equal(r.finish, "length");
  assert.deepEqual(r.toolCalls, [{ id: "c1", name: "code_interpreter", arguments: '{"code":"1+1"}' }]);
  assert.equal(r.usage.completion_tokens, 5);
  assert.throws(() => r.add({ error: { message: "engine failed" } }), /engine failed/);
});

test("stats: tok/s from decode time; a length finish says it was cut by max tokens", () => {
  assert.deepEqual(replyStats({ tokens: 30, seconds: 2, finish: "stop", maxTokens: 64 }),
    { text: "30 tokens · 15.0 tok/s · finish: stop", warning: null });
  const cut = replyStats({ tokens: 64, seconds: 4, finish: "length", maxTokens: 64 });
  assert.match(cut.warning, /cut by max tokens \(64\)/);
  assert.match(replyStats({ tokens: 9, seconds: 1, finish: "length", maxTokens: null }).warning, /^cut by max tokens: raise/);
  assert.equal(replyStats({ tokens: null, seconds: 0, finish: "stopped" }).warning, "stopped");
});

test("stable cut: after the last blank line, never inside a code fence", () => {
  assert.equal(stableCut("one"), 0);
  assert.equal(stableCut("one\n\ntwo"), 5);
  assert.equal(stableCut("a\n\n```py\nx = 1\n\ny = 2"), 3); // the blank line in the open fence does not count
  const closed = "a\n\n```py\nx = 1\n\ny\n```\n\nnext";
  assert.equal(closed.slice(stableCut(closed)), "next");
  assert.equal(stableCut("~~~\n\n```\n\n"), 0); // a ``` line does not close a ~~~ fence
});

test("a reply stopped before usage arrived counts its pieces as approximate tokens", () => {
  const r = new ReplyAccumulator();
  r.add({ choices: [{ delta: { content: "a" } }] });
  r.add({ choices: [{ delta: { content: "b" } }] });
  assert.equal(replyStats({ tokens: null, deltas: r.deltas, seconds: 1, finish: "stopped" }).text, "≈2 tokens");
});

test("reply seconds: from the first piece when text streamed, from the request when it came whole", () => {
  assert.equal(replySeconds(10, 1000, 3000, 5000), 2); // streamed: decoding only
  assert.equal(replySeconds(1, 1000, 4900, 5000), 4); // one piece: the whole turn
  assert.equal(replySeconds(0, null, null, 5000), 0);
});

import assert from "node:assert/strict";
import { test } from "node:test";

import { ResponseAccumulator, responsesBody } from "../../src/lhama/server/static/js/responses.js";
import { validateSettings } from "../../src/lhama/server/static/js/settings.js";

const settings = (extra) => ({
  ...validateSettings({ model: "m", temperature: 0.2, top_p: 0.9, max_tokens: 64, seed: "5", ...extra }).values,
});

test("responses body: the code interpreter tool, instructions, sampling; earlier runs go back as items", () => {
  const run = { id: "ci_1", code: "print(2)", logs: "completed\n[stdout]\n2\n[/stdout]", status: "completed" };
  const conv = {
    messages: [
      { role: "user", content: "two?" },
      { role: "assistant", content: "It is 2.", meta: { toolRuns: [run] } },
      { role: "user", content: "and three?" },
    ],
  };
  const body = responsesBody(conv, settings({ system: " Be brief. ", codeInterpreter: "auto" }));
  assert.equal(body.instructions, "Be brief.");
  assert.equal(body.stream, true);
  assert.equal(body.store, false);
  assert.equal(body.tool_choice, "auto");
  assert.equal(body.max_output_tokens, 64);
  assert.equal(body.temperature, 0.2);
  assert.equal("seed" in body, false); // the Responses API has no seed
  assert.deepEqual(body.tools.map((t) => t.type), ["code_interpreter"]);
  assert.equal("include" in body, false);
  assert.deepEqual(body.input, [
    { role: "user", content: "two?" },
    { type: "code_interpreter_call", id: "ci_1", code: "print(2)", status: "completed", container_id: "lhama-sandbox",
      outputs: [{ type: "logs", logs: run.logs }] },
    { role: "assistant", content: "It is 2." },
    { role: "user", content: "and three?" },
  ]);
  const every = responsesBody({ messages: [{ role: "user", content: "x" }] },
    settings({ codeInterpreter: "required", vectorStoreId: "vs_9" }));
  assert.equal(every.tool_choice, "required");
  assert.deepEqual(every.tools[1], { type: "file_search", vector_store_ids: ["vs_9"], max_num_results: 5 });
  assert.deepEqual(every.include, ["file_search_call.results"]);
});

test("responses body: sampling fields left empty are not sent", () => {
  const body = responsesBody({ messages: [{ role: "user", content: "x" }] },
    settings({ temperature: "", top_p: "", max_tokens: "", codeInterpreter: "auto" }));
  for (const name of ["temperature", "top_p", "max_output_tokens", "max_tokens"]) assert.equal(name in body, false, name);
  const one = responsesBody({ messages: [{ role: "user", content: "x" }] }, settings({ top_p: "", max_tokens: "" }));
  assert.equal(one.temperature, 0.2);
  assert.equal("max_output_tokens" in one, false);
});

test("response accumulator: runs (in progress, then with output), sources, text, usage and finish", () => {
  const r = new ResponseAccumulator();
  assert.equal(r.add({ type: "response.created", response: { status: "in_progress" } }), false);
  r.add({ type: "response.output_item.done", item: { type: "file_search_call", id: "fs", results: [{ filename: "a.txt", text: "A", score: 1 }] } });
  assert.deepEqual(r.sources, [{ filename: "a.txt", text: "A" }]);
  assert.equal(r.add({ type: "response.output_item.added", item: { type: "code_interpreter_call", id: "ci", code: "1+1", outputs: null, status: "in_progress" } }), true);
  assert.equal(r.toolRuns[0].status, "in_progress");
  r.add({ type: "response.output_item.done", item: { type: "code_interpreter_call", id: "ci", code: "1+1", outputs: [{ type: "logs", logs: "completed" }], status: "completed" } });
  assert.deepEqual(r.toolRuns, [{ id: "ci", code: "1+1", logs: "completed", status: "completed" }]);
  assert.equal(r.add({ type: "response.output_text.delta", delta: "It" }), true);
  r.add({ type: "response.output_text.delta", delta: " is 2" });
  assert.equal(r.content, "It is 2");
  assert.equal(r.deltas, 2);
  r.add({ type: "response.incomplete", response: { status: "incomplete", incomplete_details: { reason: "max_output_tokens" }, usage: { input_tokens: 9, output_tokens: 12 } } });
  assert.equal(r.finish, "length");
  assert.equal(r.usage.completion_tokens, 12);
  const cut = new ResponseAccumulator();
  cut.add({ type: "response.output_item.added", item: { type: "code_interpreter_call", id: "c2", code: "x", outputs: null, status: "in_progress" } });
  cut.interrupt("stopped before the sandbox answered");
  assert.deepEqual(cut.toolRuns[0], { id: "c2", code: "x", logs: "stopped before the sandbox answered", status: "incomplete" });
  const done = new ResponseAccumulator();
  done.add({ type: "response.completed", response: { status: "completed", usage: { input_tokens: 1, output_tokens: 2 } } });
  assert.equal(done.finish, "stop");
  assert.throws(() => done.add({ type: "error", code: "x", message: "engine failed" }), /engine failed/);
});

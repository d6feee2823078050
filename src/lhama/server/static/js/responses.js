// Replies with the code interpreter on go through the server's /v1/responses: the server runs
// each piece of Python the model writes in its sandbox, feeds the output back to the model and
// streams both the run and the answer. This module builds that request and reads its events.

import { samplingFields } from "./settings.js";

// The body of POST /v1/responses for `conv` (its messages end with the user's turn). Earlier
// runs go back as code_interpreter_call items, so the model sees what its code printed.
export function responsesBody(conv, settings) {
  const input = [];
  for (const m of conv.messages) {
    for (const run of m.meta?.toolRuns || []) {
      input.push({
        type: "code_interpreter_call", id: run.id, code: run.code, status: "completed",
        container_id: "lhama-sandbox", outputs: [{ type: "logs", logs: run.logs }],
      });
    }
    if (m.content || m.role === "user") input.push({ role: m.role, content: m.content });
  }
  const tools = [{ type: "code_interpreter", container: { type: "auto" } }];
  const body = {
    model: settings.model, input, stream: true, store: false, tools,
    tool_choice: settings.codeInterpreter === "required" ? "required" : "auto",
    ...samplingFields(settings, { max_tokens: "max_output_tokens" }),
  };
  if (settings.system.trim()) body.instructions = settings.system.trim();
  if (settings.vectorStoreId) {
    tools.push({ type: "file_search", vector_store_ids: [settings.vectorStoreId], max_num_results: 5 });
    body.include = ["file_search_call.results"];
  }
  return body;
}

// Collects a streamed response: the answer's text, each sandbox run ({id, code, logs, status}),
// the passages file_search found (sources[n-1] is [n]), usage and why it ended. Same fields
// as ReplyAccumulator where they overlap, so the page treats both alike.
export class ResponseAccumulator {
  constructor() {
    this.content = "";
    this.toolRuns = [];
    this.sources = null;
    this.finish = null;
    this.usage = null;
    this.deltas = 0;
  }

  // Applies one Responses event; returns true when something visible changed.
  add(event) {
    switch (event.type) {
      case "error":
        throw new Error(event.message || "the server reported an error");
      case "response.output_text.delta":
        this.content += event.delta;
        this.deltas += 1;
        return Boolean(event.delta);
      case "response.output_item.added":
      case "response.output_item.done":
        return this.item(event.item);
      case "response.completed":
      case "response.incomplete":
      case "response.failed": {
        const r = event.response;
        const reason = r.incomplete_details?.reason;
        this.finish = r.status === "completed" ? "stop" : reason === "max_output_tokens" ? "length" : reason || r.status;
        if (r.usage) this.usage = { prompt_tokens: r.usage.input_tokens, completion_tokens: r.usage.output_tokens };
        return false;
      }
      default:
        return false;
    }
  }

  // A reply cut short (Stop, a lost connection): a run still going will never report back.
  interrupt(why) {
    for (const run of this.toolRuns) if (run.status === "in_progress") Object.assign(run, { status: "incomplete", logs: why });
  }

  item(it) {
    if (it.type === "code_interpreter_call") {
      const run = { id: it.id, code: it.code || "", logs: (it.outputs || []).map((o) => o.logs ?? "").join("\n"), status: it.status };
      const at = this.toolRuns.findIndex((r) => r.id === it.id);
      if (at >= 0) this.toolRuns[at] = run;
      else this.toolRuns.push(run);
      return true;
    }
    if (it.type === "file_search_call" && it.results) {
      this.sources = it.results.map((r) => ({ filename: r.filename, text: r.text }));
    }
    return false; // the answer's text comes as output_text deltas
  }
}

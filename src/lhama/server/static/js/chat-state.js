// What a conversation turns into on the wire, and what a finished reply says about itself.

import { samplingFields } from "./settings.js";

// The body of POST /v1/chat/completions for `conv` (its messages end with the user's turn).
export function requestBody(conv, settings) {
  const messages = [];
  if (settings.system.trim()) messages.push({ role: "system", content: settings.system.trim() });
  for (const m of conv.messages) messages.push({ role: m.role, content: m.content });
  const body = {
    model: settings.model, messages, stream: true, stream_options: { include_usage: true },
    ...samplingFields(settings), // only what the user set; the rest takes the server's defaults
  };
  if (settings.seed !== "") body.seed = settings.seed;
  // (with the code interpreter on, replies go through /v1/responses instead: responses.js)
  if (settings.vectorStoreId) {
    body.tools = [{ type: "file_search", vector_store_ids: [settings.vectorStoreId], max_num_results: 5 }];
  }
  return body;
}

// Collects a streamed reply: text, tool calls (whole, as lhama sends them), finish reason, usage.
export class ReplyAccumulator {
  constructor() {
    this.content = "";
    this.toolCalls = [];
    this.finish = null;
    this.usage = null;
    this.deltas = 0; // content pieces: about one token each, the count when usage never came
  }

  // Applies one chat.completion.chunk; returns true when visible text changed.
  add(event) {
    if (event.error) throw new Error(event.error.message || "the server reported an error");
    if (event.usage) this.usage = event.usage;
    let changed = false;
    for (const choice of event.choices || []) {
      const delta = choice.delta || {};
      if (delta.content) {
        this.content += delta.content;
        this.deltas += 1;
        changed = true;
      }
      for (const call of delta.tool_calls || []) {
        const slot = (this.toolCalls[call.index ?? this.toolCalls.length] ||= { id: "", name: "", arguments: "" });
        if (call.id) slot.id = call.id;
        if (call.function?.name) slot.name += call.function.name;
        if (call.function?.arguments) slot.arguments += call.function.arguments;
        changed = true;
      }
      if (choice.finish_reason) this.finish = choice.finish_reason;
    }
    return changed;
  }
}

// The line under a reply: tokens, speed, why it ended. `seconds` is the time spent generating
// (first token to last), so tok/s is decoding speed, not including the wait for the first token.
export function replyStats({ tokens, deltas, seconds, finish, maxTokens }) {
  const parts = [];
  if (tokens != null) parts.push(`${tokens} tokens`);
  else if (deltas) parts.push(`≈${deltas} tokens`); // a stopped reply gets no usage from the server
  if (tokens != null && seconds > 0) parts.push(`${(tokens / seconds).toFixed(1)} tok/s`);
  let warning = null;
  if (finish === "length") {
    const limit = maxTokens == null || maxTokens === "" ? "" : ` (${maxTokens})`;
    warning = `cut by max tokens${limit}: raise Max tokens in settings for longer answers`;
  }
  else if (finish === "stopped") warning = "stopped";
  else if (finish === "interrupted") warning = "interrupted: the connection to the server was lost";
  else if (finish) parts.push(`finish: ${finish}`);
  return { text: parts.join(" · "), warning };
}

// Decoding time in seconds: first visible piece to `now` when the text streamed piece by piece;
// when it came in one piece (a turn with tools is parsed whole), the time since the server
// accepted the request (`opened`).
export function replySeconds(deltas, opened, first, now) {
  const since = deltas > 1 ? first : opened;
  return since ? (now - since) / 1000 : 0;
}

// Where a streamed markdown text can be cut so the part before it never renders differently:
// after the last blank line that is outside a fenced code block. Returns the offset (0: none).
export function stableCut(text) {
  let fence = null;
  let offset = 0;
  let cut = 0;
  for (const line of text.split("\n")) {
    const end = offset + line.length + 1;
    const m = /^ {0,3}(`{3,}|~{3,})/.exec(line);
    if (m) {
      if (!fence) fence = m[1];
      else if (m[1][0] === fence[0] && m[1].length >= fence.length && !line.trim().slice(m[1].length)) fence = null;
    } else if (!fence && line.trim() === "" && end <= text.length) cut = end;
    offset = end;
  }
  return cut;
}

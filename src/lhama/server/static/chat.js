// The lhama chat page: plain JS, no build step. Streams replies from /v1/chat/completions
// (SSE over fetch, so the Stop button can abort the request: the server then cancels the
// generation and frees its KV cache).
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model-name"), system: $("system-prompt"), temperature: $("temperature"), maxTokens: $("max-tokens"),
  apiKey: $("api-key"), messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  composer: $("composer"), status: $("status"), clear: $("clear"),
};
const history = [];  // {role, content} of the finished turns
let model = null;
let controller = null;

for (const [el, key] of [[els.system, "system"], [els.apiKey, "apiKey"], [els.temperature, "temperature"],
                         [els.maxTokens, "maxTokens"]]) {
  const saved = localStorage.getItem("lhama." + key);
  if (saved !== null) el.value = saved;
  el.addEventListener("change", () => localStorage.setItem("lhama." + key, el.value));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (els.apiKey.value) h["Authorization"] = "Bearer " + els.apiKey.value;
  return h;
}

function setStatus(text) { els.status.textContent = text; }

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  els.messages.appendChild(div);
  els.messages.scrollTop = els.messages.scrollHeight;
  return div;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch (_) {
    return resp.status + " " + resp.statusText;
  }
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) throw new Error(await errorText(resp));
    const body = await resp.json();
    model = body.data[0].id;
    els.model.textContent = model;
    setStatus("ready");
  } catch (e) {
    els.model.textContent = "unavailable";
    setStatus("cannot list models: " + e.message + (els.apiKey.value ? "" : " (set the API key in settings?)"));
  }
}

// Yields each JSON event of an SSE body; events may be split across network chunks.
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.disabled = !busy;
}

async function send(text) {
  if (!model) await loadModel();
  if (!model) return;
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const messages = [];
  if (els.system.value.trim()) messages.push({ role: "system", content: els.system.value.trim() });
  messages.push(...history);
  const out = addMessage("assistant", "");
  out.classList.add("streaming");
  controller = new AbortController();
  setBusy(true);
  setStatus("generating…");
  let reply = "", finish = null, usage = null;
  const started = performance.now();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true },
                             temperature: Number(els.temperature.value), max_tokens: Number(els.maxTokens.value) }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const event of sseEvents(resp.body)) {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          out.textContent = reply;
          els.messages.scrollTop = els.messages.scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`done (${finish || "stop"}${usage ? `, ${usage.completion_tokens} tokens` : ""}, ${secs} s)`);
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("stopped");
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = "(stopped)";
      out.appendChild(note);
    } else {
      out.remove();
      addMessage("error", e.message);
      setStatus("error");
    }
  } finally {
    out.classList.remove("streaming");
    out.dataset.done = "true";
    if (reply) history.push({ role: "assistant", content: reply });
    else if (history.length && history[history.length - 1].role === "user" && !reply) history.pop();
    controller = null;
    setBusy(false);
  }
}

els.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = els.prompt.value.trim();
  if (!text || controller) return;
  els.prompt.value = "";
  send(text);
});
els.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    els.composer.requestSubmit();
  }
});
els.stop.addEventListener("click", () => { if (controller) controller.abort(); });
els.clear.addEventListener("click", () => { history.length = 0; els.messages.textContent = ""; setStatus("ready"); });
els.apiKey.addEventListener("change", loadModel);
loadModel();

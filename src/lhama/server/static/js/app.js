// The lhama chat page: wires the conversation store, the settings form, the message list and
// the streaming request together. Replies stream from /v1/chat/completions over fetch, so Stop
// aborts the request and the server cancels the generation and frees its KV cache.

import { ApiError, listModels, request, setApiKey } from "./api.js";
import { ReplyAccumulator, requestBody } from "./chat-state.js";
import { drawDocuments, fetchSources, wireDocuments } from "./documents.js";
import { editInPlace, messageElement, queuedElement } from "./messages-view.js";
import { StreamingMarkdown } from "./render.js";
import { validateSettings } from "./settings.js";
import { drawModelOptions, fillSettingsForm, readSettingsForm, showSettingsErrors } from "./settings-form.js";
import { readEvents } from "./sse.js";
import { drawSidebar, wireImportExport } from "./sidebar.js";
import { ConversationStore, titleFrom } from "./store.js";

const $ = (id) => document.getElementById(id);
const els = Object.fromEntries([
  "messages", "prompt", "composer", "send", "stop", "status", "model", "chat-title", "banner", "banner-text",
  "banner-retry", "banner-close", "settings", "settings-toggle", "settings-close", "settings-form", "api-key",
  "menu", "sidebar", "new-chat", "search", "conversations", "export", "import", "import-file",
  "add-documents", "document-files", "documents",
].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), $(id)]));

const store = new ConversationStore(localStorage);
const queue = []; // messages sent while an answer streams; they go out in order afterwards
let active = null; // {controller, conv, el} of the reply being streamed
let models = []; // model cards from /v1/models
let retryAction = null;

function conv() {
  return store.current() || store.create(lastSettings());
}

// A new chat starts with the settings of the one used last (system prompt, model, sampling).
function lastSettings() {
  const last = store.list()[0];
  return last ? { ...last.settings, vectorStoreId: "" } : {};
}

function setStatus(text) {
  els.status.textContent = text;
}

function showBanner(text, retry) {
  els.bannerText.textContent = text;
  retryAction = retry;
  els.bannerRetry.hidden = !retry;
  els.banner.hidden = false;
}

function hideBanner() {
  els.banner.hidden = true;
  retryAction = null;
}

function setBusy(busy) {
  els.stop.hidden = !busy;
  els.send.textContent = busy ? "Queue" : "Send";
  els.send.title = busy ? "Sends when the current answer ends" : "";
}

function atBottom() {
  const m = els.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
}

function scrollDown() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

// --- settings -------------------------------------------------------------------------------

function maxModelLen() {
  return models.find((m) => m.id === conv().settings.model)?.max_model_len ?? null;
}

function formSettings() {
  return readSettingsForm(conv().settings, els.model.value, maxModelLen());
}

function onSettingsInput() {
  const { values, errors } = formSettings();
  showSettingsErrors(errors);
  if (!Object.keys(errors).length) {
    conv().settings = values;
    store.save();
  }
}

function fillSettings() {
  fillSettingsForm(conv().settings);
  drawModels();
  drawDocuments(els.documents, conv());
}

function openSettings(open = true) {
  els.settings.hidden = !open;
  els.settingsToggle.setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("settings-open", open);
}

function drawModels() {
  const chosen = drawModelOptions(els.model, models, conv().settings.model);
  if (models.length && conv().settings.model !== chosen) {
    conv().settings.model = chosen;
    store.save();
  }
}

async function loadModels() {
  try {
    models = await listModels();
    drawModels();
    hideBanner();
    setStatus("Ready");
    return true;
  } catch (e) {
    models = [];
    drawModels();
    fail(e, loadModels);
    return false;
  }
}

// --- failures ---------------------------------------------------------------------------------

function fail(error, retry) {
  if (error.kind === "unreachable" && models.length) {
    models = [];
    drawModels();
  }
  if (error.kind === "auth") {
    showBanner(error.message, retry);
    openSettings(true);
    els.apiKey.focus();
    setStatus("Needs an API key");
  } else if (error.kind === "unreachable") {
    showBanner("The lhama server cannot be reached (stopped or restarting). Your message is kept.", retry);
    setStatus("Offline");
  } else {
    showBanner("The server refused the request: " + error.message, retry);
    setStatus("Error");
  }
}

// --- conversation view ----------------------------------------------------------------------

const actions = {
  regenerate() {
    const c = conv();
    if (active || c.messages.at(-1)?.role !== "assistant") return;
    c.messages.pop();
    store.touch(c);
    drawMessages();
    generate(c);
  },
  edit(index, el) {
    if (active) return setStatus("Stop the current answer before editing");
    const c = conv();
    editInPlace(el, c.messages[index].content, (text) => {
      if (!text) return;
      c.messages.splice(index);
      startTurn(c, text);
    });
  },
};

function drawMessages() {
  const c = conv();
  const stick = atBottom();
  const nodes = c.messages.map((_, i) => messageElement(c, i, actions));
  if (active?.conv === c) nodes.push(active.el); // the reply still streaming stays in place
  queue.forEach((text, i) => nodes.push(queuedElement(text, () => {
    queue.splice(i, 1);
    drawMessages();
  })));
  if (!c.messages.length && !queue.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Ask anything. Answers stream from the model on this server.";
    nodes.push(empty);
  }
  els.messages.replaceChildren(...nodes);
  els.chatTitle.textContent = c.title;
  if (stick) scrollDown();
}

function drawAll() {
  drawMessages();
  drawSidebar(els.conversations, store, els.search.value, sidebarActions);
}

const sidebarActions = {
  select(id) {
    leaveConversation();
    store.select(id);
    showConversation();
    document.body.classList.remove("sidebar-open");
    els.menu.setAttribute("aria-expanded", "false");
  },
  rename(id, title) {
    store.rename(id, title);
    drawAll();
  },
  remove(id) {
    if (id === store.currentId) leaveConversation();
    store.remove(id);
    showConversation();
  },
};

// Before another conversation is shown: stop the reply in progress and keep queued text as draft.
function leaveConversation() {
  const c = store.current();
  if (!c) return;
  if (active) active.controller.abort();
  const pending = [...queue.splice(0), els.prompt.value.trim()].filter(Boolean).join("\n\n");
  c.draft = pending;
  store.save();
}

function showConversation() {
  const c = conv();
  els.prompt.value = c.draft || "";
  autosize();
  fillSettings();
  drawAll();
  scrollDown();
}

function newChat() {
  leaveConversation();
  store.create(lastSettings());
  showConversation();
  els.prompt.focus();
}

// --- sending ----------------------------------------------------------------------------------

function submit() {
  const text = els.prompt.value.trim();
  if (!text) return;
  const c = conv();
  const { errors } = formSettings();
  const problems = Object.entries(errors);
  if (problems.length) {
    openSettings(true);
    showSettingsErrors(errors);
    $(problems[0][0]).focus();
    setStatus("Not sent: " + problems[0][1]);
    return;
  }
  els.prompt.value = "";
  autosize();
  c.draft = "";
  if (active) {
    queue.push(text);
    store.save();
    drawMessages();
    scrollDown();
    setStatus(`Queued: sends when this answer ends (${queue.length} waiting)`);
    return;
  }
  startTurn(c, text);
}

function startTurn(c, text) {
  c.messages.push({ role: "user", content: text });
  if (c.title === "New chat") c.title = titleFrom(text);
  store.touch(c);
  drawAll();
  scrollDown();
  generate(c, text);
}

// Streams a reply to the last user turn of `c`. `unsent` is that turn's text when the user just
// sent it: if nothing comes back, the turn is taken out again and the text goes back into the
// message box, so a failure never loses what was typed.
async function generate(c, unsent = null) {
  const { values: settings } = validateSettings(c.settings, { maxModelLen: maxModelLen() });
  settings.model = settings.model || models[0]?.id || "";
  const el = document.createElement("article");
  el.className = "msg assistant streaming";
  el.setAttribute("aria-label", "Assistant is replying");
  el.setAttribute("aria-busy", "true");
  const body = el.appendChild(Object.assign(document.createElement("div"), { className: "body" }));
  els.messages.append(el);
  scrollDown();
  const view = new StreamingMarkdown(body);
  const reply = new ReplyAccumulator();
  const controller = new AbortController();
  active = { controller, conv: c, el };
  setBusy(true);
  setStatus("Generating…");
  let first = null;
  let error = null;
  let stopped = false;
  try {
    const resp = await request("/v1/chat/completions", { method: "POST", json: requestBody(c, settings), signal: controller.signal });
    hideBanner();
    for await (const event of readEvents(resp.body)) {
      if (reply.add(event)) {
        first ??= performance.now();
        const stick = atBottom();
        view.update(reply.content);
        if (stick) requestAnimationFrame(scrollDown);
      }
    }
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else if (e instanceof ApiError) error = e;
    else if (e instanceof TypeError) error = new ApiError("unreachable", e.message); // connection lost mid-stream
    else error = new ApiError("http", e.message); // an error event from the server, or a bad body
  }
  active = null;
  setBusy(false);
  const got = reply.content || reply.toolCalls.length;
  if (got) {
    const meta = {
      tokens: reply.usage?.completion_tokens ?? null, deltas: reply.deltas, seconds: first ? (performance.now() - first) / 1000 : 0,
      finish: stopped ? "stopped" : error ? "interrupted" : reply.finish || "stop",
      maxTokens: settings.max_tokens, model: settings.model, toolCalls: reply.toolCalls,
    };
    if (settings.vectorStoreId) meta.sources = await fetchSources(settings.vectorStoreId, c.messages.at(-1).content);
    c.messages.push({ role: "assistant", content: reply.content, meta });
    store.touch(c);
  } else if (unsent !== null && (error || stopped) && c.messages.at(-1)?.role === "user") {
    c.messages.pop();
    if (!c.messages.length) c.title = "New chat";
    const rest = els.prompt.value.trim();
    els.prompt.value = rest ? unsent + "\n\n" + rest : unsent;
    c.draft = els.prompt.value;
    autosize();
    store.save();
  }
  if (store.currentId === c.id) drawAll();
  else el.remove();
  if (error) {
    for (const text of queue.splice(0)) els.prompt.value += (els.prompt.value ? "\n\n" : "") + text;
    // Retry sends the kept message again, or replaces the cut-off / missing reply.
    fail(error, unsent !== null && !got ? () => submit() : got ? () => actions.regenerate() : () => generate(c));
    if (store.currentId === c.id) drawMessages();
    return;
  }
  setStatus(stopped ? "Stopped" : "Done");
  if (queue.length && store.currentId === c.id) startTurn(c, queue.shift());
}

// --- wiring -----------------------------------------------------------------------------------

function autosize() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = Math.min(els.prompt.scrollHeight, 200) + "px";
}

els.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  submit();
});
els.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    submit();
  }
});
els.prompt.addEventListener("input", () => {
  autosize();
  conv().draft = els.prompt.value;
  store.save();
});
els.stop.addEventListener("click", () => active?.controller.abort());
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && active) {
    ev.preventDefault();
    active.controller.abort();
  } else if (ev.key === "Escape" && !els.settings.hidden) openSettings(false);
  else if ((ev.ctrlKey || ev.metaKey) && ev.shiftKey && ev.key.toLowerCase() === "o") {
    ev.preventDefault();
    newChat();
  }
});
els.newChat.addEventListener("click", newChat);
els.search.addEventListener("input", () => drawSidebar(els.conversations, store, els.search.value, sidebarActions));
els.menu.addEventListener("click", () => {
  const open = !document.body.classList.contains("sidebar-open");
  document.body.classList.toggle("sidebar-open", open);
  els.menu.setAttribute("aria-expanded", String(open));
});
document.querySelector(".main").addEventListener("click", (ev) => {
  if (document.body.classList.contains("sidebar-open") && !els.menu.contains(ev.target)) {
    document.body.classList.remove("sidebar-open");
    els.menu.setAttribute("aria-expanded", "false");
  }
});
els.settingsToggle.addEventListener("click", () => openSettings(els.settings.hidden));
els.settingsClose.addEventListener("click", () => { openSettings(false); els.settingsToggle.focus(); });
els.settingsForm.addEventListener("input", onSettingsInput);
els.model.addEventListener("change", onSettingsInput);
els.bannerClose.addEventListener("click", hideBanner);
els.bannerRetry.addEventListener("click", async () => {
  const retry = retryAction;
  hideBanner();
  setStatus("Retrying…");
  if ((await loadModels()) && retry && retry !== loadModels) retry();
});
els.apiKey.value = localStorage.getItem("lhama.apiKey") || "";
setApiKey(els.apiKey.value);
els.apiKey.addEventListener("change", () => {
  localStorage.setItem("lhama.apiKey", els.apiKey.value.trim());
  setApiKey(els.apiKey.value);
  if (!active) loadModels();
});
wireImportExport(els, store, {
  imported(n) {
    drawAll();
    setStatus(`Imported ${n} conversation${n === 1 ? "" : "s"}`);
  },
  failed: (message) => showBanner(message, null),
});
wireDocuments(els, {
  conv,
  saved: () => store.save(),
  status: setStatus,
  failed: (e) => fail(e instanceof ApiError ? e : new ApiError("http", e.message), null),
});

showConversation();
loadModels();
els.prompt.focus();

// The lhama chat page: wires the conversation store, the settings form, the message list and
// the streaming request together. Replies stream over fetch (reply-stream.js), so Stop aborts
// the request and the server cancels the generation and frees its KV cache.

import { ApiError, listModels, setApiKey } from "./api.js";
import { Banner, explain } from "./banner.js";
import { replySeconds } from "./chat-state.js";
import { drawDocuments, fetchSources, wireDocuments } from "./documents.js";
import { autosize, closeSidebar, openSettings, wireLayout } from "./layout.js";
import { editInPlace, messageElement, queuedElement, streamingElement } from "./messages-view.js";
import { validateSettings } from "./settings.js";
import { drawModelOptions, fillSettingsForm, readSettingsForm, showSamplingDefaults, showSettingsErrors } from "./settings-form.js";
import { streamReply } from "./reply-stream.js";
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
const banner = new Banner(els, async (retry) => {
  setStatus("Retrying…");
  if ((await loadModels()) && retry && retry !== loadModels) retry();
});

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

function samplingDefaults() {
  return models.find((m) => m.id === conv().settings.model)?.sampling_defaults ?? models[0]?.sampling_defaults ?? null;
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

function drawModels() {
  const chosen = drawModelOptions(els.model, models, conv().settings.model);
  showSamplingDefaults(samplingDefaults());
  if (models.length && conv().settings.model !== chosen) {
    conv().settings.model = chosen;
    store.save();
  }
}

async function loadModels() {
  try {
    models = await listModels();
    drawModels();
    banner.hide();
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
  const { text, status } = explain(error);
  banner.show(text, retry);
  setStatus(status);
  if (error.kind === "auth") {
    openSettings(els, true);
    els.apiKey.focus();
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
    closeSidebar(els);
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
  autosize(els.prompt);
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
    openSettings(els, true);
    showSettingsErrors(errors);
    $(problems[0][0]).focus();
    setStatus("Not sent: " + problems[0][1]);
    return;
  }
  els.prompt.value = "";
  autosize(els.prompt);
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
  const bubble = streamingElement();
  const el = bubble.el;
  els.messages.append(el);
  scrollDown();
  const controller = new AbortController();
  active = { controller, conv: c, el };
  setBusy(true);
  setStatus("Generating…");
  let opened = null; // when the server accepted the request
  let first = null; // the first visible change
  const { reply, error, stopped } = await streamReply(c, settings, controller.signal, {
    onOpen() {
      opened = performance.now();
      banner.hide();
    },
    onChange(r) {
      first ??= performance.now();
      const stick = atBottom();
      const running = bubble.update(r);
      if (!queue.length) setStatus(running ? "Running Python in the sandbox…" : "Generating…"); // else "Queued: ..." stays
      if (stick) requestAnimationFrame(scrollDown);
    },
  });
  active = null;
  setBusy(false);
  if (stopped || error) reply.interrupt?.(stopped ? "stopped before the sandbox answered" : "interrupted: the connection was lost");
  const got = reply.content || reply.toolRuns?.length;
  if (got) {
    const meta = {
      tokens: reply.usage?.completion_tokens ?? null, deltas: reply.deltas, seconds: replySeconds(reply.deltas, opened, first, performance.now()),
      finish: stopped ? "stopped" : error ? "interrupted" : reply.finish || "stop",
      maxTokens: settings.max_tokens === "" ? samplingDefaults()?.max_tokens ?? null : settings.max_tokens,
      model: settings.model,
    };
    if (reply.toolRuns?.length) meta.toolRuns = reply.toolRuns;
    if (reply.sources) meta.sources = reply.sources; // the Responses API says what file_search found
    else if (settings.vectorStoreId) meta.sources = await fetchSources(settings.vectorStoreId, c.messages.at(-1).content);
    c.messages.push({ role: "assistant", content: reply.content, meta });
    store.touch(c);
  } else if (unsent !== null && (error || stopped) && c.messages.at(-1)?.role === "user") {
    c.messages.pop();
    if (!c.messages.length) c.title = "New chat";
    const rest = els.prompt.value.trim();
    els.prompt.value = rest ? unsent + "\n\n" + rest : unsent;
    c.draft = els.prompt.value;
    autosize(els.prompt);
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
  autosize(els.prompt);
  conv().draft = els.prompt.value;
  store.save();
});
els.stop.addEventListener("click", () => active?.controller.abort());
els.newChat.addEventListener("click", newChat);
wireLayout(els, {
  stop() {
    active?.controller.abort();
    return Boolean(active);
  },
  newChat,
});
els.search.addEventListener("input", () => drawSidebar(els.conversations, store, els.search.value, sidebarActions));
els.settingsForm.addEventListener("input", onSettingsInput);
els.model.addEventListener("change", onSettingsInput);
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
  failed: (message) => banner.show(message),
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

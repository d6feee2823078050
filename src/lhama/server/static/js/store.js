// Conversations kept in the browser's localStorage under one key, so they survive reloads and
// restarts of the server (which keeps no chat history). The storage object is injected so the
// logic runs under node's test runner with a plain in-memory stand-in.

import { DEFAULT_SETTINGS, upgradeSettings } from "./settings.js";

export const STORAGE_KEY = "lhama.chats.v1";
const EXPORT_FORMAT = "lhama-chats";

export function newId() {
  // crypto.randomUUID exists only in secure contexts; a LAN address over http is not one.
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === "function") return globalThis.crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

// The first line of the first user message, shortened: a title people recognise in the list.
export function titleFrom(text) {
  const line = String(text).trim().split("\n")[0].replace(/\s+/g, " ");
  return line.length > 48 ? line.slice(0, 47).trimEnd() + "…" : line || "New chat";
}

function isMessage(m) {
  return m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string";
}

function isConversation(c) {
  return c && typeof c === "object" && Array.isArray(c.messages) && c.messages.every(isMessage);
}

export class ConversationStore {
  constructor(storage, now = () => Date.now()) {
    this.storage = storage;
    this.now = now;
    this.conversations = [];
    this.currentId = null;
    let data = null;
    try {
      data = JSON.parse(storage.getItem(STORAGE_KEY) || "null");
    } catch {
      data = null; // a damaged entry must not lock the page: start empty
    }
    if (data && Array.isArray(data.conversations)) {
      this.conversations = data.conversations.filter(isConversation);
      for (const c of this.conversations) c.settings = upgradeSettings(c.settings);
      this.currentId = this.get(data.currentId) ? data.currentId : null;
    }
  }

  save() {
    this.storage.setItem(STORAGE_KEY, JSON.stringify({
      version: 1, currentId: this.currentId, conversations: this.conversations,
    }));
  }

  get(id) {
    return this.conversations.find((c) => c.id === id) || null;
  }

  current() {
    return this.get(this.currentId);
  }

  // Most recently used first; `query` matches titles, ignoring case.
  list(query = "") {
    const q = query.trim().toLowerCase();
    return this.conversations
      .filter((c) => !q || c.title.toLowerCase().includes(q))
      .sort((a, b) => b.updated - a.updated);
  }

  create(settings = {}) {
    const t = this.now();
    const conv = {
      id: newId(), title: "New chat", created: t, updated: t,
      settings: { ...DEFAULT_SETTINGS, ...settings }, messages: [], draft: "",
    };
    this.conversations.push(conv);
    this.currentId = conv.id;
    this.save();
    return conv;
  }

  select(id) {
    if (!this.get(id)) return null;
    this.currentId = id;
    this.save();
    return this.current();
  }

  rename(id, title) {
    const conv = this.get(id);
    const clean = String(title).trim();
    if (!conv || !clean) return false;
    conv.title = clean;
    this.touch(conv);
    return true;
  }

  remove(id) {
    this.conversations = this.conversations.filter((c) => c.id !== id);
    if (this.currentId === id) this.currentId = this.list()[0]?.id ?? null;
    this.save();
  }

  // Records a change to `conv` (messages, settings, draft) and moves it to the top of the list.
  touch(conv) {
    conv.updated = Math.max(this.now(), conv.updated + 1);
    this.save();
  }

  exportJSON() {
    return JSON.stringify({ format: EXPORT_FORMAT, version: 1, conversations: this.conversations }, null, 2);
  }

  // Adds the conversations of an export (or a bare list of them); ids that already exist get
  // new ones, so importing twice keeps both copies. Returns how many were added.
  importJSON(text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      throw new Error("This file is not JSON: choose a file made by Export.");
    }
    const list = Array.isArray(data) ? data : data && data.conversations;
    if (!Array.isArray(list) || !list.every(isConversation)) {
      throw new Error("This file holds no lhama conversations: choose a file made by Export.");
    }
    for (const c of list) {
      const t = this.now();
      this.conversations.push({
        id: this.get(c.id) || !c.id ? newId() : String(c.id),
        title: typeof c.title === "string" && c.title.trim() ? c.title : titleFrom(c.messages[0]?.content ?? ""),
        created: Number(c.created) || t, updated: Number(c.updated) || t,
        settings: upgradeSettings(c.settings),
        messages: c.messages.map((m) => ({ role: m.role, content: m.content, ...(m.meta ? { meta: m.meta } : {}) })),
        draft: typeof c.draft === "string" ? c.draft : "",
      });
    }
    this.save();
    return list.length;
  }
}

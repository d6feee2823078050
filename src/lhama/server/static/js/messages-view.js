// The message list: one bubble per turn, its actions (copy, edit, regenerate) and the stats
// line under a reply. The page (app.js) owns the data; this module only draws it.

import { replyStats } from "./chat-state.js";
import { copyText, flash, renderMarkdown, StreamingMarkdown } from "./render.js";
import { drawToolRuns, linkCitations } from "./tool-view.js";

function button(label, className, onClick, ariaLabel) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
  b.addEventListener("click", onClick);
  return b;
}

function statsLine(meta) {
  const { text, warning } = replyStats(meta);
  const line = document.createElement("div");
  line.className = "stats";
  line.textContent = text;
  if (warning) {
    const w = document.createElement("span");
    w.className = meta.finish === "stopped" ? "note" : "warning";
    w.textContent = warning;
    line.append(w);
  }
  return line;
}

// Draws message `index` of `conv`; `actions` holds the callbacks the buttons call.
export function messageElement(conv, index, actions) {
  const msg = conv.messages[index];
  const el = document.createElement("article");
  el.className = "msg " + msg.role;
  el.dataset.index = index;
  el.setAttribute("aria-label", msg.role === "user" ? "You said" : "Assistant replied");
  const runs = msg.meta?.toolRuns || [];
  if (runs.length) drawToolRuns(el.appendChild(Object.assign(document.createElement("div"), { className: "tools" })), runs);
  const body = document.createElement("div");
  body.className = "body";
  el.append(body);
  if (msg.role === "user") body.textContent = msg.content;
  else {
    renderMarkdown(body, msg.content);
    linkCitations(body, msg.meta?.sources);
  }
  const bar = document.createElement("div");
  bar.className = "actions";
  const copy = button("Copy", "copy", () => copyText(msg.content).then(() => flash(copy, "Copied")), "Copy message");
  bar.append(copy);
  if (msg.role === "user") bar.append(button("Edit", "edit", () => actions.edit(index, el), "Edit and resend"));
  else if (index === conv.messages.length - 1) {
    bar.append(button("Regenerate", "regenerate", () => actions.regenerate(), "Regenerate this answer"));
  }
  if (msg.meta) el.append(statsLine(msg.meta));
  el.append(bar);
  return el;
}

// Replaces a user bubble's text with an editor; `onSave(text)` resends from there.
export function editInPlace(el, text, onSave) {
  const body = el.querySelector(".body");
  const area = document.createElement("textarea");
  area.className = "edit-box";
  area.value = text;
  area.setAttribute("aria-label", "Edit message");
  area.rows = Math.min(10, text.split("\n").length + 1);
  const save = button("Save & send", "primary save-edit", () => onSave(area.value.trim()));
  const cancel = button("Cancel", "cancel-edit", () => { body.textContent = text; });
  area.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); save.click(); }
    if (ev.key === "Escape") { ev.stopPropagation(); cancel.click(); }
  });
  body.replaceChildren(area, save, cancel);
  area.focus();
}

// A message sent while a reply streams: shown dimmed until it goes out, and cancellable.
export function queuedElement(text, onCancel) {
  const el = document.createElement("article");
  el.className = "msg user queued";
  el.setAttribute("aria-label", "Queued message");
  const body = Object.assign(document.createElement("div"), { className: "body", textContent: text });
  const note = Object.assign(document.createElement("div"), {
    className: "stats", textContent: "queued: sends when the current answer ends",
  });
  note.append(button("Cancel", "cancel-queued", onCancel, "Cancel this queued message"));
  el.append(body, note);
  return el;
}

// The bubble of a reply while it streams: code runs above, the text growing below.
export function streamingElement() {
  const el = document.createElement("article");
  el.className = "msg assistant streaming";
  el.setAttribute("aria-label", "Assistant is replying");
  el.setAttribute("aria-busy", "true");
  const tools = el.appendChild(Object.assign(document.createElement("div"), { className: "tools" }));
  const view = new StreamingMarkdown(el.appendChild(Object.assign(document.createElement("div"), { className: "body" })));
  let drawn = "[]";
  return {
    el,
    // Shows `reply` so far; returns true while its last code run waits for the sandbox.
    update(reply) {
      const runs = reply.toolRuns || [];
      if (JSON.stringify(runs) !== drawn) {
        drawn = JSON.stringify(runs);
        drawToolRuns(tools, runs);
      }
      view.update(reply.content);
      return runs.at(-1)?.status === "in_progress";
    },
  };
}

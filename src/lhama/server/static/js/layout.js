// The page's chrome: the conversation list sliding over the chat at phone width, the settings
// panel, the keyboard shortcuts and the message box growing with its text.

export function openSettings(els, open = true) {
  els.settings.hidden = !open;
  els.settingsToggle.setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("settings-open", open);
}

export function closeSidebar(els) {
  document.body.classList.remove("sidebar-open");
  els.menu.setAttribute("aria-expanded", "false");
}

export function autosize(prompt) {
  prompt.style.height = "auto";
  prompt.style.height = Math.min(prompt.scrollHeight, 200) + "px";
}

// `stop()` returns true when it stopped an answer; `newChat()` starts a conversation.
export function wireLayout(els, { stop, newChat }) {
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && stop()) ev.preventDefault();
    else if (ev.key === "Escape" && !els.settings.hidden) openSettings(els, false);
    else if ((ev.ctrlKey || ev.metaKey) && ev.shiftKey && ev.key.toLowerCase() === "o") {
      ev.preventDefault();
      newChat();
    }
  });
  els.menu.addEventListener("click", () => {
    const open = !document.body.classList.contains("sidebar-open");
    document.body.classList.toggle("sidebar-open", open);
    els.menu.setAttribute("aria-expanded", String(open));
  });
  document.querySelector(".main").addEventListener("click", (ev) => {
    if (document.body.classList.contains("sidebar-open") && !els.menu.contains(ev.target)) closeSidebar(els);
  });
  els.settingsToggle.addEventListener("click", () => openSettings(els, els.settings.hidden));
  els.settingsClose.addEventListener("click", () => {
    openSettings(els, false);
    els.settingsToggle.focus();
  });
}

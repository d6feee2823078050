// The conversation list: select, rename in place, delete (a second click confirms), and the
// export / import buttons under it.

function iconButton(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "icon";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.title = label;
  b.addEventListener("click", onClick);
  return b;
}

export function drawSidebar(list, store, query, actions) {
  const items = store.list(query).map((c) => {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conv-title";
    open.textContent = c.title;
    if (c.id === store.currentId) open.setAttribute("aria-current", "page");
    open.addEventListener("click", () => actions.select(c.id));
    const rename = iconButton("✎", `Rename "${c.title}"`, () => {
      const input = document.createElement("input");
      input.className = "rename";
      input.value = c.title;
      input.setAttribute("aria-label", "New title");
      let done = false;
      const finish = (save) => {
        if (done) return;
        done = true;
        if (save && input.value.trim()) actions.rename(c.id, input.value);
        else drawSidebar(list, store, query, actions);
      };
      input.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") finish(true);
        if (ev.key === "Escape") { ev.stopPropagation(); finish(false); }
      });
      input.addEventListener("blur", () => finish(true));
      open.replaceWith(input);
      input.select();
    });
    const remove = iconButton("×", `Delete "${c.title}"`, () => {
      if (remove.classList.contains("confirm")) return actions.remove(c.id);
      remove.classList.add("confirm");
      remove.textContent = "Delete?";
      remove.setAttribute("aria-label", `Click again to delete "${c.title}"`);
      setTimeout(() => remove.isConnected && drawSidebar(list, store, query, actions), 4000);
    });
    remove.classList.add("delete");
    li.append(open, rename, remove);
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = query ? "No chat title matches." : "No chats yet.";
    items.push(li);
  }
  list.replaceChildren(...items);
}

// Export downloads every conversation as one JSON file; Import adds those of such a file.
export function wireImportExport(els, store, { imported, failed }) {
  els.export.addEventListener("click", () => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([store.exportJSON()], { type: "application/json" }));
    link.download = `lhama-chats-${new Date().toISOString().slice(0, 10)}.json`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  });
  els.import.addEventListener("click", () => els.importFile.click());
  els.importFile.addEventListener("change", async () => {
    const file = els.importFile.files[0];
    if (!file) return;
    try {
      imported(store.importJSON(await file.text()));
    } catch (e) {
      failed(e.message);
    }
    els.importFile.value = "";
  });
}

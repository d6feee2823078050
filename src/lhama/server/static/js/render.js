// Markdown to safe HTML: markdown-it (raw HTML off) renders, highlight.js colours code, KaTeX
// typesets math ($...$, $$...$$, \(...\), \[...\] through markdown-it-texmath), DOMPurify
// sanitizes the result. All are vendored globals (see web/vendor.sh).
// StreamingMarkdown renders a growing text without flicker: finished blocks are rendered once
// and kept; only the last, still-growing block is redrawn, at most once per frame.

import { stableCut } from "./chat-state.js";

const { markdownit, DOMPurify, hljs, katex, texmath } = globalThis;

// Highlighted HTML of `code` (escaped by highlight.js), or "" when `lang` is not one it knows.
export function highlightCode(code, lang) {
  if (lang && hljs.getLanguage(lang)) {
    try {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    } catch {
      // fall through: the caller escapes the plain code
    }
  }
  return "";
}

const md = markdownit({ html: false, linkify: true, highlight: highlightCode });
md.use(texmath, { engine: katex, delimiters: ["dollars", "brackets"], katexOptions: { throwOnError: false } });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function markdownToHTML(text) {
  return DOMPurify.sanitize(md.render(text));
}

export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  // http on a LAN address has no clipboard API: the old selection route still works there.
  const area = Object.assign(document.createElement("textarea"), { value: text });
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

export function flash(button, text) {
  const old = button.textContent;
  button.textContent = text;
  setTimeout(() => { button.textContent = old; }, 1200);
}

// Gives each code block a bar with its language and a Copy button, and wraps tables so wide
// ones scroll instead of widening the page.
function decorate(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.parentElement.classList.contains("code-block")) continue;
    const code = pre.querySelector("code");
    if (code) code.classList.add("hljs");
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const lang = document.createElement("span");
    lang.textContent = (code?.className.match(/language-(\S+)/) || [])[1] || "text";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy ${lang.textContent} code`);
    copy.addEventListener("click", () => copyText(pre.textContent).then(() => flash(copy, "Copied")));
    bar.append(lang, copy);
    pre.replaceWith(wrap);
    wrap.append(bar, pre);
  }
  for (const table of root.querySelectorAll("table")) {
    if (table.parentElement.classList.contains("table-wrap")) continue;
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    table.replaceWith(wrap);
    wrap.append(table);
  }
}

export function renderMarkdown(el, text) {
  el.innerHTML = markdownToHTML(text);
  decorate(el);
}

export class StreamingMarkdown {
  constructor(el) {
    this.el = el;
    this.text = "";
    this.frozenUpTo = 0;
    this.frozen = el.appendChild(document.createElement("div"));
    this.live = el.appendChild(document.createElement("div"));
    this.pending = false;
  }

  update(text) {
    this.text = text;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.pending = false;
    if (this.done) return;
    const cut = stableCut(this.text);
    if (cut > this.frozenUpTo) {
      const block = document.createElement("div");
      renderMarkdown(block, this.text.slice(this.frozenUpTo, cut));
      this.frozen.append(...block.childNodes);
      this.frozenUpTo = cut;
    }
    renderMarkdown(this.live, this.text.slice(this.frozenUpTo));
  }

  // The whole text once more in one piece, so lists and references that spanned blocks join up.
  finish() {
    this.done = true;
    renderMarkdown(this.el, this.text);
  }
}

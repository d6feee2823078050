// What tools did for a reply: one collapsible block per code-interpreter run (the Python the
// model wrote and what the sandbox printed), and [n] citations that open the cited passage.

import { highlightCode } from "./render.js";

// The block's title. The sandbox's report starts with its status line ("completed",
// "error (exit code 1)", "killed (wall_time)"); a run cut short says why instead.
function runTitle(run) {
  if (run.status === "in_progress") return "Running Python in the sandbox…";
  const status = run.logs.split("\n", 1)[0] || "done";
  return run.status === "incomplete" ? `Python run not finished · ${status}` : `Ran Python in the sandbox · ${status}`;
}

function runElement(run) {
  const details = document.createElement("details");
  details.className = "tool-run";
  if (run.status === "incomplete" || /^(error|killed)/.test(run.logs)) details.classList.add("failed");
  const summary = document.createElement("summary");
  summary.textContent = runTitle(run);
  const code = document.createElement("pre");
  code.className = "tool-code";
  code.setAttribute("aria-label", "Code the model ran");
  const inner = code.appendChild(document.createElement("code"));
  inner.className = "hljs language-python";
  const html = highlightCode(run.code, "python");
  if (html) inner.innerHTML = globalThis.DOMPurify.sanitize(html);
  else inner.textContent = run.code;
  const output = document.createElement("pre");
  output.className = "tool-output";
  output.setAttribute("aria-label", "Sandbox output");
  output.textContent = run.logs ?? "";
  details.append(summary, code, output);
  return details;
}

// Draws `runs` ({code, logs, status}) into `el`, keeping which blocks the reader had opened.
export function drawToolRuns(el, runs) {
  const open = [...el.querySelectorAll("details")].map((d) => d.open);
  el.replaceChildren(...runs.map((run, i) => {
    const block = runElement(run);
    block.open = Boolean(open[i]);
    return block;
  }));
}

// Turns "[n]" in a reply into buttons that open the n-th retrieved passage.
export function linkCitations(el, sources) {
  if (!sources?.length) return;
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) if (/\[\d+\]/.test(walker.currentNode.nodeValue)) nodes.push(walker.currentNode);
  for (const node of nodes) {
    if (node.parentElement.closest("pre, code")) continue;
    const parts = node.nodeValue.split(/(\[\d+\])/);
    node.replaceWith(...parts.map((part) => {
      const n = /^\[(\d+)\]$/.exec(part);
      const source = n && sources[Number(n[1]) - 1];
      return source ? citation(part, Number(n[1]), source) : document.createTextNode(part);
    }));
  }
}

function citation(mark, n, source) {
  const wrap = document.createElement("span");
  wrap.className = "citation";
  const quote = document.createElement("blockquote");
  quote.hidden = true;
  quote.textContent = source.text;
  const cite = document.createElement("cite");
  cite.textContent = source.filename;
  quote.append(document.createElement("br"), cite);
  const open = document.createElement("button");
  open.type = "button";
  open.className = "cite-mark";
  open.textContent = mark;
  open.setAttribute("aria-label", `Source ${n}: ${source.filename}`);
  open.setAttribute("aria-expanded", "false");
  open.addEventListener("click", () => {
    quote.hidden = !quote.hidden;
    open.setAttribute("aria-expanded", String(!quote.hidden));
  });
  wrap.append(open, quote);
  return wrap;
}

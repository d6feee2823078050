// Documents of a conversation: files uploaded to /v1/files and ingested into one vector store
// per conversation; replies then use the server's file_search grounding, which numbers the
// passages it found as [n]. The same search, run again here, shows what each [n] points at.

import { request, uploadFile } from "./api.js";

export async function addDocuments(conv, files, onProgress) {
  conv.documents ||= [];
  for (const file of files) {
    const doc = { name: file.name, status: "uploading" };
    conv.documents.push(doc);
    onProgress();
    const uploaded = await uploadFile(file);
    doc.id = uploaded.id;
    if (!conv.settings.vectorStoreId) {
      const store = await (await request("/v1/vector_stores", {
        method: "POST", json: { name: conv.title, file_ids: [uploaded.id] },
      })).json();
      conv.settings.vectorStoreId = store.id;
      doc.status = "ready";
    } else {
      const added = await (await request(`/v1/vector_stores/${conv.settings.vectorStoreId}/files`, {
        method: "POST", json: { file_id: uploaded.id },
      })).json();
      doc.status = added.status === "failed" ? `failed: ${added.last_error?.message || "not readable"}` : "ready";
    }
    onProgress();
  }
}

// "Add files…" in the settings: uploads the chosen files into the current conversation's store.
export function wireDocuments(els, { conv, saved, status, failed }) {
  els.addDocuments.addEventListener("click", () => els.documentFiles.click());
  els.documentFiles.addEventListener("change", async () => {
    const c = conv();
    status("Adding documents…");
    try {
      await addDocuments(c, [...els.documentFiles.files], () => drawDocuments(els.documents, c));
      saved();
      status("Documents ready: answers will cite them");
    } catch (e) {
      failed(e);
    }
    els.documentFiles.value = "";
    drawDocuments(els.documents, c);
  });
}

export function drawDocuments(list, conv) {
  const docs = conv.documents || [];
  list.replaceChildren(...docs.map((d) => {
    const li = document.createElement("li");
    li.textContent = `${d.name} (${d.status})`;
    return li;
  }));
}

// The passages file_search gave the model for `query`, in its order: sources[n-1] is [n].
export async function fetchSources(storeId, query) {
  try {
    const resp = await request(`/v1/vector_stores/${storeId}/search`, {
      method: "POST", json: { query, max_num_results: 5 },
    });
    const body = await resp.json();
    return body.data.map((r) => ({ filename: r.filename, text: r.content.map((p) => p.text).join("\n") }));
  } catch {
    return [];
  }
}

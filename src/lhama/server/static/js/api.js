// Calls to the lhama server. Failures become ApiError with a `kind` the page acts on:
// "unreachable" (server down or restarting: banner with Retry), "auth" (401: the API-key
// field), "http" (any other error the server explained).

export class ApiError extends Error {
  constructor(kind, message, status = 0) {
    super(message);
    this.kind = kind;
    this.status = status;
  }
}

let apiKey = "";

export function setApiKey(key) {
  apiKey = key.trim();
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (apiKey) h.Authorization = "Bearer " + apiKey;
  return h;
}

async function explain(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    message = body.error?.message || body.detail || message;
  } catch {
    // not JSON: keep the status line
  }
  if (resp.status === 401) {
    return new ApiError("auth", apiKey ? "The server refused this API key: check it in Settings."
      : "This server needs an API key: enter it in Settings.", 401);
  }
  return new ApiError("http", message, resp.status);
}

// fetch() that throws ApiError; `options.json` is sent as a JSON body.
export async function request(path, { method = "GET", json, body, signal } = {}) {
  let resp;
  try {
    resp = await fetch(path, {
      method, signal, headers: headers(json !== undefined),
      body: json !== undefined ? JSON.stringify(json) : body,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("unreachable", "Cannot reach the lhama server. Is it running?");
  }
  if (!resp.ok) throw await explain(resp);
  return resp;
}

export async function listModels() {
  const body = await (await request("/v1/models")).json();
  return body.data;
}

export async function uploadFile(file) {
  const form = new FormData();
  form.append("purpose", "assistants");
  form.append("file", file, file.name);
  return (await request("/v1/files", { method: "POST", body: form })).json();
}

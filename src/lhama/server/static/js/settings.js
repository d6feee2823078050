// Per-conversation generation settings: defaults and validation (the page refuses to send
// what the server would reject, and says which field is wrong). A sampling field left empty
// ("") is not sent: the server applies its shared sampling defaults (docs/generation.md), which
// the form shows as placeholders (`samplingPlaceholders`).

export const SAMPLING_FIELDS = ["temperature", "top_p", "max_tokens"];

export const DEFAULT_SETTINGS = Object.freeze({
  model: "",
  system: "",
  temperature: "",
  top_p: "",
  max_tokens: "",
  seed: "",
  codeInterpreter: "", // "" off, "auto" the model decides, "required" it runs code every turn
  vectorStoreId: "",
});

function number(raw) {
  const text = String(raw ?? "").trim();
  return text === "" ? NaN : Number(text);
}

// `raw` holds form values (strings or numbers). Returns {values, errors}: values typed for the
// request, errors keyed by field with a message that says what is allowed.
export function validateSettings(raw, { maxModelLen = null } = {}) {
  const errors = {};
  const values = { ...DEFAULT_SETTINGS, ...raw };
  const unset = (name) => String(raw[name] ?? "").trim() === "";
  for (const name of SAMPLING_FIELDS) if (unset(name)) values[name] = ""; // the server's default
  const temperature = number(raw.temperature);
  if (unset("temperature")) values.temperature = "";
  else if (!(temperature >= 0 && temperature <= 2)) errors.temperature = "Temperature must be between 0 and 2.";
  else values.temperature = temperature;
  const topP = number(raw.top_p);
  if (unset("top_p")) values.top_p = "";
  else if (!(topP > 0 && topP <= 1)) errors.top_p = "Top p must be above 0 and at most 1.";
  else values.top_p = topP;
  const maxTokens = number(raw.max_tokens);
  const limit = maxModelLen || Infinity;
  if (unset("max_tokens")) values.max_tokens = "";
  else if (!(Number.isInteger(maxTokens) && maxTokens >= 1 && maxTokens <= limit)) {
    errors.max_tokens = "Max tokens must be a whole number from 1" +
      (Number.isFinite(limit) ? ` to ${limit} (the model's context).` : " up.");
  } else values.max_tokens = maxTokens;
  const seedText = String(raw.seed ?? "").trim();
  if (seedText !== "") {
    const seed = Number(seedText);
    if (!Number.isSafeInteger(seed) || seed < 0) errors.seed = "Seed must be a whole number of 0 or more, or empty for random.";
    else values.seed = seed;
  } else values.seed = "";
  values.system = String(raw.system ?? "");
  values.codeInterpreter = codeMode(raw.codeInterpreter);
  return { values, errors };
}

// The sampling fields of a request body: only those the user set (`names` maps a field to the
// endpoint's own name, e.g. max_tokens -> max_output_tokens for /v1/responses).
export function samplingFields(settings, names = {}) {
  const out = {};
  for (const name of SAMPLING_FIELDS) {
    if (settings[name] !== "" && settings[name] != null) out[names[name] || name] = settings[name];
  }
  return out;
}

// Placeholders for the sampling inputs: the server's defaults (its model card's
// `sampling_defaults`), or "server default" when it has not said.
export function samplingPlaceholders(defaults) {
  const out = {};
  for (const name of SAMPLING_FIELDS) {
    const v = defaults?.[name];
    out[name] = v == null ? "server default" : `${v} (default)`;
  }
  return out;
}

// Conversations saved before the page left sampling to the server hold its old built-in
// values (0.7, 1, 1024) all three together: those were never chosen, so they become unset.
export function upgradeSettings(settings) {
  const s = { ...DEFAULT_SETTINGS, ...(settings || {}) };
  if (s.temperature === 0.7 && s.top_p === 1 && s.max_tokens === 1024) {
    for (const name of SAMPLING_FIELDS) s[name] = "";
  }
  return s;
}

// The code interpreter's mode; `true` (older saved chats: a checkbox) means "auto".
export function codeMode(value) {
  if (value === true) return "auto";
  return value === "auto" || value === "required" ? value : "";
}

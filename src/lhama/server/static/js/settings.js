// Per-conversation generation settings: defaults and validation (the page refuses to send
// what the server would reject, and says which field is wrong).

export const DEFAULT_SETTINGS = Object.freeze({
  model: "",
  system: "",
  temperature: 0.7,
  top_p: 1,
  max_tokens: 1024,
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
  const temperature = number(raw.temperature);
  if (!(temperature >= 0 && temperature <= 2)) errors.temperature = "Temperature must be between 0 and 2.";
  else values.temperature = temperature;
  const topP = number(raw.top_p);
  if (!(topP > 0 && topP <= 1)) errors.top_p = "Top p must be above 0 and at most 1.";
  else values.top_p = topP;
  const maxTokens = number(raw.max_tokens);
  const limit = maxModelLen || Infinity;
  if (!(Number.isInteger(maxTokens) && maxTokens >= 1 && maxTokens <= limit)) {
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

// The code interpreter's mode; `true` (older saved chats: a checkbox) means "auto".
export function codeMode(value) {
  if (value === true) return "auto";
  return value === "auto" || value === "required" ? value : "";
}

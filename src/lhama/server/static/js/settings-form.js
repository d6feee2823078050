// The settings panel's form: read it into validated settings, show what is wrong next to each
// field (and to screen readers via aria-invalid), fill it from a conversation, list the models.

import { codeMode, samplingPlaceholders, validateSettings } from "./settings.js";

const FIELDS = ["system", "temperature", "top_p", "max_tokens", "seed", "codeInterpreter"];
const CHECKED = ["temperature", "top_p", "max_tokens", "seed"];
const field = (name) => document.getElementById(name);

export function readSettingsForm(settings, model, maxModelLen) {
  const raw = { ...settings };
  for (const name of FIELDS) {
    const input = field(name);
    raw[name] = input.value;
  }
  raw.model = model || raw.model;
  return validateSettings(raw, { maxModelLen });
}

export function showSettingsErrors(errors) {
  for (const name of CHECKED) {
    field(name + "-error").textContent = errors[name] || "";
    field(name).setAttribute("aria-invalid", errors[name] ? "true" : "false");
  }
}

export function fillSettingsForm(settings) {
  for (const name of FIELDS) {
    const input = field(name);
    input.value = name === "codeInterpreter" ? codeMode(settings[name]) : settings[name] ?? "";
  }
  showSettingsErrors({});
}

// Shows the server's sampling defaults (what an empty field gets) as the inputs' placeholders.
export function showSamplingDefaults(defaults) {
  for (const [name, text] of Object.entries(samplingPlaceholders(defaults))) field(name).placeholder = text;
}

// Fills the model picker; with no models (server unreachable) it says "offline" instead of
// naming a model it cannot reach. Returns the model now selected.
export function drawModelOptions(select, models, want) {
  const options = models.length ? models.map((m) => new Option(m.id, m.id)) : [new Option("offline", want)];
  select.replaceChildren(...options);
  select.value = models.some((m) => m.id === want) ? want : select.options[0].value;
  select.disabled = !models.length;
  return select.value;
}

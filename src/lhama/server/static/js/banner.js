// The banner over the messages: what went wrong, in words a user can act on, and a Retry.

export class Banner {
  // `onRetry(action)` runs when Retry is pressed, with the action given to show().
  constructor(els, onRetry) {
    this.els = els;
    this.action = null;
    els.bannerClose.addEventListener("click", () => this.hide());
    els.bannerRetry.addEventListener("click", () => {
      const action = this.action;
      this.hide();
      onRetry(action);
    });
  }

  show(text, retry = null) {
    this.els.bannerText.textContent = text;
    this.action = retry;
    this.els.bannerRetry.hidden = !retry;
    this.els.banner.hidden = false;
  }

  hide() {
    this.els.banner.hidden = true;
    this.action = null;
  }
}

// The banner text and status line for an ApiError (see api.js for its kinds).
export function explain(error) {
  if (error.kind === "auth") return { text: error.message, status: "Needs an API key" };
  if (error.kind === "unreachable") {
    return { text: "The lhama server cannot be reached (stopped or restarting). Your message is kept.", status: "Offline" };
  }
  return { text: "The server refused the request: " + error.message, status: "Error" };
}

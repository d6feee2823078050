// Server-sent events over fetch (not EventSource: that cannot POST a body or be aborted).
// SSEParser takes text in whatever pieces the network delivers and returns whole events.

export class SSEParser {
  constructor() {
    this.buffer = "";
  }

  // Returns the data of each event completed by `chunk`: a parsed JSON value, or the string
  // "[DONE]" (OpenAI's end marker). Comment lines (":" keep-alives) and other fields are skipped.
  feed(chunk) {
    this.buffer += chunk.replace(/\r\n?/g, "\n");
    const events = [];
    let cut;
    while ((cut = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, cut);
      this.buffer = this.buffer.slice(cut + 2);
      const data = block.split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
      if (!data.length) continue;
      const text = data.join("\n");
      events.push(text.trim() === "[DONE]" ? "[DONE]" : JSON.parse(text));
    }
    return events;
  }
}

// Yields each event of a fetch Response body, ending at "[DONE]" or the end of the body.
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const events = parser.feed(done ? decoder.decode() : decoder.decode(value, { stream: true }));
      for (const event of events) {
        if (event === "[DONE]") return;
        yield event;
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

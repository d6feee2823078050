// One reply over the network: the request it takes (chat completions, or the Responses API
// when the code interpreter is on, so the server runs the code), streamed into an accumulator.
// Failures come back as an ApiError (never thrown), a Stop as `stopped`.

import { ApiError, request } from "./api.js";
import { ReplyAccumulator, requestBody } from "./chat-state.js";
import { ResponseAccumulator, responsesBody } from "./responses.js";
import { readEvents } from "./sse.js";

export function replyRequest(conv, settings) {
  if (settings.codeInterpreter) {
    return { path: "/v1/responses", body: responsesBody(conv, settings), reply: new ResponseAccumulator() };
  }
  return { path: "/v1/chat/completions", body: requestBody(conv, settings), reply: new ReplyAccumulator() };
}

// Streams the reply to `conv`'s last turn; `onChange(reply)` runs when visible text or a tool
// run changed, `onOpen()` once the server accepted the request. Returns {reply, error, stopped}.
export async function streamReply(conv, settings, signal, { onOpen, onChange }) {
  const { path, body, reply } = replyRequest(conv, settings);
  let error = null;
  let stopped = false;
  try {
    const resp = await request(path, { method: "POST", json: body, signal });
    onOpen();
    for await (const event of readEvents(resp.body)) if (reply.add(event)) onChange(reply);
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else if (e instanceof ApiError) error = e;
    else if (e instanceof TypeError) error = new ApiError("unreachable", e.message); // connection lost mid-stream
    else error = new ApiError("http", e.message); // an error event from the server, or a bad body
  }
  return { reply, error, stopped };
}

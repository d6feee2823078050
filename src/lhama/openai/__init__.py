"""The OpenAI protocol, written once, for every front end (the server, batch jobs in and out of
the server, the Responses API to come):

- ``schemas``: the request bodies (pydantic);
- ``requests``: request -> (prompt ids, ``SamplingParams``) with one set of rules;
- ``chat_tools``: tools and structured output of chat requests (what the prompt shows, the
  grammar, tool calls back in OpenAI's shape);
- ``responses``: response, stream-chunk, usage and logprobs bodies;
- ``batch``: one resumable batch runner (scan, fsync'ed ledger, torn-tail repair, resume) with
  pluggable executors; ``engine_batch``: the in-process engine executor (``lhama batch``).

Imports are absolute (``lhama.openai``); this package never shadows the ``openai`` client.
"""

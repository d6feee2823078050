"""Tools around the model: tool-call formats and the streaming parser, built-in tools (sandboxed
code interpreter, Brave Search, Wolfram Alpha), custom tools, and the agent loop."""

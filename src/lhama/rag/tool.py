"""``file_search`` as a tool an agent (or any tool-calling loop) registers: a callable plus its
name, description and JSON schema, in the shape OpenAI's function tools use.

    tool = file_search_tool(retriever)
    tool.schema                           # {"type": "function", "function": {name, description, parameters}}
    tool(query="how are batches resumed?")  # JSON string: numbered passages with file + location
    tool.agent_tool()                     # a lhama.tools.Tool for lhama.tools.agent

The result is a string because a tool result goes back into the conversation as text; it
numbers the passages so the model can cite them as [n].
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import jsonschema

from lhama.errors import SamplingError
from lhama.rag.answer import sources_from_hits

NAME = "file_search"
DESCRIPTION = (
    "Search the user's documents. Returns numbered passages with the file and section they come "
    "from; cite a passage as [n] when you use it."
)
PARAMETERS = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "description": "what to look for, in words"},
        "max_num_results": {
            "type": "integer",
            "minimum": 1,
            "maximum": 20,
            "description": "how many passages to return (default 5)",
        },
    },
    "required": ["query"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class FileSearchTool:
    retriever: object  # lhama.rag.retrieve.Retriever
    name: str = NAME
    description: str = DESCRIPTION
    default_results: int = 5

    @property
    def parameters(self) -> dict:
        return PARAMETERS

    @property
    def schema(self) -> dict:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": PARAMETERS},
        }

    def run(self, query: str, max_num_results: int | None = None) -> dict:
        args = {"query": query} | ({"max_num_results": max_num_results} if max_num_results is not None else {})
        try:
            jsonschema.validate(args, PARAMETERS)
        except jsonschema.ValidationError as e:
            raise SamplingError(".".join(map(str, e.path)) or "arguments", e.message) from None
        hits = self.retriever.search(query, k=max_num_results or self.default_results)
        return {"query": query, "results": [s.as_dict() for s in sources_from_hits(hits)]}

    def agent_tool(self):
        """This tool as a ``lhama.tools.Tool``, for ``lhama.tools.agent`` and its registry."""
        from lhama.tools.registry import Tool

        return Tool(self.name, self.description, PARAMETERS, self.__call__)

    def __call__(self, query: str, max_num_results: int | None = None, **unknown) -> str:
        if unknown:
            raise SamplingError(next(iter(unknown)), f"is not a parameter of {self.name} (query, max_num_results)")
        return json.dumps(self.run(query, max_num_results), ensure_ascii=False)


def file_search_tool(
    retriever, *, name: str = NAME, description: str = DESCRIPTION, default_results: int = 5
) -> FileSearchTool:
    return FileSearchTool(retriever, name, description, default_results)


def __getattr__(name: str):
    """``lhama agent --tool lhama.rag.tool:file_search``: the tool over the default store
    (``$LHAMA_RAG_STORE``), built when first asked for."""
    if name != "file_search":
        raise AttributeError(name)
    from lhama.rag.embedders import get_embedder
    from lhama.rag.errors import VectorStoreError
    from lhama.rag.retrieve import Retriever
    from lhama.rag.stores import default_store, open_store

    store = open_store(default_store())
    if store.embedder_name is None:
        raise VectorStoreError(f"the store {store.location} is empty; add files with 'lhama rag add' first")
    return file_search_tool(Retriever(store, get_embedder(store.embedder_name))).agent_tool()

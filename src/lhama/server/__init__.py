"""OpenAI-compatible HTTP server over the continuous-batching engine. See docs/server.md."""

from lhama.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name):
    if name == "create_app":  # keep `import lhama.server` light (no FastAPI) for the CLI
        from lhama.server.app import create_app

        return create_app
    raise AttributeError(name)

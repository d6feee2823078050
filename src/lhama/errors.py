"""Errors a user can cause. Each says what was wrong and what to do about it.

The server maps each class to one HTTP status (``http_status``); the CLI prints the message
and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class LhamaError(Exception):
    """Base class for every error lhama raises on purpose."""

    http_status = 500
    code = "internal_error"


class ConfigError(LhamaError, ValueError):
    """A model configuration, flag or option that cannot work."""

    http_status = 400
    code = "invalid_config"


class ModelNotFoundError(LhamaError, FileNotFoundError):
    """``--model`` names neither a file, a folder, nor a known config name."""

    http_status = 404
    code = "model_not_found"


class CheckpointError(LhamaError, ValueError):
    """A weights file that cannot be loaded: wrong magic, truncated, missing or misshapen tensor,
    or a pickle that tries to run code. Always names the file and, where known, the tensor."""

    http_status = 400
    code = "invalid_checkpoint"

    def __init__(self, path: object, message: str, tensor: str | None = None):
        self.path = str(path)
        self.tensor = tensor
        where = f"{self.path}" + (f", tensor '{tensor}'" if tensor else "")
        super().__init__(f"{where}: {message}")


class TokenizerError(LhamaError, ValueError):
    """A tokenizer file or vocabulary that cannot be used."""

    http_status = 400
    code = "invalid_tokenizer"


class ChatFormatError(LhamaError, ValueError):
    """Messages that the chosen chat format cannot render (unknown role, bad tool call...)."""

    http_status = 400
    code = "invalid_messages"


class SamplingError(LhamaError, ValueError):
    """A sampling parameter out of its range; ``param`` names it."""

    http_status = 400
    code = "invalid_sampling_parameter"

    def __init__(self, param: str, message: str):
        self.param = param
        super().__init__(f"{param}: {message}")


class ContextLengthExceededError(LhamaError, ValueError):
    """Prompt plus requested new tokens do not fit the context window. Never truncate silently."""

    http_status = 400
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int):
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        super().__init__(
            f"This model's context window is {context_length} tokens, but the request needs "
            f"{prompt_tokens + max_new_tokens} ({prompt_tokens} in the prompt + {max_new_tokens} "
            f"to generate). Shorten the prompt or lower max_tokens."
        )


class SandboxError(LhamaError, RuntimeError):
    """The code sandbox cannot be set up (bubblewrap missing, bad limits or file names). Never
    raised for what the sandboxed code itself does: that is reported in ``SandboxResult``."""

    http_status = 500
    code = "sandbox_unavailable"


class ToolError(LhamaError, ValueError):
    """A tool that cannot be used: unknown name, missing API key, bad arguments, or a remote
    service that failed. The message says which tool and what to do."""

    http_status = 400
    code = "tool_error"


class MissingExtraError(LhamaError, ImportError):
    """A command needs an optional part of lhama (an "extra") that is not installed. The message
    is one line that names the ``pip install 'lhama[EXTRA]'`` to run."""

    http_status = 501
    code = "missing_extra"

    def __init__(self, module: str, extra: str, reason: str | None = None):
        self.module = module
        self.extra = extra
        why = reason or f"{module} is not installed"
        super().__init__(f"this needs lhama's '{extra}' extra ({why}): pip install 'lhama[{extra}]'")

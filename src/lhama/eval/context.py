"""What the task kinds share: the loaded model, its log-likelihood scorer and a lazily started
engine for generation."""

from __future__ import annotations

from collections.abc import Sequence

from lhama.eval.config import EvalConfig
from lhama.eval.loglik import LogLikelihood, prefix_token


class EvalContext:
    def __init__(self, loaded, cfg: EvalConfig, *, engine_config=None):
        self.loaded = loaded
        self.cfg = cfg
        self.tokenizer = loaded.tokenizer
        self.ll = LogLikelihood(loaded.model, max_batch_tokens=cfg.max_batch_tokens)
        self.prefix = prefix_token(loaded.tokenizer)
        self._shared = {"engine": None}  # one engine per model, shared by with_config copies
        self._engine_config = engine_config

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def engine(self):
        if self._shared["engine"] is None:
            from lhama.engine import LLMEngine

            self._shared["engine"] = LLMEngine.from_loaded(self.loaded, self._engine_config)
        return self._shared["engine"]

    def with_config(self, cfg: EvalConfig) -> EvalContext:
        """The same model (and engine) under other settings."""
        import copy

        new = copy.copy(self)
        new.cfg = cfg
        if cfg.max_batch_tokens != self.cfg.max_batch_tokens:
            new.ll = LogLikelihood(self.loaded.model, max_batch_tokens=cfg.max_batch_tokens)
        return new

    def encode(self, text: str) -> list[int]:
        """Plain text as the model reads it: BOS first where the tokenizer has one."""
        return self.tokenizer.encode(text, bos=self.tokenizer.bos_id is not None)

    def prompt_ids(self, prompt: str) -> list[int]:
        if not self.cfg.chat:
            return self.encode(prompt)
        msgs = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        msgs.append({"role": "user", "content": prompt})
        return self.loaded.chat_format.encode_dialog(msgs)

    def generate(self, prompts: Sequence[str], params) -> list[list[str]]:
        """Every prompt's completions (``params.n`` each), batched by the engine."""
        results = self.engine.generate([self.prompt_ids(p) for p in prompts], params)
        return [[c.text for c in r.completions] for r in results]

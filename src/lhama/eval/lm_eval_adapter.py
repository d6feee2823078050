"""lm-evaluation-harness backend: ``lm_eval --model lhama --model_args pretrained=SPEC ...``.

``pretrained`` takes anything ``--model`` does (GGUF file, HF or Meta folder, config name,
"default"). Log-likelihoods go through lhama's batched scorer, generation through the engine.
Tokenization follows the harness's Hugging Face backend (context/continuation split of the
whole string, BOS only where the tokenizer adds one, the same rolling windows), so scores agree
with ``--model hf`` on the same weights.

Registration: importing this module registers ``lhama`` with the harness; ``lhama lm-eval``
runs the harness with it, and ``lhama lm-eval --install`` adds a start-up hook so the plain
``lm_eval`` command finds it too (see ``lm_eval_hook``).
"""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from lhama.extras import require

TemplateLM = require("lm_eval.api.model", "eval").TemplateLM
register_model = require("lm_eval.api.registry", "eval").register_model

log = logging.getLogger("lhama.eval")


@register_model("lhama")
class LhamaLM(TemplateLM):
    def __init__(
        self,
        pretrained: str = "default",
        *,
        dtype: str | None = None,
        device: str | None = None,
        tokenizer: str | None = None,
        chat_format: str | None = None,
        max_length: int | None = None,
        max_batch_tokens: int = 4096,
        max_gen_toks: int = 256,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        batch_size=None,
        max_batch_size=None,
        loaded=None,
        **kwargs,
    ):
        super().__init__()
        import torch

        from lhama.eval.loglik import LogLikelihood
        from lhama.loader import load_model

        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # The harness passes device="cuda" unless told otherwise; say so rather than fail.
            log.warning("lm_eval asked for device %r but CUDA is not available: running on the CPU", device)
            device = "cpu"
        if loaded is None:
            dt = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else None
            loaded = load_model(pretrained, dtype=dt, device=device, tokenizer=tokenizer, chat_format=chat_format)
        self.loaded = loaded
        self.tok = loaded.tokenizer
        self._max_length = int(max_length or loaded.args.max_seq_len)
        self.ll = LogLikelihood(loaded.model, max_batch_tokens=int(max_batch_tokens), max_length=self._max_length)
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = (self.tok.bos_id is not None) if add_bos_token is None else _bool(add_bos_token)
        self._prefix = prefix_token_id
        self._engine = None

    # -- what the harness asks about the model ---------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        if self._prefix is not None:
            return int(self._prefix)
        if self.tok.bos_id is not None:
            return self.tok.bos_id
        # A BOS token that is declared but not prepended (SmolLM2's <|im_start|>): the HF backend
        # still starts empty contexts and rolling windows with it.
        bos = self.tok.special_tokens.get(getattr(self.tok, "bos_token", None) or "")
        return bos if bos is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return f"lhama-{self.loaded.name}"

    def get_model_info(self) -> dict:
        return {
            "model_name": self.loaded.name,
            "model_source": self.loaded.source,
            "model_path": str(self.loaded.path) if self.loaded.path else None,
        }

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # Special-token text is parsed (as Hugging Face tokenizers do): chat-templated prompts
        # arrive as text.
        bos = self.add_bos_token if add_special_tokens is None else (add_special_tokens and self.add_bos_token)
        ids = self.tok.encode(string, allow_special=True)
        if bos and self.tok.bos_id is not None and (not ids or ids[0] != self.tok.bos_id):
            ids = [self.tok.bos_id] + ids
        return ids

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    # -- scoring -----------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        step = 256  # requests per call: bounds memory and moves the progress bar
        with tqdm(total=len(requests), disable=disable_tqdm, desc="lhama loglikelihood") as bar:
            for s in range(0, len(requests), step):
                chunk = requests[s : s + step]
                scores = self.ll.continuation([(ctx, cont) for _, ctx, cont in chunk])
                out += [(sc.logprob, sc.greedy) for sc in scores]
                for (key, _, _), (lp, g) in zip(chunk, out[-len(chunk) :]):
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, (lp, g))
                bar.update(len(chunk))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(
                utils.make_disjoint_window,
                utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            totals[i] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ----------------------------------------------------------------------------
    @property
    def engine(self):
        if self._engine is None:
            from lhama.engine import LLMEngine

            self._engine = LLMEngine.from_loaded(self.loaded)
        return self._engine

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lhama.generate import SamplingParams

        prompts, params = [], []
        for context, gen_kwargs in (req.args for req in requests):
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_toks = int(kw.pop("max_gen_toks", self.max_gen_toks))
            do_sample = _bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 0.0)) if do_sample else 0.0
            ids = self.tok_encode(context)
            room = min(self.max_length, self.engine.max_model_len) - max_toks
            ids = ids[-room:] if room > 0 else ids[-1:]  # keep the end of a long prompt, as the HF backend
            prompts.append(ids)
            params.append(
                SamplingParams(
                    temperature=temperature,
                    top_p=float(kw.pop("top_p", 1.0)),
                    max_tokens=max_toks,
                    stop=tuple(u for u in until if u),
                    seed=kw.pop("seed", None),
                )
            )
        results = self.engine.generate(prompts, params, progress=not disable_tqdm)
        texts = [r.completions[0].text for r in results]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    # -- chat templates (--apply_chat_template) -------------------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        ids = self.loaded.chat_format.encode_dialog(chat_history, add_generation_prompt=add_generation_prompt)
        return self.tok.decode(ids)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.loaded.chat_format, "name", None) if chat_template else None


def _bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes")

"""``lhama`` command line: parses arguments and calls the package. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lhama.errors import LhamaError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="default",
                   help="GGUF file, Hugging Face folder, Meta folder, config name (random weights) or 'default'")
    p.add_argument("--tokenizer", help="tokenizer file/folder when the checkpoint has none (e.g. a named config)")
    p.add_argument("--chat-format", help="override the chat format: llama3, llama2, jinja, or a .jinja file")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.add_argument("--max-seq-len", type=int, help="cap the context window (tokens)")
    p.add_argument("--lora", help="PEFT LoRA adapter folder to apply to --model (merged in at load)")
    p.add_argument("--quantize", choices=["int8", "int4", "fp8"],
                   help="weight-only quantization at load (see docs/quantization.md)")
    p.add_argument("--quant-group-size", type=int, choices=[32, 64, 128], default=32, help="int4 group size")


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: int = 512) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens)
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def _sampling(a):
    from lhama.generate import SamplingParams

    return SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                          min_p=a.min_p, repetition_penalty=a.repetition_penalty,
                          frequency_penalty=a.frequency_penalty, presence_penalty=a.presence_penalty,
                          seed=a.seed, stop=tuple(a.stop), logprobs=bool(getattr(a, "logprobs", 0)),
                          top_logprobs=getattr(a, "logprobs", 0) or 0)


def _load(a):
    import torch

    from lhama.loader import load_model

    dtype = getattr(torch, a.dtype) if a.dtype else None
    return load_model(a.model, dtype=dtype, device=a.device, chat_format=a.chat_format, tokenizer=a.tokenizer,
                      max_seq_len=a.max_seq_len, lora=getattr(a, "lora", None),
                      quantize=_quant_config(a))


def _quant_config(a):
    if not getattr(a, "quantize", None):
        return None
    from lhama.quant import QuantConfig

    return QuantConfig(a.quantize, group_size=a.quant_group_size)


def cmd_info(a) -> int:
    from lhama.model import CONFIGS
    from lhama.model.sizing import describe, model_size

    if a.target.lower() in CONFIGS:
        args, name = CONFIGS[a.target.lower()].args, a.target.lower()
    else:
        from lhama.loader import resolve_model_spec

        path = resolve_model_spec(a.target)
        from lhama.checkpoints import read_args

        args, name = read_args(path), str(path)
    if a.json:
        print(json.dumps({"model": name, "args": _args_dict(args), **model_size(args).as_dict()}, indent=2))
    else:
        print(describe(args, name))
    return 0


def _args_dict(args) -> dict:
    from dataclasses import asdict

    return asdict(args)


def _add_speculative_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative decoding (docs/scaling.md)")
    g.add_argument("--draft-model", help="draft: self:int4 (an int4 copy of the model), a model sharing the "
                                         "tokenizer, self:N (the model's first N layers), self:int4:N, or ngram "
                                         "(prompt lookup)")
    g.add_argument("--num-speculative-tokens", type=int, default=None,
                   help="tokens the draft proposes per step (default: 6 for self:int4/int8, else 4)")


def _speculation(a, lm):
    if not getattr(a, "draft_model", None):
        return None
    from lhama.generate.speculative import load_speculation

    return load_speculation(a.draft_model, lm, a.num_speculative_tokens)


def cmd_generate(a) -> int:
    from lhama.generate import stream_text

    lm = _load(a)
    params = _sampling(a)
    spec = _speculation(a, lm)
    if a.chat:
        ids = lm.chat_format.encode_dialog([{"role": "user", "content": a.prompt}])
        stop_ids = lm.chat_format.stop_ids
    else:
        ids = lm.tokenizer.encode(a.prompt, bos=lm.tokenizer.bos_id is not None)
        stop_ids = lm.tokenizer.stop_ids
    pieces, steps, finish = [], [], None
    for d in stream_text(lm.model, lm.tokenizer, ids, params, stop_ids=stop_ids, speculation=spec):
        if not a.json:
            sys.stdout.write(d.text)
            sys.stdout.flush()
        pieces.append(d.text)
        steps += d.steps
        finish = d.finish_reason or finish
    if a.json:
        out = {"text": "".join(pieces), "finish_reason": finish, "prompt_tokens": len(ids),
               "completion_tokens": len(steps)}
        if spec is not None:
            out["speculative"] = {"acceptance_rate": spec.stats.acceptance_rate, "proposed": spec.stats.proposed,
                                  "accepted": spec.stats.accepted, "target_forwards": spec.stats.rounds}
        if a.logprobs:
            out["logprobs"] = [{"token": lm.tokenizer.decode([s.token_id]), "id": s.token_id, "logprob": s.logprob,
                                "top": [{"id": t, "token": lm.tokenizer.decode([t]), "logprob": lp}
                                        for t, lp in (s.top_logprobs or [])]} for s in steps]
        print(json.dumps(out, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    return 0


def cmd_chat(a) -> int:
    from lhama.chat_session import run_chat

    lm = _load(a)
    return run_chat(lm, _sampling(a), system=a.system, speculation=_speculation(a, lm))


def cmd_convert(a) -> int:
    from lhama.checkpoints.export import convert

    src = a.input
    if src == "default":
        from lhama.loader import default_model_path

        src = default_model_path()
    out = convert(Path(src), Path(a.output), to=a.to, gguf_type=a.gguf_type)
    print(f"wrote {out}")
    return 0


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--max-num-seqs", type=int, default=32, help="sequences run in one step")
    g.add_argument("--max-num-batched-tokens", type=int, default=256, help="tokens computed in one step")
    g.add_argument("--kv-cache-gb", type=float, help="KV-cache budget (default: see docs/engine.md)")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--max-model-len", type=int, help="cap on prompt + output tokens per request")
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    g.add_argument("--enforce-eager", action="store_true",
                   help="CUDA: launch every decode kernel from Python instead of replaying CUDA graphs")


def _engine_config(a):
    from lhama.engine.config import EngineConfig

    return EngineConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                        kv_cache_gb=a.kv_cache_gb, block_size=a.block_size, max_model_len=a.max_model_len,
                        enable_prefix_caching=not a.no_prefix_caching, compile=a.compile,
                        cuda_graphs=not a.enforce_eager)


def cmd_batch(a) -> int:
    from dataclasses import asdict

    from lhama.engine.batch import run_batch_file

    if a.ray:
        from lhama.parallel.ray_batch import cmd_batch_ray

        return cmd_batch_ray(a)
    lm = _load(a)
    summary = run_batch_file(lm, Path(a.input), Path(a.output), _engine_config(a), progress=not a.quiet)
    print(json.dumps(asdict(summary)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lhama", description="The Llama system in Python.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="interactive streaming chat (/reset, /system TEXT, /exit)")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--system", help="system prompt")
    _add_speculative_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("generate", help="complete a prompt (raw text, or --chat to use the chat format)")
    p.add_argument("prompt")
    _add_model_args(p)
    _add_sampling_args(p, max_tokens=128)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message")
    p.add_argument("--logprobs", type=int, default=0, metavar="N", help="report N top logprobs per token")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    _add_speculative_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="shape, parameters and memory of a config name or checkpoint")
    p.add_argument("target", help="config name (llama3.1-8b ...), GGUF file, HF or Meta folder, or 'default'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a checkpoint to safetensors (HF layout) or GGUF")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--to", choices=["safetensors", "gguf", "meta"], required=True)
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], default="f16")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("batch", help="run an OpenAI batch JSONL file offline (resumable)")
    p.add_argument("input")
    p.add_argument("output")
    _add_model_args(p)
    _add_engine_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ray", action="store_true", help="split the file across Ray actors (docs/scaling.md)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, one model copy each (with --ray)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    p.set_defaults(func=cmd_batch)

    from lhama.server.cli import add_serve_parser

    add_serve_parser(sub)
    from lhama.tools.cli import add_agent_parser

    add_agent_parser(sub)
    from lhama.rag.cli import add_rag_parser

    add_rag_parser(sub)
    from lhama.train.cli import add_train_parsers

    add_train_parsers(sub)
    from lhama.parallel.cli import add_plan_parser

    add_plan_parser(sub)
    from lhama.eval.cli import add_eval_parsers

    add_eval_parsers(sub)
    from lhama.safety.cli import add_safety_parser

    add_safety_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LhamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

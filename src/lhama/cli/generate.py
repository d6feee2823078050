"""``lhama generate`` (one completion) and ``lhama chat`` (the interactive chat)."""

from __future__ import annotations

import json
import sys

from lhama.cli.args import (
    add_kv_cache_dtype_arg,
    add_model_args,
    add_sampling_args,
    add_speculative_args,
    load_model_from_args,
    sampling_params_from_args,
    speculation_from_args,
)


def add_generate_args(p) -> None:
    p.add_argument("prompt", help="the text to complete (or, with --chat, the user message)")
    add_model_args(p)
    add_kv_cache_dtype_arg(p)
    add_sampling_args(p)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat format")
    p.add_argument("--logprobs", type=int, default=0, metavar="N", help="report N top logprobs per token (0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    add_speculative_args(p)
    p.set_defaults(func=run_generate)


def run_generate(a) -> int:
    from lhama.generate import stream_text

    lm = load_model_from_args(a)
    params = sampling_params_from_args(a)
    spec = speculation_from_args(a, lm)
    if a.chat:
        ids = lm.chat_format.encode_dialog([{"role": "user", "content": a.prompt}])
        stop_ids = lm.chat_format.stop_ids
    else:
        ids = lm.tokenizer.encode(a.prompt, bos=lm.tokenizer.bos_id is not None)
        stop_ids = lm.tokenizer.stop_ids
    pieces, steps, finish = [], [], None
    deltas = stream_text(
        lm.model, lm.tokenizer, ids, params, stop_ids=stop_ids, speculation=spec, kv_cache_dtype=a.kv_cache_dtype
    )
    for d in deltas:
        if not a.json:
            sys.stdout.write(d.text)
            sys.stdout.flush()
        pieces.append(d.text)
        steps += d.steps
        finish = d.finish_reason or finish
    if a.json:
        out = {
            "text": "".join(pieces),
            "finish_reason": finish,
            "prompt_tokens": len(ids),
            "completion_tokens": len(steps),
        }
        if spec is not None:
            out["speculative"] = {
                "acceptance_rate": spec.stats.acceptance_rate,
                "proposed": spec.stats.proposed,
                "accepted": spec.stats.accepted,
                "target_forwards": spec.stats.rounds,
            }
        if a.logprobs:
            out["logprobs"] = [
                {
                    "token": lm.tokenizer.decode([s.token_id]),
                    "id": s.token_id,
                    "logprob": s.logprob,
                    "top": [
                        {"id": t, "token": lm.tokenizer.decode([t]), "logprob": lp} for t, lp in (s.top_logprobs or [])
                    ],
                }
                for s in steps
            ]
        print(json.dumps(out, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    return 0


def add_chat_args(p) -> None:
    add_model_args(p)
    add_kv_cache_dtype_arg(p)
    add_sampling_args(p)
    p.add_argument("--system", help="system prompt")
    p.add_argument(
        "--history-file",
        help="where typed lines are kept between sessions "
        "(default: $XDG_STATE_HOME/lhama/chat_history, or ~/.local/state/...; "
        "'' keeps none)",
    )
    add_speculative_args(p)
    p.set_defaults(func=run_chat_command)


def run_chat_command(a) -> int:
    from lhama.cli.chat import run_chat

    lm = load_model_from_args(a)
    return run_chat(
        lm,
        sampling_params_from_args(a),
        system=a.system,
        speculation=speculation_from_args(a, lm),
        history_file=a.history_file,
        kv_cache_dtype=a.kv_cache_dtype,
    )

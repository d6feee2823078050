"""What every system runs: the same prompt token ids and the same number of generated tokens.

The prompt text is tokenized once, in the parent, with llama.cpp's tokenizer (vocab only, no
weights loaded) when the model is a GGUF file, and the ids are handed to every system, so no
system tokenizes differently from another. Named configs (random weights, for the smoke test)
get deterministic pseudo-random ids instead.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Plain prose so the prompts look like real requests (any text would do: generation length is
# fixed by ignore_eos, and greedy decoding makes the work deterministic).
TEXT = """\
The lighthouse stood on a spur of black rock at the mouth of the bay, and for ninety years its
keepers had written the weather in a ledger each evening before lighting the lamp. The entries
were short: wind from the west, sea moderate, two fishing boats returned before dark, fog after
midnight. Read together they made a kind of history of the coast, one that no newspaper had ever
printed. When the last keeper left, the ledgers went to the county archive, where a librarian
named Ruth spent a winter copying them into a database. She found that the storms had grown
less frequent but stronger, that the herring boats had stopped coming in the nineteen-seventies,
and that on one night in 1953 a keeper had written nothing at all except the word "listen".
Nobody knew what he had heard. His grandson, a retired schoolteacher, remembered only that the
old man kept a brass telescope on the windowsill and would not let the children touch it.
Ruth asked engineers, historians and fishermen what a person might hear from that rock on a calm
night, and every answer was different: the foghorn of a ship that never arrived, seals calling
on the outer reef, a radio broadcast carried unusually far by the cold air, the bell of a buoy
that had broken loose. She wrote each answer in a notebook of her own and began to think of the
ledgers not as records of weather but as records of attention, of what a patient person notices
when the job is to watch the same water every day for years. In spring she drove out to the
headland. The lamp had been automated long ago and the tower was locked, but the keeper's
cottage was open to visitors, and in the kitchen someone had pinned a tide table to the wall.
She sat on the step until the light came on, and she listened. There was the wind, and the
surf, and far out a sound she could not name, low and regular, like a great slow breath.
"""


@dataclass
class Workload:
    model: str  # a GGUF path or a lhama config name
    device: str = "cpu"
    dtype: str = "fp32"  # lhama and transformers; llama.cpp runs the file's own quantization
    threads: int = 2
    prompt_ids: list[int] = field(default_factory=list)  # the single-stream prompt
    gen_single: int = 128
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    conc_prompts: list[list[int]] = field(default_factory=list)  # max(concurrency) distinct prompts
    gen_conc: int = 64
    compile: bool = True  # run the lhama torch.compile experiment
    engine_max_batched_tokens: int = 256
    seed: int = 0
    # For vocabulary-less files (``--shapes``): what lhama's loader is given (unused by the runs).
    tokenizer: str | None = None
    chat_format: str | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Workload:
        return cls(**d)


def is_gguf(model: str) -> bool:
    return str(model).endswith(".gguf") and Path(model).is_file()


def exit_reason(returncode: int) -> str:
    """How a child process ended, naming the signal that killed it (SIGILL: an instruction this
    CPU cannot run, as in a llama.cpp built with -march=native on another machine)."""
    if returncode < 0:
        return f"died with {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


_TOKENIZE = """import json, sys
import llama_cpp
tok = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)
print(json.dumps(tok.tokenize(sys.stdin.read().encode(), add_bos=False, special=False)))
"""


def token_stream(model: str, min_tokens: int) -> tuple[list[int], str]:
    """At least ``min_tokens`` ids of the benchmark text (repeated as needed), and who tokenized.
    llama.cpp tokenizes in a child process: native code we do not own never takes the run down."""
    if is_gguf(model):
        r = subprocess.run(
            [sys.executable, "-c", _TOKENIZE, model],
            input=TEXT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if r.returncode == 0:
            one, how = json.loads(r.stdout.strip().splitlines()[-1]), "llama.cpp (vocab only)"
        else:
            from lhama.tokenizer import load_tokenizer

            why = "not installed" if "No module named 'llama_cpp'" in r.stderr else exit_reason(r.returncode)
            one, how = load_tokenizer(Path(model)).encode(TEXT), f"lhama (GGUF vocab; llama.cpp {why})"
        return (one * (min_tokens // len(one) + 1))[:min_tokens], how
    from lhama.model import get_config

    vocab = get_config(model).args.vocab_size
    rng = random.Random(0)
    return [rng.randrange(3, min(vocab, 30000)) for _ in range(min_tokens)], "random ids (named config)"


def build(
    model: str,
    *,
    quick: bool,
    device: str,
    threads: int,
    compile: bool,
    concurrency: list[int] | None = None,
    ids: list[int] | None = None,
    ids_from: str = "",
) -> tuple[Workload, str]:
    """``ids``: token ids to use instead of tokenizing the text (random ids for ``--shapes``)."""
    if quick:
        prompt_len, gen_single, conc, conc_len, gen_conc = 64, 16, [1, 4], 32, 8
    else:
        prompt_len, gen_single, conc, conc_len, gen_conc = 512, 128, [1, 8, 32], 128, 64
    conc = sorted(set(concurrency or conc))
    # Concurrent prompts start at different offsets of the text, so no two share a prefix and the
    # prefix cache cannot skip work another system would have to do.
    n = max(conc)
    stride = 37
    need = max(prompt_len, stride * n + conc_len)
    ids, how = (ids[:need], ids_from) if ids is not None else token_stream(model, need)
    conc_prompts = [ids[i * stride : i * stride + conc_len] for i in range(n)]
    dtype = "bf16" if device.startswith("cuda") else "fp32"
    w = Workload(
        model=str(model),
        device=device,
        dtype=dtype,
        threads=threads,
        prompt_ids=ids[:prompt_len],
        gen_single=gen_single,
        concurrency=conc,
        conc_prompts=conc_prompts,
        gen_conc=gen_conc,
        compile=compile,
    )
    return w, how

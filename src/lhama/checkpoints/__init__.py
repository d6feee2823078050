"""Read and write model weights: GGUF (llama.cpp), Hugging Face safetensors folders, and Meta's
consolidated.*.pth folders. Everything comes out with Meta's parameter names, which the model uses.

    ckpt = read_checkpoint("model.gguf")            # Checkpoint(args, state_dict, format, path, metadata)
    with open_reader("model.gguf") as r:            # lazy: r.args, r.shapes, r.read(name, dim, start, stop)
        ...
    model = build_model(ckpt.args); load_weights(model, ckpt.state_dict, ckpt.path)
    convert("model.gguf", "out/", to="safetensors")
"""

from lhama.checkpoints.export import convert
from lhama.checkpoints.loader import (
    FORMATS,
    Checkpoint,
    detect_format,
    load_model,
    load_weights,
    open_reader,
    read_args,
    read_checkpoint,
    write_checkpoint,
)
from lhama.checkpoints.reader import CheckpointReader
from lhama.gguf_file import read_gguf_metadata

__all__ = [
    "FORMATS",
    "Checkpoint",
    "CheckpointReader",
    "convert",
    "detect_format",
    "load_model",
    "load_weights",
    "open_reader",
    "read_args",
    "read_checkpoint",
    "read_gguf_metadata",
    "write_checkpoint",
]

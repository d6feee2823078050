"""One module per benchmarked system; each runs in its own subprocess (``harness.worker``)."""

# name on the command line -> (module, function). "lhama-compile" is the torch.compile
# experiment, in a process of its own so its compiler memory does not count against lhama's RSS.
SYSTEMS = {
    # No flags: load_model(path) as a new user gets it (a quantized GGUF stays quantized).
    "lhama": ("harness.systems.lhama_system", "run"),
    # The same file dequantized to float weights (--dtype float32 on a CPU, bf16 on a GPU).
    "lhama-float": ("harness.systems.lhama_system", "run_float"),
    "lhama-compile": ("harness.systems.lhama_system", "run_compiled"),
    # CUDA graphs off (every decode kernel launched from Python): the GPU comparison for them.
    "lhama-eager": ("harness.systems.lhama_system", "run_eager"),
    # Weight-only quantized at load (lhama.quant), engine only: int8 per channel, int4 group 32
    # (int8 head), fp8 e4m3 (upcast per matmul on CPUs: memory, not speed).
    "lhama-int8": ("harness.systems.lhama_system", "run_int8"),
    "lhama-int4": ("harness.systems.lhama_system", "run_int4"),
    "lhama-fp8": ("harness.systems.lhama_system", "run_fp8"),
    "llama.cpp": ("harness.systems.llamacpp_system", "run"),
    "transformers": ("harness.systems.transformers_system", "run"),
}

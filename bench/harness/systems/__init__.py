"""One module per benchmarked system; each runs in its own subprocess (``harness.worker``)."""

# name on the command line -> (module, function). "lhama-compile" is the torch.compile
# experiment, in a process of its own so its compiler memory does not count against lhama's RSS.
SYSTEMS = {
    "lhama": ("harness.systems.lhama_system", "run"),
    "lhama-compile": ("harness.systems.lhama_system", "run_compiled"),
    "llama.cpp": ("harness.systems.llamacpp_system", "run"),
    "transformers": ("harness.systems.transformers_system", "run"),
}

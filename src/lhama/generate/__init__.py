from lhama.generate.loop import generate, generate_tokens, stream_text
from lhama.generate.outputs import Completion, StreamDelta, TokenStep, check_context
from lhama.generate.sampling import BatchSampler, SampleResult, SamplingParams, make_generator
from lhama.generate.stops import StopStringMatcher

__all__ = [
    "Completion",
    "StreamDelta",
    "TokenStep",
    "check_context",
    "generate",
    "generate_tokens",
    "stream_text",
    "BatchSampler",
    "SampleResult",
    "SamplingParams",
    "make_generator",
    "StopStringMatcher",
]
